"""Label assignment of anchor-free dense detectors: which grid points learn which object.

* :func:`anchor_points`: the centres of every cell of every pyramid level, with their strides.
* :func:`task_aligned_assign`: TOOD's task-aligned assigner (Feng et al. 2021, "TOOD: Task-aligned One-stage
  Object Detection", section 3.2.1), as YOLOv8 uses it (Ultralytics' ``TaskAlignedAssigner``). For every
  object, the points inside its box are ranked by the alignment metric

      t = s^alpha * u^beta                                          (TOOD, equation 4)

  where ``s`` is the point's predicted score for the object's class and ``u`` the IoU of its predicted box
  with the object: a point is a positive only where classification and localisation already agree. The
  ``topk`` best points of each object are its positives; a point claimed by several objects keeps the one
  its box overlaps most. The classification target of a positive is not 1 but the normalised metric

      t^ = t / max_j(t_j) * max_j(u_j)                              (TOOD, section 3.2.2)

  (maxima over the object's positives), so the score learns to rank by localisation quality.

Assignment is free at inference (it only decides the training targets), and the published ablations
credit it with several AP points at equal FLOPs (YOLOX's SimOTA +2.3 AP; TOOD's TAL +0.9 over ATSS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from zir.ops.boxes import iou

__all__ = ["TaskAlignedTargets", "anchor_points", "task_aligned_assign"]


def anchor_points(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int], offset: float = 0.5,
                  device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """The centre of every cell of every level, in image pixels, level after level, row-major.

    Args:
        feature_sizes: ``(h_l, w_l)`` of each level, finest first.
        strides: pixels per cell of each level.
        offset: where in its cell a point sits (0.5: the centre).

    Returns:
        ``(points float32 (A, 2) as (x, y), stride float32 (A,))`` with ``A = sum_l h_l w_l``.
    """
    points, point_strides = [], []
    for (h, w), s in zip(feature_sizes, strides):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + offset) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + offset) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx, yy], dim=-1).reshape(-1, 2))
        point_strides.append(torch.full((h * w,), float(s), device=device))
    return torch.cat(points), torch.cat(point_strides)


@dataclass
class TaskAlignedTargets:
    """What one image's points are trained on.

    Attributes:
        positive: bool ``(A,)``: the point learns a box.
        gt_index: int64 ``(A,)``: the object a positive learns (0 for negatives: read only where positive).
        boxes: float32 ``(A, 4)`` XYXY: the box of that object (negatives: the first object's, or zeros).
        scores: float32 ``(A, C)``: classification targets: the normalised alignment metric ``t^`` at the
            object's class of a positive, 0 elsewhere (and everywhere for negatives).
    """

    positive: Tensor
    gt_index: Tensor
    boxes: Tensor
    scores: Tensor


@torch.no_grad()
def task_aligned_assign(scores: Tensor, pred_boxes: Tensor, points: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                        topk: int = 10, alpha: float = 1.0, beta: float = 6.0, eps: float = 1e-9) -> TaskAlignedTargets:
    """TOOD's task-aligned assignment for one image (see the module docstring).

    Args:
        scores: float ``(A, C)`` predicted class probabilities (after the sigmoid) of the ``A`` points.
        pred_boxes: float ``(A, 4)`` XYXY predicted boxes, in the pixels of ``gt_boxes``.
        points: float ``(A, 2)`` ``(x, y)`` of each point (:func:`anchor_points`).
        gt_boxes: float ``(G, 4)`` XYXY objects; ``G = 0`` gives no positive.
        gt_labels: int64 ``(G,)`` their classes.
        topk: positives per object at most (YOLOv8: 10; TOOD: 13).
        alpha, beta: exponents of the score and the IoU in ``t = s^alpha u^beta`` (YOLOv8: 0.5 and 6;
            TOOD: 1 and 6).

    Returns:
        :class:`TaskAlignedTargets`. Only points whose centre lies strictly inside an object's box are its
        candidates, and a candidate with ``t = 0`` is never a positive.
    """
    A, C = scores.shape
    G = len(gt_boxes)
    out_scores = scores.new_zeros((A, C), dtype=torch.float32)
    if G == 0:
        return TaskAlignedTargets(torch.zeros(A, dtype=torch.bool, device=scores.device),
                                  torch.zeros(A, dtype=torch.long, device=scores.device),
                                  scores.new_zeros((A, 4), dtype=torch.float32), out_scores)
    gt_boxes, pred_boxes, scores = gt_boxes.float(), pred_boxes.float(), scores.float()
    # candidates: points strictly inside the box (TOOD, as ATSS: "the centre of the anchor inside the object")
    x, y = points[:, 0], points[:, 1]
    deltas = torch.stack([x[None] - gt_boxes[:, None, 0], y[None] - gt_boxes[:, None, 1],
                          gt_boxes[:, None, 2] - x[None], gt_boxes[:, None, 3] - y[None]], dim=-1)  # (G, A, 4)
    inside = deltas.amin(dim=-1) > eps  # (G, A)
    overlaps = iou(gt_boxes, pred_boxes).clamp(min=0) * inside  # u, (G, A)
    cls_scores = scores[:, gt_labels.long()].T * inside  # s, (G, A)
    metric = cls_scores.pow(alpha) * overlaps.pow(beta)  # t, (G, A)
    # the top-k candidates of each object by t (fewer when it has fewer candidates: t = 0 never counts)
    k = min(topk, A)
    top = metric.topk(k, dim=1).indices  # (G, k)
    chosen = torch.zeros_like(inside).scatter_(1, top, True)
    positive_gt = chosen & inside & (metric > 0)  # (G, A)
    # a point claimed by several objects keeps the one its predicted box overlaps most
    claims = positive_gt.sum(0)  # (A,)
    best = overlaps.argmax(0)  # (A,)
    several = claims > 1
    positive_gt[:, several] = F.one_hot(best[several], G).T.bool()
    positive = positive_gt.any(0)  # (A,)
    gt_index = positive_gt.float().argmax(0)  # (A,), 0 where negative
    # t^ = t / max t * max u over each object's positives (TOOD section 3.2.2)
    pos_metric = metric * positive_gt
    max_metric = pos_metric.amax(dim=1, keepdim=True)  # (G, 1)
    max_overlap = (overlaps * positive_gt).amax(dim=1, keepdim=True)  # (G, 1)
    norm = (pos_metric * max_overlap / (max_metric + eps)).amax(dim=0)  # (A,)
    labels = gt_labels.long()[gt_index]
    out_scores[positive, labels[positive]] = norm[positive]
    return TaskAlignedTargets(positive, gt_index, gt_boxes[gt_index], out_scores)
