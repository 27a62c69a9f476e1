"""Losses shared by the semantic segmentation models (``fcn``, ``unet``).

* :func:`semantic_targets`: the batch's ``semantic`` maps as one ``(B, H, W)`` tensor at the padded
  image size; padding (beyond ``targets[i].size``) becomes 255 (ignored).
* :func:`cross_entropy`: softmax cross-entropy over ``C`` logits, 255 ignored, optional pixel weights.
* :func:`binary_cross_entropy`: one logit per pixel for two-class tasks (class 1 = foreground).
* :func:`soft_dice`: ``1 - mean_c 2 |P_c Y_c| / (|P_c| + |Y_c|)`` on probabilities (Milletari et al. 2016).
* :func:`border_weight_map`: U-Net's weight map (Ronneberger et al. 2015, eq. 2)

      w(x) = w_c(x) + w0 exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

  ``w_c`` balances the class frequencies, ``d1`` and ``d2`` are the distances to the nearest and the
  second nearest object. The paper's objects are cells; from a semantic map the objects are the
  connected components of each non-background class. The gap term is given to background pixels: it
  makes the thin background separating two touching objects expensive to get wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zir.data.contract import IGNORE_INDEX, Target


def semantic_targets(targets: Sequence[Target], shape: tuple[int, int], device: torch.device) -> Tensor:
    """int64 ``(B, H, W)`` class maps at the padded batch size ``shape``; 255 where there is no label.

    Each ``targets[i].semantic`` is ``(h_i, w_i)``; pixels outside ``targets[i].size`` (the zero
    padding the batch added) are ignored, so padding never counts as background.
    """
    H, W = shape
    out = torch.full((len(targets), H, W), IGNORE_INDEX, dtype=torch.int64, device=device)
    for i, t in enumerate(targets):
        sem = t.semantic.to(device=device, dtype=torch.int64)
        h, w = t.size
        h, w = min(h, sem.shape[-2], H), min(w, sem.shape[-1], W)
        out[i, :h, :w] = sem[:h, :w]
    return out


def cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Softmax cross-entropy ``-log p_{y(x)}(x)`` averaged over labelled pixels.

    Args:
        logits: ``(B, C, H, W)``.
        target: int64 ``(B, H, W)`` class ids, 255 = ignore.
        weight: optional float ``(B, H, W)`` per-pixel weights (U-Net's ``w(x)``), 0 where ignored.
    """
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    return _mean_over_valid(per_pixel, target, weight)


