"""COCO evaluation of detection and instance segmentation, through faster-coco-eval.

faster-coco-eval implements pycocotools' ``COCOeval`` (same matching, same 101-point interpolated
precision, same area ranges) in C++; its numbers equal pycocotools' (``tests/metrics/test_coco.py``
checks the 12 numbers against pycocotools itself). zir only converts its own types to COCO dicts:

* Ground truth: one COCO image per target (``id`` = the sample's ``image_id``, ``height`` / ``width``
  from the image size), one annotation per object with ``bbox`` = ``[x, y, w, h]`` (from zir's XYXY
  absolute pixels, exclusive edges, so ``w = x2 - x1``), ``category_id`` = class id + 1 (categories are
  ``1..C`` in class order, as zir's COCO writer writes them), ``iscrowd``, and ``segmentation`` as RLE
  where the target has masks.
* ``area`` of a ground-truth object decides whether it counts as small / medium / large (< 32^2,
  < 96^2, otherwise) *for both the bbox and the segm numbers*, because pycocotools reads the annotation's
  ``area`` field. As in COCO's own files, it is the mask's pixel count where the target has masks, else
  the box's ``w * h``.
* Detections: COCO results (``image_id``, ``category_id``, ``bbox``, ``score``, ``segmentation``). For
  segm evaluation the ``bbox`` is left out of the results so that pycocotools takes a detection's area
  from its mask, not its box (what detectron2 does too).
* VOC ``difficult`` objects (a target's ``difficult`` flags) are COCO "ignore" ground truth: they do
  not count as objects to find, and the detection matched to one is neither a true nor a false
  positive. pycocotools reads no ignore flag of its own (it sets ``ignore = iscrowd``), so
  :class:`_IgnoreAwareEval` sets it after its preparation. Unlike a crowd region, a difficult object is
  matched with the ordinary IoU and by one detection; a second detection on it is a false positive, as
  a duplicate on any object (VOC's devkit would ignore it too; zir keeps COCO's matching throughout).
* pycocotools reports -1 for a number without ground truth (e.g. APs when there is no small object);
  zir reports NaN instead, so that it cannot be averaged or plotted as a score by mistake.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval.core import mask as mask_codec
from torchvision.ops import box_iou

from zir.data.contract import DetectionPrediction, Target, as_target
from zir.errors import DataError

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""The 12 numbers of ``COCOeval.summarize()``, in its order (``stats[0..11]``)."""


# --------------------------------------------------------------------------------------------------
# Conversions to COCO dicts


def _encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """bool/uint8 ``(N, H, W)`` -> N compressed COCO RLEs with JSON-friendly ``str`` counts."""
    if len(masks) == 0:
        return []
    array = np.asfortranarray(masks.detach().cpu().numpy().astype(np.uint8).transpose(1, 2, 0))  # (H, W, N)
    rles = mask_codec.encode(array)
    return [{"size": [int(s) for s in r["size"]],
             "counts": r["counts"].decode("ascii") if isinstance(r["counts"], bytes) else r["counts"]}
            for r in rles]


def _xyxy_to_xywh(boxes: torch.Tensor) -> list[list[float]]:
    """float ``(N, 4)`` XYXY -> COCO ``[x, y, w, h]`` lists (float64 so that float32 values stay exact)."""
    b = boxes.detach().cpu().double()
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], dim=1).tolist()


def _results_for(pred: DetectionPrediction, image_id: int, num_classes: int | None = None,
                 with_masks: bool = True) -> list[dict]:
    """COCO results of one image: ``category_id`` = class id + 1, ``bbox`` xywh, RLE ``segmentation``
    (when the prediction has masks and ``with_masks``)."""
    labels = torch.as_tensor(pred.labels).reshape(-1).tolist()
    if num_classes is not None and any(not 0 <= c < num_classes for c in labels):
        bad = next(c for c in labels if not 0 <= c < num_classes)
        raise ValueError(f"predicted class id {bad} outside the {num_classes} classes of the evaluator")
    scores = torch.as_tensor(pred.scores).reshape(-1).tolist()
    boxes = _xyxy_to_xywh(torch.as_tensor(pred.boxes).reshape(-1, 4))
    results = [{"image_id": image_id, "category_id": int(c) + 1, "bbox": b, "score": float(s)}
               for c, b, s in zip(labels, boxes, scores)]
    if pred.masks is not None and with_masks:
        for r, rle in zip(results, _encode_masks(pred.masks)):
            r["segmentation"] = rle
    return results


