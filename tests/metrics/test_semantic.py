"""Semantic segmentation metrics against a hand-computed case and torchmetrics."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex
from torchvision import tv_tensors

from zir.data.contract import SemanticPrediction
from zir.errors import DataError
from zir.metrics.semantic import SemanticMetrics


def test_hand_computed_case():
    # The ignored pixel (255) is predicted as 0 and must not count; class "d" appears nowhere.
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 1, 0]])
    m = SemanticMetrics(4, classes=["a", "b", "c", "d"])
    m.update([SemanticPrediction(pred)], [{"semantic": tv_tensors.Mask(target), "path": "x.png"}])
    assert m.confusion_matrix().tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    out = m.compute()
    assert out["pixel_accuracy"] == pytest.approx(3 / 5)
    # IoU = TP / (TP + FP + FN): a 1/2, b 2/4, c 0/1, d 0/0 (NaN, left out of the mean).
    assert (out["iou/a"], out["iou/b"], out["iou/c"]) == (pytest.approx(0.5), pytest.approx(0.5), 0.0)
    assert math.isnan(out["iou/d"]) and math.isnan(out["dice/d"])
    assert out["miou"] == pytest.approx(1 / 3)
    # Dice = 2 TP / (2 TP + FP + FN): a 2/3, b 4/6, c 0.
    assert (out["dice/a"], out["dice/b"], out["dice/c"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 0.0)
    assert out["mdice"] == pytest.approx(4 / 9)


def test_class_only_predicted_counts_as_zero():
    m = SemanticMetrics(2)
    m.update_maps(torch.tensor([[0, 1], [0, 0]]), torch.zeros(2, 2, dtype=torch.int64))
    out = m.compute()
    assert out["iou/1"] == 0.0  # predicted where it is not: a real mistake
    assert out["miou"] == pytest.approx((3 / 4 + 0) / 2)


def test_against_torchmetrics():
    C = 5
    g = torch.Generator().manual_seed(0)
    m = SemanticMetrics(C)
    jaccard = MulticlassJaccardIndex(C, ignore_index=255, average="macro")
    jaccard_each = MulticlassJaccardIndex(C, ignore_index=255, average="none")
    dice_each = MulticlassF1Score(C, ignore_index=255, average="none", multidim_average="global")
    accuracy = MulticlassAccuracy(C, ignore_index=255, average="micro", multidim_average="global")
    for _ in range(3):
        target = torch.randint(0, C - 1, (4, 24, 32), generator=g)  # class 4 is never in the targets
        pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target,
                           torch.randint(0, C - 1, target.shape, generator=g))
        pred[:, :2, :2] = 4  # ... but it is predicted in a few pixels
        target[torch.rand(target.shape, generator=g) < 0.1] = 255
        m.update_maps(pred, target)
        for metric in (jaccard, jaccard_each, dice_each, accuracy):
            metric.update(pred, target)
    out = m.compute()
    assert out["miou"] == pytest.approx(float(jaccard.compute()), abs=1e-6)
    iou = [out[f"iou/{c}"] for c in range(C)]
    dice = [out[f"dice/{c}"] for c in range(C)]
    assert iou == pytest.approx(jaccard_each.compute().tolist(), abs=1e-6)
    assert dice == pytest.approx(dice_each.compute().tolist(), abs=1e-6)
    assert out["pixel_accuracy"] == pytest.approx(float(accuracy.compute()), abs=1e-6)
    assert iou[4] == 0.0 and 0.3 < out["miou"] < 0.9


def test_bad_input():
    m = SemanticMetrics(3)
    with pytest.raises(DataError, match="mask_7.png.*class id 7"):
        m.update([torch.zeros(2, 2, dtype=torch.int64)],
                 [{"semantic": torch.tensor([[0, 7], [1, 255]]), "path": "mask_7.png"}])
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 2\)"):
        m.update_maps(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64))
    out = m.compute()  # nothing was counted
    assert math.isnan(out["pixel_accuracy"]) and math.isnan(out["miou"])