def binary_cross_entropy(logit: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Sigmoid BCE of one logit per pixel against class 1 (foreground) vs 0, averaged over labelled pixels.

    Args:
        logit: ``(B, 1, H, W)`` or ``(B, H, W)``.
        target: int64 ``(B, H, W)`` with 0, 1 or 255 (ignore).
        weight: optional float ``(B, H, W)`` per-pixel weights.
    """
    logit = logit.float().reshape(target.shape)
    per_pixel = F.binary_cross_entropy_with_logits(logit, (target == 1).float(), reduction="none")
    return _mean_over_valid(per_pixel, target, weight)


def _mean_over_valid(per_pixel: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    valid = target != IGNORE_INDEX
    if weight is not None:
        per_pixel = per_pixel * weight
    # sum / count rather than .mean() over a boolean selection: an all-ignored batch gives 0, not NaN
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


def soft_dice(probs: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice loss ``1 - mean_c (2 sum P_c Y_c + eps) / (sum P_c + sum Y_c + eps)`` over the batch.

    Args:
        probs: ``(B, C, H, W)`` class probabilities (softmax; for one logit pass ``[1 - p, p]``).
        target: int64 ``(B, H, W)``, 255 = ignore (those pixels count on neither side).
        eps: smoothing, so a class absent from both prediction and target scores 1.
    """
    C = probs.shape[1]
    valid = (target != IGNORE_INDEX).unsqueeze(1)  # (B, 1, H, W)
    one_hot = F.one_hot(target.clamp(max=C - 1) * (target != IGNORE_INDEX), C).permute(0, 3, 1, 2)
    one_hot = one_hot.float() * valid
    probs = probs.float() * valid
    dims = (0, 2, 3)
    inter = (probs * one_hot).sum(dims)
    dice = (2 * inter + eps) / (probs.sum(dims) + one_hot.sum(dims) + eps)  # (C,)
    return 1 - dice.mean()


# --------------------------------------------------------------------------------------------------
# U-Net's border weight map (Ronneberger et al. 2015, section 3, eq. 2)


def class_balance_weights(semantic: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``w_c(x)``: float32 ``(H, W)``, ``n / (K n_c)`` for a pixel of class ``c`` (``n`` labelled pixels,
    ``K`` classes present, ``n_c`` pixels of class ``c``): every present class gets the same total
    weight and the mean weight is 1. Ignored pixels get 0."""
    valid = semantic != ignore_index
    ids = torch.where(valid, semantic, 0)
    counts = torch.bincount(ids[valid].flatten(), minlength=int(ids.max()) + 1).float()
    present = int((counts > 0).sum())
    per_class = torch.where(counts > 0, valid.sum() / (present * counts).clamp(min=1), 0.0)
    return per_class[ids] * valid


def connected_components(semantic: Tensor, background: int = 0, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Objects of a class map: int64 ``(H, W)``, 0 on background / ignored pixels, else ``1..K``.

    Pixels are connected when 4-neighbours have the same class (``scipy.ndimage.label`` per class).
    """
    from scipy import ndimage

    sem = semantic.detach().cpu().numpy()
    out = np.zeros(sem.shape, np.int64)
    count = 0
    for c in np.unique(sem):
        if c in (background, ignore_index):
            continue
        labels, n = ndimage.label(sem == c)
        out[labels > 0] = labels[labels > 0] + count
        count += n
    return torch.from_numpy(out).to(semantic.device)


@torch.no_grad()
def border_weight_map(semantic: Tensor, w0: float = 10.0, sigma: float = 5.0, background: int = 0,
                      ignore_index: int = IGNORE_INDEX) -> Tensor:
    """U-Net's ``w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / (2 sigma^2))`` for one class map.

    Args:
        semantic: int64 ``(H, W)`` class ids, ``background`` for the background, 255 = ignore.
        w0, sigma: the paper's 10 and 5 pixels.

    Returns:
        float32 ``(H, W)`` on ``semantic``'s device; 0 on ignored pixels; the gap term on background
        pixels only. ``d1``, ``d2`` are Euclidean distances (pixel centres) to the nearest pixel of the
        nearest and of the second nearest object. Each object's distance transform is computed only
        within ``cutoff = sigma sqrt(2 ln(1000 w0))`` pixels of it (about 22 px for the paper's values):
        farther, ``d1 + d2 > cutoff`` and the term is below 1e-3, so it is left out.
    """
    from scipy import ndimage

    weight = class_balance_weights(semantic, ignore_index)
    objects = connected_components(semantic, background, ignore_index).cpu().numpy()
    if w0 <= 0 or objects.max() < 2:
        return weight
    H, W = objects.shape
    cutoff = sigma * math.sqrt(2 * math.log(1000 * w0))
    R = int(math.ceil(cutoff))
    d1 = np.full((H, W), np.inf)
    d2 = np.full((H, W), np.inf)
    for k, box in enumerate(ndimage.find_objects(objects), start=1):
        if box is None:
            continue
        ys = slice(max(box[0].start - R, 0), min(box[0].stop + R, H))
        xs = slice(max(box[1].start - R, 0), min(box[1].stop + R, W))
        # distance of every pixel of the window to the nearest pixel of object k
        dk = ndimage.distance_transform_edt(objects[ys, xs] != k)
        a, b = d1[ys, xs], d2[ys, xs]
        d2[ys, xs] = np.minimum(b, np.maximum(a, dk))  # keep the two smallest distances per pixel
        d1[ys, xs] = np.minimum(a, dk)
    gap = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))  # inf (fewer than two objects near) gives 0
    gap = torch.from_numpy(gap).to(weight)
    return weight + torch.where(semantic == background, gap, 0.0)
