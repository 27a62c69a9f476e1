"""The corruption suite: untouched at severity 0, stronger with severity (by PSNR), any image size, fixed
seeds independent of the batch, and the deterministic formulas on hand-checkable images."""

from __future__ import annotations

import pytest
import torch

from zir.augment.corruptions import CORRUPTIONS, SEVERITY, corrupt, psnr
from zir.data.synth import SynthDataset

# Pairs (corruption, s) where the package's own parameters do not corrupt more at s + 1 than at s by PSNR
# (benchmarks/corruptions.py shows imagecorruptions doing the same on photographs): glass blur's severity
# 2 and 4 blur with fewer shuffling passes than 1 and 3; snow 3, frost 4 and fog 4 trade strength for
# texture. There the two severities must stay within 1.5 dB of each other.
NOT_MONOTONE = {("glass_blur", 1), ("glass_blur", 3), ("snow", 2), ("frost", 3), ("fog", 3)}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    ds = SynthDataset("detect", n=3, seed=5, image_size=64)
    return torch.stack([ds[i]["image"].as_subclass(torch.Tensor) for i in range(3)]).float() / 255


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_orders_the_damage(name, images):
    assert torch.equal(corrupt(images, name, 0, 0), images)  # severity 0 leaves the images untouched
    db = [psnr(corrupt(images, name, s, [0, 1, 2]), images).mean().item() for s in range(1, 6)]
    assert all(d < 40 for d in db), db  # every severity changes the image visibly
    assert db[0] > db[4] + 1, db
    for s in range(1, 5):
        if (name, s) in NOT_MONOTONE:
            assert abs(db[s - 1] - db[s]) < 1.5, (s, db)
        else:
            assert db[s - 1] > db[s], (s, db)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_any_size_fixed_seed_and_batch_independent(name, images):
    for H, W in ((1, 1), (5, 7), (9, 70)):
        x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(H))
        out = corrupt(x, name, 5, 3)
        assert out.shape == x.shape and out.dtype == x.dtype and 0 <= out.min() and out.max() <= 1
    alone = corrupt(images[1:2], name, 3, [11])
    assert torch.allclose(corrupt(images, name, 3, [10, 11, 12])[1:2], alone, atol=1e-6)  # same seed, same image
    assert torch.equal(corrupt(images[1:2], name, 3, [11]), alone)


def test_deterministic_formulas_by_hand():
    x = torch.zeros(1, 3, 4, 4)
    x[..., :2] = 0.2
    x[..., 2:] = 0.6  # mean 0.4
    c = SEVERITY["contrast"][2]
    assert torch.allclose(corrupt(x, "contrast", 3), (x - 0.4) * c + 0.4)
    # brightness: HSV value + c, hue and saturation kept: a grey pixel stays grey, black becomes grey
    y = torch.zeros(1, 3, 1, 2)
    y[0, :, 0, 1] = torch.tensor([0.4, 0.2, 0.0])
    out = corrupt(y, "brightness", 1)  # + 0.1
    assert torch.allclose(out[0, :, 0, 0], torch.full((3,), 0.1))
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([0.5, 0.25, 0.0]))
    # pixelate by 0.5 on a 4x4 checker of 2x2 blocks averages each block
    z = torch.zeros(1, 3, 4, 4)
    z[..., 0, 0] = 1.0
    assert torch.allclose(corrupt(z, "pixelate", 2)[0, 0, :2, :2], torch.full((2, 2), 0.25))


def test_bad_arguments():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "hail", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "fog", 6)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        corrupt(x[0], "fog", 1)
