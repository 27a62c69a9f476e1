"""Panoptic quality: a hand-computed case, void / crowd handling, and agreement with torchmetrics."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.detection import PanopticQuality

from zir.metrics.panoptic import PanopticMetrics


def _hand_case() -> tuple[torch.Tensor, dict, torch.Tensor, dict]:
    # 10x10 image, class 0 "sky" (stuff), class 1 "car" (thing).
    gt = torch.zeros(10, 10, dtype=torch.int64)
    gt[0:5] = 1            # sky, 50 px
    gt[5:, :5] = 2         # car A, 25 px
    gt[5:, 5:] = 3         # car B, 25 px
    pred = torch.zeros(10, 10, dtype=torch.int64)  # 0 = unlabelled
    pred[0:5] = 1
    pred[5, :5] = 1        # sky, 55 px: IoU 50 / 55 = 10/11 -> TP
    pred[6:, :5] = 2       # car, 20 px inside car A: IoU 20 / 25 = 0.8 -> TP
    pred[8:, 5:] = 3       # car, 10 px inside car B: IoU 10 / 25 = 0.4 -> FP, and car B is an FN
    # (car B is 60% unlabelled in the prediction: torchmetrics would drop that FN, the paper counts it)
    return pred, {1: 0, 2: 1, 3: 1}, gt, {1: 0, 2: 1, 3: 1}


def test_hand_computed_case():
    m = PanopticMetrics(["sky", "car"], thing_classes=[False, True])
    m.update_maps(*_hand_case())
    out = m.compute()
    # sky: TP = 1 (IoU 10/11) -> SQ = 10/11, RQ = 1, PQ = 10/11.
    # car: TP = 1 (IoU 0.8), FP = 1, FN = 1 -> SQ = 0.8, RQ = 1 / (1 + 0.5 + 0.5) = 0.5, PQ = 0.4.
    assert out["PQ/sky"] == pytest.approx(10 / 11)
    assert out["PQ/car"] == pytest.approx(0.4)
    assert out["PQ"] == pytest.approx((10 / 11 + 0.4) / 2)
    assert out["SQ"] == pytest.approx((10 / 11 + 0.8) / 2)
    assert out["RQ"] == pytest.approx((1 + 0.5) / 2)
    assert out["PQ_th"] == pytest.approx(0.4)
    assert out["PQ_st"] == pytest.approx(10 / 11)


def test_update_from_sample_masks_matches_id_maps():
    pred, pred_segments, gt, gt_segments = _hand_case()
    masks = torch.stack([gt == k for k in (1, 2, 3)]).to(torch.uint8)  # (3, H, W)
    sample = {"masks": masks, "labels": torch.tensor([0, 1, 1]), "iscrowd": torch.zeros(3, dtype=torch.bool)}
    a = PanopticMetrics(["sky", "car"], [False, True])
    a.update([{"ids": pred, "segments": pred_segments}], [sample])
    b = PanopticMetrics(["sky", "car"], [False, True])
    b.update_maps(pred, pred_segments, gt, gt_segments)
    assert a.compute() == pytest.approx(b.compute())


def test_void_is_removed_from_iou_and_excuses_false_positives():
    gt = torch.full((10, 10), 255, dtype=torch.int64)   # void everywhere ...
    gt[:, :5] = 1                                       # ... except one car, 50 px
    pred = torch.zeros(10, 10, dtype=torch.int64)
    pred[:, :6] = 1        # 60 px: 50 on the car, 10 on void -> IoU 50 / (60 - 10) = 1, not 50/60
    pred[:, 7:] = 2        # 30 px, all void -> not an FP
    m = PanopticMetrics(["car"], [True])
    m.update_maps(pred, {1: 0, 2: 0}, gt, {1: 0})
    out = m.compute()
    assert out["PQ"] == pytest.approx(1.0) and out["RQ"] == 1.0
    # The same stray segment over labelled background (class "road") is an FP of "car".
    gt[:, 5:] = 2
    m = PanopticMetrics(["car", "road"], [True, False])
    m.update_maps(pred, {1: 0, 2: 0}, gt, {1: 0, 2: 1})
    out = m.compute()
    assert out["PQ/car"] == pytest.approx(50 / 60 * 1 / (1 + 0.5))   # IoU 50/60, TP 1, FP 1
    assert out["PQ/road"] == 0.0                                      # road: one FN


def test_crowd_is_never_fn_and_excuses_false_positives():
    gt = torch.zeros(8, 8, dtype=torch.int64)
    gt[:, :4] = 1          # a car
    gt[:, 4:] = 2          # a crowd of cars
    pred = torch.zeros(8, 8, dtype=torch.int64)
    pred[:, :4] = 1
    pred[:, 4:] = 2        # a car over the crowd: neither TP nor FP
    m = PanopticMetrics(["car"], [True])
    m.update_maps(pred, {1: 0, 2: 0}, gt, {1: 0, 2: 0}, gt_crowd={2})
    assert m.compute()["PQ"] == 1.0
    # A class absent from both sides is NaN and left out of the means.
    m = PanopticMetrics(["car", "bus"], [True, True])
    m.update_maps(pred, {1: 0}, gt, {1: 0, 2: 0}, gt_crowd={2})
    out = m.compute()
    assert math.isnan(out["PQ/bus"]) and out["PQ"] == 1.0


def _random_image(g: torch.Generator, size: int = 24, block: int = 6):
    """Blocks of segments (classes 0-1 stuff, 2-3 things, some void) and a noisy, fully labelled prediction.

    Returns (category, instance) maps ``(H, W)`` for the ground truth (255 = void) and the prediction.
    """
    n = size // block
    cat_b = torch.randint(0, 5, (n, n), generator=g)                   # 4 = void block
    inst_b = torch.arange(1, n * n + 1).view(n, n) * (cat_b >= 2)       # one instance per thing block
    up = lambda t: t.repeat_interleave(block, 0).repeat_interleave(block, 1)  # noqa: E731
    gt_cat, gt_inst = up(torch.where(cat_b == 4, 255, cat_b)), up(inst_b)
    # Prediction: void blocks get a random class, the layout is shifted, then 8% pixel noise.
    pcat_b = torch.where(cat_b == 4, torch.randint(0, 4, (n, n), generator=g), cat_b)
    pinst_b = torch.arange(1, n * n + 1).view(n, n) * (pcat_b >= 2)
    shift = [int(s) for s in torch.randint(-2, 3, (2,), generator=g)]
    p_cat = up(pcat_b).roll(shift, (0, 1))
    p_inst = up(pinst_b).roll(shift, (0, 1))
    noise = torch.rand(size, size, generator=g) < 0.08
    noise_cat = torch.randint(0, 4, (size, size), generator=g)
    p_cat = torch.where(noise, noise_cat, p_cat)
    p_inst = torch.where(noise, torch.where(noise_cat >= 2, 100, 0), p_inst)
    return gt_cat, gt_inst, p_cat, p_inst


def _to_ids(cat: torch.Tensor, inst: torch.Tensor) -> tuple[torch.Tensor, dict[int, int]]:
    ids = cat * 1000 + inst    # stuff has instance 0: one segment per stuff class, as in COCO panoptic
    segments = {int(i): int(i) // 1000 for i in ids.unique() if int(i) // 1000 < 4}
    return ids, segments


def test_agrees_with_torchmetrics_on_fully_labelled_predictions():
    # torchmetrics also removes the prediction's unlabelled pixels from the ground-truth area and skips
    # FNs that are mostly unlabelled in the prediction; panopticapi and the paper do not. With fully
    # labelled predictions (as here) both definitions coincide, ground-truth void included.
    g = torch.Generator().manual_seed(0)
    ours = PanopticMetrics(["s0", "s1", "t2", "t3"], [False, False, True, True])
    preds, targets = [], []
    for _ in range(12):
        gt_cat, gt_inst, p_cat, p_inst = _random_image(g)
        ours.update_maps(*_to_ids(p_cat, p_inst), *_to_ids(gt_cat, gt_inst))
        preds.append(torch.stack([p_cat, p_inst], -1))
        targets.append(torch.stack([gt_cat, gt_inst], -1))
    tm = PanopticQuality(things={2, 3}, stuffs={0, 1}, return_sq_and_rq=True)
    tm.update(torch.stack(preds), torch.stack(targets))
    pq, sq, rq = tm.compute().tolist()
    out = ours.compute()
    assert 0.2 < out["PQ"] < 0.95    # a case with TPs, FPs and FNs, not a trivial one
    assert out["PQ"] == pytest.approx(pq, abs=1e-6)
    assert out["SQ"] == pytest.approx(sq, abs=1e-6)
    assert out["RQ"] == pytest.approx(rq, abs=1e-6)
