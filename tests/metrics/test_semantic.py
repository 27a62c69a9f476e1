"""Semantic segmentation metrics against a hand-computed case and torchmetrics."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import (
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)
from torchvision import tv_tensors

from zir.data.contract import SemanticPrediction
from zir.errors import DataError
from zir.metrics.semantic import SemanticMetrics, ThresholdSweep


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


# --------------------------------------------------------------------------------------------------
# ThresholdSweep: the ISBI 2012 challenge's pixel error


def test_threshold_sweep_by_hand():
    # 6 pixels, 3 positive. At t = 0.5: predicted positive {0.9, 0.6, 0.7} -> TP 2 (0.9, 0.6), FP 1 (0.7),
    # FN 1 (0.2): F = 2*2 / (2*2 + 1 + 1) = 2/3, 2 wrong pixels of 6.
    # At t = 0.1: predicted positive all but 0.05 and 0.0 -> TP 3, FP 1 (0.7): F = 6/7, 1 wrong pixel.
    scores = torch.tensor([[0.9, 0.6, 0.2], [0.7, 0.05, 0.0]])
    target = torch.tensor([[1, 1, 1], [0, 0, 0]])
    sweep = ThresholdSweep([0.1, 0.5])
    sweep.update(scores, target)
    out = sweep.compute()
    assert out["fscore@0.5"] == pytest.approx(2 / 3) and out["error@0.5"] == pytest.approx(2 / 6)
    assert out["fscore@0.1"] == pytest.approx(6 / 7) and out["error@0.1"] == pytest.approx(1 / 6)
    assert out["threshold"] == 0.1 and out["pixel_error"] == pytest.approx(1 / 7)
    assert out["error_at_best"] == pytest.approx(1 / 6)


def test_threshold_sweep_matches_torchmetrics_over_a_stack():
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(3, 40, 50, generator=g) > 0.3).long()
    scores = (0.6 * target + 0.7 * torch.rand(3, 40, 50, generator=g)).clamp(0, 1)
    target[0, :5] = 255  # ignored rows
    sweep = ThresholdSweep()
    for s, t in zip(scores, target):  # image by image: counts are summed over the stack, as in Fiji
        sweep.update(s, t)
    out = sweep.compute()
    best = 0.0
    for t in [round(0.1 * i, 1) for i in range(11)]:
        f1 = BinaryF1Score(threshold=t, ignore_index=255)(scores, target).item()
        assert out[f"fscore@{t:g}"] == pytest.approx(f1, abs=1e-6)
        best = max(best, f1)
    assert out["pixel_error"] == pytest.approx(1 - best, abs=1e-6)
    # error at 0.5 is 1 - pixel accuracy of the thresholded map
    m = SemanticMetrics(2)
    m.update_maps((scores > 0.5).long(), target)
    assert out["error@0.5"] == pytest.approx(1 - m.compute()["pixel_accuracy"])


def test_threshold_sweep_refuses_non_binary_targets_and_size_mismatch():
    sweep = ThresholdSweep()
    with pytest.raises(ValueError, match="target value 2"):
        sweep.update(torch.rand(4, 4), torch.full((4, 4), 2))
    with pytest.raises(ValueError, match="shape"):
        sweep.update(torch.rand(4, 4), torch.zeros(4, 5, dtype=torch.long))


def test_two_class_metrics_report_the_isbi_pixel_error():
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(30, 30, generator=g) > 0.25).long()
    p1 = (0.5 * target + 0.6 * torch.rand(30, 30, generator=g)).clamp(0, 1)
    scores = torch.stack([1 - p1, p1])
    m = SemanticMetrics(2)
    m.update([SemanticPrediction(semantic=scores.argmax(0), scores=scores)], [target])
    sweep = ThresholdSweep()
    sweep.update(p1, target)
    out, expected = m.compute(), sweep.compute()
    assert out["isbi_pixel_error"] == pytest.approx(expected["pixel_error"]) and 0 < out["isbi_pixel_error"] < 0.5
    assert out["isbi_threshold"] == expected["threshold"]
    # no probabilities, or more than two classes: nothing to sweep
    m = SemanticMetrics(2)
    m.update([scores.argmax(0)], [target])
    assert "isbi_pixel_error" not in m.compute()
    m = SemanticMetrics(3)
    m.update([SemanticPrediction(semantic=scores.argmax(0), scores=torch.cat([scores, scores[:1]]) / 2)], [target])
    assert "isbi_pixel_error" not in m.compute()
