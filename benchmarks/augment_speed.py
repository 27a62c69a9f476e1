"""Augmentation speed: zir against albumentations and torchvision v2, images per second on 640x480.

    .venv/bin/pip install albumentations      # benchmark-only peer (benchmarks/requirements.txt)
    .venv/bin/python benchmarks/augment_speed.py [--rounds 7] [--images 40]

Rows:

* ``standard detect``: zir's ``build_augment("standard", "detect")`` (flip, YOLO scale + translate, HSV
  gains, greyscale, Gaussian noise p=.2, blur, JPEG, box sanitising) against the closest albumentations
  and torchvision v2 pipelines (same families, same probabilities); then the same with the noise step
  always on (p=1) and with it left out, the two cases the issue measured;
* each weather effect at p=1 against albumentations' RandomRain / RandomSnow / RandomFog /
  RandomSunFlare / RandomShadow with their defaults.

Each library gets its native input (uint8 ``(3, H, W)`` tensor sample for zir and torchvision, ``(H, W, 3)``
numpy array and box list for albumentations), 8 synthetic scenes with 5 boxes each. The contenders of a
row run in turns, ``--rounds`` times ``--images`` images; the table shows each one's best round, which is
the least disturbed by other processes on a shared machine (the load average is printed with it).
Threads are each library's default: torch's intra-op threads, and OpenCV's for albumentations.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from datetime import date

import numpy as np
import torch
import torchvision
from torchvision import tv_tensors
from torchvision.transforms import v2

from zir.augment import (
    GaussianNoise,
    RandomFog,
    RandomRain,
    RandomShadow,
    RandomSnow,
    RandomSunFlare,
    build_augment,
)

H, W = 480, 640


def scenes(n: int = 8, boxes: int = 5, seed: int = 0) -> list[tuple[dict, np.ndarray, list, list]]:
    """Synthetic photos-like scenes: a sky gradient, ground, textured rectangles as objects."""
    g = torch.Generator().manual_seed(seed)
    out = []
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    for _ in range(n):
        img = torch.stack([90 + xx * 120 // W, 130 + yy * 90 // H, 210 - yy * 110 // H]).float()
        img[:, H * 2 // 3:] = torch.tensor([70.0, 115, 55]).view(3, 1, 1)
        bxs = []
        for _ in range(boxes):
            w, h = int(torch.randint(40, 200, (), generator=g)), int(torch.randint(40, 160, (), generator=g))
            x, y = int(torch.randint(0, W - w, (), generator=g)), int(torch.randint(0, H - h, (), generator=g))
            img[:, y:y + h, x:x + w] = torch.rand(3, 1, 1, generator=g) * 255
            bxs.append([x, y, x + w, y + h])
        img += torch.randn(3, H, W, generator=g) * 6  # texture, so JPEG and blur see a photo, not flat paint
        hwc = img.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        labels = list(range(boxes))
        # zir's read_image gives a (3, H, W) view of the decoded (H, W, 3) array; so do we
        sample = {"image": tv_tensors.Image(torch.from_numpy(hwc).permute(2, 0, 1)),
                  "boxes": tv_tensors.BoundingBoxes(torch.tensor(bxs, dtype=torch.float32), format="XYXY",
                                                    canvas_size=(H, W)),
                  "labels": torch.tensor(labels)}
        out.append((sample, hwc, bxs, labels))
    return out


# ---------------------------------------------------------------------------------------------- pipelines


def zir_standard(noise_p: float | None) -> Callable:
    """zir's standard detect preset; ``noise_p`` overrides the Gaussian noise probability, None drops it."""
    pipe = build_augment("standard", "detect")
    steps = []
    for t in pipe.transforms:
        if isinstance(t, GaussianNoise):
            if noise_p is None:
                continue
            t.p = noise_p
        steps.append(t)
    pipe = v2.Compose(steps)
    return lambda s: pipe(s[0])


def albu_standard(noise_p: float | None) -> Callable:
    import albumentations as A

    steps = [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.5, 1.5), translate_percent=(-0.1, 0.1), fill=114, p=1.0),
        # YOLO gains h .015 s .7 v .4 as albumentations' additive shifts (hue in 0-180 units)
        A.HueSaturationValue(hue_shift_limit=3, sat_shift_limit=50, val_shift_limit=40, p=1.0),
        A.ToGray(p=0.01),
    ]
    if noise_p is not None:
        steps.append(A.GaussNoise(std_range=(3 / 255, 15 / 255), p=noise_p))
    steps += [A.GaussianBlur(blur_limit=(3, 7), p=0.05), A.ImageCompression(quality_range=(30, 90), p=0.05)]
    pipe = A.Compose(steps, bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_area=1))
    return lambda s: pipe(image=s[1], bboxes=s[2], labels=s[3])


