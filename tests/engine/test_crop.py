"""``data.crop``: segmentation trains on random windows of the resized images; validation sees them whole."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from zir.augment._base import IMAGE_FILL
from zir.config import load_config
from zir.data.contract import IGNORE_INDEX
from zir.engine.data import build_datasets, train_transform
from zir.errors import ConfigError


def _coordinate_sample(H: int, W: int) -> dict:
    """Image channel 0 = column x, channel 1 = row y, so a window tells where it was cut from."""
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    image = torch.stack([xs, ys, torch.zeros_like(xs)]).to(torch.uint8)
    semantic = (xs // 3 + ys // 5) % 4  # a class map with structure in both directions
    return {"image": tv_tensors.Image(image), "semantic": tv_tensors.Mask(semantic), "path": "a.png"}


def test_crop_cuts_the_same_window_from_image_and_semantic_map():
    torch.manual_seed(0)
    sample = _coordinate_sample(48, 64)
    transform = train_transform("segment", image_size=64, preset="none", crop=32)  # 64 = longer side: no resize
    corners = set()
    for _ in range(20):
        out = transform(sample)
        assert out["image"].shape == (3, 32, 32) and out["semantic"].shape == (32, 32)
        x0, y0 = int(out["image"][0, 0, 0]), int(out["image"][1, 0, 0])
        corners.add((x0, y0))
        assert torch.equal(out["image"], sample["image"][:, y0:y0 + 32, x0:x0 + 32])
        assert torch.equal(out["semantic"], sample["semantic"][y0:y0 + 32, x0:x0 + 32])
    assert len(corners) > 5  # random windows, not always the same one


def test_an_image_smaller_than_the_crop_is_padded_with_ignore():
    torch.manual_seed(1)
    sample = _coordinate_sample(20, 64)  # 20 rows < crop 32
    out = train_transform("segment", image_size=64, preset="none", crop=32)(sample)
    assert out["semantic"].shape == (32, 32)
    padded = out["semantic"] == IGNORE_INDEX
    assert int((~padded).sum()) == 20 * 32  # every real row kept, 12 rows of padding
    assert bool((out["image"][:, padded] == IMAGE_FILL).all())


def test_crop_then_augmentation_keeps_the_crop_size():
    torch.manual_seed(2)
    out = train_transform("segment", image_size=64, preset="standard", crop=40)(_coordinate_sample(64, 64))
    assert out["image"].shape == (3, 40, 40) and out["semantic"].shape == (40, 40)


def test_training_set_is_cropped_and_validation_is_whole():
    cfg = load_config(overrides=["data=synth:segment", "synth_n=4", "val_split=0.5", "image_size=64", "crop=24"])
    assert cfg.data.crop == 24
    bundle = build_datasets(cfg.data)
    assert bundle.train[0]["semantic"].shape == (24, 24)
    assert bundle.val[0]["semantic"].shape == (64, 64)


@pytest.mark.parametrize("overrides, message", [
    (["data=synth:detect", "crop=32"], "segment only"),
    (["data=synth:segment", "image_size=64", "crop=96"], "between 8 and data.image_size=64"),
])
def test_crop_refused_where_it_cannot_work(overrides, message):
    cfg = load_config(overrides=[*overrides, "synth_n=2"])
    with pytest.raises(ConfigError, match=message):
        build_datasets(cfg.data)


def test_orientation_reaches_the_augmentation():
    cfg = load_config(overrides={"orientation": "any", "augment": "light"})
    transform = train_transform("segment", 64, cfg.data.augment, crop=32, orientation=cfg.data.orientation)
    names = [type(t).__name__ for t in transform.transforms[-1].transforms]
    assert "RandomQuarterTurn" in names
