"""``zir analyze`` on panoptic runs: PQ / SQ / RQ by thing and stuff (against torchmetrics) and by size."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.detection import PanopticQuality

from zir.analysis.analyze import panoptic_breakdown
from zir.data.contract import PanopticPrediction, Target

CLASSES, THINGS = ["sky", "ground", "car"], [False, False, True]


def scene():
    """100 x 100: sky (top half), ground (bottom half) with a small car (5 x 5, relative size 0.05) and a
    large car (40 x 40, 0.4). The prediction labels every pixel: sky exact, the large car exact, the
    small car missed (it is ground in the prediction)."""
    gt_ids = torch.zeros(100, 100, dtype=torch.int64)
    gt_ids[:50] = 1
    gt_ids[50:] = 2
    gt_ids[60:65, 10:15] = 3   # small car
    gt_ids[55:95, 50:90] = 4   # large car
    labels = torch.tensor([0, 1, 2, 2])
    masks = torch.stack([gt_ids == k for k in range(1, 5)])
    target = Target(size=(100, 100), boxes=torch.zeros(4, 4), labels=labels, image_id=1, masks=masks)
    pred_ids = gt_ids.clone()
    pred_ids[gt_ids == 3] = 2  # the small car predicted as ground
    pred = PanopticPrediction(pred_ids, [{"id": 1, "category_id": 0, "isthing": False, "score": 1.0, "area": 0},
                                         {"id": 2, "category_id": 1, "isthing": False, "score": 1.0, "area": 0},
                                         {"id": 4, "category_id": 2, "isthing": True, "score": 0.9, "area": 0}])
    return pred, target, gt_ids, pred_ids


def test_things_stuff_and_size_bins_by_hand_and_against_torchmetrics():
    pred, target, gt_ids, pred_ids = scene()
    out = panoptic_breakdown([pred], [target], CLASSES, THINGS)
    # car: TP (IoU 1) + FN (small car) -> SQ 1, RQ 1 / 1.5, PQ 2/3; stuff: sky IoU 1, ground IoU 3375/3400
    assert out["things"] == pytest.approx({"PQ": 2 / 3, "SQ": 1.0, "RQ": 2 / 3})
    ground = (50 * 100 - 25 - 1600) / (50 * 100 - 1600)
    assert out["stuff"]["PQ"] == pytest.approx((1 + ground) / 2)

    # torchmetrics' per-class PQ / SQ / RQ (category, instance) maps, averaged the same way
    def maps(ids):
        cat = torch.tensor([0, 0, 1, 2, 2])[ids]
        return torch.stack([cat, torch.where(cat == 2, ids, 0)], -1)[None]

    tm = PanopticQuality(things={2}, stuffs={0, 1}, return_sq_and_rq=True, return_per_class=True)
    tm.update(maps(pred_ids), maps(gt_ids))
    per_class = tm.compute().reshape(-1, 3)  # rows: the things, then the stuffs; columns PQ, SQ, RQ
    for name, rows in (("things", per_class[:1]), ("stuff", per_class[1:])):
        for col, key in enumerate(("PQ", "SQ", "RQ")):
            assert out[name][key] == pytest.approx(float(rows[:, col].mean()), abs=1e-6), (name, key)
    # by size: the small car alone is missed (PQ 0); the large car alone is found (PQ 1); the large car's
    # prediction is no false positive in the small bin (it lies on an ignored segment)
    bins = {b["name"]: b for b in out["by_size"]}
    assert bins["[0.05, 0.1)"]["objects"] == 1 and bins["[0.05, 0.1)"]["metrics"]["PQ_th"] == 0.0
    assert bins[">= 0.4"]["objects"] == 1 and bins[">= 0.4"]["metrics"] == {"PQ_th": 1.0, "SQ_th": 1.0, "RQ_th": 1.0}
    assert bins["[0, 0.05)"] == {"name": "[0, 0.05)", "objects": 0, "metrics": {}}  # empty: "n/a"
    assert not any(math.isnan(v) for b in out["by_size"] for v in b["metrics"].values())
