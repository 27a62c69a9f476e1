"""``zir bench detectors``: every registered detector on the same data, budget and test split; accuracy
against inference time, the shape of the lecture's "YOLO vs SSD vs Faster R-CNN" figure.

    data = prepare_data("synth", out)              # or a dataset path (any format zir reads)
    rows = [train_and_score(m, data, out, minutes=5) for m in detectors()]
    write_outputs(rows, data, out, command="...")  # table.md, results.json, chart.png

Every model is scored the same way: each test image alone at its own size (batch 1, which also gives
the median inference time), COCO mAP50 and mAP50-95 by zir's faster-coco-eval evaluator on one ground
truth file. Training gets ``minutes`` per model: the epoch count is estimated from a few timed steps so
that the cosine schedule ends with the budget, and ``time_limit`` stops a run whose estimate was short
(after at least one epoch). A model is scored with its *last* weights: the training run validates on the
test split, so its "best" weights would be chosen on the test images themselves.

Output folder::

    OUT/table.md      markdown table; date, machine and command in the header
    OUT/results.json  the same numbers, one row per detector
    OUT/chart.png     mAP50 and mAP50-95 against ms per image (log), one-stage / two-stage marked
    OUT/data/         the train / test split as COCO files (images stay where they are)
    OUT/runs/MODEL/   the training runs (zir run folders)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from tqdm import tqdm

from zir.data.contract import DetectionPrediction, Record
from zir.errors import CheckpointError, ConfigError, DataError

# Recommended settings per detector and data-set kind ("synth": zir's synthetic shapes; "photo": real
# photographs, found with short runs on the raccoon set; see the README). Keys are run settings
# (train/data) or model settings, as on the command line; ``--set MODEL.KEY=VALUE`` overrides them.
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    # AdamW at 1e-3 makes YOLO v1's 12544 -> 512 FC layer jump and the head collapse to zero confidence
    # after two epochs; 3e-4 trains smoothly. bf16 autocast is slower than float32 here: EfficientNet's
    # depthwise convolutions get no AMX kernels. On synthetic shapes (objects anywhere, 4 classes, 240
    # scenes) the paper's FC head, with its own weights for each cell, reached mAP50 0.18 in 36 epochs
    # (README); the conv head (one 1x1 conv for every cell) learns from every object at once. Raccoons
    # (one class, large, central) suit the FC head.
    "yolo_v1": {
        "photo": dict(image_size=224, batch_size=16, lr=3e-4, weight_decay=5e-4, warmup_epochs=1.0,
                      amp="none", augment="light", S=7, score_thresh=0.001),
        "synth": dict(image_size=256, batch_size=16, lr=3e-4, weight_decay=5e-4, warmup_epochs=1.0,
                      amp="none", augment="light", S=8, score_thresh=0.001, head="conv"),
    },
    # The settings of the README's raccoon row (8 epochs at 320 px, 12.4 min there): fewer RoIs per image
    # (roi_align's backward dominates a CPU step) and three frozen backbone blocks.
    "faster_rcnn": {
        "photo": dict(image_size=320, batch_size=4, lr=3e-4, warmup_epochs=0.3, amp="bf16", augment="light",
                      roi_batch_size=128, frozen_blocks=3),
        # The demo's settings (`zir demo`: validation mAP50 0.90 in about 2 minutes on such scenes).
        "synth": dict(image_size=256, batch_size=8, lr=3e-4, warmup_epochs=0.3, augment="light",
                      roi_batch_size=64, frozen_blocks=3),
    },
    # The window classifier on the pretrained backbone: with the small ConvNet OverFeat placed boxes well
    # but had not learned the classes after 15 minutes (mAP50 0.11 against 0.61 on the default scenes).
    "overfeat": {
        "synth": dict(image_size=256, batch_size=8, lr=1e-3, amp="none", backbone="efficientnet_lite0",
                      pretrained="imagenet"),
        "photo": dict(image_size=320, batch_size=8, lr=1e-3, amp="none", backbone="efficientnet_lite0",
                      pretrained="imagenet"),
    },
    # R-CNN trains no network: one pass extracts the cached region features, then SVMs and the ridge
    # regressor are solved; a second epoch would only solve them again. On synth the paper's kind of warp
    # (224 px, 16 px of context) scored mAP50 0.925 against 0.873 at 96 px, for 6x the time per image.
    "rcnn": {
        "synth": dict(image_size=256, epochs=1, crop_size=224, context=16, train_regions=32),
        "photo": dict(image_size=320, epochs=1, crop_size=96, context=8, train_regions=32),
    },
    # Epoch 1 runs selective search on every training image (cached for later epochs), so the budget
    # estimate from a few timed steps would be far too pessimistic: the epochs are fixed.
    "fast_rcnn": {
        "synth": dict(image_size=256, batch_size=8, epochs=4, lr=3e-4, warmup_epochs=0.5, roi_batch_size=64),
        "photo": dict(image_size=320, batch_size=4, epochs=6, lr=3e-4, warmup_epochs=0.5, roi_batch_size=64),
    },
    # The pretrained backbone as window classifier: the small ConvNet reached mAP50 0.24 on synth in 10
    # epochs, EfficientNet-Lite0 0.51 in 6 (each window costs about 8x more: README).
    "sliding_window": {
        "synth": dict(image_size=256, batch_size=16, lr=1e-3, amp="none", backbone="efficientnet_lite0",
                      pretrained="imagenet"),
        "photo": dict(image_size=320, batch_size=16, lr=3e-3, amp="none"),
    },
}
# For a detector (or kind) without an entry above.
DEFAULTS: dict[str, dict[str, Any]] = {
    "photo": dict(image_size=320, batch_size=8, amp="bf16", augment="light"),
    "synth": dict(image_size=256, batch_size=8, amp="bf16", augment="light"),
}
KINDS = tuple(DEFAULTS)

# Run settings the bench sets itself; they are left out of the table's settings column.
_OWN_KEYS = ("model", "data", "val_path", "project", "name", "exist_ok", "threads", "device")
STAGE_NAMES = {1: "one-stage", 2: "two-stage"}
BASELINE_NAME = "mean training box (no learning)"


# --------------------------------------------------------------------------------------------------
# Data


@dataclass
class BenchData:
    """A detection set split into training and test images, both as COCO files.

    Attributes:
        name: shown in titles (``synth``, the dataset folder's name, ...).
        kind: the key of :data:`SETTINGS`: ``synth`` or ``photo``.
        classes: class names, index = class id.
        train: COCO JSON of the training images (every model trains on it).
        test: COCO JSON of the test images: the ground truth of every score.
    """

    name: str
    kind: str
    classes: list[str]
    train: Path
    test: Path

    def test_images(self) -> list[tuple[int, Path]]:
        """``(image_id, path)`` of every test image, found where zir's COCO reader finds them."""
        from zir.data.formats._common import choose_image_root

        images = json.loads(self.test.read_text())["images"]
        root = choose_image_root(self.test.parent, [im["file_name"] for im in images])
        return [(im["id"], root / im["file_name"]) for im in images]

    def summary(self) -> dict[str, Any]:
        n = {split: len(json.loads(getattr(self, split).read_text())["images"]) for split in ("train", "test")}
        return {"name": self.name, "kind": self.kind, "classes": self.classes, "train": str(self.train),
                "test": str(self.test), "n_train": n["train"], "n_test": n["test"]}


def from_coco(train: str | Path, test: str | Path, name: str, kind: str = "photo") -> BenchData:
    """A :class:`BenchData` of two COCO files that share their categories."""
    train, test = Path(train), Path(test)
    classes = [[c["name"] for c in sorted(json.loads(p.read_text())["categories"], key=lambda c: c["id"])]
               for p in (train, test)]
    if classes[0] != classes[1]:
        raise DataError(test, f"test classes {classes[1]} differ from the training classes {classes[0]}")
    if kind not in KINDS:
        raise ConfigError(f"data kind must be one of {KINDS}, got {kind!r}")
    return BenchData(name, kind, classes[0], train, test)


def prepare_synth(out: str | Path, n_train: int = 800, n_test: int = 200, image_size: int = 256,
                  **scene: Any) -> BenchData:
    """zir's synthetic shapes on disk (COCO), training and test scenes from different seeds.

    The scenes are the demo's (up to 4 objects of 15-50% of the side) unless ``scene`` says otherwise
    (:class:`~zir.data.synth.SynthConfig` fields): with the default scenes (up to 15 objects from 2% of
    the side) no detector learns anything visible in a CPU budget of minutes.
    """
    from zir.data.synth import DEMO_SCENES, SynthConfig, write_synth

    scene = {**DEMO_SCENES, **scene}
    out = Path(out)
    files = {}
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 10_000)):
        cfg = SynthConfig(task="detect", n=n, seed=seed, image_size=image_size, **scene)
        folder = out / f"synth_{split}"
        stamp = folder / "synth.json"  # reuse scenes written before with the same settings
        if not (stamp.is_file() and json.loads(stamp.read_text()) == dataclasses.asdict(cfg)):
            write_synth(cfg, folder, progress=False, overwrite=True)
            stamp.write_text(json.dumps(dataclasses.asdict(cfg)))
        files[split] = folder / "annotations.json"
    return from_coco(files["train"], files["test"], "synth", "synth")


