"""The training loop: one readable function for every task.

    setup: data, model (the registry entry says how it is fitted), optimizer, schedule
    for each epoch:
        gradient steps:  for each batch: losses = model.loss(images, targets); loss = sum(losses) / accumulate
                         backward; every `accumulate` micro-batches: clip, optimizer step, schedule step
                         (and with train.ema_decay > 0: the weights' moving average updated)
        (or closed form: the model solved from cached features, zir.engine.features)
        evaluate -> log -> checkpoint (last, best) -> callbacks -> early stop?
    end callbacks (the CLI and the API pass one that writes report.html)

The model's registry entry (``ModelSpec.fitting``, a function of the model's config) says how it is
fitted, and :func:`train` decides once: ``gradient`` trains the model on images, ``features`` solves its
head on cached backbone features to convergence (one epoch), ``closed_form`` replaces the loop by a solve on
cached features. Only evaluation, checkpointing and logging are pluggable (``callbacks``); there is no
trainer class to subclass, and the config given is never changed (the run's own, with the data's facts
filled in, is derived from it and saved as ``config.yaml``).

``train.ema_decay > 0`` (gradient fitting only; ``features`` and ``closed_form`` ignore it) keeps timm's
``ModelEmaV3`` of the model, updated after every optimizer step with the decay warmed up from 0
(``1 - (1 + step)^(-2/3)``, capped at ``ema_decay``): the average is what is evaluated and what
best/last.safetensors hold (what ``zir.load`` gives), and last_state.pt keeps the raw weights beside it.

Determinism: the data order of epoch ``e`` depends only on ``(seed, e)`` and the random generators are
re-seeded from ``(seed, e)`` at every epoch start, so a run killed after epoch ``k`` and resumed ends with
the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from zir import __version__
from zir.config import RunConfig, load_config
from zir.engine import budget as timing
from zir.engine import distributed as dist
from zir.engine.checkpoint import (
    discard_untrained,
    load_state,
    load_weights,
    new_run_dir,
    read_meta,
    save_last,
    save_weights,
)
from zir.engine.data import Batch, DataBundle, build_datasets, build_loader, start_epoch
from zir.engine.evaluate import MONITOR, autocast, evaluate
from zir.engine.features import FEATURE_FILE, FeatureDataset, cache_key, feature_loaders, fit_closed_form
from zir.engine.logger import RunLogger
from zir.errors import CheckpointError, ConfigError, TrainingError
from zir.models import get_spec, model_keys
from zir.models.base import FitsInClosedForm, Fitting, TrainsOnFeatures, ZirModel

#: Called on the main process after every epoch's checkpoint with
#: ``{"epoch" (0-based), "row" (the logged row), "metrics", "run_dir", "model"}`` (``model``: the weights
#: saved, the moving average with ``train.ema_decay > 0``).
Callback = Callable[[dict[str, Any]], None]
#: Called on the main process when training ends, with the run folder (e.g. to write report.html).
EndCallback = Callable[[Path], None]


@dataclass
class TrainResult:
    """What :func:`train` returns: where the run is and how it ended."""

    run_dir: Path
    best_metrics: dict[str, float]
    epochs_done: int
    stopped_early: bool


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{dist.local_rank()}" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec} but CUDA is not available here; use device=cpu")
    return torch.device(spec)


def make_run_dir(cfg: RunConfig) -> Path:
    """``project/name``, or ``name-2``, ``name-3``... when it exists (unless ``exist_ok``)."""
    base = Path(cfg.project) / cfg.name
    run_dir, i = base, 1
    while run_dir.exists() and not cfg.exist_ok:
        i += 1
        run_dir = base.with_name(f"{cfg.name}-{i}")
    return new_run_dir(run_dir)  # checked writable before the data is read; removed if it never trains


def build_optimizer(model: ZirModel, cfg: RunConfig) -> torch.optim.Optimizer:
    t = cfg.train
    groups = model.param_groups(t.lr, t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay)
    raise ConfigError(f"train.optimizer must be adamw or sgd, got {t.optimizer!r}")


def cosine_with_warmup(warmup_steps: int, total_steps: int, final: float) -> timing.Schedule:
    """LR factor per optimizer step: linear 0.01 -> 1 over warm-up, then cosine 1 -> ``final`` (a
    :class:`~zir.engine.budget.Schedule`, whose length a time budget re-fits)."""
    return timing.Schedule(warmup_steps, total_steps, final)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# The run's config: derived from the one given, which is never changed


def with_synth_task(cfg: RunConfig) -> RunConfig:
    """``data=synth`` means the built-in scenes of the run's task: ``synth:detect`` with ``task=detect``."""
    return cfg.override({"data.path": f"synth:{cfg.task or 'classify'}"}) if cfg.data.path == "synth" else cfg


