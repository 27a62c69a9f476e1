"""Box geometry: format conversions, overlaps, resizing maps, clipping, NMS and box merging.

Convention (``zir/data/contract.py``): boxes are float ``(N, 4)`` XYXY in absolute pixels with exclusive
``x2``/``y2`` edges, so ``width = x2 - x1`` and a box over pixel columns 10..19 is ``x1=10, x2=20``.
Image sizes are ``(H, W)`` as in torch. Other formats exist only at the edges and are converted here.

Operations torchvision already has are re-exported, not rewritten: :func:`box_area`, :func:`iou`,
:func:`giou`, :func:`clip`, :func:`remove_small_boxes`, :func:`nms`, :func:`batched_nms`. Their
arithmetic (``width = x2 - x1``) is the exclusive convention's, so they need no wrapping.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_area, box_convert, nms, remove_small_boxes
from torchvision.ops import box_iou as iou
from torchvision.ops import clip_boxes_to_image as clip
from torchvision.ops import generalized_box_iou as giou

__all__ = [
    "BoxFormat", "Letterbox", "aligned_iou", "batched_nms", "box_area", "clip", "convert", "from_voc",
    "from_yolo", "giou", "ioa", "iou", "letterbox", "letterbox_boxes", "nms", "remove_small_boxes",
    "scale_boxes", "to_voc", "to_yolo", "unletterbox_boxes", "weighted_merge",
]

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
"""``xyxy``: corners; ``xywh``: top-left corner and size (COCO); ``cxcywh``: centre and size."""

Size = tuple[int, int]
"""An image size ``(H, W)`` in pixels."""


# --------------------------------------------------------------------------------------------------
# Formats


def convert(boxes: Tensor, src: BoxFormat, dst: BoxFormat) -> Tensor:
    """Convert ``(..., 4)`` boxes between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"`` (same units)."""
    if src == dst:
        return boxes.clone()
    shape = boxes.shape
    return box_convert(boxes.reshape(-1, 4), in_fmt=src, out_fmt=dst).reshape(shape)


def to_yolo(boxes: Tensor, image_size: Size) -> Tensor:
    """XYXY pixels ``(N, 4)`` -> YOLO label format: ``cx, cy, w, h`` as fractions of the image size."""
    H, W = image_size
    return convert(boxes, "xyxy", "cxcywh") / boxes.new_tensor([W, H, W, H])


def from_yolo(boxes: Tensor, image_size: Size) -> Tensor:
    """YOLO ``cx, cy, w, h`` fractions of the image ``(N, 4)`` -> XYXY pixels."""
    H, W = image_size
    return convert(boxes * boxes.new_tensor([W, H, W, H]), "cxcywh", "xyxy")


def from_voc(boxes: Tensor) -> Tensor:
    """VOC's 1-based inclusive corners ``(N, 4)`` -> zir's 0-based corners with exclusive ``x2, y2``.

    VOC's ``xmin=1, xmax=10`` names the first ten pixel columns, which are ``x1=0, x2=10`` in zir:
    only the top-left corner moves.
    """
    return boxes - boxes.new_tensor([1, 1, 0, 0])


def to_voc(boxes: Tensor) -> Tensor:
    """zir boxes ``(N, 4)`` -> VOC's 1-based inclusive corners (inverse of :func:`from_voc`)."""
    return boxes + boxes.new_tensor([1, 1, 0, 0])


# --------------------------------------------------------------------------------------------------
# Overlaps


def aligned_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-9) -> Tensor:
    """IoU of corresponding boxes: ``(..., 4)`` and ``(..., 4)`` (broadcast) -> ``(...)``.

    Unlike :func:`iou` (every pair, ``(N, M)``), this pairs boxes position by position, as YOLO's loss
    needs (each predicted box against the target of its cell). Two empty boxes have IoU 0, not NaN,
    because empty cells carry all-zero target boxes.
    """
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area1 = (boxes1[..., 2:] - boxes1[..., :2]).clamp(min=0).prod(-1)
    area2 = (boxes2[..., 2:] - boxes2[..., :2]).clamp(min=0).prod(-1)
    return inter / (area1 + area2 - inter).clamp(min=eps)


