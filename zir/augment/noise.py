"""Noise and occlusion: sensor noise, blur, compression, and parts of the image hidden.

Image pixels only: boxes and masks stay (an occluded object is still there, which is the point of
cutout). All work on uint8 ``(3, H, W)`` images; magnitudes are in pixels or fractions of the image.
"""

from __future__ import annotations

import io
import math
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from zir.augment._base import IMAGE_FILL, PhotometricTransform, as_float, to_uint8, uniform
from zir.augment.colour import from_pil, to_pil


class GaussianNoise(PhotometricTransform):
    """Add independent N(0, sigma^2) noise to every channel of every pixel, sigma in ``sigma`` (0-255 units).

    One float32 ``randn`` and three in-place ops; the random numbers are most of the cost (~4 ms at
    640x480, against ~13 ms for albumentations' GaussNoise on this CPU).
    """

    def __init__(self, sigma: tuple[float, float] = (3.0, 15.0), p: float = 1.0) -> None:
        super().__init__(p)
        self.sigma = sigma

    def sample(self, H: int, W: int) -> dict[str, Any]:
        return dict(sigma=uniform(*self.sigma))

    def apply(self, image: torch.Tensor, sigma: float) -> torch.Tensor:
        x = as_float(image).add_(torch.randn(image.shape), alpha=sigma)
        return to_uint8(x)  # rounded: truncation would darken by 0.5 on average


class SaltPepperNoise(PhotometricTransform):
    """Set a fraction ``amount`` of the pixels to black or white (half each).

    Draws only the corrupted pixels' positions, not a random number per pixel, so it costs ~0.1 ms.
    """

    def __init__(self, amount: tuple[float, float] = (0.002, 0.02), p: float = 1.0) -> None:
        super().__init__(p)
        self.amount = amount

    def sample(self, H: int, W: int) -> dict[str, Any]:
        k = round(uniform(*self.amount) * H * W)
        return dict(where=torch.randint(0, H * W, (k,)), white=torch.rand(k) < 0.5)

    def apply(self, image: torch.Tensor, where: torch.Tensor, white: torch.Tensor) -> torch.Tensor:
        out = image.clone()
        out.view(image.shape[0], -1)[:, where] = white.to(torch.uint8).mul_(255)
        return out


class Blur(PhotometricTransform):
    """Defocus blur of strength ``radius`` pixels (drawn from ``[1, radius]``).

    Done as an antialiased downscale by ``f = 1 + r`` and a bilinear upscale, both uint8 SIMD kernels of
    torch (~2 ms at 640x480); the result is a smooth low-pass close to a Gaussian of sigma ~ 0.6 f.
    torchvision's ``gaussian_blur`` (a float convolution) takes ~60 ms on the same image.
    """

    def __init__(self, radius: float = 3.0, p: float = 1.0) -> None:
        super().__init__(p)
        self.radius = radius

    def sample(self, H: int, W: int) -> dict[str, Any]:
        return dict(factor=1.0 + uniform(1.0, max(1.0, self.radius)))

    def apply(self, image: torch.Tensor, factor: float) -> torch.Tensor:
        return self.blur(image, factor)

    @staticmethod
    def blur(image: torch.Tensor, factor: float) -> torch.Tensor:
        """uint8 ``(C, H, W)`` blurred by a downscale by ``factor`` and a bilinear upscale."""
        H, W = image.shape[-2:]
        small = F.resize(image, [max(1, round(H / factor)), max(1, round(W / factor))], antialias=True)
        return F.resize(small, [H, W], antialias=False)


class JPEG(PhotometricTransform):
    """JPEG compression artefacts at a quality drawn from ``quality`` (1-100; lower is worse).

    Pillow's codec: ~5 ms at 640x480, against ~20 ms for ``torchvision.transforms.v2.JPEG``.
    """

    def __init__(self, quality: tuple[int, int] = (30, 90), p: float = 1.0) -> None:
        super().__init__(p)
        self.quality = quality

    def sample(self, H: int, W: int) -> dict[str, Any]:
        return dict(quality=int(torch.randint(self.quality[0], self.quality[1] + 1, ())))

    def apply(self, image: torch.Tensor, quality: int) -> torch.Tensor:
        buf = io.BytesIO()
        to_pil(image).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as img:
            return from_pil(img.convert("RGB"))


class Cutout(PhotometricTransform):
    """Random erasing (DeVries & Taylor 2017; Zhong et al. 2020): up to ``holes`` rectangles, each side a
    fraction in ``size`` of the image side, filled with grey (``fill``) or, with ``fill=None``, noise."""

    def __init__(self, holes: int = 3, size: tuple[float, float] = (0.05, 0.25), fill: int | None = IMAGE_FILL,
                 p: float = 1.0) -> None:
        super().__init__(p)
        self.holes, self.size, self.fill = holes, size, fill

    def sample(self, H: int, W: int) -> dict[str, Any]:
        rects = []
        for _ in range(int(torch.randint(1, self.holes + 1, ()))):
            h, w = max(1, round(uniform(*self.size) * H)), max(1, round(uniform(*self.size) * W))
            top, left = int(torch.randint(0, H - h + 1, ())), int(torch.randint(0, W - w + 1, ()))
            rects.append((top, left, h, w))
        return dict(rects=rects)

    def apply(self, image: torch.Tensor, rects: list[tuple[int, int, int, int]]) -> torch.Tensor:
        out = image.clone()
        for top, left, h, w in rects:
            region = out[:, top:top + h, left:left + w]
            if self.fill is None:
                region.copy_(torch.randint(0, 256, region.shape, dtype=torch.uint8))
            else:
                region.fill_(self.fill)
        return out


class GridMask(PhotometricTransform):
    """GridMask (Chen et al. 2020): hide a regular grid of squares.

    The grid period ``d`` is a fraction in ``period`` of the shorter side; each period hides a square
    of side ``ratio * d`` (so about ``ratio**2`` of the image), at a random offset.
    """

    def __init__(self, period: tuple[float, float] = (0.1, 0.3), ratio: float = 0.5, fill: int = 0,
                 p: float = 1.0) -> None:
        super().__init__(p)
        self.period, self.ratio, self.fill = period, ratio, fill

    def sample(self, H: int, W: int) -> dict[str, Any]:
        d = max(2, round(uniform(*self.period) * min(H, W)))
        return dict(d=d, dy=int(torch.randint(0, d, ())), dx=int(torch.randint(0, d, ())))

    def apply(self, image: torch.Tensor, d: int, dy: int, dx: int) -> torch.Tensor:
        H, W = image.shape[-2:]
        side = max(1, math.floor(self.ratio * d))
        rows = (torch.arange(H) + dy) % d < side  # (H,)
        cols = (torch.arange(W) + dx) % d < side  # (W,)
        return image.masked_fill(rows[:, None] & cols[None, :], self.fill)

