"""What detection heads are trained on: a batch target's annotations in the model's working frame.

A :class:`~zir.data.contract.Target` holds a sample's annotations in the input image's pixels, as the
data gives them; :func:`ground_truth` turns one into a :class:`GroundTruth` in the working frame (the
resized image the model sees, ``zir.models.detect.transform``), with degenerate boxes dropped and crowd
regions set apart. The RPN, the RoI heads and every older detector (sliding window, OverFeat, R-CNN,
Fast R-CNN) match their candidates against it (:func:`match_to_ground_truth`, :func:`ignore_crowd`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from zir.data.contract import Target
from zir.models.detect.transform import boxes_to_working
from zir.ops.boxes import Size, ioa, iou, remove_small_boxes
from zir.ops.matching import BELOW_LOW, BETWEEN, match


@dataclass(eq=False)
class GroundTruth:
    """The annotations of one image as the detection heads use them (in the model's working pixels).

    Attributes:
        boxes: float32 ``(G, 4)`` XYXY of the objects to detect (non-crowd, non-degenerate).
        labels: int64 ``(G,)`` zir class ids (0-based, no background).
        crowd: float32 ``(C, 4)`` crowd regions: never positives, and predictions inside them are not
            trained as background either.
        index: int64 ``(G,)`` position of each box in the target's own ``boxes`` (so Mask R-CNN can
            pick the masks that go with them).
    """

    boxes: Tensor
    labels: Tensor
    crowd: Tensor
    index: Tensor


def ground_truth(target: Target, work_size: Size) -> GroundTruth:
    """``target``'s annotations (in its ``(h, w)`` image, ``target.size``) in the ``work_size`` frame,
    without degenerate boxes, crowds set apart. ``work_size = target.size`` keeps the input's pixels."""
    boxes = target.boxes.float().reshape(-1, 4)
    labels = target.labels.to(boxes.device).long().reshape(-1)
    crowd = target.iscrowd.to(boxes.device).bool()
    boxes = boxes_to_working(boxes, target.size, work_size)
    index = torch.arange(len(boxes), device=boxes.device)
    # BoxCoder takes the log of box sizes: zero-size boxes must not become targets
    valid = torch.zeros_like(crowd)
    valid[remove_small_boxes(boxes, 1e-2)] = True
    keep = valid & ~crowd
    return GroundTruth(boxes[keep], labels[keep], boxes[valid & crowd], index[keep])


def match_to_ground_truth(gt: GroundTruth, candidates: Tensor, high: float, low: float,
                          allow_low_quality_matches: bool = False) -> Tensor:
    """``zir.ops.matching.match`` of ``candidates (P, 4)`` to ``gt.boxes`` by IoU, then :func:`ignore_crowd`.

    Returns:
        int64 ``(P,)``: ground-truth index, ``BELOW_LOW`` (negative) or ``BETWEEN`` (ignored).
    """
    return ignore_crowd(match(iou(gt.boxes, candidates), high, low, allow_low_quality_matches), gt, candidates)


def ignore_crowd(matched: Tensor, gt: GroundTruth, candidates: Tensor) -> Tensor:
    """Mark as :data:`BETWEEN` (ignored) every candidate of ``candidates (P, 4)`` that ``matched (P,)``
    calls negative but that lies mostly (> 50 % of its area) inside a crowd region: it may well show one
    of the crowd's objects. Changes ``matched`` in place and returns it."""
    if len(gt.crowd) and len(candidates):
        in_crowd = ioa(gt.crowd, candidates).max(dim=0).values > 0.5
        matched[in_crowd & (matched == BELOW_LOW)] = BETWEEN
    return matched