def to_coco_results(predictions: Sequence[DetectionPrediction], image_ids: Sequence[int],
                    out_json: str | Path | None = None) -> list[dict[str, Any]]:
    """Predictions as a COCO results list (and file), the format ``COCO.loadRes`` and the COCO server read.

    Args:
        predictions: one :class:`DetectionPrediction` per image.
        image_ids: the COCO image id of each prediction (the samples' ``image_id``).
        out_json: if given, the list is also written there as JSON.

    Returns:
        One dict per detection: ``image_id``, ``category_id`` (class id + 1), ``bbox`` ``[x, y, w, h]``
        absolute pixels, ``score``, and ``segmentation`` (compressed RLE) when the prediction has masks.
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions but {len(image_ids)} image ids")
    results = [r for pred, i in zip(predictions, image_ids) for r in _results_for(pred, int(i))]
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(results))
    return results


def _results_for_type(results: list[dict], iou_type: str) -> list[dict]:
    """Fresh copies of ``results`` with only the fields ``iou_type`` evaluates (see the module docstring)."""
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    out = []
    for r in results:  # a plain loop of dict.copy: the bootstrap calls this hundreds of times
        c = r.copy()
        c.pop(drop, None)
        if isinstance(c.get("segmentation"), dict):  # the only nested dict; loadRes writes into it
            c["segmentation"] = dict(c["segmentation"])
        out.append(c)
    return out


# --------------------------------------------------------------------------------------------------
# Running COCOeval


class _IgnoreAwareEval(COCOeval_faster):
    """COCOeval that honours ``difficult`` ground truth as "ignore" (module docstring)."""

    def _prepare(self) -> None:
        super()._prepare()  # sets every gt["ignore"] = iscrowd, on the dicts the C++ evaluation reads
        for ann in self.cocoGt.anns.values():
            if ann.get("difficult"):
                ann["ignore"] = 1


def _evaluate(coco_gt: COCO, results: list[dict], iou_type: str) -> COCOeval_faster:
    """Run evaluate / accumulate / summarize of faster-coco-eval on one iou type."""
    coco_dt = coco_gt.loadRes(results)  # an empty list gives an empty (evaluable) result set
    ev = _IgnoreAwareEval(coco_gt, coco_dt, iou_type, print_function=lambda *args, **kwargs: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def _stats(ev: COCOeval_faster | None, iou_type: str) -> dict[str, float]:
    """``{"<iou_type>/AP": ..., ...}``: the 12 summary numbers, pycocotools' -1 turned into NaN."""
    if ev is None:
        return {f"{iou_type}/{name}": math.nan for name in STAT_NAMES}
    return {f"{iou_type}/{name}": (float(v) if v > -1 else math.nan)
            for name, v in zip(STAT_NAMES, ev.stats[: len(STAT_NAMES)])}


