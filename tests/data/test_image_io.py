"""Every image becomes RGB uint8 (3, H, W) with EXIF orientation applied; broken files name themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zir.data.image_io import image_size, read_image, read_label_png
from zir.errors import DataError


def _check(t: torch.Tensor, h: int, w: int) -> None:
    assert t.dtype == torch.uint8 and tuple(t.shape) == (3, h, w)


def test_greyscale_becomes_rgb(tmp_path):
    arr = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(arr, "L").save(tmp_path / "g.png")
    t = read_image(tmp_path / "g.png")
    _check(t, 12, 10)
    assert torch.equal(t[0], torch.from_numpy(arr)) and torch.equal(t[0], t[2])


def test_palette_becomes_its_colours(tmp_path):
    img = Image.new("P", (4, 3))
    img.putpalette([0, 0, 0, 200, 10, 30] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.save(tmp_path / "p.png")
    t = read_image(tmp_path / "p.png")
    _check(t, 3, 4)
    assert t[:, 1, 1].tolist() == [200, 10, 30] and t[:, 0, 0].tolist() == [0, 0, 0]


def test_16_bit_scales_by_full_range(tmp_path):
    arr = np.array([[0, 256, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    t = read_image(tmp_path / "d.png")
    _check(t, 1, 3)
    assert t[0, 0].tolist() == [0, 1, 255]


def test_rgba_drops_alpha_on_black(tmp_path):
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[0, 0] = (255, 100, 50, 255)  # opaque
    arr[0, 1] = (255, 100, 50, 0)  # transparent
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    t = read_image(tmp_path / "a.png")
    _check(t, 2, 2)
    assert t[:, 0, 0].tolist() == [255, 100, 50] and t[:, 0, 1].tolist() == [0, 0, 0]


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white in the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=95)
    t = read_image(tmp_path / "r.jpg")
    _check(t, 40, 20)  # displayed portrait
    assert image_size(tmp_path / "r.jpg") == (20, 40)
    assert t[:, :15].float().mean() > 200 and t[:, 25:].float().mean() < 50  # white ends up on top


def test_truncated_and_garbage_files_raise_naming_the_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.jpg"):
        read_image(tmp_path / "t.jpg")
    (tmp_path / "x.jpg").write_bytes(b"GIF89a not really")
    with pytest.raises(DataError, match="x.jpg"):
        read_image(tmp_path / "x.jpg")
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_label_png_values_and_palette_indices(tmp_path):
    arr = np.array([[0, 255], [255, 0]], np.uint8)
    Image.fromarray(arr).save(tmp_path / "m.png")
    assert read_label_png(tmp_path / "m.png").tolist() == [[0, 255], [255, 0]]
    p = Image.fromarray(np.array([[0, 2], [1, 2]], np.uint8), "P")
    p.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    p.save(tmp_path / "pal.png")
    assert read_label_png(tmp_path / "pal.png").tolist() == [[0, 2], [1, 2]]
