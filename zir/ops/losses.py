"""Losses of dense (one-stage) detectors, as pure functions; each cites its paper.

* :func:`varifocal_loss`: VarifocalNet's (Zhang et al. 2021, "VarifocalNet: An IoU-aware Dense Object
  Detector", equation 2): binary cross-entropy towards an IoU-aware target ``q`` (the quality of a
  positive, 0 for negatives), positives weighted by ``q`` and negatives down-weighted by ``alpha p^gamma``
  as in the focal loss.
* :func:`distribution_focal_loss`: GFL's DFL (Li et al. 2020, "Generalized Focal Loss", equation 6): a box
  side is predicted as a distribution over the integer distances ``0..R``; the loss pushes the mass onto
  the two integers around the target distance.
* :func:`power_complete_box_iou_loss`: Alpha-IoU's power CIoU (He et al. 2021, "Alpha-IoU: A Family of
  Power Intersection over Union Losses for Bounding Box Regression", equation 8): each term of CIoU raised
  to a power ``a``; ``a > 1`` up-weights the loss and gradient of boxes that already overlap well, which the
  paper finds raises AP at high IoU thresholds and helps on small data sets (``a = 3`` recommended).
* box IoU losses are torchvision's (``torchvision.ops.complete_box_iou_loss``: CIoU, Zheng et al. 2020;
  ``generalized_box_iou_loss``: GIoU, Rezatofighi et al. 2019), re-exported here, not rewritten.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import complete_box_iou_loss, generalized_box_iou_loss

__all__ = ["complete_box_iou_loss", "distribution_focal_loss", "generalized_box_iou_loss", "power_complete_box_iou_loss",
           "varifocal_loss"]


def varifocal_loss(logits: Tensor, quality: Tensor, alpha: float = 0.75, gamma: float = 2.0) -> Tensor:
    """VarifocalNet's loss, element-wise (sum it and divide by the positives' total quality, as the paper).

        VFL(p, q) = -q (q log p + (1 - q) log(1 - p))     q > 0   (a positive: its target is its quality)
                  = -alpha p^gamma log(1 - p)              q = 0   (a negative, focal down-weighting)

    Args:
        logits: ``(..., C)`` class logits, ``p = sigmoid(logits)``.
        quality: ``(..., C)`` in [0, 1]: the IoU-aware target at a positive's class, 0 elsewhere.

    Returns:
        ``(..., C)`` float32 losses.
    """
    logits, quality = logits.float(), quality.float()
    p = logits.sigmoid()
    weight = torch.where(quality > 0, quality, alpha * p.detach().pow(gamma))
    return F.binary_cross_entropy_with_logits(logits, quality, reduction="none") * weight


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """GFL's distribution focal loss: ``-((y_{i+1} - y) log S_i + (y - y_i) log S_{i+1})``, ``y_i <= y < y_{i+1}``.

    Args:
        logits: ``(N, R + 1)`` logits of the distribution over the distances ``0, 1, ..., R``.
        target: ``(N,)`` target distances in ``[0, R]``; clamped to ``R - 0.01`` so ``y_{i+1}`` exists.

    Returns:
        ``(N,)`` float32 losses. The minimum, reached when the distribution puts ``y_{i+1} - y`` on ``y_i``
        and ``y - y_i`` on ``y_{i+1}``, is the entropy of that two-point distribution (0 for an integer ``y``).
    """
    R = logits.shape[-1] - 1
    target = target.float().clamp(0, R - 0.01)
    left = target.floor().long()
    w_left = left.float() + 1 - target  # y_{i+1} - y
    log_p = F.log_softmax(logits.float(), dim=-1)
    return -(w_left * log_p.gather(-1, left[:, None])[:, 0]
             + (1 - w_left) * log_p.gather(-1, left[:, None] + 1)[:, 0])


def power_complete_box_iou_loss(pred: Tensor, target: Tensor, power: float = 3.0, eps: float = 1e-7) -> Tensor:
    """Alpha-IoU's power CIoU loss, element-wise; ``power = 1`` is CIoU (torchvision's ``complete_box_iou_loss``).

        L = 1 - IoU^a + (rho^2 / c^2)^a + (b v)^a,   v = 4 / pi^2 (atan(w_t / h_t) - atan(w / h))^2,
        b = v / (1 - IoU + v) (a weight, no gradient, as in CIoU)

    ``rho``: the distance between the boxes' centres; ``c``: the diagonal of the smallest box holding both.

    Args:
        pred, target: ``(N, 4)`` XYXY boxes.

    Returns:
        ``(N,)`` float32 losses, in ``[0, 3]``; 0 only for identical boxes.
    """
    pred, target = pred.float(), target.float()
    (x1, y1, x2, y2), (u1, v1, u2, v2) = pred.unbind(-1), target.unbind(-1)
    inter = (torch.min(x2, u2) - torch.max(x1, u1)).clamp(min=0) * (torch.min(y2, v2) - torch.max(y1, v1)).clamp(min=0)
    w, h, wt, ht = x2 - x1, y2 - y1, u2 - u1, v2 - v1
    iou = inter / (w * h + wt * ht - inter + eps)
    c2 = (torch.max(x2, u2) - torch.min(x1, u1)) ** 2 + (torch.max(y2, v2) - torch.min(y1, v1)) ** 2 + eps
    rho2 = ((x1 + x2 - u1 - u2) ** 2 + (y1 + y2 - v1 - v2) ** 2) / 4
    v = (4 / torch.pi**2) * (torch.atan(wt / (ht + eps)) - torch.atan(w / (h + eps))) ** 2
    with torch.no_grad():
        b = v / (1 - iou + v + eps)
    return 1 - iou.pow(power) + (rho2 / c2).pow(power) + (b * v).pow(power)
