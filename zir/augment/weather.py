"""Weather: rain, snow, fog, sun flare and shadow, written in torch.

albumentations' RandomRain / RandomSnow / RandomFog / RandomSunFlare / RandomShadow are the reference
for the look; these aim at the same pictures for a fraction of the time on a 640x480 uint8 image:

* nothing is drawn shape by shape on the full image: rain streaks and snowflakes are scattered as
  index lists, fog is a coarse random field upsampled once (albumentations draws hundreds of blended
  circles: ~200 ms), flare ghosts and shadows touch only their bounding boxes;
* one float32 blend per effect, no float64, no colour-space round trip.

Image pixels only; boxes and masks pass through.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as TF

from zir.augment._base import (
    PhotometricTransform,
    as_float,
    channel_max,
    channel_min,
    to_uint8,
    trunc_to_uint8,
    uniform,
)
from zir.augment.noise import Blur


class RandomRain(PhotometricTransform):
    """Slanted rain streaks over a darkened image (albumentations' RandomRain, "default" rain).

    Args:
        drops: streaks per 1000 pixels (albumentations: one per 600 pixels, 1.7).
        blur: the scene is blurred by this factor (:class:`~zir.augment.noise.Blur`), 1 for none (the
            default, as albumentations 2; 2-3 gives albumentations 1's softer look at ~2 ms more).
        slant: streaks lean by a horizontal shift drawn from ``[-slant, slant]`` per streak length.
        length: streak length as a fraction of the image height.
        brightness: the image is multiplied by this (overcast light).
        colour: RGB of the streaks.
        p: probability.
    """

    def __init__(self, drops: float = 1.7, slant: float = 10.0, length: float = 0.04, brightness: float = 0.7,
                 colour: tuple[int, int, int] = (200, 200, 200), blur: float = 1.0, p: float = 1.0) -> None:
        super().__init__(p)
        self.drops, self.slant, self.length, self.brightness = drops, slant, length, brightness
        self.colour, self.blur = colour, blur

    def sample(self, H: int, W: int) -> dict[str, Any]:
        n = max(1, round(self.drops * H * W / 1000))
        L = max(2, round(self.length * H))
        slant = uniform(-self.slant, self.slant) * L / 20  # albumentations' slant is per 20-px drop
        x0 = torch.randint(0, W, (n, 1)).float()
        y0 = torch.randint(-L, H, (n, 1)).float()
        t = torch.arange(L).float()  # (L,) steps down the streak
        xs = (x0 + slant * t / L).round_().long()  # (n, L)
        ys = (y0 + t).long()
        opacity = (torch.rand(n, 1) * 0.4 + 0.3).expand(n, L)  # some drops nearer, brighter
        keep = (xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)
        return dict(index=(ys * W + xs)[keep], opacity=opacity[keep])

    def apply(self, image: torch.Tensor, index: torch.Tensor, opacity: torch.Tensor) -> torch.Tensor:
        C, H, W = image.shape
        if self.blur > 1:  # rain blurs the scene (albumentations 1.x blurred the image 7x7)
            image = Blur.blur(image, self.blur)
        x = as_float(image).mul_(self.brightness)
        # streaks touch ~2 % of the pixels: blend them sparsely instead of through a full-size layer
        ys, xs = index // W, index % W
        streak = x[:, ys, xs]  # (3, n)
        colour = torch.tensor(self.colour, dtype=torch.float32).view(C, 1)
        x[:, ys, xs] = streak.lerp_(colour.expand_as(streak), opacity)
        return to_uint8(x)


class RandomSnow(PhotometricTransform):
    """Snow: dark parts bleached (albumentations' "bleach" RandomSnow) plus falling flakes.

    Pixels whose HLS lightness ``(max + min) / 2`` is below ``snow_point`` (drawn from the range, as a
    fraction of 255, mapped like albumentations to ``255 * (s / 2 + 1 / 3)``) get their lightness
    multiplied by ``brightness``, hue and saturation kept (exact HLS arithmetic, no colour conversion); then ``flakes`` per 1000 pixels white dots of 1-2 px are scattered over the image.
    """

    def __init__(self, snow_point: tuple[float, float] = (0.1, 0.3), brightness: float = 2.0,
                 flakes: float = 2.0, p: float = 1.0) -> None:
        super().__init__(p)
        self.snow_point, self.brightness, self.flakes = snow_point, brightness, flakes

    def sample(self, H: int, W: int) -> dict[str, Any]:
        n = round(self.flakes * H * W / 1000)
        return dict(threshold=255 * (uniform(*self.snow_point) / 2 + 1 / 3),
                    flakes=torch.randint(0, H * W, (n,)), big=torch.rand(n) < 0.3,
                    alpha=torch.rand(n) * 0.5 + 0.5)

    def apply(self, image: torch.Tensor, threshold: float, flakes: torch.Tensor, big: torch.Tensor,
              alpha: torch.Tensor) -> torch.Tensor:
        C, H, W = image.shape
        k = self.brightness
        x = as_float(image)
        L = (channel_max(x) + channel_min(x)).mul_(0.5)  # (H, W) HLS lightness
        # HLS lightness L -> min(255, k L) keeping hue and saturation moves every channel as
        # c' = L' + r (c - L), r = chroma ratio = min(k, (255 - k L) / L) for L < 127.5 (r = k: plain scaling)
        dark = L < threshold
        r = torch.where(dark, (255 - k * L).div_(L.clamp(min=1e-3)).clamp_(0, k), 1.0)
        L2 = torch.where(dark, (k * L).clamp_(max=255), L)
        x.mul_(r).add_(L2.sub_(L * r).add_(0.5))  # c r + (L' - L r), +0.5 to round
        # flakes: sparse white dots (some 2x2), blended where they fall
        for dy, dx, sel in ((0, 0, slice(None)), (0, 1, big), (1, 0, big), (1, 1, big)):
            f, a = flakes[sel], alpha[sel]
            ys, xs = (f // W + dy).clamp_(max=H - 1), (f % W + dx).clamp_(max=W - 1)
            px = x[:, ys, xs]
            x[:, ys, xs] = px.lerp_(torch.full_like(px, 255.5), a)
        return trunc_to_uint8(x)


class RandomFog(PhotometricTransform):
    """Fog: the image fades towards white under a smooth, patchy density field.

    The density is the sum of two random fields at 1/80 and 1/40 of the image size (octaves of value
    noise), upsampled bicubically: the patchiness of albumentations' blended circles at a tiny cost.
    ``intensity`` (drawn from the range) is the mean opacity of the fog; the image also loses some
    sharpness, as through real fog.
    """

    def __init__(self, intensity: tuple[float, float] = (0.3, 0.7), colour: int = 235, p: float = 1.0) -> None:
        super().__init__(p)
        self.intensity, self.colour = intensity, colour

    def sample(self, H: int, W: int) -> dict[str, Any]:
        coarse = torch.rand(1, 1, max(2, H // 80), max(2, W // 80))
        fine = torch.rand(1, 1, max(2, H // 40), max(2, W // 40))
        return dict(intensity=uniform(*self.intensity), coarse=coarse, fine=fine)

    def apply(self, image: torch.Tensor, intensity: float, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        C, H, W = image.shape
        h, w = max(1, H // 4), max(1, W // 4)
        # density at a quarter of the size, then one bilinear upsample: smooth anyway, 16x fewer pixels
        d = TF.interpolate(coarse, (h, w), mode="bicubic", align_corners=False).mul_(0.65)
        d.add_(TF.interpolate(fine, (h, w), mode="bicubic", align_corners=False), alpha=0.35)
        d = d.mul_(0.8).add_(0.6).mul_(intensity).clamp_(0, 0.95)  # opacity intensity x (1 +- 0.4): haze, uneven
        alpha = TF.interpolate(d, (H, W), mode="bilinear", align_corners=False)[0]  # (1, H, W)
        # fog scatters light, so details wash out: blend towards a blurred copy (uint8 resize kernels)
        x = as_float(image).lerp_(as_float(Blur.blur(image, 4.0)), alpha.clamp(max=0.6))
        x.mul_(1 - alpha).add_(alpha.mul_(float(self.colour)).add_(0.5))
        return trunc_to_uint8(x)


class RandomSunFlare(PhotometricTransform):
    """A sun flare: a bright radial glow at a point in ``roi`` and a line of coloured ghost discs through
    the image centre (albumentations' "overlay" RandomSunFlare).

    Args:
        roi: ``(x1, y1, x2, y2)`` fractions of the image where the sun may be (the upper half by default).
        radius: glow radius as a fraction of the image diagonal, drawn from the range.
        circles: number of ghost discs, drawn from the range.
        colour: RGB of the glow.
        p: probability.
    """

    def __init__(self, roi: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 0.5),
                 radius: tuple[float, float] = (0.15, 0.35), circles: tuple[int, int] = (6, 10),
                 colour: tuple[int, int, int] = (255, 255, 240), p: float = 1.0) -> None:
        super().__init__(p)
        self.roi, self.radius, self.circles, self.colour = roi, radius, circles, colour

    def sample(self, H: int, W: int) -> dict[str, Any]:
        x1, y1, x2, y2 = self.roi
        cx, cy = uniform(x1, x2) * W, uniform(y1, y2) * H
        R = uniform(*self.radius) * math.hypot(H, W)
        ghosts = []
        for _ in range(int(torch.randint(self.circles[0], self.circles[1] + 1, ()))):
            t = uniform(0.3, 2.0)  # position along the line from the sun through the image centre
            gx, gy = cx + t * (W / 2 - cx), cy + t * (H / 2 - cy)
            r = uniform(0.01, 0.06) * math.hypot(H, W)
            rgb = [uniform(150, 255) for _ in range(3)]
            ghosts.append((gx, gy, r, uniform(0.05, 0.2), rgb))
        return dict(cx=cx, cy=cy, R=R, ghosts=ghosts)

    def apply(self, image: torch.Tensor, cx: float, cy: float, R: float, ghosts: list) -> torch.Tensor:
        C, H, W = image.shape
        x = as_float(image)
        for gx, gy, r, a, rgb in ghosts:  # ghost discs, each on its own bounding box only
            t, b = max(0, int(gy - r)), min(H, int(gy + r) + 1)
            l, rr = max(0, int(gx - r)), min(W, int(gx + r) + 1)
            if t >= b or l >= rr:
                continue
            yy = torch.arange(t, b, dtype=torch.float32)[:, None] - gy
            xx = torch.arange(l, rr, dtype=torch.float32)[None, :] - gx
            disc = (yy * yy + xx * xx <= r * r).float().mul_(a)  # (h, w)
            patch = x[:, t:b, l:rr]
            patch.lerp_(torch.tensor(rgb).view(C, 1, 1).expand_as(patch), disc)
        # glow: opacity falls from 1 at the sun to 0 at R, quadratically; computed on its box only
        t, b = max(0, int(cy - R)), min(H, int(cy + R) + 1)
        l, rr = max(0, int(cx - R)), min(W, int(cx + R) + 1)
        if t < b and l < rr:
            yy = (torch.arange(t, b, dtype=torch.float32)[:, None] - cy).square_()
            xx = (torch.arange(l, rr, dtype=torch.float32)[None, :] - cx).square_()
            glow = (yy + xx).sqrt_().div_(-R).add_(1).clamp_(min=0).square_()  # (h, w)
            patch = x[:, t:b, l:rr]
            patch.lerp_(torch.tensor(self.colour, dtype=torch.float32).view(C, 1, 1).expand_as(patch), glow)
        return to_uint8(x)


class RandomShadow(PhotometricTransform):
    """Shadows: 1-2 random convex polygons in ``roi`` darkened (albumentations' RandomShadow).

    Args:
        roi: ``(x1, y1, x2, y2)`` fractions of the image the shadow vertices lie in (lower half by default).
        count: number of shadows, drawn from the range.
        vertices: corners of each polygon.
        intensity: how much light a shadow removes (0.5: half), drawn from the range.
        p: probability.
    """

    def __init__(self, roi: tuple[float, float, float, float] = (0.0, 0.5, 1.0, 1.0),
                 count: tuple[int, int] = (1, 2), vertices: int = 5,
                 intensity: tuple[float, float] = (0.4, 0.6), p: float = 1.0) -> None:
        super().__init__(p)
        self.roi, self.count, self.vertices, self.intensity = roi, count, vertices, intensity

    def sample(self, H: int, W: int) -> dict[str, Any]:
        x1, y1, x2, y2 = self.roi
        polygons = []
        for _ in range(int(torch.randint(self.count[0], self.count[1] + 1, ()))):
            # a convex polygon: sorted random angles on an ellipse (convex), cut to the roi in apply
            cx, cy = uniform(x1, x2) * W, uniform(y1, y2) * H
            angles = torch.sort(torch.rand(self.vertices) * 2 * math.pi).values
            rx, ry = uniform(0.1, 0.4) * W, uniform(0.1, 0.3) * H
            px, py = cx + rx * torch.cos(angles), cy + ry * torch.sin(angles)
            polygons.append((torch.stack([px, py], 1), 1 - uniform(*self.intensity)))
        box = (round(x1 * W), round(y1 * H), round(x2 * W), round(y2 * H))
        return dict(polygons=polygons, box=box)

    def apply(self, image: torch.Tensor, polygons: list, box: tuple[int, int, int, int]) -> torch.Tensor:
        x = as_float(image)
        for poly, light in polygons:  # poly (K, 2) x, y in pixels, counter-clockwise in (x, y)
            # the polygon's bounding box cut to the roi: the shadow is polygon & roi, still convex
            l, t = max(box[0], int(poly[:, 0].min())), max(box[1], int(poly[:, 1].min()))
            rr, b = min(box[2], int(poly[:, 0].max()) + 1), min(box[3], int(poly[:, 1].max()) + 1)
            if t >= b or l >= rr:
                continue
            yy = torch.arange(t, b, dtype=torch.float32)[:, None] + 0.5  # pixel centres
            xx = torch.arange(l, rr, dtype=torch.float32)[None, :] + 0.5
            inside = torch.ones(b - t, rr - l, dtype=torch.bool)
            for k in range(len(poly)):  # inside a convex polygon = on the inner side of every edge
                (ax, ay), (bx, by) = poly[k].tolist(), poly[(k + 1) % len(poly)].tolist()
                inside &= (bx - ax) * (yy - ay) - (by - ay) * (xx - ax) >= 0
            patch = x[:, t:b, l:rr]
            patch.mul_(torch.where(inside, light, 1.0))
        return to_uint8(x)
