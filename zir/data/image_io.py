"""Reading images into zir's contract: RGB uint8 ``(3, H, W)``, EXIF orientation applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import tv_tensors

from zir.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert any PIL image to an RGB uint8 ``(H, W, 3)`` array.

    Greyscale, palette (``P``), 16-bit (``I;16``, ``I``), float (``F``), CMYK and RGBA all become RGB.
    Alpha is dropped (composited on black, as most training pipelines do), and 16-bit images are scaled
    by their full range (``>> 8``), not clipped.
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.int64)
        if mode == "I" and arr.max(initial=0) <= 255:
            arr8 = arr.clip(0, 255).astype(np.uint8)
        else:
            arr8 = (arr.clip(0, 65535) >> 8).astype(np.uint8)
        return np.repeat(arr8[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=1.0))
        arr8 = ((arr - lo) / max(hi - lo, 1e-12) * 255).round().astype(np.uint8)
        return np.repeat(arr8[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy: torch.from_numpy needs one


def open_pil(path: str | Path) -> Image.Image:
    """Open an image fully (no lazy decoding), EXIF orientation applied; raise DataError if broken."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found; check the path in the annotation file")
    try:
        with Image.open(path) as img:
            img.load()  # decodes everything: a truncated file fails here, not later in a worker
            return ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"cannot read image ({e}); re-export or remove the file") from e


def read_image(path: str | Path) -> tv_tensors.Image:
    """Read an image file as ``tv_tensors.Image`` uint8 ``(3, H, W)`` RGB."""
    arr = to_rgb_array(open_pil(path))
    return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1))


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` after EXIF orientation, read from the header only (fast)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"cannot read image header ({e}); re-export or remove the file") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label PNG (class-index, palette or object-id map) as integer ``(H, W)`` values.

    Palette PNGs give their palette *indices* (as VOC's SegmentationClass expects), not colours.
    RGB label images give ``R * 65536 + G * 256 + B`` (COCO panoptic's id encoding is ``R + 256 G +
    256^2 B``; use :func:`read_panoptic_png` for that).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "mask file not found; every image needs its label PNG")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGB", "RGBA"):
                a = np.asarray(img.convert("RGB"), dtype=np.int64)
                return a[..., 0] * 65536 + a[..., 1] * 256 + a[..., 2]
            if img.mode == "LA":
                img = img.convert("L")
            return np.asarray(img, dtype=np.int64)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"cannot read mask ({e}); re-export or remove the file") from e


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Read a COCO panoptic PNG as segment ids ``(H, W)`` int64: ``id = R + 256 G + 256^2 B``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "panoptic PNG not found")
    try:
        with Image.open(path) as img:
            a = np.asarray(img.convert("RGB"), dtype=np.int64)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"cannot read panoptic PNG ({e})") from e
    return a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write a uint8 array (H, W) or (H, W, 3) as PNG, deterministically (no timestamps)."""
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", optimize=False)
