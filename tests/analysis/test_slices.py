"""Size and crowding bins, AP and recall per bin, and the zoom-out, on hand-built cases."""

from __future__ import annotations

import math

import pytest
import torch

from zir.analysis import slices
from zir.analysis.bootstrap import (
    CocoDraws,
    bootstrap_draws,
    bootstrap_metric,
    bootstrap_ratio,
    draw_indices,
    percentile_interval,
    resample,
)
from zir.data.contract import ClassPrediction, DetectionPrediction, SemanticPrediction, Target
from zir.metrics.classification import ClassificationMetrics
from zir.metrics.coco import STAT_NAMES, CocoEvaluator


def target(boxes, labels=None, size=(100, 100), image_id=1, masks=None) -> Target:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    lab = torch.zeros(len(b), dtype=torch.int64) if labels is None else torch.tensor(labels)
    return Target(size=size, boxes=b, labels=lab, image_id=image_id, masks=masks)


def det(boxes, scores, labels=None) -> DetectionPrediction:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    lab = torch.zeros(len(b), dtype=torch.int64) if labels is None else torch.tensor(labels)
    return DetectionPrediction(b, torch.tensor(scores, dtype=torch.float32), lab)


def test_object_size_measures_and_bins():
    t = target([[0, 0, 10, 10], [0, 0, 40, 40], [0, 0, 100, 100]], size=(100, 100))
    assert slices.object_areas(t).tolist() == [100, 1600, 10000]
    rel = slices.relative_size(t)  # sqrt(area / image area)
    assert rel.tolist() == pytest.approx([0.1, 0.4, 1.0])
    bins = slices.edges_to_bins(slices.RELATIVE_SIZE)
    # [0, 0.05) [0.05, 0.1) [0.1, 0.2) [0.2, 0.4) >= 0.4: half-open as COCO's area ranges
    assert [b[0] for b in bins] == ["[0, 0.05)", "[0.05, 0.1)", "[0.1, 0.2)", "[0.2, 0.4)", ">= 0.4"]
    assert slices.bin_index(rel, bins, left_closed=True).tolist() == [2, 4, 4]
    assert slices.bin_index(torch.tensor([0.0, 0.0499, 0.05]), bins, left_closed=True).tolist() == [0, 0, 1]
    assert slices.bin_index(torch.tensor([0.0, 0.05, 0.1], dtype=torch.float64), bins).tolist() == [-1, 0, 1]  # (low, high]
    # the synthetic data's recorded scale wins over the box where every object has one
    assert slices.relative_size(t, [{"scale": 0.03}, {"scale": 0.5}, {"scale": 0.2}]).tolist() == [0.03, 0.5, 0.2]
    assert slices.relative_size(t, [{"scale": 0.03}]).tolist() == pytest.approx([0.1, 0.4, 1.0])  # count differs
    # masks give COCO's area (pixel count), not the box's
    masks = torch.zeros(1, 100, 100, dtype=torch.uint8)
    masks[0, :5, :5] = 1
    assert slices.object_areas(target([[0, 0, 10, 10]], masks=masks)).tolist() == [25]


def test_crowding_counts_overlaps_and_largest_iou():
    boxes = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110], [14, 0, 24, 10]], dtype=torch.float32)
    count, max_iou = slices.crowding(boxes)
    # 0 and 1 share 5x10 = 50 of 150 (IoU 1/3); 1 and 3 share 1x10 = 10 of 190; 2 is alone
    assert count.tolist() == [1, 2, 0, 1]
    assert max_iou.tolist() == pytest.approx([1 / 3, 1 / 3, 0.0, 10 / 190])
    assert slices.bin_index(max_iou, slices.CROWD_IOU).tolist() == [3, 3, 0, 1]
    assert slices.crowding(boxes[:1])[1].tolist() == [0.0]


def test_recall_and_ap_per_bin():
    # image 1: a small object found and a large one missed; image 2: a large one found
    t1 = target([[0, 0, 10, 10], [20, 20, 80, 80]], image_id=1)
    t2 = target([[10, 10, 70, 70]], image_id=2)
    p1 = det([[0, 0, 10, 10], [0, 0, 9, 10]], [0.9, 0.2])  # a duplicate under the score threshold
    p2 = det([[10, 10, 70, 70]], [0.8])
    found = slices.recall_at([p1, p2], [t1, t2], score=0.3)
    assert [f.tolist() for f in found] == [[True, False], [True]]
    bins = (("small", 0.0, 0.2), ("large", 0.2, 1.0), ("none", 5.0, 6.0))
    bin_of = [slices.bin_index(slices.relative_size(t), bins, left_closed=True) for t in (t1, t2)]
    res = slices.detection_bins([p1, p2], [t1, t2], bin_of, bins, lambda: CocoEvaluator(["a"]), score=0.3)
    small, large, empty = res
    assert (small.objects, large.objects, empty.objects) == (1, 2, 0)
    assert small.metrics["recall@0.3"] == 1.0 and large.metrics["recall@0.3"] == 0.5
    assert empty.metrics == {}  # shown as n/a, never a division by zero
    # small bin: the large objects are ignored, the one small object is the top detection -> AP50 = 1
    assert small.metrics["bbox/AP50"] == pytest.approx(1.0)
    # large bin: the detection on the small object (0.9) is ignored (matched to an ignored object), the
    # 0.2 duplicate is a false positive below the one true positive at 0.8: precision 1 up to recall 0.5
    assert large.metrics["bbox/AP50"] == pytest.approx(0.5, abs=0.01)


