"""The corruptions of ImageNet-C / COCO-C (Hendrycks & Dietterich 2019; Michaelis et al. 2019) in torch,
batched, with fixed seeds, plus the lecture's rain and sun flare.

``corrupt(images, name, severity, seeds)`` takes float ``(B, 3, H, W)`` in [0, 1] and returns the same
shape. Severity 0 gives the images back untouched; severities 1-5 use the parameters of the
``imagecorruptions`` package (v1.1.2, Apache-2.0; its formulas are cited per function). What differs
from that package, and why:

* **No scikit-image, OpenCV, SciPy or numba**: torch only, so it runs where zir runs, on any image size
  (the package fails on most corruptions below about 32 px, and crashes with scikit-image >= 0.19's
  removed ``multichannel`` argument). Padding is reflect where the image is large enough, else replicate.
* **Randomness** comes from one seed per image (``seeds``): the same image and seed give the same result
  whatever the batch. The package draws from NumPy's global generator.
* **Glass blur**: the package swaps pixels one by one in a Python loop (seconds per image); here every
  pixel takes the value of a random neighbour within the same radius in one gather per iteration (the
  parallel form of the same local shuffle, as GPU re-implementations do). The swap loop's
  exact pixel trajectories are not reproduced.
* **Frost**: the package blends photographs of frost shipped as files; zir blends a procedural frost
  texture (a plasma fractal of pale blue ice) with the same weights ``c0 * x + c1 * frost``.

Each corruption maps severity to parameters exactly as listed in ``SEVERITY`` below.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# --------------------------------------------------------------------------------------------------
# Severity parameters (imagecorruptions 1.1.2, corruptions.py), index = severity - 1

SEVERITY: dict[str, list] = {
    "gaussian_noise": [.08, .12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [.03, .06, .09, 0.17, 0.27],
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "zoom_blur": [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)],
    "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
             (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
    "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
    "fog": [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)],
    "brightness": [.1, .2, .3, .4, .5],
    "contrast": [0.4, .3, .2, .1, .05],
    "elastic_transform": [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "jpeg_compression": [25, 18, 15, 10, 7],
    # the lecture's weather (zir.augment.weather): (streaks per 1000 px, brightness) and glow radius
    "rain": [(1.0, 0.9), (2.0, 0.8), (3.0, 0.7), (4.5, 0.6), (6.0, 0.5)],
    "sun_flare": [(0.1, 0.12), (0.15, 0.18), (0.2, 0.25), (0.27, 0.32), (0.35, 0.4)],
}
BENCHMARK = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
             "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
             "jpeg_compression")
"""The 15 corruptions of ImageNet-C / COCO-C, in their papers' order (noise, blur, weather, digital)."""
CORRUPTIONS = (*BENCHMARK, "rain", "sun_flare")
WEATHER = ("snow", "frost", "fog", "brightness", "rain", "sun_flare")
QUICK = ("gaussian_noise", "defocus_blur", "motion_blur", "snow", "fog", "contrast", "jpeg_compression", "rain")
"""``zir analyze --quick``: one or two of each family, at severity 3."""


