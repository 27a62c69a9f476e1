"""Box encodings: what a detector's regression head predicts instead of raw pixel coordinates.

* :class:`BoxCoder`: R-CNN's deltas of a box relative to an anchor or proposal (Girshick et al. 2014,
  appendix C; Ren et al. 2015, equation 2), the same numbers as torchvision's ``BoxCoder``.
* :func:`encode_yolo_v1` / :func:`decode_yolo_v1`: YOLO v1's grid targets (Redmon et al. 2015,
  section 2): a box belongs to the cell that holds its centre; ``x, y`` are the centre's offset within
  that cell and ``w, h`` fractions of the image.
* :func:`encode_ltrb` / :func:`decode_ltrb`: anchor-free detectors' distances from a point to the four box
  sides (FCOS, GFL, YOLOv8), and :func:`dfl_expectation`, GFL's distance as the expectation of a
  distribution over ``0..R``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RCNN_HEAD_WEIGHTS", "RPN_WEIGHTS", "BoxCoder", "decode_ltrb", "decode_yolo_v1", "dfl_expectation",
           "encode_ltrb", "encode_yolo_v1"]

RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
RCNN_HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
"""Fast/Faster R-CNN's box head scales its targets so they have roughly unit variance."""


def _centres(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]  # exclusive x2: no +1
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


@dataclass(frozen=True)
class BoxCoder:
    """Encode boxes as ``(dx, dy, dw, dh)`` relative to reference boxes, and decode them back.

    ``dx = wx * (x - xa) / wa``, ``dy = wy * (y - ya) / ha``, ``dw = ww * log(w / wa)``,
    ``dh = wh * log(h / ha)`` with centres ``x, y`` and sizes ``w, h``; ``a`` is the anchor.

    Attributes:
        weights: ``(wx, wy, ww, wh)``: :data:`RPN_WEIGHTS` for the RPN, :data:`RCNN_HEAD_WEIGHTS`
            for the box head.
        bbox_xform_clip: upper bound of ``dw / ww`` and ``dh / wh`` when decoding, so ``exp`` cannot
            overflow on an untrained head (boxes at most 1000/16 times their anchor).
    """

    weights: tuple[float, float, float, float] = RPN_WEIGHTS
    bbox_xform_clip: float = math.log(1000.0 / 16)

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Deltas of ``boxes (N, 4)`` relative to ``anchors (N, 4)`` (XYXY) -> ``(N, 4)``.

        Both must have positive width and height (``log`` of zero is ``-inf``): drop degenerate
        ground truth with ``zir.ops.boxes.remove_small_boxes`` before matching.
        """
        wx, wy, ww, wh = self.weights
        x, y, w, h = _centres(boxes)
        xa, ya, wa, ha = _centres(anchors)
        return torch.stack([wx * (x - xa) / wa, wy * (y - ya) / ha,
                            ww * torch.log(w / wa), wh * torch.log(h / ha)], dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes from deltas: ``deltas (N, 4)`` or ``(N, K, 4)`` (one box per class), ``anchors (N, 4)``
        -> XYXY of the shape of ``deltas``.

        A box head's ``(N, 4 * K)`` output is ``.view(N, K, 4)`` here.
        """
        if deltas.dim() == 3:
            anchors = anchors[:, None, :]
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        xa, ya, wa, ha = _centres(anchors)
        dw = (deltas[..., 2] / ww).clamp(max=self.bbox_xform_clip)
        dh = (deltas[..., 3] / wh).clamp(max=self.bbox_xform_clip)
        x = deltas[..., 0] / wx * wa + xa
        y = deltas[..., 1] / wy * ha + ya
        half_w = 0.5 * torch.exp(dw) * wa
        half_h = 0.5 * torch.exp(dh) * ha
        return torch.stack([x - half_w, y - half_h, x + half_w, y + half_h], dim=-1)