def ioa(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over the area of the second box, every pair: ``(N, 4), (M, 4) -> (N, M)``.

    ``ioa[i, j]`` is the fraction of box ``j`` covered by box ``i`` (1 when ``i`` hides ``j`` entirely),
    a measure of occlusion. Empty boxes ``j`` give 0.
    """
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area2 = box_area(boxes2)
    return torch.where(area2 > 0, inter / area2.clamp(min=torch.finfo(inter.dtype).tiny), 0.0)


# --------------------------------------------------------------------------------------------------
# Mapping between image sizes


def scale_boxes(boxes: Tensor, from_size: Size, to_size: Size) -> Tensor:
    """Map ``(N, 4)`` boxes from an image of ``from_size`` to the same image resized to ``to_size``.

    With exclusive edges pixel boundaries scale exactly (no ``-1`` terms), so mapping a model's
    predictions back to the original image is ``scale_boxes(pred, model_size, original_size)``.
    """
    (h0, w0), (h1, w1) = from_size, to_size
    return boxes * boxes.new_tensor([w1 / w0, h1 / h0, w1 / w0, h1 / h0])


class Letterbox(NamedTuple):
    """How an image of some size is resized (keeping its aspect ratio) and padded to a canvas.

    Attributes:
        resized: ``(h, w)`` the image is resized to before padding.
        pad: ``(top, left)`` pixels of padding before the image; the rest goes below and to the right.
    """

    resized: Size
    pad: tuple[int, int]


def letterbox(from_size: Size, to_size: Size) -> Letterbox:
    """The resize-with-padding of an image of ``from_size`` onto a ``to_size`` canvas, centred.

    The image code and the box code both take their numbers from here, so boxes follow pixels exactly
    even after rounding the resized size to whole pixels.
    """
    (h0, w0), (h1, w1) = from_size, to_size
    s = min(h1 / h0, w1 / w0)
    h, w = min(h1, max(1, round(h0 * s))), min(w1, max(1, round(w0 * s)))
    return Letterbox((h, w), ((h1 - h) // 2, (w1 - w) // 2))


def letterbox_boxes(boxes: Tensor, from_size: Size, to_size: Size) -> Tensor:
    """Map ``(N, 4)`` boxes of an image of ``from_size`` into its letterboxed ``to_size`` canvas."""
    lb = letterbox(from_size, to_size)
    top, left = lb.pad
    return scale_boxes(boxes, from_size, lb.resized) + boxes.new_tensor([left, top, left, top])


def unletterbox_boxes(boxes: Tensor, from_size: Size, to_size: Size) -> Tensor:
    """Inverse of :func:`letterbox_boxes`: boxes on the ``to_size`` canvas -> the ``from_size`` image.

    The result is not clipped: predictions reaching into the padding extend past the image; use
    :func:`clip` to cut them.
    """
    lb = letterbox(from_size, to_size)
    top, left = lb.pad
    return scale_boxes(boxes - boxes.new_tensor([left, top, left, top]), lb.resized, from_size)


# --------------------------------------------------------------------------------------------------
# Merging overlapping detections


def weighted_merge(boxes: Tensor, scores: Tensor, iou_thresh: float,
                   idxs: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """NMS that replaces each kept box by the score-weighted mean of the boxes it suppresses.

    A variant of OverFeat's box merging (Sermanet et al. 2013, section 4.3), which averages the boxes
    of one object instead of keeping one of them; OverFeat merges pairs greedily by a match score,
    here each box joins the highest-scoring kept box that overlaps it by IoU > ``iou_thresh`` (the box
    that suppresses it in :func:`nms`), so the kept set is exactly NMS's.

    Args:
        boxes: ``(N, 4)`` XYXY.
        scores: ``(N,)``, used as weights (must be >= 0).
        iou_thresh: boxes overlapping more than this are merged.
        idxs: ``(N,)`` optional class ids: boxes of different classes never merge (as ``batched_nms``).

    Returns:
        ``(merged (K, 4), keep (K,))``: merged boxes and the indices of the boxes they replace, in
        decreasing order of score (``scores[keep]`` and ``labels[keep]`` go with them).
    """
    if boxes.numel() == 0:
        return boxes.reshape(0, 4), torch.zeros((0,), dtype=torch.int64, device=boxes.device)
    if idxs is not None:  # shift each class to its own region so classes cannot overlap
        offsets = idxs.to(boxes) * (boxes.max() - boxes.min() + 1)
        boxes = boxes + offsets[:, None]
    keep = nms(boxes, scores, iou_thresh)
    ious = iou(boxes[keep], boxes)  # (K, N)
    over = ious > iou_thresh
    over[torch.arange(len(keep), device=boxes.device), keep] = True  # a kept box always joins itself
    # Each box joins the first (highest-scoring) kept box over it; if rounding left it under every
    # kept box at exactly the threshold, the kept box it overlaps most.
    owner = torch.where(over.any(0), over.to(torch.uint8).argmax(0), ious.nan_to_num(0).argmax(0))
    weights = scores.to(boxes.dtype)
    total = torch.zeros(len(keep), dtype=boxes.dtype, device=boxes.device).index_add_(0, owner, weights)
    summed = torch.zeros((len(keep), 4), dtype=boxes.dtype, device=boxes.device)
    summed.index_add_(0, owner, boxes * weights[:, None])
    # All-zero weights in a group fall back to the kept box itself.
    merged = torch.where(total[:, None] > 0, summed / total.clamp(min=1e-12)[:, None], boxes[keep])
    if idxs is not None:
        merged = merged - offsets[keep, None]
    return merged, keep