def with_data_facts(cfg: RunConfig, data: DataBundle) -> RunConfig:
    """Panoptic: the data says which classes are things; the run's config records it (``model_args``), so
    ``zir.load`` rebuilds the same model from ``config.yaml``."""
    if data.thing_classes is None or "thing_classes" not in model_keys(cfg.model):
        return cfg
    return cfg.override({"model_args.thing_classes": list(data.thing_classes)})


# --------------------------------------------------------------------------------------------------
# Setup


@dataclass
class Run:
    """Everything the epochs need, made once by :func:`setup`."""

    cfg: RunConfig  # the run's own config (saved as config.yaml)
    dir: Path
    device: torch.device
    data: DataBundle
    fitting: Fitting
    distributed: bool  # several processes (torchrun)
    model: ZirModel  # what the checkpoints hold
    fit: ZirModel  # what the loop trains and evaluates: the model, or its head on cached features
    net: nn.Module  # LossOf(fit), wrapped by DistributedDataParallel in a multi-process run
    train_loader: DataLoader
    val_loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: timing.Schedule  # the scheduler's factor; its length follows `epochs`
    epochs: int  # train.epochs, or the count fitted to train.time (zir.engine.budget)
    budget: timing.Budget
    scaler: torch.amp.GradScaler
    feature_key: str  # the feature cache's key (fitting features and closed_form)
    logger: RunLogger
    skipped: list[str] = field(default_factory=list)  # samples dropped by data.skip_bad
    stopped_by_time: bool = False  # the hard stop ended an epoch early
    ema: ModelEmaV3 | None = None  # train.ema_decay > 0 with gradient fitting: the weights' moving average

    @property
    def evaluated(self) -> ZirModel:
        """What is evaluated: the moving average, or ``fit``."""
        return cast(ZirModel, self.ema.module) if self.ema is not None else self.fit

    @property
    def saved(self) -> ZirModel:
        """What best/last.safetensors hold (what ``zir.load`` gives): the moving average, or ``model``."""
        return cast(ZirModel, self.ema.module) if self.ema is not None else self.model

    def optimizer_steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.train_loader) / self.cfg.train.accumulate))

    def refit_epochs(self, epoch: int, steps_done: int, step_s: float, steps_per_epoch: int = 0) -> None:
        """``train.time``: fit the epoch count (and the schedule's length) to the budget from the
        measured seconds per step (``steps_per_epoch``: the loader's length unless given; a closed-form
        epoch is one step); every process takes the main process's fit."""
        t = self.cfg.train
        steps_per_epoch = steps_per_epoch or len(self.train_loader)
        fitted = self.budget.fit_epochs(epoch, steps_done, steps_per_epoch, step_s, t.eval_every,
                                        len(self.data.val) / max(1, len(self.data.train)))
        fitted = int(dist.broadcast_object(fitted))  # type: ignore[arg-type]
        if dist.is_main() and (fitted != self.epochs or self.budget.notes):
            tqdm.write(f"time={t.time:g} min: {step_s:.3g} s/step, {steps_per_epoch} steps/epoch -> "
                       f"{fitted} epochs" + "".join(f"\n{n}" for n in self.budget.notes))
            self.budget.notes.clear()
        self.epochs = fitted
        self.schedule.refit(fitted * self.optimizer_steps_per_epoch())