def test_zoom_out_and_back():
    image = torch.rand(3, 40, 60)
    same, window = slices.zoom_out(image, 1.0)
    assert same is image and window == (0, 0, 60, 40)
    z, (x0, y0, w, h) = slices.zoom_out(image, 0.5)
    assert z.shape == image.shape and (x0, y0, w, h) == (15, 10, 30, 20)
    assert torch.allclose(z[:, 0, 0], image.mean(dim=(1, 2)))  # padded with the mean colour
    # a box found in the zoomed image maps back to the original's pixels
    back = slices.unzoom(det([[15 + 5, 10 + 5, 15 + 10, 10 + 10]], [0.9]), (x0, y0, w, h), (40, 60))
    assert back.boxes.tolist() == [[10.0, 10.0, 20.0, 20.0]]
    sem = torch.zeros(40, 60, dtype=torch.int64)
    sem[y0:y0 + h, x0:x0 + w] = 2
    assert (slices.unzoom(SemanticPrediction(sem), (x0, y0, w, h), (40, 60)).semantic == 2).all()
    cls = ClassPrediction(torch.tensor([0.2, 0.8]), 1)
    assert slices.unzoom(cls, (x0, y0, w, h), (40, 60)) is cls
    with pytest.raises(ValueError, match="zoom factor"):
        slices.zoom_out(image, 0.0)