def encode_yolo_v1(boxes: Tensor, labels: Tensor, image_size: tuple[int, int], S: int,
                   num_classes: int) -> Tensor:
    """YOLO v1's target grid for one image.

    Args:
        boxes: ``(N, 4)`` XYXY pixels, inside the image (clip them first).
        labels: int64 ``(N,)`` class ids in ``[0, num_classes)``.
        image_size: ``(H, W)`` of the image the boxes belong to.
        S: the grid is ``S x S`` cells.

    Returns:
        float ``(S, S, 5 + C)``: at ``[i, j]`` (row ``i``, column ``j``) of a cell that holds an object's
        centre ``[x, y, w, h, 1, one-hot class]``, with ``x, y`` in ``[0, 1]`` the centre's position
        within the cell and ``w, h`` the box size as fractions of the image; zeros elsewhere. Channel 4
        is the paper's ``1_i^obj``. The layout is the prediction's ``[x, y, w, h, confidence]`` with one
        box, followed by the class scores. A cell holds one object: when several centres fall in the
        same cell, the largest box is kept.
    """
    H, W = image_size
    target = boxes.new_zeros((S, S, 5 + num_classes), dtype=torch.float32)
    if len(boxes) == 0:
        return target
    boxes = boxes.to(torch.float32)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 * S / W  # centre in cell units
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 * S / H
    j = cx.floor().long().clamp(0, S - 1)  # a centre exactly on the right/bottom edge stays in the grid
    i = cy.floor().long().clamp(0, S - 1)
    w = (boxes[:, 2] - boxes[:, 0]) / W
    h = (boxes[:, 3] - boxes[:, 1]) / H
    # One object per cell: the largest box (ties: the first listed) wins its cell.
    order = torch.argsort(w * h, descending=True, stable=True)
    cell = (i * S + j)[order]
    rank = torch.arange(len(order), device=cell.device)
    first = torch.full((S * S,), len(order), device=cell.device).scatter_reduce(0, cell, rank, "amin")
    win = order[first[first < len(order)]]  # (K,) indices into boxes, K occupied cells
    flat = target.view(S * S, 5 + num_classes)
    values = torch.stack([cx - j, cy - i, w, h, torch.ones_like(w)], dim=-1)  # (N, 5)
    flat[i[win] * S + j[win], :5] = values[win]
    flat[i[win] * S + j[win], 5 + labels[win].long()] = 1
    return target


def decode_yolo_v1(cells: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Cell-relative boxes back to image pixels: ``(..., S, S, 4)`` ``[x, y, w, h]`` -> ``(..., S, S, 4)``
    XYXY.

    Works for targets (``target[..., :4]``) and for each of a prediction's B boxes
    (``pred[..., 5 * b : 5 * b + 4]``), with any leading batch dimensions. Cells without an object
    decode to meaningless boxes: select them with ``target[..., 4] > 0``.
    """
    H, W = image_size
    S_y, S_x = cells.shape[-3], cells.shape[-2]
    cols = torch.arange(S_x, dtype=cells.dtype, device=cells.device)  # j, per column
    rows = torch.arange(S_y, dtype=cells.dtype, device=cells.device)[:, None]  # i, per row
    cx = (cells[..., 0] + cols) * (W / S_x)
    cy = (cells[..., 1] + rows) * (H / S_y)
    half_w = cells[..., 2] * W / 2
    half_h = cells[..., 3] * H / 2
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


# --------------------------------------------------------------------------------------------------
# Anchor-free distances (FCOS, GFL, YOLOv8): a box as its four distances from a point


def encode_ltrb(points: Tensor, boxes: Tensor, stride: Tensor | float = 1.0) -> Tensor:
    """XYXY ``boxes (..., 4)`` -> distances ``(left, top, right, bottom)`` from ``points (..., 2)`` to the box
    sides, in units of ``stride`` (a scalar or ``(...)``): FCOS's regression targets (Tian et al. 2019, eq. 1)."""
    x, y = points[..., 0], points[..., 1]
    d = torch.stack([x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y], dim=-1)
    return d / (stride[..., None] if isinstance(stride, Tensor) else stride)


def decode_ltrb(points: Tensor, distances: Tensor, stride: Tensor | float = 1.0) -> Tensor:
    """Inverse of :func:`encode_ltrb`: ``(left, top, right, bottom) (..., 4)`` from ``points (..., 2)`` -> XYXY."""
    d = distances * (stride[..., None] if isinstance(stride, Tensor) else stride)
    return torch.cat([points - d[..., :2], points + d[..., 2:]], dim=-1)


def dfl_expectation(logits: Tensor) -> Tensor:
    """GFL's box-side distribution -> its expected distance (Li et al. 2020, equation 5): ``(..., R + 1)``
    logits -> ``(...)``, ``sum_i softmax(logits)_i * i``.

    Written as a softmax and one matrix product ``(N, R + 1) @ (R + 1, 1)`` with ``[0, 1, ..., R]`` (not a
    gather or a 1x1 conv with fixed weights) so that the exported graph stays plain operators. The 2-D
    product matters for speed: onnxruntime runs ``(..., R + 1) @ (R + 1,)`` as one tiny product per row
    (1.4 ms for a 320 px image's 8400 sides; as one GEMM it drops out of ``export_speed.py --profile``'s top ten).
    """
    R1 = logits.shape[-1]
    bins = torch.arange(R1, dtype=logits.dtype, device=logits.device)
    return (logits.softmax(dim=-1).reshape(-1, R1) @ bins[:, None]).reshape(logits.shape[:-1])