def tv_standard(noise_p: float | None) -> Callable:
    steps = [
        v2.RandomHorizontalFlip(0.5),
        v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.5, 1.5), fill={tv_tensors.Image: 114, "others": 0}),
        v2.ColorJitter(brightness=0.4, saturation=0.7, hue=0.015),
        v2.RandomGrayscale(0.01),
    ]
    if noise_p is not None:  # torchvision's GaussianNoise wants a float image
        steps.append(v2.RandomApply([v2.ToDtype(torch.float32, scale=True), v2.GaussianNoise(0.0, 9 / 255),
                                     v2.ToDtype(torch.uint8, scale=True)], p=noise_p))
    steps += [v2.RandomApply([v2.GaussianBlur(7, (0.1, 2.0))], p=0.05), v2.RandomApply([v2.JPEG((30, 90))], p=0.05),
              v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes()]
    pipe = v2.Compose(steps)
    return lambda s: pipe(s[0])


WEATHER = [("rain", RandomRain, "RandomRain"), ("snow", RandomSnow, "RandomSnow"), ("fog", RandomFog, "RandomFog"),
           ("sun flare", RandomSunFlare, "RandomSunFlare"), ("shadow", RandomShadow, "RandomShadow")]


def zir_weather(cls: type) -> Callable:
    t = cls(p=1.0)
    return lambda s: t(s[0])


def albu_weather(name: str) -> Callable:
    import albumentations as A

    t = getattr(A, name)(p=1.0)
    return lambda s: t(image=s[1])


# ---------------------------------------------------------------------------------------------- timing


def race(contenders: dict[str, Callable | None], data: list, rounds: int, images: int) -> dict[str, float | None]:
    """Best images/s of each contender over ``rounds`` interleaved rounds of ``images`` images."""
    best: dict[str, float | None] = {k: (0.0 if f is not None else None) for k, f in contenders.items()}
    for f in contenders.values():  # warm up: first calls allocate, import, build tables
        if f is not None:
            for s in data[:2]:
                f(s)
    for r in range(rounds):
        for name, f in contenders.items():
            if f is None:
                continue
            t0 = time.perf_counter()
            for i in range(images):
                f(data[(r * images + i) % len(data)])
            best[name] = max(best[name], images / (time.perf_counter() - t0))
    return best


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--images", type=int, default=40, help="images per round")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's; DataLoader workers use 1)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        import albumentations as A

        albu_version = A.__version__
    except ImportError:
        albu_version = None
    have_albu = albu_version is not None
    data = scenes()
    torch.manual_seed(0)
    load0 = os.getloadavg()

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.0f}"

    rows = []
    for label, noise_p in [("standard detect (noise p=.2)", 0.2), ("standard detect, noise always (p=1)", 1.0),
                           ("standard detect without noise", None)]:
        r = race({"zir": zir_standard(noise_p), "albu": albu_standard(noise_p) if have_albu else None,
                  "tv": tv_standard(noise_p)}, data, args.rounds, args.images)
        rows.append(f"| {label} | {fmt(r['zir'])} | {fmt(r['albu'])} | {fmt(r['tv'])} | >= albumentations |")
    for label, cls, albu_name in WEATHER:
        r = race({"zir": zir_weather(cls), "albu": albu_weather(albu_name) if have_albu else None},
                 data, args.rounds, max(4, args.images // 2))
        rows.append(f"| weather: {label} | {fmt(r['zir'])} | {fmt(r['albu'])} | - | >= 100 |")
    load1 = os.getloadavg()

    print(f"Augmentation speed, images/s on {W}x{H} uint8 with 5 boxes (best of {args.rounds} rounds)\n")
    print(f"- date: {date.today().isoformat()}; machine: {_cpu()}, {os.cpu_count()} CPUs; "
          f"torch threads: {torch.get_num_threads()}")
    print(f"- torch {torch.__version__}, torchvision {torchvision.__version__}, albumentations {albu_version}; "
          f"load average {load0[0]:.1f} before, {load1[0]:.1f} after\n")
    print("| pipeline | zir | albumentations | torchvision v2 | goal |")
    print("|---|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
