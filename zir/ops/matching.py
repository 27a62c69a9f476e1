"""Assigning predictions (anchors, proposals) to ground-truth boxes, and sampling them for the loss.

Faster R-CNN (Ren et al. 2015, section 3.1.2): an anchor is positive when its IoU with some ground
truth is >= ``high`` (0.7 for the RPN, 0.5 for the RoI heads), negative below ``low`` (0.3; 0.5 for
the RoI heads), ignored in between; with ``allow_low_quality_matches`` each ground truth's best
anchors are positive too, so that every object has at least one. Each image's loss then uses a
random mini-batch with at most a given fraction of positives (256 anchors, 1:1, for the RPN).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BELOW_LOW", "BETWEEN", "balanced_sample", "match"]

BELOW_LOW = -1
"""Match value of a negative (background) prediction."""
BETWEEN = -2
"""Match value of a prediction ignored by the loss (IoU in ``[low, high)``)."""


def match(quality: Tensor, high: float, low: float, allow_low_quality_matches: bool = False) -> Tensor:
    """Match every prediction to its best ground truth, or mark it negative or ignored.

    Args:
        quality: ``(G, P)`` IoU (or any quality) of ground truth ``g`` with prediction ``p``.
        high: quality >= ``high`` is a match.
        low: quality < ``low`` is negative (:data:`BELOW_LOW`); ``[low, high)`` is ignored
            (:data:`BETWEEN`).
        allow_low_quality_matches: also match, for each ground truth, the predictions of its highest
            quality (ties included) to their own best ground truth, even below ``high``.

    Returns:
        int64 ``(P,)``: the matched ground-truth index in ``[0, G)``, or -1 / -2.

    Same results as ``torchvision.models.detection._utils.Matcher`` except in two cases it refuses or
    gets wrong: an image without ground truth (``G == 0``) makes every prediction negative (images
    without objects train), and a ground truth that overlaps no prediction at all (quality 0, e.g. a
    degenerate box) adds no low-quality matches, where torchvision would turn every prediction with
    IoU 0 to it into a "match" of its own best (possibly zero-IoU) ground truth.
    """
    if low > high:
        raise ValueError(f"low threshold {low} is above high threshold {high}")
    G, P = quality.shape
    if G == 0 or P == 0:
        return torch.full((P,), BELOW_LOW, dtype=torch.int64, device=quality.device)
    best, matches = quality.max(dim=0)  # (P,): best ground truth of each prediction
    result = matches.clone()
    result[best < low] = BELOW_LOW
    result[(best >= low) & (best < high)] = BETWEEN
    if allow_low_quality_matches:
        best_of_gt = quality.max(dim=1).values  # (G,)
        ties = (quality == best_of_gt[:, None]) & (best_of_gt[:, None] > 0)  # (G, P)
        pred = ties.any(dim=0)
        result[pred] = matches[pred]
    return result


def balanced_sample(matched: Tensor, batch_size_per_image: int, positive_fraction: float,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw at most ``batch_size_per_image`` predictions, at most ``positive_fraction`` of them positive.

    Positives are ``matched >= 0``, negatives ``matched == -1``; ignored ones (-2) are never drawn.
    When there are too few positives, negatives fill the batch (as in torchvision's
    ``BalancedPositiveNegativeSampler``).

    Args:
        matched: int64 ``(P,)`` from :func:`match`.
        generator: a ``torch.Generator`` on ``matched``'s device, for reproducible draws.

    Returns:
        ``(pos_idx, neg_idx)``: int64 indices into ``matched``, without repeats.
    """
    positive = torch.where(matched >= 0)[0]
    negative = torch.where(matched == BELOW_LOW)[0]
    num_pos = min(positive.numel(), int(batch_size_per_image * positive_fraction))
    num_neg = min(negative.numel(), batch_size_per_image - num_pos)
    perm_pos = torch.randperm(positive.numel(), device=matched.device, generator=generator)[:num_pos]
    perm_neg = torch.randperm(negative.numel(), device=matched.device, generator=generator)[:num_neg]
    return positive[perm_pos], negative[perm_neg]
