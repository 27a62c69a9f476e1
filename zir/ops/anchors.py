"""Anchor boxes for region proposal networks (Ren et al. 2015, section 3.1.1).

At every position of a feature map, ``A = len(aspect_ratios) * len(sizes)`` anchors of the given areas
(``size**2`` pixels) and aspect ratios (``height / width``) are centred on that position's point in
the image. The order of the output matches ``torchvision.models.detection.anchor_utils.AnchorGenerator``
(row-major positions; per position, aspect ratios outer, sizes inner), as do the rounded anchor shapes,
so RPN heads trained with either agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["anchors", "cell_anchors", "pyramid_anchors"]


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float],
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """The ``(A, 4)`` anchors of one position, XYXY around ``(0, 0)``, aspect ratios outer, sizes inner.

    An anchor of size ``s`` and ratio ``r = h / w`` has ``w = s / sqrt(r)`` and ``h = s * sqrt(r)``
    (area ``s**2``); half-extents are rounded to whole pixels as in torchvision and Detectron.
    """
    scales = torch.as_tensor(sizes, dtype=dtype, device=device)
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios  # the same float steps as torchvision, so rounding ties agree
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # (A,)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def anchors(feature_size: tuple[int, int], stride: int | tuple[int, int], sizes: Sequence[float],
            aspect_ratios: Sequence[float], offset: float = 0.5,
            dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """Anchors of one feature map in image pixels: ``(H * W * A, 4)`` XYXY.

    Args:
        feature_size: ``(H, W)`` of the feature map.
        stride: image pixels per feature cell, one number or ``(stride_y, stride_x)``.
        sizes: anchor sizes in pixels (square root of the area).
        aspect_ratios: ``height / width`` of the anchors.
        offset: where in its cell an anchor is centred, as a fraction of the stride: 0.5 centres it
            on the cell (cell ``j`` covers pixels ``[j * stride, (j + 1) * stride)``), 0.0 puts it on
            the cell's top-left corner, as torchvision's ``AnchorGenerator`` does.

    Returns:
        Anchor ``a`` of position ``(y, x)`` is row ``(y * W + x) * A + a``.
    """
    H, W = feature_size
    sy, sx = (stride, stride) if isinstance(stride, int | float) else stride
    base = cell_anchors(sizes, aspect_ratios, dtype, device)  # (A, 4)
    cx = (torch.arange(W, dtype=dtype, device=device) + offset) * sx
    cy = (torch.arange(H, dtype=dtype, device=device) + offset) * sy
    cy, cx = torch.meshgrid(cy, cx, indexing="ij")  # (H, W)
    centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
    return (centres + base[None]).reshape(-1, 4)


def pyramid_anchors(image_size: tuple[int, int], feature_sizes: Sequence[tuple[int, int]],
                    sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                    offset: float = 0.5, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> list[Tensor]:
    """Anchors of every level of a feature pyramid (FPN, Lin et al. 2017): one ``(H_l * W_l * A_l, 4)``
    tensor per level.

    The stride of a level is ``image_size // feature_size`` per axis (as torchvision computes it for
    the padded batch), so ``image_size`` is the size of the tensor the backbone saw. ``sizes[l]`` and
    ``aspect_ratios[l]`` belong to level ``l``; ``torch.cat`` of the result is torchvision's output.
    """
    if not len(feature_sizes) == len(sizes) == len(aspect_ratios):
        raise ValueError(f"{len(feature_sizes)} feature maps but {len(sizes)} size and "
                         f"{len(aspect_ratios)} aspect-ratio lists; give one of each per level")
    H, W = image_size
    return [anchors((h, w), (H // h, W // w), s, r, offset, dtype, device)
            for (h, w), s, r in zip(feature_sizes, sizes, aspect_ratios)]