def test_bootstrap_intervals():
    assert percentile_interval([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert all(math.isnan(v) for v in percentile_interval([math.nan]))
    lo, hi = bootstrap_ratio([1, 0, 1, 0], [1, 1, 1, 1], n=500)
    assert 0 <= lo < 0.5 < hi <= 1
    # every image right: the interval is the point; half right: it holds 0.5
    preds = [ClassPrediction(torch.tensor([0.9, 0.1]), 0)] * 4
    ci = bootstrap_metric(preds, [0, 0, 0, 0], lambda: ClassificationMetrics(2), ["accuracy"], n=50)
    assert ci["accuracy"] == (1.0, 1.0)
    ci = bootstrap_metric(preds, [0, 1, 0, 1], lambda: ClassificationMetrics(2), ["accuracy"], n=200)
    assert ci["accuracy"][0] < 0.5 < ci["accuracy"][1]
    # detection: a target drawn twice gets a fresh image id (the evaluator refuses repeats)
    t = target([[0, 0, 10, 10]], image_id=7)
    again = resample([t], [0, 0, 0])
    assert [x.image_id for x in again] == [1, 2, 3]
    ci = bootstrap_metric([det([[0, 0, 10, 10]], [0.9])], [t], lambda: CocoEvaluator(["a"]), ["bbox/AP50"], n=5)
    assert ci["bbox/AP50"] == pytest.approx((1.0, 1.0))


def test_rotation_and_translation_map_back():
    # a square at x, y in [10, 20): rotated 90 degrees it lies at x [20, 30), y [30, 40); found there, it
    # maps back onto itself
    image = torch.zeros(3, 40, 60)
    image[:, 10:20, 10:20] = 1
    moved = slices._warp(image, "rotation", 90.0, (40, 60), [0.0, 0.0, 0.0])
    ys, xs = (moved[0] > 0.5).nonzero(as_tuple=True)
    assert (int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1) == (20, 30, 30, 40)
    back = slices.warp_back(det([[20, 30, 30, 40]], [0.9]), "rotation", 90.0, (40, 60))
    assert back.boxes.tolist() == [[10.0, 10.0, 20.0, 20.0]]
    # translation by 0.1: 6 px right, 4 px down, and back exactly
    back = slices.warp_back(det([[16, 14, 26, 24]], [0.9]), "translation", 0.1, (40, 60))
    assert back.boxes.tolist() == [[10.0, 10.0, 20.0, 20.0]]
    sem = torch.zeros(40, 60, dtype=torch.int64)
    sem[30:40, 20:30] = 3
    ys, xs = (slices.warp_back(SemanticPrediction(sem), "rotation", 90.0, (40, 60)).semantic == 3).nonzero(as_tuple=True)
    assert (int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1) == (10, 20, 10, 20)
    seen = []
    predict = slices.warped(lambda ims: seen.extend(ims) or [det([[16, 14, 26, 24]], [0.9])], "translation", 0.1)
    assert predict([image])[0].boxes.tolist() == [[10.0, 10.0, 20.0, 20.0]]
    assert seen[0][0, 14, 16] > 0.99 and seen[0][0, 13, 16] < 0.5  # the image itself moved
    with pytest.raises(ValueError, match="rotation or translation"):
        slices.warped(lambda ims: [], "shear", 1.0)


class _NoShortcut:
    """A CocoEvaluator without ``resampled``: the bootstrap then converts every draw itself (the old path)."""

    def __init__(self, classes, iou_types):
        self.inner = CocoEvaluator(classes, iou_types)

    def update(self, predictions, targets):
        self.inner.update(predictions, targets)

    def compute(self):
        return self.inner.compute()


def random_scenes(iou_types, n_images=12, seed=3, ids=None, flags=False):
    """Random scenes with tied scores across images (COCO sorts ties in image order, which every shortcut
    must keep); ``flags``: some objects difficult or crowd."""
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for i in range(n_images):
        n, d = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(0, 7, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 40
        gt = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 20], 1)
        jitter = torch.randn(d, 4, generator=g) * 3
        pick = torch.randint(n, (d,), generator=g)
        boxes = (gt[pick] + jitter).clamp(0, 64)
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        scores = torch.randint(1, 5, (d,), generator=g).float() / 5  # few values: ties across images
        labels = torch.randint(2, (d,), generator=g)

        def masks_of(b):
            m = torch.zeros(len(b), 64, 64, dtype=torch.bool)
            for k, (x1, y1, x2, y2) in enumerate(b.round().long().tolist()):
                m[k, y1:y2, x1:x2] = True
            return m

        segm = "segm" in iou_types
        extra = {}
        if flags:
            extra = {"difficult": torch.rand(n, generator=g) < 0.2, "iscrowd": torch.rand(n, generator=g) < 0.15}
        targets.append(Target(size=(64, 64), boxes=gt, labels=torch.randint(2, (n,), generator=g),
                              image_id=(100 + i) if ids is None else ids[i], masks=masks_of(gt) if segm else None,
                              **extra))
        preds.append(DetectionPrediction(boxes, scores, labels, masks_of(boxes) if segm else None))
    return preds, targets


@pytest.mark.parametrize("iou_types", [("bbox",), ("bbox", "segm")])
def test_bootstrap_reusing_the_converted_images_changes_no_number(iou_types):
    # both paths on random scenes: every interval of all 12 numbers per type is equal
    preds, targets = random_scenes(iou_types)
    keys = [f"{t}/{k}" for t in iou_types for k in STAT_NAMES]
    fast = bootstrap_metric(preds, targets, lambda: CocoEvaluator(["a", "b"], iou_types), keys, n=25)
    slow = bootstrap_metric(preds, targets, lambda: _NoShortcut(["a", "b"], iou_types), keys, n=25)
    assert fast.keys() == slow.keys()
    for k in keys:  # NaN (no object of a size) on both sides, else the same number to the last digit
        assert fast[k] == slow[k] or all(math.isnan(a) and math.isnan(b) for a, b in zip(fast[k], slow[k])), k
    assert any(fast[k][0] < fast[k][1] for k in keys)  # the draws differ: the test compares something


@pytest.mark.parametrize("iou_types", [("bbox",), ("bbox", "segm")])
def test_coco_draws_equal_evaluating_each_resample(iou_types):
    # image ids out of order (COCOeval sorts them), difficult and crowd objects, a third class without objects
    ids = [500 - 7 * i for i in range(14)]
    preds, targets = random_scenes(iou_types, 14, seed=5, ids=ids, flags=True)
    whole = CocoEvaluator(["a", "b", "unused"], iou_types)
    whole.update(preds, targets)
    draws = CocoDraws(whole)
    keys = [f"{t}/{k}" for t in iou_types for k in CocoDraws.KEYS]
    assert CocoDraws.serves(whole, keys) and not CocoDraws.serves(whole, ["bbox/APs"])
    for index in [list(range(14)), *draw_indices(14, 6, seed=1), [3, 3, 3]]:
        expected = whole.resampled(index).compute()
        got = draws.compute(index)
        for k in keys:
            assert got[k] == expected[k] or (math.isnan(got[k]) and math.isnan(expected[k])), (k, index)
    # the bootstrap takes this path for these keys and gives the other path's intervals
    fast = bootstrap_draws(preds, targets, lambda: CocoEvaluator(["a", "b", "unused"], iou_types), keys, n=10)
    slow = bootstrap_draws(preds, targets, lambda: _NoShortcut(["a", "b", "unused"], iou_types), keys, n=10)
    assert fast == slow and len(set(fast[keys[0]])) > 1
