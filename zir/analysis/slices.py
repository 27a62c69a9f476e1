"""The lecture's questions as pure functions: object size and crowding of every ground-truth object,
bins over them, the metric per bin, and the zoom-out (the camera moving away).

Everything here works on zir's own types (:class:`~zir.data.contract.Target`,
:class:`~zir.data.contract.DetectionPrediction`, ...) and knows nothing of models or files.

**AP per bin.** The objects outside a bin become "ignore" ground truth (the evaluator's ``difficult``
flag): they are not objects to find, and a detection matched to one is neither a true nor a false
positive. Unmatched detections stay false positives in every bin (a false positive has no ground-truth
size or crowding to be binned by). COCO's own APs/APm/APl instead also ignore unmatched detections whose
*own* area is outside the range; the report shows COCO's numbers for S/M/L next to these bins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from zir.data.contract import ClassPrediction, DetectionPrediction, Prediction, SemanticPrediction, Target

COCO_AREAS = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, math.inf))
"""COCO's area ranges in pixels (``area < 32^2`` small, ``< 96^2`` medium, else large)."""
RELATIVE_SIZE = (0.0, 0.05, 0.1, 0.2, 0.4, math.inf)
"""Bin edges of relative size: ``sqrt(object area / image area)`` (about the object's side over the
image's; the synthetic data's recorded ``scale``, diameter over side, where present)."""
CROWD_IOU = (("alone", 0.0, 0.0), ("IoU (0, 0.1]", 0.0, 0.1), ("IoU (0.1, 0.3]", 0.1, 0.3),
             ("IoU > 0.3", 0.3, 1.0))
"""Crowding bins by an object's largest IoU with another object: ``(name, low, high]`` (alone: exactly 0)."""
SYNTH_OVERLAP = (("not hidden", 0.0, 0.0), ("hidden (0, 0.25]", 0.0, 0.25), ("hidden (0.25, 0.5]", 0.25, 0.5),
                 ("hidden > 0.5", 0.5, 1.0))
"""Bins of the synthetic data's recorded ``overlap`` (fraction of the object hidden by later objects)."""
ZOOM_FACTORS = (1.0, 0.75, 0.5, 0.35, 0.25)
QUICK_ZOOM_FACTORS = (1.0, 0.5, 0.25)


# --------------------------------------------------------------------------------------------------
# Measures per object


def object_areas(target: Target) -> Tensor:
    """float64 ``(N,)`` COCO area of each object: its mask's pixel count where there are masks, else the
    box's ``w * h`` (what the evaluator gives pycocotools)."""
    if target.masks is not None:
        return target.masks.flatten(1).bool().sum(1).double()
    wh = (target.boxes[:, 2:] - target.boxes[:, :2]).double().clamp(min=0)
    return wh[:, 0] * wh[:, 1]


def relative_size(target: Target, meta: Sequence[dict[str, Any]] | None = None) -> Tensor:
    """float64 ``(N,)`` ``sqrt(area / image area)``, or the recorded ``scale`` of each object when ``meta``
    (one dict per object, e.g. the synthetic data's ``objects_meta``) has one for every object."""
    if meta is not None and len(meta) == len(target.boxes) and all("scale" in m for m in meta):
        return torch.tensor([float(m["scale"]) for m in meta], dtype=torch.float64)
    if target.size is None:
        raise ValueError("relative size needs the image size (Target.size)")
    h, w = target.size
    return (object_areas(target) / max(h * w, 1)).sqrt()


def crowding(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """How crowded each object is: ``(count, max_iou)``.

    Args:
        boxes: float ``(N, 4)`` XYXY of the objects of one image.

    Returns:
        int64 ``(N,)`` how many other objects its box overlaps (intersection > 0), and float64 ``(N,)``
        its largest IoU with another object (0 when alone).
    """
    n = len(boxes)
    if n < 2:
        return torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.float64)
    b = boxes.double()
    iou = box_iou(b, b).fill_diagonal_(0)  # (N, N)
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1).fill_diagonal_(0)
    return (inter > 0).sum(1), iou.max(1).values


