"""Reading images into zir's contract: RGB uint8 ``(3, H, W)``, EXIF orientation applied.

Every file is opened through :func:`_open`, which refuses images with more than
:func:`max_image_pixels` pixels (a "decompression bomb": a few hundred KB of PNG that would decode to
gigabytes) with a :class:`~zir.errors.DataError` like any unreadable image, so ``--skip-bad`` leaves it
out. The limit is PIL's (``2 * Image.MAX_IMAGE_PIXELS``, about 179 million pixels) unless the environment
variable ``ZIR_MAX_IMAGE_PIXELS`` sets another.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import tv_tensors

from zir.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


MAX_PIXELS_ENV = "ZIR_MAX_IMAGE_PIXELS"
_PIL_DEFAULT_MAX = Image.MAX_IMAGE_PIXELS or 89_478_485
_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def max_image_pixels() -> int:
    """Largest ``width * height`` zir opens: ``$ZIR_MAX_IMAGE_PIXELS``, else PIL's error threshold."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return 2 * _PIL_DEFAULT_MAX
    try:
        limit = int(float(value))
    except ValueError:
        limit = 0
    if limit <= 0:
        raise DataError(f"${MAX_PIXELS_ENV}", f"must be a positive number of pixels, got {value!r}")
    return limit


@contextlib.contextmanager
def _open(path: Path, what: str = "image") -> Iterator[Image.Image]:
    """``Image.open`` that refuses more than :func:`max_image_pixels` pixels with a DataError."""
    limit = max_image_pixels()
    # PIL raises its own error at 2 * MAX_IMAGE_PIXELS: let it open what the user's limit allows.
    Image.MAX_IMAGE_PIXELS = max(_PIL_DEFAULT_MAX, limit)
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise DataError(path, f"{what} is too large to decode safely ({_why(e, path)}); remove it, or raise the limit "
                              f"with {MAX_PIXELS_ENV}=N if it is a real image") from None
    with img:
        w, h = img.size
        if w * h > limit:
            raise DataError(path, f"{what} is {w}x{h} = {w * h} pixels, more than the limit of {limit} "
                                  "(a decompression bomb would exhaust memory); remove it, or raise the limit "
                                  f"with {MAX_PIXELS_ENV}=N if it is a real image")
        if w < 1 or h < 1:
            raise DataError(path, f"{what} is {w}x{h} pixels; re-export or remove the file")
        yield img


def _why(e: BaseException, path: Path) -> str:
    """PIL's message without the path it repeats (the DataError names the file first already)."""
    return str(e).replace(f" '{path}'", "").replace(str(path), "this file")


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
        with _open(path) as img:
            img.load()  # decodes everything: a truncated file fails here, not later in a worker
            return ImageOps.exif_transpose(img)
    except _ERRORS as e:
        raise DataError(path, f"cannot read image ({_why(e, path)}); re-export or remove the file") from e


def read_image(path: str | Path) -> tv_tensors.Image:
    """Read an image file as ``tv_tensors.Image`` uint8 ``(3, H, W)`` RGB."""
    arr = to_rgb_array(open_pil(path))
    return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1))


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` after EXIF orientation, read from the header only (fast)."""
    path = Path(path)
    try:
        with _open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except _ERRORS as e:
        raise DataError(path, f"cannot read image header ({_why(e, path)}); re-export or remove the file") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def verify_image(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` like :func:`image_size`, after a cheap check that the whole file decodes.

    Much faster than :func:`open_pil` and still finds truncated files: a JPEG is decoded at 1/8 scale
    (``draft``: the DCT is scaled, but every byte of the entropy-coded data is still read), other
    formats run PIL's ``verify`` (for PNG, every chunk's CRC and the end of the file).

    Raises:
        DataError: naming the file when it is missing, unreadable, truncated or too large.
    """
    path = Path(path)
    size = image_size(path)
    try:
        with _open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
            else:
                img.verify()
    except _ERRORS as e:
        raise DataError(path, f"cannot read image ({_why(e, path)}); re-export or remove the file") from e
    return size


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
        with _open(path, "mask") as img:
            img.load()
            if img.mode in ("RGB", "RGBA"):
                a = np.asarray(img.convert("RGB"), dtype=np.int64)
                return a[..., 0] * 65536 + a[..., 1] * 256 + a[..., 2]
            if img.mode == "LA":
                img = img.convert("L")
            return np.asarray(img, dtype=np.int64)
    except _ERRORS as e:
        raise DataError(path, f"cannot read mask ({_why(e, path)}); re-export or remove the file") from e


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Read a COCO panoptic PNG as segment ids ``(H, W)`` int64: ``id = R + 256 G + 256^2 B``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "panoptic PNG not found")
    try:
        with _open(path, "panoptic PNG") as img:
            a = np.asarray(img.convert("RGB"), dtype=np.int64)
    except _ERRORS as e:
        raise DataError(path, f"cannot read panoptic PNG ({_why(e, path)})") from e
    return a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write a uint8 array (H, W) or (H, W, 3) as PNG, deterministically (no timestamps)."""
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", optimize=False)
