"""TIDE's error split on constructed predictions with one known error of each type."""

from __future__ import annotations

import pytest
import torch

from zir.analysis.tide import KINDS, find_errors, fix, tide, worst_images
from zir.data.contract import DetectionPrediction, Target
from zir.metrics.coco import CocoEvaluator

CLASSES = ["a", "b"]


def make_target(boxes, labels, image_id, difficult=None):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    d = None if difficult is None else torch.tensor(difficult)
    return Target(size=(200, 200), boxes=b, labels=torch.tensor(labels), image_id=image_id, difficult=d)


def make_pred(rows):
    """rows: (x1, y1, x2, y2, score, label)"""
    t = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    return DetectionPrediction(t[:, :4], t[:, 4], t[:, 5].long())


@pytest.fixture
def scene():
    # objects: 0 found, 1 found but a duplicate too, 2 boxed badly, 3 wrong class, 4 missed; 5 is difficult
    target = make_target([[0, 0, 20, 20], [40, 0, 60, 20], [80, 0, 100, 20], [120, 0, 140, 20], [0, 100, 20, 120],
                          [100, 100, 120, 120]], [0, 0, 0, 0, 1, 0], 1, [False] * 5 + [True])
    pred = make_pred([[0, 0, 20, 20, 0.99, 0],        # true positive
                      [40, 0, 60, 20, 0.95, 0],       # true positive
                      [41, 0, 61, 20, 0.90, 0],       # dupe of object 1
                      [80, 0, 89, 20, 0.85, 0],       # loc: IoU 9/20 = 0.45 with object 2
                      [120, 0, 140, 20, 0.80, 1],     # cls: object 3 is class a
                      [160, 160, 190, 190, 0.97, 0],  # bkg: nothing there, scored above a true positive
                      [0, 0, 30, 10, 0.70, 1],        # both: IoU 0.4 with object 0 (class a), wrong class
                      [100, 100, 120, 120, 0.65, 0]])  # on the difficult object: ignored, no error
    return pred, target


def test_one_error_of_each_type(scene):
    pred, target = scene
    errors = find_errors([pred], [target])
    kinds = {e.kind: e for e in errors}
    assert sorted(e.kind for e in errors) == sorted(KINDS)  # exactly one of each
    assert (kinds["dupe"].det, kinds["dupe"].gt) == (2, 1)
    assert (kinds["loc"].det, kinds["loc"].gt) == (3, 2)
    assert (kinds["cls"].det, kinds["cls"].gt) == (4, 3)
    assert kinds["bkg"].det == 5 and kinds["both"].det == 6
    assert kinds["miss"].gt == 4 and kinds["miss"].det is None
    assert worst_images(errors, "bkg") == [0] and worst_images(errors, "miss", 0) == []


def test_fixes_and_dap_agree_with_the_coco_evaluator(scene):
    pred, target = scene

    def metric():
        return CocoEvaluator(CLASSES)

    ev = metric()
    ev.update([pred], [target])
    out = tide([pred], [target], metric)
    assert out["AP"] == ev.compute()["bbox/AP50"]  # pycocotools' AP50, to the last digit
    errors = find_errors([pred], [target])
    fixed_all, fixed_targets = fix([pred], [target], errors, lambda e: True)
    everything = metric()
    everything.update(fixed_all, fixed_targets)
    assert everything.compute()["bbox/AP50"] == pytest.approx(1.0)  # no error left: perfect
    # the loc fix moves detection 3 onto its object; the cls fix relabels detection 4
    p, _ = fix([pred], [target], errors, lambda e: e.kind in ("loc", "cls"))
    assert p[0].boxes[3].tolist() == [80, 0, 100, 20] and int(p[0].labels[4]) == 0
    # removing the misses removes the object from the ground truth
    _, t = fix([pred], [target], errors, lambda e: e.kind == "miss")
    assert len(t[0].boxes) == len(target.boxes) - 1
    for k in KINDS:
        assert out["dAP"][k] >= 0, k  # each fix only helps here
    assert out["dAP"]["miss"] > 0 and out["dAP"]["bkg"] > 0  # a false positive above a true one costs AP
    assert out["dAP"]["dupe"] == 0  # one below every true positive costs nothing (101-point AP)


def test_fix_of_an_object_already_found_removes_the_detection():
    target = make_target([[0, 0, 20, 20]], [0], 1)
    pred = make_pred([[0, 0, 20, 20, 0.9, 0], [0, 0, 8, 20, 0.8, 0]])  # TP, then loc (IoU 0.4) on the same (found) object
    errors = find_errors([pred], [target])
    assert [(e.kind, e.free) for e in errors] == [("loc", False)]
    p, _ = fix([pred], [target], errors, lambda e: True)
    assert len(p[0].boxes) == 1


def test_dap_by_bin():
    target = make_target([[0, 0, 10, 10], [50, 50, 150, 150]], [0, 0], 1)
    pred = make_pred([[50, 50, 150, 150, 0.9, 0]])  # the small one is missed
    out = tide([pred], [target], lambda: CocoEvaluator(CLASSES), object_bins=[torch.tensor([0, 1])],
               bin_names=["small", "large"])
    assert out["by_bin"]["small"]["miss"] > 0 and out["by_bin"]["large"]["miss"] == 0


