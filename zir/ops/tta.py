"""Test-time augmentation for dense predictions: the mean over the 8 flips and quarter turns of an image.

The U-Net paper's ISBI 2012 result is "averaged over 7 rotated versions of the input data" (Ronneberger
et al. 2015, section 4). For images without a preferred orientation (microscopy, aerial photos) the
eight symmetries of the square (the dihedral group D4: rotations by 0, 90, 180, 270 degrees, each with
and without a horizontal flip) give eight views; each view's output is turned back and the eight are
averaged. Dense outputs (``(B, C, H, W)``) turn back exactly, so the mean is pixel-aligned.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from zir.errors import ConfigError

__all__ = ["DIHEDRAL", "TTA_VIEWS", "check_views", "dihedral_mean"]

# (quarter turns k, flipped): the eight symmetries of the square
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, f) for f in (False, True) for k in range(4))
TTA_VIEWS = (1, 2, 4, 8)


def check_views(views: int, model: str) -> None:
    """A model's ``tta`` setting must be a view count :func:`dihedral_mean` takes."""
    if views not in TTA_VIEWS:
        raise ConfigError(f"{model} tta must be one of {TTA_VIEWS} (views averaged), got {views}")


def _forward(x: Tensor, k: int, flip: bool) -> Tensor:
    x = x.flip(-1) if flip else x
    return torch.rot90(x, k, dims=(-2, -1))


def _inverse(y: Tensor, k: int, flip: bool) -> Tensor:
    y = torch.rot90(y, -k, dims=(-2, -1))
    return y.flip(-1) if flip else y


def dihedral_mean(fn: Callable[[Tensor], Tensor], images: Tensor, views: int = 8) -> Tensor:
    """Mean of ``fn`` over the first ``views`` of :data:`DIHEDRAL`, each output turned back.

    Args:
        fn: ``(B, 3, H', W') -> (B, C, H', W')``, a dense map with the input's size (``H', W'`` are
            ``H, W`` or ``W, H`` after a quarter turn), e.g. class probabilities.
        images: ``(B, 3, H, W)``.
        views: 1 (no augmentation), 2 (the image and its mirror image), 4 or 8 (all symmetries).

    Returns:
        ``(B, C, H, W)``: the mean of the turned-back outputs.
    """
    if views not in TTA_VIEWS:
        raise ValueError(f"views must be 1, 2, 4 or 8, got {views}")
    order = DIHEDRAL if views != 2 else ((0, False), (0, True))
    total = None
    for k, flip in order[:views]:
        y = _inverse(fn(_forward(images, k, flip)), k, flip)
        total = y if total is None else total + y
    return total / views  # type: ignore[operator]
