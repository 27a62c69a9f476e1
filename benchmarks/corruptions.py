"""zir's corruptions against the ``imagecorruptions`` package (v1.1.2) on the same images: how much each
corrupts (PSNR to the clean image, per corruption and severity) and how long each takes.

The package does not import on a current Python stack (``pkg_resources`` is gone from setuptools,
``scipy.ndimage.interpolation`` from SciPy, ``np.float_`` from NumPy 2, and scikit-image >= 0.19 refuses
its ``multichannel=`` argument); this script runs its own formulas through small shims for exactly those
four, and says so in its output. Needs ``pip install imagecorruptions opencv-python-headless``.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/corruptions.py [IMAGE ...] [--size 224]

The two draw different random numbers, so for random corruptions the PSNR to the clean image is compared
(averaged over ``--seeds`` draws), not the images; for the deterministic ones (defocus and zoom blur,
brightness, contrast, pixelate, JPEG) the PSNR between the two results is printed too.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from zir.augment.corruptions import BENCHMARK, corrupt, psnr

DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}


def load_package():
    """imagecorruptions' corruptions.py with the four shims of the module docstring."""
    import scipy.ndimage
    import skimage.filters

    sys.modules.setdefault("pkg_resources", types.SimpleNamespace(
        resource_filename=lambda pkg, name: str(Path(sys.modules[pkg].__file__).parent / name)))
    sys.modules.setdefault("scipy.ndimage.interpolation", scipy.ndimage)
    if not hasattr(np, "float_"):
        np.float_ = np.float64
    gaussian = skimage.filters.gaussian

    def gaussian_compat(image, *args, multichannel=None, **kwargs):
        if multichannel:
            kwargs["channel_axis"] = -1
        return gaussian(image, *args, **kwargs)

    skimage.filters.gaussian = gaussian_compat
    from imagecorruptions import corruptions

    corruptions.gaussian = gaussian_compat
    return corruptions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="*")
    ap.add_argument("--size", type=int, default=224, help="images are resized to this square side")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from PIL import Image

    from zir.data.synth import SynthDataset

    if args.images:
        pics = [np.array(Image.open(p).convert("RGB").resize((args.size, args.size))) for p in args.images]
    else:
        ds = SynthDataset("detect", n=2, seed=0, image_size=args.size)
        pics = [ds[i]["image"].permute(1, 2, 0).numpy() for i in range(2)]
    pkg = load_package()
    x = torch.stack([torch.from_numpy(p).permute(2, 0, 1) for p in pics]).float() / 255  # (B, 3, S, S)
    print(f"{len(pics)} images of {args.size}x{args.size}; PSNR to the clean image in dB (mean over images "
          f"and {args.seeds} seeds); ms per image; 'same' = PSNR between zir's and the package's result")
    print("| corruption | severity | zir PSNR | package PSNR | diff | same | zir ms | package ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name in BENCHMARK:
        fn = getattr(pkg, name)
        for s in range(1, 6):
            zp, pp, same, zt, pt = [], [], [], 0.0, 0.0
            for seed in range(args.seeds):
                t = time.perf_counter()
                z = corrupt(x, name, s, seeds=[seed * 100 + i for i in range(len(pics))])
                zt += time.perf_counter() - t
                np.random.seed(seed)
                t = time.perf_counter()
                outs = []
                for p in pics:
                    o = fn(Image.fromarray(p), s)
                    outs.append(np.asarray(o, dtype=np.float32))
                pt += time.perf_counter() - t
                q = torch.stack([torch.from_numpy(np.uint8(np.clip(o, 0, 255)).copy()).permute(2, 0, 1)
                                 for o in outs]).float() / 255
                zp.append(psnr(z, x).mean().item())
                pp.append(psnr(q, x).mean().item())
                same.append(psnr(z, q).mean().item())
            n = args.seeds * len(pics)
            za, pa = float(np.mean(zp)), float(np.mean(pp))
            print(f"| {name} | {s} | {za:.2f} | {pa:.2f} | {za - pa:+.2f} | "
                  f"{np.mean(same) if name in DETERMINISTIC else float('nan'):.1f} | {1000 * zt / n:.1f} | "
                  f"{1000 * pt / n:.1f} |", flush=True)


if __name__ == "__main__":
    main()
