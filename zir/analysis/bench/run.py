"""Running a bench: train each detector by its recipe within a time budget, score it, write the outputs."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from zir.analysis.bench.data import BenchData, prepare_data
from zir.analysis.bench.outputs import write_outputs
from zir.analysis.bench.recipes import Recipe, check_models, detectors, read_recipe_files, recipe_for
from zir.analysis.bench.scoring import BenchRow, mean_box_baseline, score_run
from zir.errors import CheckpointError, ConfigError, DataError

# --------------------------------------------------------------------------------------------------
# Training within a budget


def run_settings(recipe: Recipe, data: BenchData, out: str | Path, threads: int = 0,
                 device: str = "auto") -> dict[str, Any]:
    """What the bench sets over a recipe: the data (validating on the test split), the run folder
    ``out/runs/MODEL``, threads and device."""
    return dict(data=str(data.train), val_path=str(data.test), project=str(Path(out) / "runs"), name=recipe.model,
                exist_ok=True, threads=threads, device=device)


def train_detector(recipe: Recipe, data: BenchData, out: str | Path, minutes: float, threads: int = 0,
                   device: str = "auto", progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Train by ``recipe`` on ``data.train`` for ``minutes`` (validating on the test split); the run folder.

    The budget is the engine's ``time=minutes`` (:mod:`zir.engine.budget`: the epoch count fitted from
    timed steps so that the schedule ends with the budget, the hard stop checked every step). An
    ``epochs`` in the recipe fixes the epoch count instead, with ``time_limit=minutes`` as the hard stop;
    ``minutes <= 0`` removes the budget.
    """
    import zir

    run = run_settings(recipe, data, out, threads, device)
    fixed = recipe.fixed_epochs() or minutes <= 0
    run.update({"time_limit": max(minutes, 0.0)} if fixed else {"time": minutes})
    if "eval_every" not in recipe.settings():
        # validation only after the last epoch (the engine always evaluates the last one): the score comes
        # from score_run, and sliding windows take seconds per image
        run["eval_every"] = recipe.config(**run).train.epochs if fixed else 1_000_000
    log(f"  {recipe.model}: " + ("fixed epochs" if fixed else f"time={minutes:g} min"))
    return zir.train(recipe.config(**run), progress=progress).run_dir


def train_and_score(recipe: Recipe, data: BenchData, out: str | Path, minutes: float, threads: int = 0,
                    device: str = "auto", progress: bool = True, log: Callable[[str], None] = print) -> BenchRow:
    """:func:`train_detector` then :func:`score_run` with its last weights."""
    from zir.engine.trainer import select_device

    run = train_detector(recipe, data, out, minutes, threads, device, progress, log)
    row = score_run(recipe.model, run, data, run, device=str(select_device(device)), progress=progress)
    row.settings = recipe.settings()
    return row


# --------------------------------------------------------------------------------------------------
# The whole bench


@dataclass
class BenchResult:
    """What :func:`bench_detectors` returns: the rows and the files it wrote."""

    rows: list[BenchRow]
    baseline: dict[str, float]
    failed: dict[str, str]
    table: Path
    results: Path
    chart: Path


