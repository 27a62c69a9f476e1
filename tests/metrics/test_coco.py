"""zir's COCO evaluation against pycocotools itself, and against hand-computed cases."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as pc_mask
from pycocotools.coco import COCO as PcCOCO
from pycocotools.cocoeval import COCOeval as PcCOCOeval
from torchvision import tv_tensors

from zir.data.contract import DetectionPrediction
from zir.errors import DataError
from zir.metrics.coco import STAT_NAMES, CocoEvaluator, evaluate_results_json, to_coco_results
from zir.metrics.plots import plot_confusion, plot_pr_curves

CLASSES = ["cat", "dog", "fox"]


# --------------------------------------------------------------------------------------------------
# Random data: ground truth of all sizes with crowds, detections that partly agree with it


def _ellipse(h: int, w: int, box: np.ndarray) -> np.ndarray:
    """bool (h, w) ellipse inscribed in an XYXY box."""
    x1, y1, x2, y2 = box
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, max((x2 - x1) / 2, 1), max((y2 - y1) / 2, 1)
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def _random_box(rng: np.random.Generator, h: int, w: int, side: float) -> np.ndarray:
    bw, bh = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
    bw, bh = min(bw, w - 2), min(bh, h - 2)
    x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    return np.array([x1, y1, x1 + bw, y1 + bh], np.float32)


def _random_scene(seed: int, n_images: int, with_masks: bool, size=(160, 320)):
    """Per image: the raw arrays (for the pycocotools oracle) and zir's prediction and target."""
    rng = np.random.default_rng(seed)
    scenes = []
    for image_id in range(1, n_images + 1):
        h, w = (int(v) for v in rng.integers(size[0], size[1], 2))
        n = int(rng.integers(0, 7))
        # Side lengths from 6 to 180 px, log-uniform: small (< 32^2), medium and large (> 96^2) objects.
        gt_boxes = np.stack([_random_box(rng, h, w, float(np.exp(rng.uniform(np.log(6), np.log(180)))))
                             for _ in range(n)]) if n else np.zeros((0, 4), np.float32)
        gt_labels = rng.integers(0, len(CLASSES), n)
        crowd = rng.random(n) < 0.1
        dt_boxes, dt_labels = [], []
        for box, label in zip(gt_boxes, gt_labels):
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # missed, found, found twice
                bw, bh = box[2] - box[0], box[3] - box[1]
                jitter = rng.normal(0, 0.08, 4) * np.array([bw, bh, bw, bh])
                b = np.clip(box + jitter, 0, [w, h, w, h]).astype(np.float32)
                if b[2] - b[0] < 1 or b[3] - b[1] < 1:
                    continue
                dt_boxes.append(b)
                dt_labels.append(label if rng.random() < 0.85 else rng.integers(0, len(CLASSES)))
        for _ in range(int(rng.integers(0, 4))):  # false positives anywhere
            dt_boxes.append(_random_box(rng, h, w, float(np.exp(rng.uniform(np.log(6), np.log(180))))))
            dt_labels.append(rng.integers(0, len(CLASSES)))
        d = len(dt_boxes)
        dt_boxes = np.stack(dt_boxes) if d else np.zeros((0, 4), np.float32)
        dt_labels = np.asarray(dt_labels, np.int64).reshape(-1)
        # Scores on a grid of 0.01 so that ties happen, as they do with real detectors.
        dt_scores = np.round(rng.uniform(0.05, 1.0, d), 2).astype(np.float32)
        order = np.argsort(-dt_scores, kind="stable")
        dt_boxes, dt_labels, dt_scores = dt_boxes[order], dt_labels[order], dt_scores[order]

        gt_masks = np.stack([_ellipse(h, w, b) for b in gt_boxes]) if n else np.zeros((0, h, w), bool)
        dt_masks = np.stack([_ellipse(h, w, b) for b in dt_boxes]) if d else np.zeros((0, h, w), bool)
        # A few pixels of noise so that masks and boxes do not agree exactly.
        if with_masks and d:
            dt_masks ^= rng.random(dt_masks.shape) < 0.01

        target = {
            "image_id": image_id,
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(gt_boxes), format="XYXY", canvas_size=(h, w)),
            "labels": torch.from_numpy(gt_labels),
            "iscrowd": torch.from_numpy(crowd),
        }
        if with_masks:
            target["masks"] = tv_tensors.Mask(torch.from_numpy(gt_masks.astype(np.uint8)))
        pred = DetectionPrediction(torch.from_numpy(dt_boxes), torch.from_numpy(dt_scores),
                                   torch.from_numpy(dt_labels),
                                   torch.from_numpy(dt_masks) if with_masks else None)
        raw = {"id": image_id, "h": h, "w": w, "gt_boxes": gt_boxes, "gt_labels": gt_labels, "crowd": crowd,
               "gt_masks": gt_masks, "dt_boxes": dt_boxes, "dt_labels": dt_labels, "dt_scores": dt_scores,
               "dt_masks": dt_masks}
        scenes.append((raw, pred, target))
    return scenes