def evaluate_results_json(gt_json: str | Path, results_json: str | Path,
                          iou_types: Sequence[str] | None = None) -> dict[str, float]:
    """Evaluate a saved COCO results file against a COCO ground-truth file.

    Args:
        gt_json: COCO instances JSON (``images``, ``annotations``, ``categories``).
        results_json: a results list as written by :func:`to_coco_results`.
        iou_types: what to evaluate; by default ``bbox``, plus ``segm`` when the results have masks.

    Returns:
        ``{"bbox/AP", "bbox/AP50", ...}`` (and ``segm/...``): the 12 numbers per iou type.

    Raises:
        DataError: naming the file that is missing, not JSON, or does not fit the ground truth.
    """
    gt_json, results_json = Path(gt_json), Path(results_json)
    for path in (gt_json, results_json):
        if not path.is_file():
            raise DataError(str(path), "file not found")
    try:
        gt = json.loads(gt_json.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(str(gt_json), f"not a JSON file ({e})") from None
    if not isinstance(gt, dict) or not {"images", "annotations", "categories"} <= gt.keys():
        raise DataError(str(gt_json), "not a COCO ground-truth file: it needs images, annotations and categories")
    try:
        results = json.loads(results_json.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(str(results_json), f"not a JSON file ({e})") from None
    if not isinstance(results, list):
        raise DataError(str(results_json), "a COCO results file holds a list of detections")
    known = {img["id"] for img in gt["images"]}
    for i, r in enumerate(results):
        if r.get("image_id") not in known:
            raise DataError(str(results_json), f"image_id {r.get('image_id')} is not in {gt_json}: "
                                               "were the results made on another data set?", where=f"result {i}")
    if iou_types is None:
        iou_types = ("bbox", "segm") if any("segmentation" in r for r in results) else ("bbox",)
    coco_gt = COCO(gt)
    out: dict[str, float] = {}
    for iou_type in iou_types:
        if iou_type == "segm" and not all("segmentation" in r for r in results):
            raise DataError(str(results_json), "segm evaluation needs a 'segmentation' in every result")
        ev = _evaluate(coco_gt, _results_for_type(results, iou_type), iou_type) if gt["images"] else None
        out.update(_stats(ev, iou_type))
    return out


# --------------------------------------------------------------------------------------------------
# The evaluator


@dataclass
class _Image:
    """What the evaluator keeps of one image: its COCO image entry, annotations and results."""

    image: dict[str, Any]
    gts: list[dict[str, Any]] = field(default_factory=list)  # COCO annotations, without "id"
    dts: list[dict[str, Any]] = field(default_factory=list)  # COCO results


class CocoEvaluator:
    """COCO metrics (bbox, and segm for instance masks) of a detector over a data set.

    Args:
        classes: the class names; class id ``i`` is COCO category ``i + 1``.
        iou_types: ``("bbox",)`` for detection, ``("bbox", "segm")`` for instance segmentation.

    Usage::

        ev = CocoEvaluator(["raccoon"])
        for images, targets in loader:
            ev.update(model.predict(images), targets)
        ev.compute()            # {"bbox/AP": ..., "bbox/AP50": ..., ...}
        ev.per_class_ap()       # {"raccoon": ...}
        ev.pr_curves()          # {"raccoon": (recall, precision)} at IoU 0.5
        ev.confusion_matrix()   # (C + 1, C + 1) with a background row and column

    The targets are :class:`~zir.data.contract.Target` (what ``zir.engine.data.collate`` gives) or
    sample dicts (:class:`zir.data.contract.Sample`, converted by ``Target.from_sample``): ``image_id``,
    ``boxes`` (XYXY absolute pixels), ``labels``, optional ``iscrowd`` and ``difficult``, ``masks`` for
    segm, and the image size (segm needs it; bbox does not; a dict gives it by ``"size"`` ``(H, W)``,
    ``image``, ``boxes.canvas_size`` or ``masks``).
    """

    def __init__(self, classes: Sequence[str], iou_types: Sequence[str] = ("bbox",)) -> None:
        unknown = [t for t in iou_types if t not in IOU_TYPES]
        if unknown or not iou_types:
            raise ValueError(f"iou_types must be taken from {IOU_TYPES}, got {tuple(iou_types)}")
        self.classes = list(classes)
        self.iou_types = tuple(iou_types)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._images: dict[int, _Image] = {}
        self._evals: dict[str, COCOeval_faster] | None = None  # cached by compute()

    # ---------------------------------------------------------------------------------------------
    # Accumulation

    def update(self, predictions: Sequence[DetectionPrediction],
               targets: Sequence[Target | Mapping[str, Any]]) -> None:
        """Add the predictions of a batch of images and their targets.

        Raises:
            DataError: an image id seen before, a target class id outside ``classes``, or a target
                without what the iou types need (the message names the sample's ``path``).
            ValueError: a predicted class id outside ``classes``, or segm without predicted masks.
        """
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
        C = len(self.classes)
        segm = "segm" in self.iou_types
        for pred, target in zip(predictions, targets):
            target = as_target(target)
            image_id = target.image_id if target.image_id is not None else len(self._images) + 1
            source = target.path or f"image_id {image_id}"
            if image_id in self._images:
                raise DataError(source, f"image_id {image_id} was evaluated twice: image ids must be unique")
            size = target.size if target.size is not None or pred.masks is None else tuple(pred.masks.shape[-2:])
            if size is None and segm:
                raise DataError(source, "segm evaluation needs the image size: give the target its size "
                                        "(Target.size, or a dict's 'size' (H, W), image or masks)")
            h, w = size if size is not None else (0, 0)  # bbox evaluation never reads the size
            entry = _Image({"id": image_id, "height": h, "width": w})

            boxes, labels = target.boxes, target.labels.long()
            n = len(boxes)
            if len(labels) != n:
                raise DataError(source, f"{n} boxes but {len(labels)} labels")
            bad = labels[(labels < 0) | (labels >= C)]
            if len(bad):
                raise DataError(source, f"class id {int(bad[0])} outside the {C} classes {self.classes}")
            crowd, difficult, masks = target.iscrowd, target.difficult, target.masks
            if len(crowd) != n or len(difficult) != n:
                raise DataError(source, f"{n} boxes but {len(crowd)} iscrowd and {len(difficult)} difficult flags")
            if segm and masks is None:
                raise DataError(source, "segm evaluation needs instance masks in the target ('masks')")
            if masks is not None and len(masks) != n:
                raise DataError(source, f"{n} boxes but {len(masks)} masks")
            xywh = _xyxy_to_xywh(boxes)
            # RLE encoding costs time, so only for segm; the area needs the masks in any case.
            rles = _encode_masks(torch.as_tensor(masks)) if masks is not None and segm else None
            # COCO's "area" is the mask area where there is a mask, else the box area (module docstring).
            areas = (torch.as_tensor(masks).flatten(1).bool().sum(1).tolist() if masks is not None
                     else [b[2] * b[3] for b in xywh])
            for i in range(n):
                ann = {"image_id": image_id, "category_id": int(labels[i]) + 1, "bbox": xywh[i],
                       "area": float(areas[i]), "iscrowd": int(crowd[i])}
                if difficult[i]:
                    ann["difficult"] = 1
                if rles is not None:
                    ann["segmentation"] = rles[i]
                entry.gts.append(ann)

            if segm and pred.masks is None:
                raise ValueError("segm evaluation needs predicted masks, but the prediction has none: "
                                 "use iou_types=('bbox',) for a box-only detector")
            entry.dts = _results_for(pred, image_id, C, with_masks=segm)
            self._images[image_id] = entry
        self._evals = None

    def resampled(self, index: Sequence[int]) -> CocoEvaluator:
        """A new evaluator holding this one's images at positions ``index`` (in the order they were added;
        repeats allowed), image ``j`` of it renamed id ``j + 1``: what ``update`` with the predictions at
        ``index`` and :func:`zir.analysis.bootstrap.resample` of the targets gives, without converting
        every prediction and target again (the bootstrap draws hundreds of such sets)."""
        entries = list(self._images.values())
        out = CocoEvaluator(self.classes, self.iou_types)
        for j, i in enumerate(index):
            e, new_id = entries[i], j + 1
            new = _Image({**e.image, "id": new_id})
            new.gts = [{**a, "image_id": new_id} for a in e.gts]
            new.dts = [{**r, "image_id": new_id} for r in e.dts]
            out._images[new_id] = new
        return out

    # ---------------------------------------------------------------------------------------------
    # COCO numbers

    def ground_truth(self) -> dict[str, Any]:
        """The accumulated ground truth as a COCO instances dict (annotation ids from 1)."""
        anns = [dict(a) for e in self._images.values() for a in e.gts]
        for i, a in enumerate(anns):
            a["id"] = i + 1  # id 0 would read as "unmatched" inside COCOeval
            if "segmentation" in a:
                a["segmentation"] = dict(a["segmentation"])
        return {
            "images": [dict(e.image) for e in self._images.values()],
            "annotations": anns,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(self.classes)],
        }

    def results(self) -> list[dict[str, Any]]:
        """The accumulated detections as a COCO results list (see :func:`to_coco_results`)."""
        return [r for e in self._images.values() for r in e.dts]

    def _run(self) -> dict[str, COCOeval_faster]:
        if self._evals is None:
            self._evals = {}
            if self._images:
                coco_gt = COCO(self.ground_truth())
                for iou_type in self.iou_types:
                    self._evals[iou_type] = _evaluate(coco_gt, _results_for_type(self.results(), iou_type),
                                                      iou_type)
        return self._evals

    def compute(self) -> dict[str, float]:
        """The 12 COCO numbers per iou type: ``"bbox/AP"`` (AP@[.5:.95]), ``"bbox/AP50"``, ``"bbox/AP75"``,
        ``"bbox/APs|APm|APl"``, ``"bbox/AR1|AR10|AR100"``, ``"bbox/ARs|ARm|ARl"``, and the same with ``segm/``.

        NaN where pycocotools gives -1 (no ground truth for that number), and everywhere before any update.
        """
        evals = self._run()
        out: dict[str, float] = {}
        for iou_type in self.iou_types:
            out.update(_stats(evals.get(iou_type), iou_type))
        return out

    def _precision(self, iou_type: str) -> np.ndarray | None:
        """COCOeval's precision array ``(T, R, K, A, M)``: IoU thresholds, 101 recall points, classes,
        area ranges (all, small, medium, large), max detections (1, 10, 100); -1 where there is no GT."""
        if iou_type not in self.iou_types:
            raise ValueError(f"iou_type {iou_type!r} was not evaluated (iou_types={self.iou_types})")
        ev = self._run().get(iou_type)
        return None if ev is None else np.asarray(ev.eval["precision"])

    def per_class_ap(self, iou_type: str = "bbox") -> dict[str, float]:
        """AP@[.5:.95] of each class (area all, 100 detections); NaN for a class without ground truth."""
        precision = self._precision(iou_type)
        out = {}
        for k, name in enumerate(self.classes):
            p = precision[:, :, k, 0, -1] if precision is not None else np.full(1, -1.0)
            out[name] = float(p[p > -1].mean()) if (p > -1).any() else math.nan
        return out

    def pr_curves(self, iou_type: str = "bbox", iou_thresh: float = 0.5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per class, COCO's interpolated precision at its 101 recall points, at one IoU threshold.

        Returns:
            ``{class: (recall (101,), precision (101,))}`` for every class that has ground truth; the
            precision is 0 beyond the highest recall reached.
        """
        precision = self._precision(iou_type)
        if precision is None:
            return {}
        ev = self._run()[iou_type]
        t = np.flatnonzero(np.isclose(ev.params.iouThrs, iou_thresh))
        if len(t) == 0:
            raise ValueError(f"iou_thresh must be one of COCO's {ev.params.iouThrs.round(2).tolist()}")
        recall = np.asarray(ev.params.recThrs, dtype=np.float64)
        out = {}
        for k, name in enumerate(self.classes):
            p = precision[t[0], :, k, 0, -1]
            if (p > -1).any():
                out[name] = (recall.copy(), p.astype(np.float64))
        return out

    # ---------------------------------------------------------------------------------------------
    # Detection confusion matrix

    def confusion_matrix(self, score_thresh: float = 0.25, iou_thresh: float = 0.5) -> torch.Tensor:
        """int64 ``(C + 1, C + 1)`` counts of boxes: rows the true class, columns the predicted class, the
        last row and column "background".

        Detections with ``score >= score_thresh`` are matched one to one to ground-truth boxes with
        ``IoU >= iou_thresh``, greedily by IoU: first within the same class, then across classes among
        what is left (so a box found with the wrong class shows as a confusion between two classes,
        and a duplicate of a correct box stays a false positive). Then:

        * a matched pair adds 1 to ``[true class, predicted class]``;
        * a missed ground truth adds 1 to ``[true class, background]`` ("missed");
        * an unmatched detection adds 1 to ``[background, predicted class]`` ("false positive"),
          except one lying inside a crowd region (``iscrowd``; intersection over the detection's
          area ``>= iou_thresh``, as COCO's crowd matching), which is ignored.

        VOC ``difficult`` objects are left out as in :meth:`compute`: never "missed", and a detection
        with ``IoU >= iou_thresh`` to one that matched nothing else is ignored.
        """
        C = len(self.classes)
        matrix = torch.zeros(C + 1, C + 1, dtype=torch.int64)
        for entry in self._images.values():
            gt_boxes = _xywh_to_xyxy([a["bbox"] for a in entry.gts])
            gt_labels = torch.tensor([a["category_id"] - 1 for a in entry.gts], dtype=torch.int64)
            crowd = torch.tensor([bool(a["iscrowd"]) for a in entry.gts], dtype=torch.bool)
            dts = [r for r in entry.dts if r["score"] >= score_thresh]
            dt_boxes = _xywh_to_xyxy([r["bbox"] for r in dts])
            dt_labels = torch.tensor([r["category_id"] - 1 for r in dts], dtype=torch.int64)

            hard = torch.tensor([bool(a.get("difficult", 0)) for a in entry.gts], dtype=torch.bool)
            g_boxes, g_labels = gt_boxes[~crowd & ~hard], gt_labels[~crowd & ~hard]
            iou = box_iou(dt_boxes, g_boxes)  # (D, G)
            same = dt_labels[:, None] == g_labels[None, :]
            dt_used = torch.zeros(len(dts), dtype=torch.bool)
            gt_used = torch.zeros(len(g_boxes), dtype=torch.bool)
            for allowed in (same, torch.ones_like(same)):
                for d, g in _greedy_pairs(torch.where(allowed, iou, torch.zeros_like(iou)), iou_thresh,
                                          dt_used, gt_used):
                    matrix[g_labels[g], dt_labels[d]] += 1
            for g in (~gt_used).nonzero().flatten().tolist():
                matrix[g_labels[g], C] += 1
            in_crowd = _inside_crowd(dt_boxes, gt_boxes[crowd], iou_thresh)
            on_hard = (box_iou(dt_boxes, gt_boxes[hard & ~crowd]) >= iou_thresh).any(1)
            for d in (~dt_used & ~in_crowd & ~on_hard).nonzero().flatten().tolist():
                matrix[C, dt_labels[d]] += 1
        return matrix


def _xywh_to_xyxy(boxes: list[list[float]]) -> torch.Tensor:
    b = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


def _greedy_pairs(iou: torch.Tensor, thresh: float, dt_used: torch.Tensor,
                  gt_used: torch.Tensor) -> list[tuple[int, int]]:
    """One-to-one pairs ``(d, g)`` with ``iou >= thresh``, highest IoU first, skipping (and then marking)
    the rows and columns already used."""
    pairs = []
    d_idx, g_idx = torch.nonzero(iou >= thresh, as_tuple=True)
    order = iou[d_idx, g_idx].argsort(descending=True, stable=True)
    for d, g in zip(d_idx[order].tolist(), g_idx[order].tolist()):
        if not dt_used[d] and not gt_used[g]:
            dt_used[d] = gt_used[g] = True
            pairs.append((d, g))
    return pairs


def _inside_crowd(dt_boxes: torch.Tensor, crowd_boxes: torch.Tensor, thresh: float) -> torch.Tensor:
    """bool ``(D,)``: detection covered by a crowd box (intersection / detection area ``>= thresh``)."""
    if len(crowd_boxes) == 0 or len(dt_boxes) == 0:
        return torch.zeros(len(dt_boxes), dtype=torch.bool)
    lt = torch.maximum(dt_boxes[:, None, :2], crowd_boxes[None, :, :2])
    rb = torch.minimum(dt_boxes[:, None, 2:], crowd_boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # (D, K)
    area = (dt_boxes[:, 2:] - dt_boxes[:, :2]).clamp(min=0).prod(-1)  # (D,)
    return (inter / area.clamp(min=1e-9)[:, None] >= thresh).any(1)
