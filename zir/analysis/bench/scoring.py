"""Scoring, the same for every detector: each test image alone at its own size (batch 1) through the
engine's evaluation loop and COCO metric (``zir.engine.evaluate``), with a clock around ``predict``.

The only thing the bench adds to ``zir eval`` is the clock, and that the images keep their own size
(``zir eval`` sees them resized to the run's ``image_size``; every zir model resizes for itself and maps
its boxes back to the pixels of the image it was given).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from zir.analysis.bench.data import BenchData
from zir.data.contract import DetectionPrediction
from zir.errors import CheckpointError, DataError

Predict = Callable[[Sequence[Tensor]], list[DetectionPrediction]]
"""``ZirModel.predict``'s contract: float ``(3, H, W)`` images in [0, 1] -> detections in their pixels."""


@dataclass
class BenchRow:
    """One detector's point on the chart and row of the table.

    Attributes:
        name: its label (the registry name, a ``--runs`` name, or a peer's name).
        model: the registry name (``""`` for a peer).
        stages: 1 (one-stage), 2 (two-stage) or 0 (unknown), from the registry entry (``ModelSpec.stages``).
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


class Clock:
    """``predict`` with a clock around each call: :meth:`ms` is the median, the first call left out (it
    warms up: allocations, lazy initialisation). ``sync`` runs before the clock stops
    (``torch.cuda.synchronize`` on a GPU, where calls return before the work is done)."""

    def __init__(self, predict: Predict, sync: Callable[[], None] | None = None) -> None:
        self.predict, self.sync = predict, sync
        self.seconds: list[float] = []

    def __call__(self, images: Sequence[Tensor]) -> list[DetectionPrediction]:
        t0 = time.perf_counter()
        out = self.predict(images)
        if self.sync is not None:
            self.sync()
        self.seconds.append(time.perf_counter() - t0)
        return out

    def ms(self) -> float:
        """Median milliseconds per call after the first; NaN with fewer than two calls."""
        return 1000 * statistics.median(self.seconds[1:]) if len(self.seconds) > 1 else math.nan


def own_size_loader(data: BenchData) -> DataLoader:
    """The test images with their boxes, one per batch, each at its own size (no resize)."""
    from zir.config import DataConfig
    from zir.data.dataset import ZirDataset
    from zir.data.formats import open_dataset
    from zir.engine.data import build_loader

    return build_loader(ZirDataset(open_dataset(data.test)), DataConfig(batch_size=1), train=False, seed=0)


def score(predict: Predict, data: BenchData, out: str | Path, device: str | torch.device = "cpu",
          progress: bool = True, sync: Callable[[], None] | None = None, metrics: bool = False) -> dict[str, float]:
    """Predict each test image alone (batch 1): COCO mAP by the engine's evaluation loop and metric, and
    the median inference time.

    Args:
        predict: a model's ``predict`` (or a stand-in with its contract: see :data:`Predict`); it gets
            the images on ``device``. Loading and moving images is not timed.
        sync: called before the clock stops (``torch.cuda.synchronize`` on a GPU).

    Returns:
        ``{"mAP50", "mAP50-95", "ms"}`` (``metrics``: and the evaluator's twelve ``"bbox/..."`` numbers); the
        COCO results are written to ``out/predictions.json``.
    """
    from zir.engine.evaluate import evaluate_predict, make_metric

    clock = Clock(predict, sync)
    numbers, metric = evaluate_predict(clock, own_size_loader(data), make_metric("detect", data.classes), "detect",
                                       torch.device(device), progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps(metric.results()))
    extra = {k: v for k, v in numbers.items() if k.startswith("bbox/")} if metrics else {}
    return {"mAP50": numbers["bbox/AP50"], "mAP50-95": numbers["bbox/AP"], "ms": clock.ms(), **extra}


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

    def predict(images: Sequence[Tensor]) -> list[DetectionPrediction]:
        out = []
        for image in images:
            H, W = image.shape[-2:]
            box = torch.tensor([[(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H]])
            out.append(DetectionPrediction(boxes=box, scores=torch.ones(1), labels=label))
        return out

    m = score(predict, data, Path(out) / "mean_box", progress=False)
    return {"mAP50": m["mAP50"], "mAP50-95": m["mAP50-95"]}


def score_run(name: str, run: str | Path, data: BenchData, out: str | Path, device: str = "cpu",
              progress: bool = True) -> BenchRow:
    """Score a trained zir detector (run folder or weights file) on ``data``'s test images.

    A run is scored with its *last* weights: the bench's training runs validate on the test split, so
    their "best" weights would be chosen on the test images themselves.
    """
    from zir.engine.predictor import find_weights, load
    from zir.models import get_spec

    weights = find_weights(run, prefer="last")
    predictor = load(weights, device=device)
    if predictor.task != "detect":
        raise CheckpointError(f"{weights}: a {predictor.task} model ({predictor.config.model}); "
                              "zir bench detectors needs a detection run")
    if predictor.classes != data.classes:
        raise DataError(data.test, f"the run {run} knows the classes {predictor.classes[:10]}, the test data "
                                   f"{data.classes[:10]}; give a run trained on this data set")
    sync = torch.cuda.synchronize if predictor.device.type == "cuda" else None
    m = score(predictor.predict, data, out, predictor.device, progress=progress, sync=sync)
    epochs, train_min = _run_log(weights)
    cfg = predictor.config
    return BenchRow(name=name, model=cfg.model, stages=get_spec(cfg.model).stages, mAP50=m["mAP50"],
                    mAP50_95=m["mAP50-95"], ms=m["ms"], train_min=train_min, epochs=epochs, run=str(weights),
                    settings={"image_size": cfg.data.image_size, **cfg.model_args})


def _run_log(weights: Path) -> tuple[int, float]:
    """``(epochs, training minutes)`` from the run's ``metrics.jsonl`` (``(0, nan)`` without one)."""
    log = weights.parent.parent / "metrics.jsonl"
    if not log.is_file():
        return 0, math.nan
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return (len(rows), rows[-1]["time_s"] / 60) if rows else (0, math.nan)