def _rle(mask: np.ndarray) -> dict:
    rle = pc_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _xywh(b: np.ndarray) -> list[float]:
    return [float(b[0]), float(b[1]), float(b[2]) - float(b[0]), float(b[3]) - float(b[1])]


def _pycocotools(scenes, iou_type: str, with_masks: bool):
    """The oracle: COCO dicts written here from the raw arrays, evaluated by pycocotools."""
    images, anns, results = [], [], []
    for raw, _, _ in scenes:
        images.append({"id": raw["id"], "height": raw["h"], "width": raw["w"]})
        for i, box in enumerate(raw["gt_boxes"]):
            xywh = _xywh(box)
            ann = {"id": len(anns) + 1, "image_id": raw["id"], "category_id": int(raw["gt_labels"][i]) + 1,
                   "bbox": xywh, "iscrowd": int(raw["crowd"][i]),
                   "area": float(raw["gt_masks"][i].sum()) if with_masks else xywh[2] * xywh[3]}
            if with_masks:
                ann["segmentation"] = _rle(raw["gt_masks"][i])
            anns.append(ann)
        for i, box in enumerate(raw["dt_boxes"]):
            r = {"image_id": raw["id"], "category_id": int(raw["dt_labels"][i]) + 1,
                 "score": float(raw["dt_scores"][i])}
            if iou_type == "bbox":
                r["bbox"] = _xywh(box)
            else:
                r["segmentation"] = _rle(raw["dt_masks"][i])
            results.append(r)
    gt = PcCOCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    gt.createIndex()
    ev = PcCOCOeval(gt, gt.loadRes(results), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def _compare(ours: dict[str, float], ev, iou_type: str) -> float:
    """Max |difference| over the 12 numbers (NaN in zir is -1 in pycocotools)."""
    diffs = []
    for name, theirs in zip(STAT_NAMES, ev.stats):
        assert theirs > -1, f"the random data must exercise {iou_type}/{name}"
        diffs.append(abs(ours[f"{iou_type}/{name}"] - theirs))
    return max(diffs)


@pytest.mark.parametrize("with_masks", [False, True], ids=["boxes", "masks"])
def test_twelve_numbers_equal_pycocotools(with_masks, capsys):
    scenes = _random_scene(seed=1 + with_masks, n_images=40 if with_masks else 80, with_masks=with_masks)
    iou_types = ("bbox", "segm") if with_masks else ("bbox",)
    ev = CocoEvaluator(CLASSES, iou_types)
    for start in range(0, len(scenes), 8):  # in batches, as an evaluation loop calls it
        batch = scenes[start:start + 8]
        ev.update([s[1] for s in batch], [s[2] for s in batch])
    ours = ev.compute()
    for iou_type in iou_types:
        oracle = _pycocotools(scenes, iou_type, with_masks)
        max_diff = _compare(ours, oracle, iou_type)
        print(f"{iou_type}: max |zir - pycocotools| = {max_diff:.2e}")
        assert max_diff <= 1e-4
        # The numbers are not degenerate: the detections are partly right.
        assert 0.1 < ours[f"{iou_type}/AP50"] < 0.95
        # Per-class AP is COCOeval's precision averaged over IoU thresholds and recall points.
        p = oracle.eval["precision"][:, :, :, 0, -1]
        for k, name in enumerate(CLASSES):
            assert ev.per_class_ap(iou_type)[name] == pytest.approx(p[:, :, k][p[:, :, k] > -1].mean(), abs=1e-4)


def _one_box_case(pred_box, gt_box=(0.0, 0.0, 100.0, 100.0), size=(200, 200)) -> dict[str, float]:
    ev = CocoEvaluator(["thing"])
    target = {"image_id": 7, "boxes": torch.tensor([gt_box]), "labels": torch.tensor([0]), "size": size}
    pred = DetectionPrediction(torch.tensor([pred_box]), torch.tensor([0.9]), torch.tensor([0]))
    ev.update([pred], [target])
    return ev.compute()


def test_perfect_prediction_gives_ap_one():
    m = _one_box_case((0.0, 0.0, 100.0, 100.0))
    for name in ("AP", "AP50", "AP75", "APl", "AR1", "AR10", "AR100", "ARl"):
        assert m[f"bbox/{name}"] == pytest.approx(1.0)
    # A 100 x 100 box is "large": small and medium have no ground truth, so NaN (pycocotools' -1).
    assert math.isnan(m["bbox/APs"]) and math.isnan(m["bbox/APm"])


def test_iou_062_counts_at_50_but_not_75():
    m = _one_box_case((0.0, 0.0, 62.0, 100.0))  # IoU = 6200 / 10000 = 0.62
    assert m["bbox/AP50"] == pytest.approx(1.0)
    assert m["bbox/AP75"] == pytest.approx(0.0)
    # Matched at the thresholds 0.50, 0.55, 0.60 of the ten 0.50:0.05:0.95.
    assert m["bbox/AP"] == pytest.approx(0.3)


def test_pr_curve_by_hand():
    """Two objects; detections by score: right, wrong, right -> precision 1 up to recall 0.5, then 2/3."""
    ev = CocoEvaluator(["thing"])
    target = {"image_id": 1, "boxes": torch.tensor([[0.0, 0, 50, 50], [100, 100, 150, 150]]),
              "labels": torch.tensor([0, 0])}
    pred = DetectionPrediction(torch.tensor([[0.0, 0, 50, 50], [60, 0, 90, 30], [100, 100, 150, 150]]),
                               torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 0]))
    ev.update([pred], [target])
    recall, precision = ev.pr_curves()["thing"]
    assert recall.shape == precision.shape == (101,)
    np.testing.assert_allclose(precision[recall <= 0.5], 1.0)
    np.testing.assert_allclose(precision[recall > 0.5], 2 / 3)
    assert ev.compute()["bbox/AP50"] == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_confusion_matrix_by_hand():
    classes = ["a", "b", "c"]
    ev = CocoEvaluator(classes)
    target = {
        "image_id": 1,
        "boxes": torch.tensor([[0.0, 0, 40, 40], [100, 0, 140, 40], [200, 0, 240, 40], [0, 100, 200, 200]]),
        "labels": torch.tensor([0, 1, 2, 0]),
        "iscrowd": torch.tensor([False, False, False, True]),
    }
    pred = DetectionPrediction(
        boxes=torch.tensor([
            [0.0, 0, 40, 40],     # a found as a
            [1.0, 1, 41, 41],     # duplicate of a: false positive
            [100, 0, 140, 40],    # b found as a: confusion b -> a
            [300, 300, 340, 340],  # nothing there: false positive c
            [200, 0, 240, 40],    # c, but below the score threshold: c is missed
            [10, 110, 50, 150],   # inside the crowd region: ignored
        ]),
        scores=torch.tensor([0.9, 0.8, 0.7, 0.6, 0.1, 0.5]),
        labels=torch.tensor([0, 0, 0, 2, 2, 1]),
    )
    ev.update([pred], [target])
    expected = torch.tensor([
        # a  b  c  background (predicted)
        [1, 0, 0, 0],  # true a
        [1, 0, 0, 0],  # true b
        [0, 0, 0, 1],  # true c: missed
        [1, 0, 1, 0],  # background: false positives
    ])
    assert torch.equal(ev.confusion_matrix(score_thresh=0.25, iou_thresh=0.5), expected)
    # With a threshold that keeps the low-score c, c is found.
    assert ev.confusion_matrix(score_thresh=0.05)[2].tolist() == [0, 0, 1, 0]