def corrupt(images: Tensor, name: str, severity: int, seeds: int | Sequence[int] = 0) -> Tensor:
    """Corrupt a batch of images.

    Args:
        images: float ``(B, 3, H, W)`` in [0, 1] (any H, W >= 1).
        name: one of :data:`CORRUPTIONS`.
        severity: 0 (the images themselves, untouched) to 5.
        seeds: one seed per image, or one for all (image ``i`` then gets ``seeds + i``).

    Returns:
        float ``(B, 3, H, W)`` in [0, 1].
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in range(6):
        raise ValueError(f"severity must be 0 to 5, got {severity}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"corrupt takes float (B, 3, H, W) images, got shape {tuple(images.shape)}")
    if severity == 0:
        return images
    B = len(images)
    seeds = [seeds + i for i in range(B)] if isinstance(seeds, int) else list(seeds)
    if len(seeds) != B:
        raise ValueError(f"{B} images but {len(seeds)} seeds")
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x = images.float()
    out = _FUNCTIONS[name](x, SEVERITY[name][severity - 1], gens)
    return out.clamp(0, 1).to(images.dtype)


# --------------------------------------------------------------------------------------------------
# Per-image random draws, stacked (the same image and seed give the same draw in any batch)


def _randn(gens: list[torch.Generator], shape: Sequence[int]) -> Tensor:
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in gens])


def _rand(gens: list[torch.Generator], shape: Sequence[int]) -> Tensor:
    return torch.stack([torch.rand(tuple(shape), generator=g) for g in gens])


def _uniform(gens: list[torch.Generator], lo: float, hi: float) -> Tensor:
    """``(B,)`` one uniform draw per image."""
    return torch.stack([lo + (hi - lo) * torch.rand((), generator=g) for g in gens])


# --------------------------------------------------------------------------------------------------
# Filters


def _pad(x: Tensor, left: int, right: int, top: int, bottom: int, mode: str = "reflect") -> Tensor:
    """Pad ``(B, C, H, W)``; reflect needs pads smaller than the side, so tiny images fall back to replicate."""
    H, W = x.shape[-2:]
    if mode == "reflect" and (max(left, right) >= W or max(top, bottom) >= H):
        mode = "replicate"
    return F.pad(x, (left, right, top, bottom), mode=mode)


def _conv_same(x: Tensor, kernel: Tensor, mode: str = "reflect") -> Tensor:
    """Every channel of ``(B, C, H, W)`` filtered by the 2-D ``(kh, kw)`` kernel (correlation, as
    cv2.filter2D), output the same size."""
    B, C, H, W = x.shape
    kh, kw = kernel.shape
    xp = _pad(x.reshape(B * C, 1, H, W), kw // 2, kw - 1 - kw // 2, kh // 2, kh - 1 - kh // 2, mode)
    return F.conv2d(xp, kernel[None, None].to(x.dtype)).reshape(B, C, H, W)


def _gauss1d(sigma: float, radius: int) -> Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    return (k / k.sum()).float()


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """scikit-image's ``gaussian(x, sigma)``: separable, truncated at 4 sigma, border ``nearest``."""
    k = _gauss1d(sigma, int(4 * sigma + 0.5))
    return _conv_same(_conv_same(x, k[None, :], "replicate"), k[:, None], "replicate")


def _disk(radius: int, alias_blur: float) -> Tensor:
    """imagecorruptions' ``disk``: an aliased disc, normalised, then cv2.GaussianBlur (3x3, 5x5 above r 8)."""
    L = torch.arange(-max(radius, 8), max(radius, 8) + 1, dtype=torch.float32)
    Y, X = torch.meshgrid(L, L, indexing="ij")
    disk = ((X ** 2 + Y ** 2) <= radius ** 2).float()
    disk /= disk.sum()
    k = _gauss1d(alias_blur, 1 if radius <= 8 else 2)  # cv2's kernel of ksize 3 / 5 at this sigma
    d = disk[None, None]
    d = _conv_same(_conv_same(d, k[None, :]), k[:, None])  # cv2's default border: reflect 101
    return d[0, 0]