def bin_index(values: Tensor, bins: Sequence[tuple[str, float, float]], left_closed: bool = False) -> Tensor:
    """int64 ``(N,)``: the bin of each value, ``-1`` for none.

    A bin ``(name, low, high)`` holds ``low < v <= high`` (crowding), or with ``left_closed``
    ``low <= v < high`` (sizes, as COCO's area ranges); ``low == high == 0`` holds exactly 0 ("alone")."""
    v = values.double()
    out = torch.full(v.shape, -1, dtype=torch.int64)
    for k, (_, low, high) in enumerate(bins):
        if low == high == 0:
            inside = v == 0
        else:
            inside = (v >= low) & (v < high) if left_closed else (v > low) & (v <= high)
        out[inside & (out < 0)] = k
    return out


def edges_to_bins(edges: Sequence[float], fmt: str = "{:g}") -> tuple[tuple[str, float, float], ...]:
    """Edges ``e0, e1, ...`` as bins ``[e0, e1), [e1, e2), ...`` (use ``bin_index(..., left_closed=True)``)."""
    return tuple((f"[{fmt.format(lo)}, {fmt.format(hi)})" if math.isfinite(hi) else f">= {fmt.format(lo)}", lo, hi)
                 for lo, hi in zip(edges[:-1], edges[1:]))


# --------------------------------------------------------------------------------------------------
# Metrics per bin


def ignore_outside(target: Target, keep: Tensor) -> Target:
    """``target`` with every object where ``keep`` is False turned into ignore ground truth (``difficult``)."""
    return replace(target, difficult=target.difficult | ~keep.to(torch.bool))


def recall_at(predictions: Sequence[DetectionPrediction], targets: Sequence[Target], score: float,
              iou_thresh: float = 0.5) -> list[Tensor]:
    """Per image, bool ``(N,)``: which ground-truth objects a detection with ``score >= score`` finds.

    Matching is one to one and greedy by IoU within the same class (IoU >= ``iou_thresh``), as COCO at
    one threshold; crowd and ``difficult`` objects count as found never (leave them out of bins).
    """
    found = []
    for pred, target in zip(predictions, targets):
        keep = pred.scores >= score
        dt_boxes, dt_labels = pred.boxes[keep].double(), pred.labels[keep]
        gt_boxes = target.boxes.double()
        hit = torch.zeros(len(gt_boxes), dtype=torch.bool)
        if len(dt_boxes) and len(gt_boxes):
            iou = box_iou(dt_boxes, gt_boxes)  # (D, G)
            iou[dt_labels[:, None] != target.labels[None, :]] = 0
            iou[:, target.iscrowd | target.difficult] = 0
            used = torch.zeros(len(dt_boxes), dtype=torch.bool)
            d_idx, g_idx = torch.nonzero(iou >= iou_thresh, as_tuple=True)
            order = iou[d_idx, g_idx].argsort(descending=True, stable=True)
            for d, g in zip(d_idx[order].tolist(), g_idx[order].tolist()):
                if not used[d] and not hit[g]:
                    used[d] = hit[g] = True
        found.append(hit)
    return found


@dataclass
class BinResult:
    """One bin's numbers: ``objects`` in it, and the metrics (NaN when the bin is empty)."""

    name: str
    objects: int
    metrics: dict[str, float]


def detection_bins(predictions: Sequence[DetectionPrediction], targets: Sequence[Target],
                   bin_of: Sequence[Tensor], bins: Sequence[tuple[str, float, float]],
                   make_metric: Callable[[], Any], score: float,
                   metrics_out: list[tuple[int, Any, list[Target]]] | None = None) -> list[BinResult]:
    """AP (the evaluator's numbers, objects outside the bin ignored; module docstring) and recall at
    ``score`` of the objects of each bin.

    Args:
        bin_of: per image, int64 ``(N,)`` the bin of each object (``-1``: in none).
        make_metric: a fresh :class:`~zir.metrics.coco.CocoEvaluator` of the run's classes and iou types.
        metrics_out: if given, gets ``(bin, its evaluator, its targets)`` for each bin with objects (the
            bootstrap resamples them).
    """
    found = recall_at(predictions, targets, score)
    out = []
    for k, (name, _, _) in enumerate(bins):
        counted = [(b == k) & ~t.iscrowd & ~t.difficult for b, t in zip(bin_of, targets)]
        n = int(sum(int(c.sum()) for c in counted))
        if n == 0:
            out.append(BinResult(name, 0, {}))
            continue
        metric = make_metric()
        binned = [ignore_outside(t, c) for t, c in zip(targets, counted)]
        metric.update(list(predictions), binned)
        if metrics_out is not None:
            metrics_out.append((k, metric, binned))
        values = {k2: v for k2, v in metric.compute().items() if k2.endswith(("/AP", "/AP50"))}
        values[f"recall@{score:g}"] = sum(int((f & c).sum()) for f, c in zip(found, counted)) / n
        out.append(BinResult(name, n, values))
    return out