# pycocotools' decoder trips a numpy 2 deprecation inside its own code; not ours to fix.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_results_json_round_trip(tmp_path):
    scenes = _random_scene(seed=5, n_images=12, with_masks=True, size=(64, 128))
    ev = CocoEvaluator(CLASSES, ("bbox", "segm"))
    ev.update([s[1] for s in scenes], [s[2] for s in scenes])
    gt_json = tmp_path / "gt.json"
    gt_json.write_text(json.dumps(ev.ground_truth()))
    results = to_coco_results([s[1] for s in scenes], [s[2]["image_id"] for s in scenes],
                              tmp_path / "out" / "results.json")
    first = results[0]
    assert set(first) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    raw = scenes[0][0]
    assert first["category_id"] == int(raw["dt_labels"][0]) + 1
    assert first["bbox"] == pytest.approx(_xywh(raw["dt_boxes"][0]))
    decoded = pc_mask.decode([copy.deepcopy(first["segmentation"])])[:, :, 0]
    np.testing.assert_array_equal(decoded, raw["dt_masks"][0])

    later = evaluate_results_json(gt_json, tmp_path / "out" / "results.json")
    now = ev.compute()
    assert later.keys() == now.keys()
    for k in now:
        assert later[k] == pytest.approx(now[k], nan_ok=True), k