def setup(cfg: RunConfig, run_dir: Path | None, progress: bool) -> Run:
    """Device, process group, data, model, optimizer and schedule for ``cfg``; ``run_dir`` when resuming."""
    t = cfg.train
    budget = timing.Budget(t.time, t.time_limit)  # the clock starts before the data is read: setup counts
    device = select_device(t.device)
    distributed = dist.init_from_env(device)
    rank, world = dist.rank(), dist.world_size()
    if t.threads:
        torch.set_num_threads(t.threads)
    if run_dir is None:
        run_dir = Path(dist.broadcast_object(make_run_dir(cfg) if dist.is_main() else None))  # type: ignore[arg-type]

    cfg = with_synth_task(cfg)
    data = build_datasets(cfg.data, seed=t.seed)
    if cfg.task and cfg.task != data.task:
        raise ConfigError(f"task={cfg.task} but {cfg.data.path} is a {data.task} dataset")
    train_loader = build_loader(data.train, cfg.data, train=True, seed=t.seed, rank=rank, world=world)
    val_loader = build_loader(data.val, cfg.data, train=False, seed=t.seed)

    seed_everything(t.seed)  # identical initial weights on every rank
    cfg = with_data_facts(cfg, data)
    spec = get_spec(cfg.model)
    model_cfg = cfg.model_config(len(data.classes))
    model = spec.build(model_cfg).to(device)
    if data.task != model.task:
        raise ConfigError(f"model {cfg.model!r} is for {model.task}, but {cfg.data.path} is a {data.task} dataset")
    fitting = spec.fitting(model_cfg)
    # 4-D weights NHWC (inputs follow the weights' format in each convolution); unset: the model's choice
    if (t.channels_last if t.channels_last is not None else model.trains_channels_last) and fitting == "gradient":
        model = model.to(memory_format=torch.channels_last)
    key = cache_key(cfg, model_cfg, train=len(data.train), val=len(data.val))
    fit = model
    if fitting == "features":  # the backbone runs once, the head trains on its cached features
        train_loader, val_loader = feature_loaders(model, data, cfg, device, run_dir / FEATURE_FILE, key, rank,
                                                   world, progress and dist.is_main())
        fit = cast(TrainsOnFeatures, model).head_on_features()

    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = max(1, math.ceil(len(train_loader) / t.accumulate))
    # With train.time the epoch count is fitted once steps are timed (Run.refit_epochs); until then the
    # schedule is planned for train.epochs.
    schedule = cosine_with_warmup(round(t.warmup_epochs * steps_per_epoch), t.epochs * steps_per_epoch, t.final_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=t.amp == "fp16")
    # The average starts as a copy of the initial weights (deepcopy draws no random numbers, so ema_decay=0
    # and ema_decay>0 runs see the same random stream); timm's warm-up lets early steps count fully.
    ema = ModelEmaV3(model, decay=t.ema_decay, use_warmup=True) \
        if t.ema_decay > 0 and fitting == "gradient" else None
    net: nn.Module = LossOf(fit)
    if distributed:
        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    return Run(cfg, run_dir, device, data, fitting, distributed, model, fit, net, train_loader, val_loader, optimizer,
               torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), schedule,
               1 if fitting == "features" else t.epochs, budget, scaler, key,
               RunLogger(run_dir),
               [str(p) for p in data.problems if p.severity == "error"], ema=ema)


@dataclass
class Standing:
    """Where training stands between epochs: what the resume state carries."""

    start_epoch: int = 0
    best: float = -math.inf
    bad_epochs: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)


def begin(run: Run) -> Standing:
    """A new run: the folder with its config; the logs start afresh (``exist_ok`` reuses a folder)."""
    if dist.is_main():
        run.dir.mkdir(parents=True, exist_ok=True)
        run.cfg.save(run.dir / "config.yaml")
        for stale in ("metrics.jsonl", "results.csv"):
            (run.dir / stale).unlink(missing_ok=True)
    return Standing()