def accuracy_bins(predictions: Sequence[ClassPrediction], labels: Sequence[int], values: Tensor,
                  bins: Sequence[tuple[str, float, float]], left_closed: bool = True) -> list[BinResult]:
    """Classification accuracy per bin of a per-image value (e.g. the object's recorded scale)."""
    which = bin_index(values, bins, left_closed)
    correct = torch.tensor([int(p.label) == int(y) for p, y in zip(predictions, labels)])
    out = []
    for k, (name, _, _) in enumerate(bins):
        m = which == k
        n = int(m.sum())
        out.append(BinResult(name, n, {"accuracy": float(correct[m].float().mean())} if n else {}))
    return out


# --------------------------------------------------------------------------------------------------
# Zoom out: the camera moving away


def zoom_out(image: Tensor, factor: float) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Shrink an image by ``factor`` and pad it back to its size, centred.

    Args:
        image: float ``(3, H, W)`` in [0, 1].
        factor: in (0, 1]; 1 gives the image back unchanged.

    Returns:
        ``(zoomed (3, H, W), (x0, y0, w, h))``: the shrunk image lies at ``[y0:y0+h, x0:x0+w]``. The
        padding is the image's mean colour, so the border adds no edge of its own (a black frame would
        be a new object-like contrast).
    """
    if not 0 < factor <= 1:
        raise ValueError(f"zoom factor must be in (0, 1], got {factor}")
    _, H, W = image.shape
    if factor == 1:
        return image, (0, 0, W, H)
    h, w = max(1, round(H * factor)), max(1, round(W * factor))
    small = F.interpolate(image[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    out = image.mean(dim=(1, 2), keepdim=True).expand(-1, H, W).clone()
    y0, x0 = (H - h) // 2, (W - w) // 2
    out[:, y0:y0 + h, x0:x0 + w] = small.clamp(0, 1)
    return out, (x0, y0, w, h)


def unzoom(pred: Prediction, window: tuple[int, int, int, int], size: tuple[int, int]) -> Prediction:
    """Map a prediction made on a :func:`zoom_out` image back to the original image's pixels, so that it
    is scored against the original targets. ``size`` is the original ``(H, W)``."""
    x0, y0, w, h = window
    H, W = size
    if isinstance(pred, ClassPrediction):
        return pred
    if isinstance(pred, DetectionPrediction):
        shift = torch.tensor([x0, y0, x0, y0], dtype=pred.boxes.dtype, device=pred.boxes.device)
        scale = torch.tensor([W / w, H / h, W / w, H / h], dtype=pred.boxes.dtype, device=pred.boxes.device)
        boxes = (pred.boxes - shift) * scale
        boxes = torch.stack([boxes[:, 0].clamp(0, W), boxes[:, 1].clamp(0, H),
                             boxes[:, 2].clamp(0, W), boxes[:, 3].clamp(0, H)], dim=1)
        masks = None if pred.masks is None else _resize_nearest(pred.masks[:, y0:y0 + h, x0:x0 + w], (H, W))
        return DetectionPrediction(boxes, pred.scores, pred.labels, masks)
    if isinstance(pred, SemanticPrediction):
        return SemanticPrediction(_resize_nearest(pred.semantic[None, y0:y0 + h, x0:x0 + w], (H, W))[0])
    raise TypeError(f"zoom-out has no mapping back for {type(pred).__name__}")


def _resize_nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``(N, h, w)`` masks or label maps of any dtype -> ``(N, H, W)``, nearest neighbour."""
    if x.shape[-2:] == size:
        return x
    if len(x) == 0:
        return x.new_zeros((0, *size))
    return F.interpolate(x[None].float(), size=size, mode="nearest")[0].to(x.dtype)