def bench_detectors(data: str | Path | BenchData, out: str | Path = "runs/bench", *,
                    models: Sequence[str] | None = None, minutes: float = 5.0,
                    runs: Mapping[str, str | Path] | None = None,
                    overrides: Mapping[str, Mapping[str, Any]] | None = None,
                    recipes: Sequence[str | Path] = (), threads: int = 0, device: str = "auto",
                    test: str | Path = "", test_split: float = 0.2, synth_n: int = 800, command: str = "",
                    progress: bool = True, log: Callable[[str], None] | None = None) -> BenchResult:
    """Train (or take trained runs of) detectors on one data set and score them all on its test split.

    Args:
        data: a detection dataset (any format zir reads), ``synth``, or a prepared :class:`BenchData`.
        out: output folder (see the package docstring).
        models: registry detectors to train; ``None``: every detector in the registry.
        minutes: training budget per model.
        runs: ``{name: run folder or weights}`` scored as they are; a name among ``models`` is not trained.
        overrides: per model, settings over its recipe (``{"yolo_v1": {"lr": 1e-3}}``).
        recipes: the user's recipe files (run configs naming their ``model``), used instead of the shipped ones.
        threads: torch threads for training and inference (0: leave torch's setting).
        device: ``auto`` (CUDA if present), ``cpu`` or ``cuda``: training and inference.
        test, test_split: the test split of a dataset path (see :func:`prepare_data`).
        synth_n: ``synth`` only: training scenes; the test scenes are a quarter as many.
        command: the command line shown in the table's header.

    Settings and runs are checked before anything trains. A model whose training or scoring fails later
    is reported (``failed``) and the others go on; the outputs are rewritten after each model.

    Raises:
        ConfigError: an unknown model, a model that is not a detector, a bad setting or recipe.
        DataError: ``data`` is not a detection set, or a run was trained on other classes.
        CheckpointError: a run folder without weights, or not a detection run.
    """
    log = log or (lambda line: tqdm.write(line) if progress else print(line, flush=True))
    to_train, run_paths, files = _check_request(models, runs, overrides or {}, recipes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        bench_data = data if isinstance(data, BenchData) else prepare_data(data, out / "data", test, test_split,
                                                                                 synth_n=synth_n)
        trainings = [recipe_for(m, bench_data.kind, (overrides or {}).get(m), files) for m in to_train]
        _check_before_training(trainings, run_paths, bench_data, out)
        info = bench_data.summary()
        log(f"bench detectors on {bench_data.name}: {info['n_train']} training and {info['n_test']} test images; "
            f"{len(to_train)} to train ({minutes:g} min each), {len(run_paths)} trained runs")
        return _run_jobs(trainings, run_paths, bench_data, out, minutes, threads, device, command, progress, log)
    finally:
        torch.set_num_threads(saved_threads)


def _check_request(models: Sequence[str] | None, runs: Mapping[str, str | Path] | None,
                   overrides: Mapping[str, Mapping[str, Any]],
                   recipes: Sequence[str | Path]) -> tuple[list[str], dict[str, Path], dict[str, Path]]:
    """``(models to train, runs to score, the user's recipe files by model)``, or the error of a request
    that cannot work (before any data is read)."""
    run_paths = {name: Path(path) for name, path in (runs or {}).items()}
    models = check_models(detectors() if models is None else models)
    files = read_recipe_files(recipes)
    to_train = [m for m in models if m not in run_paths]
    unused = (set(overrides) | set(files)) - set(models)
    if unused:
        raise ConfigError(f"settings or recipes given for {sorted(unused)}, which this bench does not train "
                          f"(it trains: {', '.join(to_train) or 'none'})")
    for name, path in run_paths.items():
        if not path.exists():
            raise CheckpointError(f"{path}: no such run folder or weights file (--runs {name}={path})")
    if not to_train and not run_paths:
        raise ConfigError("nothing to benchmark: give --models or --runs")
    return to_train, run_paths, files


def _check_before_training(trainings: Sequence[Recipe], runs: Mapping[str, Path], data: BenchData,
                           out: Path) -> None:
    """Raise now, not after hours of training: every recipe's settings and every run's task and classes."""
    from zir.engine.checkpoint import read_meta
    from zir.engine.predictor import find_weights

    for recipe in trainings:
        recipe.config(**run_settings(recipe, data, out))
    for name, run in runs.items():
        weights = find_weights(run, prefer="last")
        meta = read_meta(weights)
        if meta.get("task") != "detect":
            raise CheckpointError(f"{weights}: a {meta.get('task', 'non-zir')} run, not a detector (--runs {name})")
        if meta.get("classes") != data.classes:
            raise DataError(weights, f"trained on the classes {meta.get('classes', [])[:10]}, but the test data has "
                                     f"{data.classes[:10]}; give a run trained on this data set (--runs {name})")


def _run_jobs(trainings: Sequence[Recipe], runs: Mapping[str, Path], data: BenchData, out: Path, minutes: float,
              threads: int, device: str, command: str, progress: bool, log: Callable[[str], None]) -> BenchResult:
    """Train and score each recipe, score each run; the outputs rewritten after every model."""
    from zir.engine.trainer import select_device

    baseline = mean_box_baseline(data, out)
    rows: list[BenchRow] = []
    failed: dict[str, str] = {}
    scoring_device = str(select_device(device))

    def write() -> tuple[Path, Path, Path]:
        return write_outputs(rows, data, out, command=command, threads=torch.get_num_threads(),
                             device=scoring_device, minutes=minutes, baseline=baseline, failed=failed)

    jobs: list[tuple[str, Recipe | Path]] = [(r.model, r) for r in trainings] + list(runs.items())
    for k, (name, job) in enumerate(jobs, 1):
        trains = isinstance(job, Recipe)
        log(f"[{k}/{len(jobs)}] {name}: " + (f"training for {minutes:g} min" if trains else f"scoring {job}"))
        t0 = time.time()
        try:
            if isinstance(job, Recipe):
                row = train_and_score(job, data, out, minutes, threads, device, progress, log)
            else:
                row = score_run(name, job, data, out / "scores" / name, scoring_device, progress)
                row.source = "run"
        except Exception as e:  # settings were checked before; one broken model must not cost the others
            failed[name] = f"{type(e).__name__}: {e}"
            log(f"[{k}/{len(jobs)}] {name}: FAILED ({failed[name]})")
            write()
            continue
        rows.append(row)
        log(f"[{k}/{len(jobs)}] {name}: mAP50 {row.mAP50:.3f}, mAP50-95 {row.mAP50_95:.3f}, "
            f"{row.ms:.1f} ms/image, {row.epochs} epochs ({(time.time() - t0) / 60:.1f} min here)")
        write()  # after every model, so an interrupted bench keeps what it measured
    return BenchResult(rows, baseline, failed, *write())


def parse_runs(items: Sequence[str]) -> dict[str, Path]:
    """``["faster_rcnn=runs/frcnn"]`` -> ``{"faster_rcnn": Path("runs/frcnn")}``."""
    out = {}
    for item in items:
        name, eq, path = item.partition("=")
        if not (eq and name.strip() and path.strip()):
            raise ConfigError(f"--runs expects NAME=RUN_DIR (e.g. faster_rcnn=runs/frcnn), got {item!r}")
        out[name.strip()] = Path(path.strip())
    return out
