"""Colour augmentations: change image pixels only; boxes, masks and labels pass through.

All work on uint8 ``(3, H, W)`` images. Per-channel curves (gamma, equalisation) run as 256-entry
lookup tables through Pillow, whose C loop beats torch's gather with int64 indices by about 10x.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from zir.augment._base import (
    PhotometricTransform,
    ProbabilityMixin,
    as_float,
    channel_max,
    check_p,
    to_uint8,
    trunc_to_uint8,
    uniform,
)

# Greyscale keeps torchvision's (it has p, and it is already fast).
RandomGrayscale = v2.RandomGrayscale


class ColorJitter(ProbabilityMixin, v2.ColorJitter):
    """torchvision's brightness / contrast / saturation / hue jitter, applied with probability ``p``.

    Magnitudes as torchvision's: factors drawn from ``[1 - m, 1 + m]``, hue shift from ``[-hue, hue]``
    turns. Hue is slow in torchvision (~25 ms at 640x480); :class:`RandomHSV` is the fast way to it.
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.0, p: float = 1.0) -> None:
        super().__init__(brightness or None, contrast or None, saturation or None, hue or None)
        self.p = check_p(p)


class RandomHSV(PhotometricTransform):
    """YOLO's HSV gains: hue, saturation and value each multiplied by a gain drawn from ``1 +- gain``.

    One fused pass in float32 (no float64, no HSV round trip):

    * value: every channel times ``g_v`` (HSV value is the max channel, so this is exact);
    * saturation: channels pulled towards / pushed from the max, ``c' = v - g_s (v - c)`` (exact HSV
      saturation scaling; clipped at 0 where saturation would pass 1);
    * hue: a rotation of RGB about the grey axis by ``360 * h`` degrees, the matrix form of a hue shift
      (equal to the HSV hue shift up to a small change of lightness). As in YOLO, ``hue`` is a fraction of
      the colour circle: 0.015 turns hues by up to 5.4 degrees.

    Args:
        hue, saturation, value: magnitudes (YOLOv5-v8 defaults 0.015, 0.7, 0.4).
        p: probability.
    """

    def __init__(self, hue: float = 0.015, saturation: float = 0.7, value: float = 0.4, p: float = 1.0) -> None:
        super().__init__(p)
        self.hue, self.saturation, self.value = hue, saturation, value

    def sample(self, H: int, W: int) -> dict[str, Any]:
        return dict(h=uniform(-self.hue, self.hue), s=uniform(1 - self.saturation, 1 + self.saturation),
                    v=uniform(1 - self.value, 1 + self.value))

    def apply(self, image: torch.Tensor, h: float, s: float, v: float) -> torch.Tensor:
        return hsv_gains(image, h, s, v)


def hue_matrix(turns: float) -> torch.Tensor:
    """``(3, 3)`` rotation of RGB space about the grey axis ``(1, 1, 1)`` by ``turns`` of a full circle."""
    a = 2 * math.pi * turns
    c, s = math.cos(a), math.sin(a)
    k, r = (1 - c) / 3, s / math.sqrt(3)  # Rodrigues' formula for the unit axis (1, 1, 1) / sqrt(3)
    return torch.tensor([[c + k, k - r, k + r],
                         [k + r, c + k, k - r],
                         [k - r, k + r, c + k]])


def hsv_gains(image: torch.Tensor, h: float, s: float, v: float) -> torch.Tensor:
    """Shift hue by ``h`` turns, multiply saturation by ``s`` and value by ``v``; uint8 ``(3, H, W)`` in and out."""
    x = as_float(image)
    if h != 0.0:
        x = torch.einsum("ij,jhw->ihw", hue_matrix(h), x)
    vmax = channel_max(x)  # (H, W) HSV value
    # v * (vmax - s * (vmax - x)) = v*s * x + v*(1-s) * vmax, with the rounding offset folded in
    x.mul_(v * s).add_(vmax.mul_(v * (1 - s)).add_(0.5))
    return trunc_to_uint8(x)


class RandomGamma(PhotometricTransform):
    """Gamma curve ``255 * (x / 255) ** g`` with ``log g`` uniform in ``[-log(1+gamma), log(1+gamma)]``
    (so brightening and darkening are equally likely)."""

    def __init__(self, gamma: float = 0.5, p: float = 1.0) -> None:
        super().__init__(p)
        self.gamma = gamma

    def sample(self, H: int, W: int) -> dict[str, Any]:
        m = math.log1p(self.gamma)
        return dict(g=math.exp(uniform(-m, m)))

    def apply(self, image: torch.Tensor, g: float) -> torch.Tensor:
        table = to_uint8(torch.linspace(0, 1, 256).pow_(g).mul_(255))
        return apply_lut(image, table)


class RandomEqualize(PhotometricTransform):
    """Histogram equalisation of each channel (Pillow's ``ImageOps.equalize``); ``p`` is its only knob."""

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        return from_pil(ImageOps.equalize(to_pil(image)))


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 ``(3, H, W)`` tensor -> RGB Pillow image (one copy)."""
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())


def from_pil(img: Image.Image) -> torch.Tensor:
    """RGB Pillow image -> uint8 ``(3, H, W)`` tensor (one copy)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def apply_lut(image: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Map every pixel through ``table``: uint8 ``(256,)`` for all channels or ``(3, 256)`` per channel."""
    table = table.to(torch.uint8).expand(3, 256)
    return from_pil(to_pil(image).point(table.reshape(-1).tolist()))