def _shift_gather(x: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """Per image, ``out[.., h, w] = x[.., clamp(h - dy), clamp(w - dx)]`` (imagecorruptions' ``shift``:
    a roll whose wrapped part repeats the edge). ``dx``, ``dy``: int ``(B,)``."""
    B, C, H, W = x.shape
    hs = (torch.arange(H)[None, :] - dy[:, None]).clamp(0, H - 1)  # (B, H)
    ws = (torch.arange(W)[None, :] - dx[:, None]).clamp(0, W - 1)  # (B, W)
    rows = torch.gather(x, 2, hs[:, None, :, None].expand(B, C, H, W))
    return torch.gather(rows, 3, ws[:, None, None, :].expand(B, C, H, W))


def _motion_blur(x: Tensor, radius: int, sigma: float, angle: Tensor) -> Tensor:
    """imagecorruptions' ``_motion_blur``: a one-sided Gaussian-weighted trail of ``2 radius + 1`` shifted
    copies along ``angle`` (degrees, ``(B,)``)."""
    width = 2 * radius + 1
    k = torch.exp(-torch.arange(width, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).float()
    py, px = width * torch.sin(torch.deg2rad(angle)), width * torch.cos(torch.deg2rad(angle))
    hyp = torch.hypot(py, px)
    out = torch.zeros_like(x)
    H, W = x.shape[-2:]
    alive = torch.ones(len(x), dtype=torch.bool)
    for i in range(width):
        dy = -torch.ceil(i * py / hyp - 0.5).long()
        dx = -torch.ceil(i * px / hyp - 0.5).long()
        alive &= (dy.abs() < H) & (dx.abs() < W)  # the package stops adding once a shift leaves the image
        out += k[i] * _shift_gather(x, dx, dy) * alive[:, None, None, None]
    return out


def _clipped_zoom(x: Tensor, z: float) -> Tensor:
    """imagecorruptions' ``clipped_zoom``: the centre ``ceil(side / z)`` crop scaled by ``z`` (linear,
    corners aligned as scipy's zoom), cut back to ``(H, W)`` from the top left."""
    H, W = x.shape[-2:]
    ch, cw = math.ceil(H / z), math.ceil(W / z)
    top, left = (H - ch) // 2, (W - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    size = (max(H, round(ch * z)), max(W, round(cw * z)))
    return F.interpolate(crop, size=size, mode="bilinear", align_corners=True)[..., :H, :W]


def _plasma(mapsize: int, decay: float, g: torch.Generator) -> Tensor:
    """imagecorruptions' ``plasma_fractal`` (diamond-square), float64 ``(mapsize, mapsize)`` in [0, 1]."""
    a = torch.zeros(mapsize, mapsize, dtype=torch.float64)
    step, wibble = mapsize, 100.0

    def wibbled(v: Tensor) -> Tensor:
        return v / 4 + wibble * (2 * torch.rand(v.shape, generator=g, dtype=torch.float64) - 1) * wibble

    while step >= 2:
        h = step // 2
        corner = a[0::step, 0::step]
        sq = corner + torch.roll(corner, -1, 0)
        sq = sq + torch.roll(sq, -1, 1)
        a[h::step, h::step] = wibbled(sq)
        dr, ul = a[h::step, h::step], a[0::step, 0::step]
        a[0::step, h::step] = wibbled(dr + torch.roll(dr, 1, 0) + ul + torch.roll(ul, -1, 1))
        a[h::step, 0::step] = wibbled(dr + torch.roll(dr, 1, 1) + ul + torch.roll(ul, -1, 0))
        step //= 2
        wibble /= decay
    a -= a.min()
    return a / a.max().clamp(min=1e-12)


def _plasma_batch(gens: list[torch.Generator], H: int, W: int, decay: float) -> Tensor:
    """``(B, 1, H, W)`` float32 plasma fields of the next power of two above the longer side, cut to size."""
    size = 1 << max(0, (max(H, W) - 1).bit_length())
    return torch.stack([_plasma(max(size, 2), decay, g)[:H, :W] for g in gens])[:, None].float()


def _gray(x: Tensor) -> Tensor:
    """``(B, 1, H, W)`` luma as cv2's RGB2GRAY."""
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]


# --------------------------------------------------------------------------------------------------
# The corruptions (x: float (B, 3, H, W) in [0, 1]; c: the severity's parameters)


def _gaussian_noise(x: Tensor, c: float, gens: list) -> Tensor:
    return x + _randn(gens, x.shape[1:]) * c


def _shot_noise(x: Tensor, c: float, gens: list) -> Tensor:
    return torch.stack([torch.poisson(xi * c, generator=g) for xi, g in zip(x, gens)]) / c


def _impulse_noise(x: Tensor, c: float, gens: list) -> Tensor:
    # scikit-image's random_noise(mode="s&p", amount=c): a fraction c of the values, half salt, half pepper
    u = _rand(gens, (2, *x.shape[1:]))
    return torch.where(u[:, 0] < c, (u[:, 1] < 0.5).float(), x)


def _defocus_blur(x: Tensor, c: tuple, gens: list) -> Tensor:
    return _conv_same(x, _disk(c[0], c[1]))


def _glass_blur(x: Tensor, c: tuple, gens: list) -> Tensor:
    sigma, d, iterations = c
    x = torch.floor(gaussian_blur(x, sigma).clamp(0, 1) * 255) / 255  # the package's uint8 round trip
    B, C, H, W = x.shape
    for _ in range(iterations):  # every pixel takes a neighbour's value in [-d, d) (module docstring)
        off = torch.stack([torch.randint(-d, d, (2, H, W), generator=g) for g in gens])  # (B, 2, H, W)
        hs = (torch.arange(H)[:, None] + off[:, 0]).clamp(0, H - 1)
        ws = (torch.arange(W)[None, :] + off[:, 1]).clamp(0, W - 1)
        flat = (hs * W + ws).reshape(B, 1, H * W).expand(B, C, H * W)
        x = torch.gather(x.reshape(B, C, H * W), 2, flat).reshape(B, C, H, W)
    return gaussian_blur(x, sigma)


def _motion(x: Tensor, c: tuple, gens: list) -> Tensor:
    return _motion_blur(x, c[0], c[1], _uniform(gens, -45, 45))


def _zoom_blur(x: Tensor, c: tuple, gens: list) -> Tensor:
    zooms = torch.arange(*c, dtype=torch.float64).tolist()  # np.arange(1, 1.11, 0.01), ...
    out = torch.zeros_like(x)
    for z in zooms:
        out += _clipped_zoom(x, z)
    return (x + out) / (len(zooms) + 1)


def _snow(x: Tensor, c: tuple, gens: list) -> Tensor:
    B, _, H, W = x.shape
    layer = _randn(gens, (1, H, W)) * c[1] + c[0]
    layer = _clipped_zoom(layer, c[2])
    layer = torch.where(layer < c[3], torch.zeros_like(layer), layer).clamp(0, 1)
    layer = _motion_blur(layer, c[4], c[5], _uniform(gens, -135, -45))
    layer = torch.round(layer * 255) / 255
    x = c[6] * x + (1 - c[6]) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + torch.rot90(layer, 2, (2, 3))


def _frost(x: Tensor, c: tuple, gens: list) -> Tensor:
    B, _, H, W = x.shape
    ice = 0.3 + 0.7 * _plasma_batch(gens, H, W, 1.6)  # wisps of ice; the package blends frost photographs
    tint = torch.tensor([0.85, 0.93, 1.0]).view(1, 3, 1, 1)
    return c[0] * x + c[1] * ice * tint


def _fog(x: Tensor, c: tuple, gens: list) -> Tensor:
    B, _, H, W = x.shape
    top = x.amax(dim=(1, 2, 3), keepdim=True)
    x = x + c[0] * _plasma_batch(gens, H, W, c[1])
    return x * top / (top + c[0])


def _brightness(x: Tensor, c: float, gens: list) -> Tensor:
    # HSV value + c with hue and saturation kept: every channel scales by V' / V (grey when V = 0)
    v = x.amax(dim=1, keepdim=True)
    v2 = (v + c).clamp(max=1)
    return torch.where(v > 0, x * v2 / v.clamp(min=1e-12), v2.expand_as(x))


def _contrast(x: Tensor, c: float, gens: list) -> Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * c + mean


def _elastic(x: Tensor, alpha: float, gens: list) -> Tensor:
    B, C, H, W = x.shape
    max_d = H * 0.005
    d = (_rand(gens, (2, H, W)) * 2 - 1) * max_d  # (B, 2, H, W): dx, dy before smoothing
    sy, sx = H * 0.01, W * 0.01
    ky, kx = _gauss1d(max(sy, 1e-3), int(3 * sy + 0.5)), _gauss1d(max(sx, 1e-3), int(3 * sx + 0.5))
    d = _conv_same(_conv_same(d, kx[None, :]), ky[:, None]) * alpha
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    gx = (xs + d[:, 0]) / max(W - 1, 1) * 2 - 1
    gy = (ys + d[:, 1]) / max(H - 1, 1) * 2 - 1
    return F.grid_sample(x, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="reflection",
                         align_corners=True)


def _box_matrix(n_in: int, n_out: int) -> Tensor:
    """``(n_out, n_in)`` weights of PIL's BOX resampling: each output pixel averages the input it covers,
    partly covered pixels by their covered fraction."""
    edges = torch.arange(n_out + 1, dtype=torch.float64) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = torch.arange(n_in, dtype=torch.float64)[None, :]
    cover = (torch.minimum(hi, pix + 1) - torch.maximum(lo, pix)).clamp(min=0)  # (n_out, n_in)
    return (cover / cover.sum(1, keepdim=True)).float()


def _pixelate(x: Tensor, c: float, gens: list) -> Tensor:
    H, W = x.shape[-2:]
    h, w = max(1, int(H * c)), max(1, int(W * c))
    small = _box_matrix(H, h) @ x @ _box_matrix(W, w).T  # (B, 3, h, w)
    return F.interpolate(small, size=(H, W), mode="nearest-exact")  # PIL's NEAREST samples pixel centres


def _jpeg(x: Tensor, quality: int, gens: list) -> Tensor:
    from PIL import Image

    out = []
    for xi in x:  # PIL, as the package: libjpeg with 4:2:0 chroma subsampling
        buf = io.BytesIO()
        arr = (xi * 255).round().clamp(0, 255).byte().permute(1, 2, 0).contiguous().numpy()
        Image.fromarray(arr).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        out.append(torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1))
    return torch.stack(out).float() / 255