def restore(run: Run) -> Standing:
    """A resumed run: weights, optimizer, schedule and scaler as the last finished epoch left them."""
    weights = run.dir / "weights"
    state = load_state(weights / "last_state.pt")
    if read_meta(weights / "last.safetensors").get("epoch") != state["epoch"]:
        raise CheckpointError(f"{weights}: last.safetensors and last_state.pt are from different "
                              "epochs; the run was interrupted while saving. Start it again.")
    load_weights(run.saved, weights / "last.safetensors", get_spec(run.cfg.model).renames)
    if run.ema is not None:  # last.safetensors holds the average; the raw weights train on
        if "raw_weights" not in state:
            raise CheckpointError(f"{weights / 'last_state.pt'}: no raw weights beside the moving average "
                                  "(train.ema_decay was changed in config.yaml?); resume with the config the "
                                  "run was started with, or start a new run")
        run.model.load_state_dict(state["raw_weights"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    if run.cfg.train.time > 0 and run.fitting != "features":  # the fitted count, saved with the schedule
        run.epochs = max(state["epoch"] + 1, round(run.schedule.total_steps / run.optimizer_steps_per_epoch()))
    best_metrics = read_meta(weights / "best.safetensors").get("metrics", {}) \
        if (weights / "best.safetensors").is_file() else {}
    if dist.is_main():
        run.logger.resume(last_epoch=state["epoch"] + 1)  # rows count epochs from 1
    return Standing(state["epoch"] + 1, state["best"], state["bad_epochs"], best_metrics)


# --------------------------------------------------------------------------------------------------
# The loop


@discard_untrained
def train(cfg: RunConfig, *, resume: str | Path | None = None, callbacks: Sequence[Callback] | None = None,
          on_end: Sequence[EndCallback] | None = None, progress: bool = True) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; with ``resume=RUN_DIR`` continue that run exactly.

    ``callbacks`` run after every epoch's checkpoint and ``on_end`` when training ends (main process).

    Returns:
        :class:`TrainResult`. The run folder holds config.yaml, weights/, metrics.jsonl, results.csv and
        curves.png (and what ``on_end`` writes: report.html for ``zir train`` and ``zir.train``).
    """
    if resume is not None:
        if not (Path(resume) / "config.yaml").is_file():
            raise CheckpointError(f"{resume}: not a zir run folder (no config.yaml); pass runs/NAME")
        cfg = load_config(Path(resume) / "config.yaml")
    run = setup(cfg, None if resume is None else Path(resume), progress)
    standing = begin(run) if resume is None else restore(run)
    one_epoch = {"closed_form": closed_form_epoch, "features": features_epoch,  # the one dispatch
                 "gradient": gradient_epoch}[run.fitting]
    t, main = run.cfg.train, dist.is_main()
    t_start, stopped_early, epoch = time.time(), False, standing.start_epoch - 1
    while epoch + 1 < run.epochs:  # run.epochs: train.epochs, or fitted to train.time while training
        epoch += 1
        seed_everything(t.seed * 1_000_003 + epoch * 1009 + dist.rank())
        run.train_loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        start_epoch(run.data.train, epoch, run.epochs)  # e.g. mosaic off for the last epochs (of the fitted count)
        run.model.train()
        run.model.set_epoch(epoch)  # e.g. the classifier's freeze_epochs: state from the epoch number
        t_epoch = time.time()
        terms, n_images = one_epoch(run, epoch, progress and main)
        out_of_time = run.stopped_by_time or run.budget.out_of_time(epoch)
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"], **terms,
                               "images_per_s": n_images * dist.world_size() / (time.time() - t_epoch)}
        evaluate_now = (epoch + 1) % t.eval_every == 0 or epoch + 1 == run.epochs or out_of_time
        end_epoch(run, standing, epoch, row, evaluate_now, t_start, callbacks or (), progress)
        stop = (t.patience > 0 and standing.bad_epochs >= t.patience) or out_of_time
        stopped_early = bool(dist.broadcast_object(stop))
        if stopped_early:
            break

    if main and run.skipped:
        skipped = sorted(set(run.skipped))
        tqdm.write(f"skipped {len(skipped)} bad samples (data.skip_bad=true):\n  " + "\n  ".join(skipped))
    if main:
        run.logger.plot()
        for cb in on_end or ():
            cb(run.dir)
    dist.barrier()
    dist.cleanup()
    return TrainResult(run.dir, standing.best_metrics, epoch + 1, stopped_early)


def gradient_epoch(run: Run, epoch: int, progress: bool) -> tuple[dict[str, float], int]:
    """One pass of gradient steps over the training loader.

    Returns:
        ``({"train/TERM": mean over images}, images seen)``.
    """
    t, device, optimizer, scaler = run.cfg.train, run.device, run.optimizer, run.scaler
    sums: dict[str, float] = {}
    n_images, t_epoch = 0, time.time()
    fit_now = t.time > 0 and epoch < 2  # fit the epoch count in the first epoch, re-fit in the second
    t_first = 0.0  # the clock after the epoch's first step (which also starts the loader)
    bar = tqdm(run.train_loader, desc=f"epoch {epoch + 1}/{run.epochs}", disable=not progress, leave=False)
    for i, batch in enumerate(bar):
        batch: Batch
        stop = run.budget.out_of_time(epoch)  # the hard stop, before every step
        if bool(dist.broadcast_object(stop)) if run.distributed else stop:
            run.stopped_by_time = True
            break
        if fit_now and i == timing.PROBE_STEPS + 1:
            run.refit_epochs(epoch, i, (timing.clock() - t_first) / timing.PROBE_STEPS)
            bar.set_description(f"epoch {epoch + 1}/{run.epochs}")
            fit_now = False
        run.skipped += batch.skipped
        if not batch.targets:
            continue
        batch = batch.to(device)
        step_now = (i + 1) % t.accumulate == 0 or i + 1 == len(run.train_loader)
        # DDP: all-reduce gradients only on the micro-batch that steps (same result, less traffic).
        sync = run.net.no_sync() if run.distributed and not step_now else contextlib.nullcontext()
        with sync:
            with autocast(device, t.amp):
                losses = run.net(batch.images, batch.targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                terms = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in losses.items())
                raise TrainingError(f"loss is {loss.item()} ({terms}) at epoch {epoch + 1}, batch {i} "
                                    f"(optimizer step {run.scheduler.last_epoch}); the last good checkpoint "
                                    f"is kept in {run.dir}/weights. Lower train.lr, or check the data "
                                    "with `zir data check`")
            scaler.scale(loss / t.accumulate).backward()
        if step_now:
            if t.clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(run.model.parameters(), t.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            run.scheduler.step()
            if run.ema is not None:  # step: optimizer steps done (restored on resume), for the warm-up
                run.ema.update(run.model, step=run.scheduler.last_epoch)
        n_images += len(batch.targets)
        t_first = timing.clock() if i == 0 else t_first
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(batch.targets)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}",
                        img_s=f"{n_images * dist.world_size() / (time.time() - t_epoch):.0f}")
    if fit_now and not run.stopped_by_time:  # an epoch too short to probe: fit from the whole epoch
        steps = len(run.train_loader)
        run.refit_epochs(epoch, steps, (timing.clock() - t_first) / max(1, steps - 1) if steps > 1
                         else timing.clock() - run.budget.start)
    means = {f"train/{k}": dist.all_reduce_mean(v / max(n_images, 1), device) for k, v in sums.items()}
    return means, n_images


def features_epoch(run: Run, epoch: int, progress: bool) -> tuple[dict[str, float], int]:
    """``fitting="features"``: the head solved to convergence on the cached training features (the model's
    ``solve_head``: a convex problem, so one epoch is the whole training; ``epochs`` is not used).

    Returns:
        ``({"train/STATISTIC": value}, feature rows)``: the chosen L2 strength and its cross-validation.
    """
    rows = cast(FeatureDataset, run.train_loader.dataset)
    stats = cast(TrainsOnFeatures, run.model).solve_head(rows.features, rows.labels, rows.groups, run.cfg.train.seed)
    if progress:
        tqdm.write(f"transfer=features: L2 {stats['l2']:.3g} chosen by {stats['folds']:.0f}-fold cross-validation "
                   f"(held-out accuracy {stats['cv_accuracy']:.4f}); L-BFGS converged to gradient "
                   f"{stats['grad_norm']:.1e} in {stats['iterations']:.0f} iterations")
    return {f"train/{k}": v for k, v in stats.items()}, len(rows)


def closed_form_epoch(run: Run, epoch: int, progress: bool) -> tuple[dict[str, float], int]:
    """The model solved from cached features of the training images (no images pass through a loss).

    Returns:
        ``({"train/STATISTIC": value}, 0)``.
    """
    t0 = timing.clock()
    stats = fit_closed_form(cast(FitsInClosedForm, run.model), run.data.train, run.device, run.dir / FEATURE_FILE,
                            run.feature_key, write=dist.is_main(), progress=progress)
    if run.cfg.train.time > 0 and epoch < 2:  # one solve is one "step"; the first pays for the cache
        run.refit_epochs(epoch, 1, timing.clock() - t0, steps_per_epoch=1)
    return {f"train/{k}": v for k, v in stats.items()}, 0


def end_epoch(run: Run, standing: Standing, epoch: int, row: dict[str, Any], evaluate_now: bool, t_start: float,
              callbacks: Sequence[Callback], progress: bool) -> None:
    """Main process: evaluate, checkpoint (best when the monitored metric improved, and last), log the
    row and call ``callbacks``; ``standing`` follows."""
    if not dist.is_main():
        return
    t, monitor = run.cfg.train, MONITOR[run.data.task]
    metrics: dict[str, float] = {}
    if evaluate_now:
        t_eval = timing.clock()
        metrics, _ = evaluate(run.evaluated, run.val_loader, run.data.task, run.data.classes, run.device, t.amp, progress)
        run.budget.eval_s = timing.clock() - t_eval  # what the epoch-count fit counts per evaluation
        row.update({f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    row["time_s"] = time.time() - t_start
    meta = {"config": run.cfg.to_dict(), "classes": run.data.classes, "task": run.data.task,
            "zir_version": __version__, "epoch": epoch, "metrics": metrics}
    if monitor in metrics and metrics[monitor] > standing.best:
        standing.best, standing.bad_epochs, standing.best_metrics = metrics[monitor], 0, metrics
        save_weights(run.saved, run.dir / "weights" / "best.safetensors", meta)
    elif metrics:
        standing.bad_epochs += 1
    state = {"epoch": epoch, "best": standing.best, "bad_epochs": standing.bad_epochs,
             "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
             "scaler": run.scaler.state_dict(), "torch_rng": torch.get_rng_state()}
    if run.ema is not None:
        state["raw_weights"] = run.model.state_dict()
    save_last(run.dir / "weights", run.saved, state, meta)  # the pair resume trusts, renamed together
    run.logger.log(row)
    tqdm.write(_summary(row, monitor)) if progress else None
    for cb in callbacks:
        cb({"epoch": epoch, "row": row, "metrics": metrics, "run_dir": run.dir,
            "model": run.saved})


class LossOf(nn.Module):
    """``forward`` = ``model.loss``: DistributedDataParallel syncs gradients only for work done in
    ``forward``, so the loss must be computed through it."""

    def __init__(self, model: ZirModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.model.loss(images, targets)


def _summary(row: dict[str, Any], monitor: str) -> str:
    parts = [f"epoch {row['epoch']}"]
    parts += [f"{k.removeprefix('train/')} {v:.4f}" for k, v in row.items() if k.startswith("train/")]
    if f"val/{monitor}" in row:
        parts.append(f"val {monitor} {row[f'val/{monitor}']:.4f}")
    parts.append(f"{row['images_per_s']:.0f} img/s")
    return " | ".join(parts)