def test_more_bins_equal_a_call_of_their_own(scene):
    # analyze splits by size and by crowding in one call that shares the errors and the base AP
    pred, target = scene
    a, b = torch.tensor([0, 0, 1, 1, 0, 1]), torch.tensor([1, 0, 0, 1, 1, 0])
    one = tide([pred], [target], lambda: CocoEvaluator(CLASSES), object_bins=[a], bin_names=["x", "y"],
               more_bins=[([b], ["p", "q"])])
    alone = tide([pred], [target], lambda: CocoEvaluator(CLASSES), object_bins=[b], bin_names=["p", "q"])
    assert one["more_by_bin"] == [alone["by_bin"]]
    assert {k: v for k, v in one.items() if k != "more_by_bin"} == \
        tide([pred], [target], lambda: CocoEvaluator(CLASSES), object_bins=[a], bin_names=["x", "y"])
    assert any(v != 0 for d in alone["by_bin"].values() for v in d.values())


def _box_masks(boxes, size=(200, 200)):
    m = torch.zeros(len(boxes), *size, dtype=torch.bool)
    for k, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
        m[k, y1:y2, x1:x2] = True
    return m


def test_mask_tide_one_error_of_each_type_and_a_mask_only_loc_error(scene):
    import dataclasses

    pred, target = scene
    # masks filling the (integer) boxes: mask IoU is box IoU, so the same six errors on the same pairs
    pred = dataclasses.replace(pred, masks=_box_masks(pred.boxes))
    target = dataclasses.replace(target, masks=_box_masks(target.boxes))
    by_box = find_errors([pred], [target])
    by_mask = find_errors([pred], [target], iou_type="segm")
    assert by_mask == by_box and sorted(e.kind for e in by_mask) == sorted(KINDS)
    # detection 0's box is exact but its mask covers only the left 8 of 20 columns: mask IoU 0.4 -> loc
    pred.masks[0, :, 8:20] = False
    kinds = {(e.kind, e.det) for e in find_errors([pred], [target], iou_type="segm")}
    assert ("loc", 0) in kinds and ("loc", 0) not in {(e.kind, e.det) for e in find_errors([pred], [target])}

    def metric():
        return CocoEvaluator(CLASSES, ("segm",))

    out = tide([pred], [target], metric, key="segm/AP50", draws=5)
    m = metric()
    m.update([pred], [target])
    assert out["AP"] == pytest.approx(m.compute()["segm/AP50"])  # pycocotools' mask AP50
    # fixing loc gives detection 0 its object's mask: mask AP50 with the fix equals a hand-fixed prediction
    fixed, tgt = fix([pred], [target], find_errors([pred], [target], iou_type="segm"), lambda e: e.kind == "loc")
    assert torch.equal(fixed[0].masks[0], target.masks[0])
    assert set(out["dAP_ci"]) == set(KINDS) and len(out["AP_ci"]) == 2
    with pytest.raises(ValueError, match="masks"):
        find_errors([dataclasses.replace(pred, masks=None)], [target], iou_type="segm")


@pytest.mark.parametrize("seed", [0, 1])
def test_tide_evaluating_only_the_changed_images_changes_no_number(seed):
    # random scenes with ties across images and ids out of order: the spliced evaluation (only the images a
    # fix changes are evaluated again) against fixing and evaluating every image, every number equal
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for i in range(10):
        n = int(torch.randint(1, 5, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 120
        gt = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 60], 1)
        d = int(torch.randint(0, 8, (1,), generator=g))
        boxes = gt[torch.randint(n, (d,), generator=g)] + torch.randn(d, 4, generator=g) * 8
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 2)
        targets.append(Target(size=(200, 200), boxes=gt, labels=torch.randint(2, (n,), generator=g),
                              image_id=90 - 7 * i))
        preds.append(DetectionPrediction(boxes, torch.randint(1, 4, (d,), generator=g).float() / 4,
                                         torch.randint(2, (d,), generator=g)))

    bins = [torch.randint(-1, 2, (len(t.boxes),), generator=g) for t in targets]
    fast = tide(preds, targets, lambda: CocoEvaluator(CLASSES), object_bins=bins, bin_names=["x", "y"], draws=4)
    slow = tide(preds, targets, lambda: _PlainEvaluator(CLASSES), object_bins=bins, bin_names=["x", "y"], draws=4)
    assert fast == slow
    m = CocoEvaluator(CLASSES)
    m.update(preds, targets)
    assert fast["AP"] == m.compute()["bbox/AP50"]  # pycocotools' AP50 to the last digit
    assert any(v != 0 for v in fast["dAP"].values())


class _PlainEvaluator:
    """A CocoEvaluator seen through update / compute / resampled only (no splicing possible)."""

    def __init__(self, classes):
        self.inner = CocoEvaluator(classes)

    def update(self, predictions, targets):
        self.inner.update(predictions, targets)

    def compute(self):
        return self.inner.compute()
