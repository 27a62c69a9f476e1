"""Evaluation: run ``predict`` over a loader and feed a task's metric (metrics know nothing of models)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from zir.data.contract import Prediction
from zir.errors import ConfigError
from zir.models.base import ZirModel
from zir.models.detect.transform import unpad

# The metric that picks the best checkpoint and drives early stopping, per task (higher is better).
MONITOR = {"classify": "accuracy", "detect": "bbox/AP", "instance": "segm/AP", "segment": "miou",
           "panoptic": "PQ"}


def make_metric(task: str, classes: list[str], thing_classes: list[bool] | None = None) -> Any:
    """The metric object of a task: ``update(predictions, targets)``, then ``compute()``.

    ``thing_classes`` (panoptic only): True for thing classes, False for stuff.
    """
    if task == "classify":
        from zir.metrics.classification import ClassificationMetrics

        return ClassificationMetrics(len(classes), classes)
    if task == "segment":
        from zir.metrics.semantic import SemanticMetrics

        return SemanticMetrics(len(classes), classes=classes)
    if task in ("detect", "instance"):
        from zir.metrics.coco import CocoEvaluator

        return CocoEvaluator(classes, iou_types=("bbox", "segm") if task == "instance" else ("bbox",))
    if task == "panoptic":
        from zir.metrics.panoptic import PanopticMetrics

        if thing_classes is None:
            raise ConfigError("panoptic evaluation needs to know which classes are things (thing_classes)")
        return PanopticMetrics(classes, thing_classes)
    raise ConfigError(f"no evaluation for task {task!r} yet")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the CPU (AMX) or CUDA, fp16 on CUDA, or nothing."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs CUDA; on the CPU use amp=bf16")
    if amp not in ("bf16", "fp16"):
        raise ConfigError(f"train.amp must be none, bf16 or fp16, got {amp!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: ZirModel, loader: DataLoader, task: str, classes: list[str], device: torch.device,
             amp: str = "none", progress: bool = True) -> tuple[dict[str, float], Any]:
    """Predict every batch of ``loader`` and return ``(metrics, metric_object)``."""
    was_training = model.training
    model.eval()
    metric = make_metric(task, classes, model.thing_classes)  # panoptic: which classes are things
    result = evaluate_predict(model.predict, loader, metric, task, device, amp, progress)
    model.train(was_training)
    return result


@torch.no_grad()
def evaluate_predict(predict: Callable[[list[Tensor]], list[Prediction]], loader: DataLoader, metric: Any,
                     task: str, device: torch.device, amp: str = "none",
                     progress: bool = True) -> tuple[dict[str, float], Any]:
    """The evaluation loop: ``predict`` on every batch of ``loader`` feeds ``metric``; ``(metrics, metric)``.

    ``predict`` keeps ``ZirModel.predict``'s contract (images float ``(3, H, W)`` in [0, 1], each at its
    own size -> one prediction per image, in its pixels): a model's ``predict``, or anything that stands
    in for one (``zir bench detectors`` times it, and scores a no-learning baseline and peers with it).
    """
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        if not batch.targets:
            continue
        batch = batch.to(device)
        images = unpad(batch.images, [t.size for t in batch.targets]) if task != "classify" else batch.images
        with autocast(device, amp):
            predictions = predict(images)
        targets = [t.label for t in batch.targets] if task == "classify" else [t.to("cpu") for t in batch.targets]
        metric.update([_to_cpu(p) for p in predictions], targets)
    return metric.compute(), metric


def _to_cpu(obj: Any) -> Any:
    """A prediction (a dataclass of tensors), dict or tensor with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _to_cpu(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                           if f.init})
    return obj