def zoomed(predict: Callable[[list[Tensor]], list[Prediction]], factor: float
           ) -> Callable[[list[Tensor]], list[Prediction]]:
    """A stand-in for ``predict`` that sees every image zoomed out by ``factor`` and answers in the
    original pixels (``zir.engine.evaluate.evaluate_predict`` takes it as it takes a model's)."""

    def run(images: list[Tensor]) -> list[Prediction]:
        pairs = [zoom_out(im, factor) for im in images]
        preds = predict([p[0] for p in pairs])
        return [unzoom(p, window, tuple(im.shape[-2:])) for p, (_, window), im in zip(preds, pairs, images)]

    return run



# --------------------------------------------------------------------------------------------------
# Geometric sweeps: rotation and translation, predictions mapped back to the original pixels

ROTATIONS = (0.0, 5.0, 10.0, 20.0, 30.0)
TRANSLATIONS = (0.0, 0.05, 0.1, 0.2, 0.3)
QUICK_ROTATIONS = (0.0, 15.0)
QUICK_TRANSLATIONS = (0.0, 0.1)


def _warp(x: Any, kind: str, amount: float, size: tuple[int, int], fill: Any = 0.0) -> Any:
    """Rotate (degrees, counter-clockwise) or translate (fraction of the width and height, right and down)
    an image, mask, label map or tv_tensors box set, torchvision's geometry doing boxes and pixels alike."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    nearest = not isinstance(x, torch.Tensor) or x.dtype != torch.float32
    mode = InterpolationMode.NEAREST if nearest else InterpolationMode.BILINEAR
    if kind == "rotation":
        return TF.rotate(x, amount, interpolation=mode, fill=fill)
    H, W = size
    return TF.affine(x, angle=0.0, translate=[round(amount * W), round(amount * H)], scale=1.0, shear=[0.0, 0.0],
                     interpolation=mode, fill=fill)


def warp_back(pred: Prediction, kind: str, amount: float, size: tuple[int, int]) -> Prediction:
    """Map a prediction made on a :func:`warped` image back to the original pixels (the inverse warp).
    Boxes: the inverse rotation of a box is the box around its rotated corners (torchvision's rule), so
    rotation also loosens correct boxes a little; translation maps them back exactly."""
    from torchvision import tv_tensors

    inverse = -amount
    if isinstance(pred, ClassPrediction):
        return pred
    if isinstance(pred, DetectionPrediction):
        boxes = tv_tensors.BoundingBoxes(pred.boxes, format="XYXY", canvas_size=size)
        back = _warp(boxes, kind, inverse, size).as_subclass(torch.Tensor)
        masks = None if pred.masks is None else _warp(pred.masks.to(torch.uint8), kind, inverse, size).bool()
        return DetectionPrediction(back, pred.scores, pred.labels, masks)
    if isinstance(pred, SemanticPrediction):
        return SemanticPrediction(_warp(pred.semantic[None], kind, inverse, size)[0])
    raise TypeError(f"geometric sweeps have no mapping back for {type(pred).__name__}")


def warped(predict: Callable[[list[Tensor]], list[Prediction]], kind: str, amount: float
           ) -> Callable[[list[Tensor]], list[Prediction]]:
    """A stand-in for ``predict`` that sees every image rotated by ``amount`` degrees or translated by
    ``amount`` of its size (``kind``: ``rotation`` or ``translation``; the uncovered part is the image's
    mean colour) and answers in the original pixels."""
    if kind not in ("rotation", "translation"):
        raise ValueError(f"kind must be rotation or translation, got {kind!r}")

    def run(images: list[Tensor]) -> list[Prediction]:
        moved = [_warp(im, kind, amount, tuple(im.shape[-2:]), im.mean(dim=(1, 2)).tolist()) for im in images]
        preds = predict(moved)
        return [warp_back(p, kind, amount, tuple(im.shape[-2:])) for p, im in zip(preds, images)]

    return run