def _weather(make: Callable[[tuple], object]) -> Callable[[Tensor, tuple, list], Tensor]:
    """Run a :mod:`zir.augment.weather` transform per image with its parameters drawn under that image's seed."""

    def run(x: Tensor, c: tuple, gens: list) -> Tensor:
        transform = make(c)
        out = []
        for xi, g in zip(x, gens):
            seed = int(torch.randint(0, 2 ** 31 - 1, (), generator=g))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                image = (xi * 255).round().clamp(0, 255).byte()
                params = transform.sample(*image.shape[-2:])  # type: ignore[attr-defined]
                out.append(transform.apply(image, **params).float() / 255)  # type: ignore[attr-defined]
        return torch.stack(out)

    return run


def _rain(c: tuple) -> object:
    from zir.augment.weather import RandomRain

    return RandomRain(drops=c[0], brightness=c[1])


def _flare(c: tuple) -> object:
    from zir.augment.weather import RandomSunFlare

    return RandomSunFlare(radius=c)


_FUNCTIONS: dict[str, Callable[[Tensor, object, list], Tensor]] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur, "glass_blur": _glass_blur, "motion_blur": _motion, "zoom_blur": _zoom_blur,
    "snow": _snow, "frost": _frost, "fog": _fog, "brightness": _brightness, "contrast": _contrast,
    "elastic_transform": _elastic, "pixelate": _pixelate, "jpeg_compression": _jpeg,
    "rain": _weather(_rain), "sun_flare": _weather(_flare),
}


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """``(B,)`` peak signal-to-noise ratio in dB of float images in [0, 1] (inf where equal)."""
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)