def test_bad_input_is_reported(tmp_path):
    ev = CocoEvaluator(CLASSES)
    pred = DetectionPrediction(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    target = {"image_id": 3, "boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([7]),
              "path": "img3.jpg"}
    with pytest.raises(DataError, match="img3.jpg.*class id 7"):
        ev.update([pred], [target])
    ev.update([pred], [{"image_id": 3, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    with pytest.raises(DataError, match="image_id 3 was evaluated twice"):
        ev.update([pred], [{"image_id": 3, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    with pytest.raises(DataError, match="masks"):
        CocoEvaluator(CLASSES, ("bbox", "segm")).update([pred], [{"image_id": 1, "size": (9, 9)}])

    gt_json = tmp_path / "gt.json"
    gt_json.write_text(json.dumps(ev.ground_truth()))
    results_json = tmp_path / "results.json"
    results_json.write_text(json.dumps([{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]))
    with pytest.raises(DataError, match="results.json.*image_id 99"):
        evaluate_results_json(gt_json, results_json)
    with pytest.raises(DataError, match="not found"):
        evaluate_results_json(gt_json, tmp_path / "missing.json")


def test_empty_images_and_no_updates():
    assert all(math.isnan(v) for v in CocoEvaluator(CLASSES).compute().values())
    ev = CocoEvaluator(CLASSES)
    empty = DetectionPrediction(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    ev.update([empty], [{"image_id": 1, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    target = {"image_id": 2, "boxes": torch.tensor([[0.0, 0, 50, 50]]), "labels": torch.tensor([1])}
    ev.update([empty], [target])  # an object nobody found
    m = ev.compute()
    assert m["bbox/AP"] == 0.0 and m["bbox/AR100"] == 0.0
    assert math.isnan(ev.per_class_ap()["cat"]) and ev.per_class_ap()["dog"] == 0.0


def test_detection_plots_write_pngs(tmp_path):
    scenes = _random_scene(seed=3, n_images=10, with_masks=False)
    ev = CocoEvaluator(CLASSES)
    ev.update([s[1] for s in scenes], [s[2] for s in scenes])
    paths = [
        plot_pr_curves(ev.pr_curves(), tmp_path / "pr.png"),
        plot_confusion(ev.confusion_matrix(), CLASSES + ["background"], tmp_path / "confusion.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()


def test_voc_difficult_objects_are_ignored_as_in_the_voc_protocol():
    """One image, class 0: a normal object A, a difficult object D; detections on D (0.9), on nothing
    (0.7) and on A (0.5). Hand-computed: D is neither found nor missed and its detection is neither true
    nor false positive, so the ranked list is FP, TP over one object: precision 1/2 at recall 1, AP 0.5.
    Counting D as ordinary ground truth would give TP, FP, TP: AP = (51 * 1 + 50 * 2/3) / 101 = 0.835."""
    from zir.data.contract import DetectionPrediction
    from zir.metrics.coco import CocoEvaluator

    boxes = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    pred = DetectionPrediction(boxes=torch.tensor([[50.0, 50, 60, 60], [80, 0, 90, 10], [0, 0, 10, 10]]),
                               scores=torch.tensor([0.9, 0.7, 0.5]), labels=torch.zeros(3, dtype=torch.long))
    target = {"image_id": 1, "boxes": boxes, "labels": torch.zeros(2, dtype=torch.long), "size": (100, 100)}
    plain = CocoEvaluator(["a"])
    plain.update([pred], [target])
    assert plain.compute()["bbox/AP50"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-6)
    voc = CocoEvaluator(["a"])
    voc.update([pred], [{**target, "difficult": torch.tensor([False, True])}])
    assert voc.compute()["bbox/AP50"] == pytest.approx(0.5)
    assert voc.confusion_matrix(score_thresh=0.0).tolist() == [[1, 0], [1, 0]]  # A found; one FP; D neither