def prepare_data(data: str | Path, out: str | Path, test: str | Path = "", test_split: float = 0.2,
                 format: str = "auto", seed: int = 0, synth_n: int = 800) -> BenchData:
    """The training and test images of a detection set, written as two COCO files under ``out``.

    Args:
        data: a dataset folder or file of any format zir reads (COCO, YOLO, VOC; an instance set serves
            as boxes), or ``synth`` for zir's synthetic shapes (:func:`prepare_synth`).
        test: a separate test set; if empty, ``test_split`` of ``data`` is held out, the same images
            ``zir train data=DATA val_split=...`` holds out for validation (same seed, same split).
        format: ``auto`` or a reader name.
        synth_n: ``synth`` only: training scenes; the test scenes are a quarter as many.

    Raises:
        DataError: the data is not a detection set, or fails zir's data checks (run ``zir data check``).
    """
    from zir.config import DataConfig
    from zir.engine.data import build_datasets

    out = Path(out)
    if str(data) == "synth":
        return prepare_synth(out, n_train=synth_n, n_test=max(1, synth_n // 4))
    bundle = build_datasets(DataConfig(path=str(data), format=format, val_path=str(test), val_split=test_split),
                            seed=seed)
    if bundle.task not in ("detect", "instance"):
        raise DataError(data, f"this is a {bundle.task} dataset; zir bench detectors needs boxes: a COCO, YOLO "
                              "or Pascal VOC detection set, or `synth`")
    files = {}
    for split, dataset in (("train", bundle.train), ("test", bundle.val)):
        records = [_boxes_only(r) for r in dataset.records]  # type: ignore[attr-defined]
        # File names relative to the JSON's folder, so zir's COCO reader finds the images where they are.
        files[split] = _write_coco(records, bundle.classes, out / f"{split}.json")
    name = Path(data).stem if Path(data).is_file() else Path(data).resolve().name
    return from_coco(files["train"], files["test"], name, "photo")


def _boxes_only(record: Record) -> Record:
    """The record with its boxes only (an instance set trains detectors), its size read if missing."""
    from zir.data.formats._common import header_size

    width, height = record.width, record.height
    if not (width and height):
        width, height = header_size(record.path) or (None, None)
    return dataclasses.replace(record, path=record.path.resolve(), width=width, height=height,
                               segmentations=[], mask_path=None, segments=[])


def _write_coco(records: list[Record], classes: list[str], path: Path) -> Path:
    from zir.data.formats.coco import write_coco_json

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_coco_json(records, classes, path.resolve(), path.parent.resolve())


# --------------------------------------------------------------------------------------------------
# Models and settings


def detectors() -> list[str]:
    """Every registry model of task ``detect``, in registry order."""
    from zir.models import MODELS

    return [name for name, spec in MODELS.items() if spec.task == "detect"]


def check_models(models: Sequence[str]) -> list[str]:
    """``models`` if each is a registered detector, else a :class:`ConfigError` naming the bad one."""
    from zir.models import MODELS

    known = detectors()
    for name in models:
        if name not in MODELS:
            raise ConfigError(f"unknown model {name!r}; detectors in the registry: {', '.join(known)}")
        if MODELS[name].task != "detect":
            raise ConfigError(f"{name!r} is a {MODELS[name].task} model, not a detector; detectors: "
                              f"{', '.join(known)}")
    return list(models)


def parse_sets(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["yolo_v1.lr=1e-3", "faster_rcnn.image_size=256"]`` -> ``{"yolo_v1": {"lr": 0.001}, ...}``
    (values parsed as YAML, keys as in ``zir train``)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        model, dot, name = key.strip().partition(".")
        if not (eq and dot and model and name):
            raise ConfigError(f"--set expects MODEL.KEY=VALUE (e.g. yolo_v1.lr=1e-3), got {item!r}")
        try:
            out.setdefault(model, {})[name] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            out.setdefault(model, {})[name] = value
    return out


def parse_runs(items: Sequence[str]) -> dict[str, Path]:
    """``["faster_rcnn=runs/frcnn"]`` -> ``{"faster_rcnn": Path("runs/frcnn")}``."""
    out = {}
    for item in items:
        name, eq, path = item.partition("=")
        if not (eq and name.strip() and path.strip()):
            raise ConfigError(f"--runs expects NAME=RUN_DIR (e.g. faster_rcnn=runs/frcnn), got {item!r}")
        out[name.strip()] = Path(path.strip())
    return out


def settings_for(model: str, kind: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run and model settings of ``model`` for data of ``kind``: defaults, :data:`SETTINGS`, overrides."""
    return {**DEFAULTS[kind], **SETTINGS.get(model, {}).get(kind, {}), **(overrides or {})}


# --------------------------------------------------------------------------------------------------
# One result row


@dataclass
class BenchRow:
    """One detector's point on the chart and row of the table.

    Attributes:
        name: its label (the registry name, a ``--runs`` name, or a peer's name).
        model: the registry name (``""`` for a peer).
        stages: 1 (one-stage), 2 (two-stage) or 0 (unknown), from ``ZirModel.stages``.
        mAP50, mAP50_95: COCO AP at IoU 0.5 and averaged over IoU 0.5:0.95, in [0, 1].
        ms: median inference milliseconds per image at batch 1 (the first image, a warm-up, left out).
        train_min: training minutes (the run's own clock); ``epochs``: epochs it trained.
        source: ``trained`` (here, now), ``run`` (a trained run taken as it is) or ``peer``.
        run: the run folder or weights the scores come from.
        settings: the settings it trained with.
    """

    name: str
    model: str
    stages: int
    mAP50: float
    mAP50_95: float
    ms: float
    train_min: float = math.nan
    epochs: int = 0
    source: str = "trained"
    run: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Scoring: the same for every model


def load_float(path: Path) -> Tensor:
    """An image file as float32 ``(3, H, W)`` in [0, 1], what ``ZirModel.predict`` takes."""
    from zir.data.image_io import read_image

    return read_image(path).as_subclass(Tensor).float() / 255


def score(predict_one: Callable[[Any], DetectionPrediction], data: BenchData, out: str | Path,
          load: Callable[[Path], Any] = load_float, progress: bool = True,
          sync: Callable[[], None] | None = None) -> dict[str, float]:
    """Predict each test image alone (batch 1): COCO mAP and the median inference time.

    Args:
        predict_one: one loaded image -> its detections, in the image's own pixels.
        load: path -> what ``predict_one`` takes; decoding is not timed.
        sync: called before the clock stops (``torch.cuda.synchronize`` on a GPU).

    Returns:
        ``{"mAP50", "mAP50-95", "ms"}``; the COCO results are written to ``out/predictions.json``.
    """
    from zir.metrics.coco import evaluate_results_json, to_coco_results

    predictions, ids, times = [], [], []
    for k, (image_id, path) in enumerate(tqdm(data.test_images(), desc="test images", leave=False,
                                               disable=not progress)):
        image = load(path)
        t0 = time.perf_counter()
        with torch.inference_mode():
            pred = predict_one(image)
        if sync is not None:
            sync()
        if k > 0:  # the first call warms up (allocations, lazy initialisation)
            times.append(time.perf_counter() - t0)
        predictions.append(pred)
        ids.append(image_id)
    results = Path(out) / "predictions.json"
    to_coco_results(predictions, ids, results)
    metrics = evaluate_results_json(data.test, results, iou_types=("bbox",))
    ms = 1000 * statistics.median(times) if times else math.nan
    return {"mAP50": metrics["bbox/AP50"], "mAP50-95": metrics["bbox/AP"], "ms": ms}


def mean_box_baseline(data: BenchData, out: str | Path) -> dict[str, float]:
    """No learning: one box per test image at the training set's mean relative box (centre and size).

    Raccoon boxes are large and central, so this prior already scores a sizeable mAP50: a detector's
    number means something only well above it. Returns ``{"mAP50", "mAP50-95"}``.
    """
    train = json.loads(data.train.read_text())
    if not train["annotations"]:
        return {"mAP50": math.nan, "mAP50-95": math.nan}
    size = {im["id"]: (im["width"], im["height"]) for im in train["images"]}
    rel = torch.tensor([[(x + w / 2) / size[a["image_id"]][0], (y + h / 2) / size[a["image_id"]][1],
                         w / size[a["image_id"]][0], h / size[a["image_id"]][1]]
                        for a in train["annotations"] for x, y, w, h in [a["bbox"]]]).mean(0)
    cx, cy, w, h = rel.tolist()
    label = torch.zeros(1, dtype=torch.long)  # the first class: the prior knows no class

    def predict_one(image: Tensor) -> DetectionPrediction:
        H, W = image.shape[-2:]
        box = torch.tensor([[(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H]])
        return DetectionPrediction(boxes=box, scores=torch.ones(1), labels=label)

    folder = Path(out) / "mean_box"
    folder.mkdir(parents=True, exist_ok=True)
    m = score(predict_one, data, folder, progress=False)
    return {"mAP50": m["mAP50"], "mAP50-95": m["mAP50-95"]}


def weights_of(run: str | Path) -> Path:
    """A run's last weights (see the module docstring), else its best; a ``.safetensors`` file as is."""
    from zir.engine.predictor import find_weights

    run = Path(run)
    if not run.exists():
        raise CheckpointError(f"{run}: no such run folder or weights file")
    last = run / "weights" / "last.safetensors"
    return last if last.is_file() else find_weights(run)


def score_run(name: str, run: str | Path, data: BenchData, out: str | Path, device: str = "cpu",
              progress: bool = True) -> BenchRow:
    """Score a trained zir detector (run folder or weights file) on ``data``'s test images."""
    import zir

    weights = weights_of(run)
    predictor = zir.load(weights, device=device)
    if predictor.task != "detect":
        raise CheckpointError(f"{weights}: a {predictor.task} model ({predictor.config.model}); "
                              "zir bench detectors needs a detection run")
    if predictor.classes != data.classes:
        raise DataError(data.test, f"the run {run} knows the classes {predictor.classes[:10]}, the test data "
                                   f"{data.classes[:10]}; give a run trained on this data set")
    device_type = predictor.device.type
    sync = torch.cuda.synchronize if device_type == "cuda" else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = score(lambda image: predictor.predict(image)[0], data, out, progress=progress, sync=sync)
    epochs, train_min = _run_log(weights)
    cfg = predictor.config
    return BenchRow(name=name, model=cfg.model, stages=int(getattr(predictor.model, "stages", 0)),
                    mAP50=m["mAP50"], mAP50_95=m["mAP50-95"], ms=m["ms"], train_min=train_min, epochs=epochs,
                    run=str(weights), settings={"image_size": cfg.data.image_size, **cfg.model_args})


def _run_log(weights: Path) -> tuple[int, float]:
    """``(epochs, training minutes)`` from the run's ``metrics.jsonl`` (``(0, nan)`` without one)."""
    log = weights.parent.parent / "metrics.jsonl"
    if not log.is_file():
        return 0, math.nan
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return (len(rows), rows[-1]["time_s"] / 60) if rows else (0, math.nan)


# --------------------------------------------------------------------------------------------------
# Training within a budget


def estimate_epochs(settings: Mapping[str, Any], minutes: float, log: Callable[[str], None] = print) -> int:
    """Epochs that fit ``minutes``: time a few training steps of the real model on the real loader."""
    from zir.config import load_config
    from zir.engine.data import build_datasets, build_loader
    from zir.engine.evaluate import autocast
    from zir.engine.trainer import select_device
    from zir.models import build_model

    cfg = load_config(overrides=dict(settings))
    device = select_device(cfg.train.device)
    bundle = build_datasets(cfg.data, seed=cfg.train.seed)
    loader = build_loader(bundle.train, cfg.data, train=True, seed=cfg.train.seed)
    model = build_model(cfg.model, len(bundle.classes), cfg.data.image_size, cfg.model_args).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    times = []
    for i, batch in enumerate(loader):
        if not batch.targets:
            continue
        batch = batch.to(device)
        t0 = time.perf_counter()
        with autocast(device, cfg.train.amp):
            loss = sum(model.loss(batch.images, batch.targets).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t0)
        if i == 4:
            break
    per_step = statistics.median(times[1:] or times) * 1.15  # data loading and evaluation on top
    epochs = max(1, math.floor(minutes * 60 / (per_step * len(loader))))
    log(f"  {cfg.model}: {per_step:.2f} s/step, {len(loader)} steps/epoch -> {epochs} epochs in {minutes:g} min")
    return epochs


def train_detector(model: str, data: BenchData, out: str | Path, minutes: float,
                   settings: Mapping[str, Any] | None = None, threads: int = 0, device: str = "auto",
                   progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Train ``model`` on ``data.train`` for ``minutes`` (validating on the test split); the run folder.

    ``settings`` default to :func:`settings_for`; an ``epochs`` there fixes the epoch count instead of
    estimating it from the budget, and ``minutes <= 0`` removes the time limit.
    """
    import zir

    settings = dict(settings_for(model, data.kind) if settings is None else settings)
    settings.update(model=model, data=str(data.train), val_path=str(data.test), project=str(Path(out) / "runs"),
                    name=model, exist_ok=True, threads=threads, device=device)
    epochs = int(settings.pop("epochs", 0) or estimate_epochs(settings, minutes, log))
    # validation only after the last epoch: the score comes from score_run, and sliding windows take seconds
    # per image
    settings.setdefault("eval_every", epochs)
    result = zir.train(epochs=epochs, time_limit=max(minutes, 0.0), progress=progress, **settings)
    return result.run_dir


def train_and_score(model: str, data: BenchData, out: str | Path, minutes: float,
                    overrides: Mapping[str, Any] | None = None, threads: int = 0, device: str = "auto",
                    progress: bool = True, log: Callable[[str], None] = print) -> BenchRow:
    """:func:`train_detector` then :func:`score_run` with its last weights."""
    from zir.engine.trainer import select_device

    settings = settings_for(model, data.kind, overrides)
    run = train_detector(model, data, out, minutes, settings, threads, device, progress, log)
    row = score_run(model, run, data, run, device=str(select_device(device)), progress=progress)
    row.settings = {k: v for k, v in settings.items() if k not in _OWN_KEYS}
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
                    overrides: Mapping[str, Mapping[str, Any]] | None = None, threads: int = 0,
                    device: str = "auto", test: str | Path = "", test_split: float = 0.2, synth_n: int = 800,
                    command: str = "", progress: bool = True, log: Callable[[str], None] | None = None) -> BenchResult:
    """Train (or take trained runs of) detectors on one data set and score them all on its test split.

    Args:
        data: a detection dataset (any format zir reads), ``synth``, or a prepared :class:`BenchData`.
        out: output folder (see the module docstring).
        models: registry detectors to train; ``None``: every detector in the registry.
        minutes: training budget per model.
        runs: ``{name: run folder or weights}`` scored as they are; a name among ``models`` is not trained.
        overrides: per model, settings over :func:`settings_for` (``{"yolo_v1": {"lr": 1e-3}}``).
        threads: torch threads for training and inference (0: leave torch's setting).
        device: ``auto`` (CUDA if present), ``cpu`` or ``cuda``: training and inference.
        test, test_split: the test split of a dataset path (see :func:`prepare_data`).
        synth_n: ``synth`` only: training scenes; the test scenes are a quarter as many.
        command: the command line shown in the table's header.

    Settings and runs are checked before anything trains. A model whose training or scoring fails later
    is reported (``failed``) and the others go on; the outputs are rewritten after each model.

    Raises:
        ConfigError: an unknown model, a model that is not a detector, a bad setting.
        DataError: ``data`` is not a detection set, or a run was trained on other classes.
        CheckpointError: a run folder without weights, or not a detection run.
    """
    from zir.engine.trainer import select_device

    log = log or (lambda line: tqdm.write(line) if progress else print(line, flush=True))
    runs = {name: Path(path) for name, path in (runs or {}).items()}
    models = check_models(detectors() if models is None else models)
    overrides = dict(overrides or {})
    unused = set(overrides) - set(models)
    if unused:
        raise ConfigError(f"settings given for {sorted(unused)}, which this bench does not train "
                          f"(it trains: {', '.join(m for m in models if m not in runs) or 'none'})")
    for name, path in runs.items():
        if not path.exists():
            raise CheckpointError(f"{path}: no such run folder or weights file (--runs {name}={path})")
    to_train = [m for m in models if m not in runs]
    if not to_train and not runs:
        raise ConfigError("nothing to benchmark: give --models or --runs")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        bench_data = data if isinstance(data, BenchData) else prepare_data(data, out / "data", test, test_split,
                                                                                 synth_n=synth_n)
        _check_before_training(to_train, runs, bench_data, overrides)
        info = bench_data.summary()
        log(f"bench detectors on {bench_data.name}: {info['n_train']} training and {info['n_test']} test images; "
            f"{len(to_train)} to train ({minutes:g} min each), {len(runs)} trained runs")
        baseline = mean_box_baseline(bench_data, out)
        rows: list[BenchRow] = []
        failed: dict[str, str] = {}
        scoring_device = str(select_device(device))

        def write() -> tuple[Path, Path, Path]:
            return write_outputs(rows, bench_data, out, command=command, threads=torch.get_num_threads(),
                                 device=scoring_device, minutes=minutes, baseline=baseline, failed=failed)

        jobs = [(name, None) for name in to_train] + list(runs.items())
        for k, (name, run) in enumerate(jobs, 1):
            log(f"[{k}/{len(jobs)}] {name}: " + (f"training for {minutes:g} min" if run is None else f"scoring {run}"))
            t0 = time.time()
            try:
                if run is None:
                    row = train_and_score(name, bench_data, out, minutes, overrides.get(name), threads, device,
                                          progress, log)
                else:
                    row = score_run(name, run, bench_data, out / "scores" / name, scoring_device, progress)
                    row.source = "run"
            except Exception as e:  # settings were checked above; one broken model must not cost the others
                failed[name] = f"{type(e).__name__}: {e}"
                log(f"[{k}/{len(jobs)}] {name}: FAILED ({failed[name]})")
                write()
                continue
            rows.append(row)
            log(f"[{k}/{len(jobs)}] {name}: mAP50 {row.mAP50:.3f}, mAP50-95 {row.mAP50_95:.3f}, "
                f"{row.ms:.1f} ms/image, {row.epochs} epochs ({(time.time() - t0) / 60:.1f} min here)")
            write()  # after every model, so an interrupted bench keeps what it measured
        paths = write()
    finally:
        torch.set_num_threads(saved_threads)
    return BenchResult(rows, baseline, failed, *paths)


def _check_before_training(to_train: Sequence[str], runs: Mapping[str, Path], data: BenchData,
                           overrides: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise now, not after hours of training: every model's settings and every run's task and classes."""
    from zir.config import load_config
    from zir.engine.checkpoint import read_meta

    for model in to_train:
        load_config(overrides={**settings_for(model, data.kind, overrides.get(model)), "model": model})
    for name, run in runs.items():
        weights = weights_of(run)
        meta = read_meta(weights)
        if meta.get("task") != "detect":
            raise CheckpointError(f"{weights}: a {meta.get('task', 'non-zir')} run, not a detector (--runs {name})")
        if meta.get("classes") != data.classes:
            raise DataError(weights, f"trained on the classes {meta.get('classes', [])[:10]}, but the test data has "
                                     f"{data.classes[:10]}; give a run trained on this data set (--runs {name})")


# --------------------------------------------------------------------------------------------------
# Outputs


def machine() -> str:
    """The CPU model and core count (and the GPU's name where there is one), for table headers."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} CPUs"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def write_outputs(rows: Sequence[BenchRow], data: BenchData, out: str | Path, command: str = "",
                  threads: int = 0, device: str = "cpu", minutes: float = math.nan,
                  baseline: Mapping[str, float] | None = None,
                  failed: Mapping[str, str] | None = None) -> tuple[Path, Path, Path]:
    """Write ``table.md``, ``results.json`` and ``chart.png`` into ``out``; their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "machine": machine(),
              "torch": torch.__version__, "threads": threads or torch.get_num_threads(), "device": device,
              "command": command, "minutes": minutes}
    results = {**header, "data": data.summary(), "baseline": dict(baseline or {}),
               "rows": [dataclasses.asdict(r) for r in rows], "failed": dict(failed or {})}
    (out / "results.json").write_text(json.dumps(_no_nan(results), indent=1, allow_nan=False))
    (out / "table.md").write_text(format_table(rows, data, header, baseline, failed))
    fig = build_chart(rows, f"{data.name}: accuracy against speed (threads={header['threads']}, {device})", baseline)
    fig.savefig(out / "chart.png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out / "table.md", out / "results.json", out / "chart.png"


def _no_nan(obj: Any) -> Any:
    """NaN -> None, so the JSON is standard (``null``)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def _fmt(v: float, digits: int) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def format_table(rows: Sequence[BenchRow], data: BenchData, header: Mapping[str, Any],
                 baseline: Mapping[str, float] | None = None, failed: Mapping[str, str] | None = None) -> str:
    """The markdown table, with date, machine and command in its header."""
    info = data.summary()
    lines = [f"### Detectors on {data.name}: accuracy against speed", "",
             f"{header['date']}, {header['machine']}, torch {header['torch']}, {header['threads']} threads, "
             f"device {header['device']}.", ""]
    if header.get("command"):
        lines += [f"`{header['command']}`", ""]
    budget = "" if math.isnan(header["minutes"]) else f"; training budget {header['minutes']:g} min per model"
    lines += [f"{info['n_train']} training images, {info['n_test']} test images ({len(data.classes)} classes)"
              f"{budget}. Each test image is scored alone at its own size (batch 1; median ms per image, first "
              "image left out) by zir's COCO evaluator; trained models with their last weights.", "",
              "| detector | stages | mAP50 | mAP50-95 | ms / image | train min | epochs | settings |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    if baseline:
        lines.append(f"| {BASELINE_NAME} | - | {_fmt(baseline['mAP50'], 3)} | {_fmt(baseline['mAP50-95'], 3)} "
                     "| - | 0 | 0 | |")
    for r in rows:
        label = r.name if r.source != "run" else f"{r.name} (run {r.run})"
        settings = " ".join(f"{k}={v}" for k, v in r.settings.items())
        lines.append(f"| {label} | {STAGE_NAMES.get(r.stages, '?')} | {_fmt(r.mAP50, 3)} | {_fmt(r.mAP50_95, 3)} "
                     f"| {_fmt(r.ms, 1)} | {_fmt(r.train_min, 1)} | {r.epochs} | {settings} |")
    for name, error in (failed or {}).items():
        lines.append(f"| {name} | | failed: {error.splitlines()[0][:200]} | | | | | |")
    return "\n".join(lines) + "\n"


def build_chart(rows: Sequence[BenchRow], title: str = "", baseline: Mapping[str, float] | None = None) -> Any:
    """mAP50 (left) and mAP50-95 (right) against ms per image (log scale): one labelled point per detector,
    circles for one-stage and squares for two-stage detectors, hollow for a peer (not zir's).

    Returns:
        the matplotlib Figure (the caller saves and closes it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    styles = {1: ("o", "tab:blue"), 2: ("s", "tab:red"), 0: ("D", "tab:gray")}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True)
    placed = [r for r in rows if not math.isnan(r.ms) and r.ms > 0]
    for ax, key, attr in zip(axes, ("mAP50", "mAP50-95"), ("mAP50", "mAP50_95")):
        for stages, (marker, colour) in styles.items():
            for peer in (False, True):
                group = [r for r in placed if r.stages == stages and (r.source == "peer") == peer]
                if not group:
                    continue
                label = STAGE_NAMES.get(stages, "stages unknown") + (" (peer)" if peer else "")
                ax.scatter([r.ms for r in group], [getattr(r, attr) for r in group], marker=marker, s=70,
                           label=label, edgecolors=colour, facecolors="none" if peer else colour, linewidths=1.5)
                for r in group:
                    ax.annotate(r.name, (r.ms, getattr(r, attr)), textcoords="offset points", xytext=(6, 5),
                                fontsize=8)
        if baseline and not math.isnan(baseline.get(key, math.nan)):
            ax.axhline(baseline[key], color="gray", linestyle="--", linewidth=1, label=BASELINE_NAME)
        values = [getattr(r, attr) for r in placed if not math.isnan(getattr(r, attr))]
        values.append((baseline or {}).get(key, 0.0))
        top = min(1.0, max(values + [0.05]) * 1.2 + 0.02)
        ax.set_ylim(-0.03 * top, top)  # a little below 0, so points at 0 show whole
        ax.set_xscale("log")
        if placed:
            ms = [r.ms for r in placed]
            ax.set_xlim(min(ms) / 1.5, max(ms) * 2.0)  # room for the labels right of the points
        # Plain numbers (5, 20, 100 ms), not 5x10^0; minor ticks labelled at 2 and 5 only.
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(
            lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
        ax.set_xlabel("inference ms per image (batch 1, log scale)")
        ax.set_ylabel(key)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
