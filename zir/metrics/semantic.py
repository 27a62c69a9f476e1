"""Semantic segmentation metrics from one confusion matrix: pixel accuracy, (mean) IoU and Dice.

All numbers come from a single ``(C, C)`` matrix of pixel counts (rows = true class, columns = predicted
class) accumulated with ``torch.bincount``, so memory does not grow with the data set and the metrics of
the whole set (not a mean of per-image metrics) are reported.

Definitions, per class ``c`` with ``TP``, ``FP``, ``FN`` read off the matrix:

* ``IoU_c = TP / (TP + FP + FN)`` (Jaccard index), ``Dice_c = 2 TP / (2 TP + FP + FN)`` (F1 of pixels).
* ``pixel_accuracy = sum_c TP_c / (number of counted pixels)``.
* Pixels whose target is ``ignore_index`` are not counted at all, whatever was predicted there.
* A class that appears neither in the targets nor in the predictions has ``0 / 0``: its IoU and Dice are
  NaN (reported as such under ``iou/<class>``) and it is left out of ``miou`` and ``mdice``. A class that
  is predicted but absent from the targets has IoU 0 and does count: those pixels are real mistakes.
  This is torchmetrics' ``MulticlassJaccardIndex(average="macro")`` convention.

Two classes (background and one foreground, e.g. membrane and cell): predictions that carry
probabilities are also scored as the ISBI 2012 challenge scores them (:class:`ThresholdSweep`):
``isbi_pixel_error`` = 1 - the best F-score of class 1 over thresholds 0.0, 0.1, ..., 1.0 of its
probability, at ``isbi_threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from zir.data.contract import IGNORE_INDEX, SemanticPrediction, Target, as_target
from zir.errors import DataError


class SemanticMetrics:
    """Accumulates a pixel confusion matrix and computes pixel accuracy, mIoU and mean Dice.

    Args:
        num_classes: number of classes ``C`` (background included when it is a class).
        ignore_index: target value of pixels that take no part (255, zir's ``IGNORE_INDEX``).
        classes: class names, used for the per-class keys ``iou/<name>`` and ``dice/<name>``.

    Usage::

        m = SemanticMetrics(3, classes=["background", "road", "car"])
        m.update(predictions, samples)   # list[SemanticPrediction], list of sample dicts with "semantic"
        m.update_maps(pred, target)      # or (B, H, W) / (H, W) class maps directly
        m.compute()                      # {"pixel_accuracy", "miou", "mdice", "iou/road", ...}
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 classes: list[str] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"{len(classes)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self._sweep = ThresholdSweep(ignore_index=self.ignore_index) if self.num_classes == 2 else None

    # ---------------------------------------------------------------------------------------------
    # Accumulation

    def update(self, predictions: Sequence[SemanticPrediction | torch.Tensor],
               targets: Sequence[Target | Mapping[str, Any] | torch.Tensor]) -> None:
        """Add a batch of predicted maps and their targets.

        Args:
            predictions: per image a :class:`SemanticPrediction` or an int ``(H, W)`` class map.
            targets: per image a :class:`~zir.data.contract.Target` (or sample dict) with ``semantic``
                (int ``(H, W)``, 255 = ignore), or that map.

        Raises:
            DataError: a target holds a value that is neither a class nor ``ignore_index`` (the message
                names the sample's ``path`` when the target has one).
            ValueError: a prediction and its target differ in size.
        """
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
        for pred, target in zip(predictions, targets):
            pred_map = pred.semantic if isinstance(pred, SemanticPrediction) else pred
            if isinstance(target, (Target, Mapping)):
                target = as_target(target)
                source, target_map = target.path or "target", target.semantic
            else:
                source, target_map = "target", target
            self._add(torch.as_tensor(pred_map), torch.as_tensor(target_map), source)
            if self._sweep is not None and isinstance(pred, SemanticPrediction) and pred.scores is not None:
                self._sweep.update(pred.scores[1], torch.as_tensor(target_map))

    @torch.no_grad()
    def update_maps(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add class maps directly: the fast path for an evaluation loop.

        Args:
            pred: int ``(B, H, W)`` or ``(H, W)`` predicted class ids (the arg-max of the logits), any device.
            target: int, the same shape, true class ids with ``ignore_index`` for ignored pixels.
        """
        self._add(torch.as_tensor(pred), torch.as_tensor(target), "target")

    def _add(self, pred: torch.Tensor, target: torch.Tensor, source: str) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"{source}: prediction of shape {tuple(pred.shape)} for a target of shape "
                             f"{tuple(target.shape)}: predictions must be at the image's size")
        C = self.num_classes
        pred = pred.detach().reshape(-1).long()
        target = target.detach().reshape(-1).long()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        bad = target[(target < 0) | (target >= C)]
        if len(bad):
            raise DataError(source, f"class id {int(bad[0])} in the semantic map, but there are only {C} "
                                    f"classes (and {self.ignore_index} for ignored pixels): fix the mask "
                                    "or the class list")
        bad = pred[(pred < 0) | (pred >= C)]
        if len(bad):
            raise ValueError(f"predicted class id {int(bad[0])} outside the {C} classes")
        # bincount on the device the maps are on (a GPU when evaluating there), then one small copy.
        counts = torch.bincount(target * C + pred, minlength=C * C).reshape(C, C)
        self._confusion += counts.cpu()

    # ---------------------------------------------------------------------------------------------
    # Results

    def confusion_matrix(self) -> torch.Tensor:
        """int64 ``(C, C)`` pixel counts: rows are the true class, columns the predicted class."""
        return self._confusion.clone()

    def per_class(self) -> dict[str, torch.Tensor]:
        """float64 ``(C,)`` tensors ``iou`` and ``dice`` (NaN for classes absent from both sides)."""
        cm = self._confusion.double()
        tp = cm.diag()
        fp = cm.sum(0) - tp
        fn = cm.sum(1) - tp
        nan = torch.tensor(math.nan, dtype=torch.float64)
        union = tp + fp + fn
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), nan)
        return {"iou": iou, "dice": dice}

    def compute(self) -> dict[str, float]:
        """The summary numbers.

        Returns:
            ``{"pixel_accuracy", "miou", "mdice", "iou/<class>" ..., "dice/<class>" ...}`` in [0, 1];
            NaN where undefined (see the module docstring). Two classes and predictions with
            probabilities add ``isbi_pixel_error`` and ``isbi_threshold``.
        """
        total = int(self._confusion.sum())
        pc = self.per_class()
        out = {
            "pixel_accuracy": float(self._confusion.trace()) / total if total else math.nan,
            "miou": float(pc["iou"].nanmean()),
            "mdice": float(pc["dice"].nanmean()),
        }
        out.update({f"iou/{name}": float(v) for name, v in zip(self.classes, pc["iou"])})
        out.update({f"dice/{name}": float(v) for name, v in zip(self.classes, pc["dice"])})
        if self._sweep is not None and self._sweep.pixels:
            sweep = self._sweep.compute()
            out["isbi_pixel_error"], out["isbi_threshold"] = sweep["pixel_error"], sweep["threshold"]
        return out


class ThresholdSweep:
    """A binary segmentation's probability map scored at many thresholds: the ISBI 2012 pixel error.

    The ISBI 2012 EM segmentation challenge (and so the U-Net paper's 0.0611) defines the pixel error as
    ``1 - max_t F(t)``: the probability map is thresholded at each ``t`` (pixel positive where
    ``score > t``, strictly), the F-score ``2 P R / (P + R)`` of the positive class is computed from
    ``TP``, ``FP``, ``FN`` summed over all images, and the best threshold counts. In the challenge the
    positive class is the cell interior (label > 0), the membranes are negative. This follows Fiji's
    ``trainableSegmentation.metrics.PixelError`` (``getPixelErrorMaximalFScore``, thresholds 0.0 to
    1.0 in steps of 0.1). The fraction of wrongly classified pixels at each threshold (``1 - accuracy``,
    the "squared Euclidean distance" the challenge page names beside it) is reported too.

    Args:
        thresholds: the ``t`` tried (in any order); default ``0.0, 0.1, ..., 1.0``.
        ignore_index: target value of pixels that take no part.

    Usage::

        sweep = ThresholdSweep()
        sweep.update(cell_probability, target)  # float (H, W) or (B, H, W) in [0, 1]; target 1 / 0 / 255
        sweep.compute()  # {"pixel_error", "max_fscore", "threshold", "error_at_best", "fscore@0.5", ...}
    """

    def __init__(self, thresholds: Sequence[float] | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        ts = [round(0.1 * i, 1) for i in range(11)] if thresholds is None else sorted(thresholds)
        if not ts:
            raise ValueError("thresholds must not be empty")
        self.thresholds = torch.tensor(ts, dtype=torch.float64)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._tp = torch.zeros(len(self.thresholds), dtype=torch.int64)
        self._fp = torch.zeros_like(self._tp)
        self._fn = torch.zeros_like(self._tp)
        self.pixels = 0  # counted so far

    @torch.no_grad()
    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        """Add one image (``(H, W)``) or a batch (``(B, H, W)``).

        Args:
            scores: float probability of the positive class.
            target: int or bool, 1 (positive), 0 (negative) or ``ignore_index``.
        """
        scores, target = torch.as_tensor(scores), torch.as_tensor(target)
        if scores.shape != target.shape:
            raise ValueError(f"scores of shape {tuple(scores.shape)} for a target of shape {tuple(target.shape)}")
        target = target.detach().reshape(-1).long()
        keep = target != self.ignore_index
        target = target[keep].cpu()
        bad = target[(target != 0) & (target != 1)]
        if len(bad):
            raise ValueError(f"target value {int(bad[0])}: a binary target holds 0, 1 or {self.ignore_index}")
        # One pass over the pixels: k = the number of thresholds strictly below a pixel's score, so the
        # pixel is predicted positive at thresholds 0..k-1; counts per k, summed from the top, give every
        # threshold's predicted positives (float64 like Fiji's float-against-double comparison).
        s = scores.detach().reshape(-1)[keep].cpu().double()
        k = torch.searchsorted(self.thresholds, s, side="left")
        T = len(self.thresholds)
        per_k_all = torch.bincount(k, minlength=T + 1)
        per_k_pos = torch.bincount(k[target == 1], minlength=T + 1)
        predicted = per_k_all.flip(0).cumsum(0).flip(0)[1:]  # (T,): pixels with k > i
        tp = per_k_pos.flip(0).cumsum(0).flip(0)[1:]
        self._tp += tp
        self._fp += predicted - tp
        self._fn += int(per_k_pos.sum()) - tp
        self.pixels += len(s)

    def compute(self) -> dict[str, float]:
        """``pixel_error`` (``1 - max_fscore``), ``max_fscore``, its ``threshold``, ``error_at_best`` (the
        fraction of wrong pixels there), and ``fscore@t`` / ``error@t`` for every threshold ``t``."""
        tp, fp, fn = self._tp.double(), self._fp.double(), self._fn.double()
        f = torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.zeros_like(tp))
        error = (fp + fn) / max(self.pixels, 1)
        best = int(torch.argmax(f))  # the first of equal scores: the lowest threshold
        out = {"pixel_error": 1 - float(f[best]), "max_fscore": float(f[best]),
               "threshold": float(self.thresholds[best]), "error_at_best": float(error[best])}
        for t, fi, ei in zip(self.thresholds.tolist(), f.tolist(), error.tolist()):
            out[f"fscore@{t:g}"], out[f"error@{t:g}"] = fi, ei
        return out
