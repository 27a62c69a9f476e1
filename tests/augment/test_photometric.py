"""Colour, noise, occlusion and weather: only image pixels change, by the amounts the formulas say."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors

from zir.augment import (
    JPEG,
    Blur,
    ColorJitter,
    Cutout,
    GaussianNoise,
    GridMask,
    RandomEqualize,
    RandomFog,
    RandomGamma,
    RandomGrayscale,
    RandomHSV,
    RandomRain,
    RandomShadow,
    RandomSnow,
    RandomSunFlare,
    SaltPepperNoise,
)
from zir.augment.colour import hsv_gains, hue_matrix
from zir.errors import ConfigError


def make_sample(H=72, W=96):
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    image = torch.stack([xx * 255 // W, yy * 255 // H, (xx + yy) * 2 % 256]).to(torch.uint8)
    image = (image.int() + torch.randint(-20, 20, (3, H, W), generator=g)).clamp(0, 255).to(torch.uint8)
    masks = torch.zeros(1, H, W, dtype=torch.uint8)
    masks[0, 10:40, 20:60] = 1
    return {
        "image": tv_tensors.Image(image),
        "boxes": tv_tensors.BoundingBoxes(torch.tensor([[20.0, 10, 60, 40]]), format="XYXY", canvas_size=(H, W)),
        "labels": torch.tensor([3]),
        "masks": tv_tensors.Mask(masks),
        "semantic": tv_tensors.Mask(masks[0].long()),
        "label": 7,
    }


PHOTOMETRIC = [
    lambda p: RandomHSV(0.05, 0.7, 0.4, p=p),
    lambda p: ColorJitter(0.4, 0.4, 0.4, 0.05, p=p),
    lambda p: RandomGamma(0.5, p=p),
    lambda p: RandomEqualize(p=p),
    lambda p: RandomGrayscale(p),
    lambda p: GaussianNoise((5.0, 10.0), p=p),
    lambda p: SaltPepperNoise((0.02, 0.05), p=p),
    lambda p: Blur(3.0, p=p),
    lambda p: JPEG((20, 40), p=p),
    lambda p: Cutout(p=p),
    lambda p: GridMask(p=p),
    lambda p: RandomRain(p=p),
    lambda p: RandomSnow(p=p),
    lambda p: RandomFog(p=p),
    lambda p: RandomSunFlare(p=p),
    lambda p: RandomShadow(p=p),
]


@pytest.mark.parametrize("make", PHOTOMETRIC)
def test_only_the_image_changes(make):
    torch.manual_seed(1)  # (seed 0 draws a gamma of 1.00: no change)
    s = make_sample()
    out = make(1.0)(s)
    assert isinstance(out["image"], tv_tensors.Image)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == s["image"].shape
    assert not torch.equal(out["image"], s["image"])
    for k in ("boxes", "labels", "masks", "semantic"):
        assert torch.equal(out[k], s[k]) and type(out[k]) is type(s[k])
    assert out["boxes"].canvas_size == s["boxes"].canvas_size and out["label"] == 7


@pytest.mark.parametrize("make", PHOTOMETRIC)
def test_p0_is_identity(make):
    s = make_sample()
    assert torch.equal(make(0.0)(s)["image"], s["image"])


@pytest.mark.parametrize("make", PHOTOMETRIC)
def test_deterministic_under_seed(make):
    s, t = make_sample(), make(0.8)
    torch.manual_seed(5)
    a = [t(s)["image"] for _ in range(3)]
    torch.manual_seed(5)
    b = [t(s)["image"] for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("make", PHOTOMETRIC[:1] + PHOTOMETRIC[5:])
def test_bare_tensor_and_channels_last_input(make):
    image = make_sample()["image"].as_subclass(torch.Tensor)
    hwc_view = image.permute(1, 2, 0).contiguous().permute(2, 0, 1)  # what read_image returns
    torch.manual_seed(0)
    a = make(1.0)(image)
    torch.manual_seed(0)
    b = make(1.0)(hwc_view)
    assert type(a) is torch.Tensor and a.dtype == torch.uint8 and torch.equal(a, b)


def test_float_image_is_refused_with_a_message():
    with pytest.raises(ConfigError, match="uint8"):
        RandomHSV()(tv_tensors.Image(torch.rand(3, 8, 8)))


def test_hsv_value_gain_and_identity():
    image = make_sample()["image"].as_subclass(torch.Tensor)
    assert torch.equal(hsv_gains(image, 0.0, 1.0, 1.0), image)
    expected = (image.double() * 0.5).round().to(torch.uint8)  # HSV value is the max channel: all scale
    assert (hsv_gains(image, 0.0, 1.0, 0.5).int() - expected.int()).abs().max() <= 1


def test_hsv_zero_saturation_gives_the_value_in_every_channel():
    image = make_sample()["image"].as_subclass(torch.Tensor)
    grey = hsv_gains(image, 0.0, 0.0, 1.0)
    assert torch.equal(grey, image.amax(0, keepdim=True).expand_as(image))


def test_hue_third_of_a_turn_permutes_channels():
    # a 120-degree turn about the grey axis sends red to green, green to blue, blue to red
    assert torch.allclose(hue_matrix(1 / 3), torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]), atol=1e-6)
    image = make_sample()["image"].as_subclass(torch.Tensor)
    assert torch.equal(hsv_gains(image, 1 / 3, 1.0, 1.0), image[[2, 0, 1]])


def test_gamma_matches_formula():
    image = make_sample()["image"].as_subclass(torch.Tensor)
    t = RandomGamma()
    out = t.apply(image, g=2.0)
    expected = (255 * (image.double() / 255) ** 2).round().to(torch.uint8)
    assert (out.int() - expected.int()).abs().max() <= 1


def test_equalize_matches_pillow():
    image = make_sample()["image"].as_subclass(torch.Tensor)
    out = RandomEqualize(p=1.0)(image)
    pil = ImageOps.equalize(Image.fromarray(image.permute(1, 2, 0).numpy()))
    assert torch.equal(out, torch.from_numpy(np.array(pil)).permute(2, 0, 1))


def test_gaussian_noise_has_the_asked_sigma():
    image = torch.full((3, 96, 128), 128, dtype=torch.uint8)
    torch.manual_seed(0)
    noisy = GaussianNoise((10.0, 10.0))(image)
    d = noisy.float() - 128
    assert abs(d.mean()) < 0.3 and abs(d.std() - 10.0) < 0.3


def test_salt_and_pepper_fraction():
    image = torch.full((3, 100, 100), 128, dtype=torch.uint8)
    torch.manual_seed(0)
    out = SaltPepperNoise((0.05, 0.05))(image)
    changed = (out != 128).any(0)
    assert 0.045 < changed.float().mean() < 0.051  # a few of the 500 draws land on the same pixel
    assert set(out[:, changed].unique().tolist()) <= {0, 255}
    assert (out[0] == out[1]).all()  # black or white, not coloured


def test_blur_lowers_noise_and_keeps_mean():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    out = Blur(3.0)(image)
    assert out.float().std() < 0.6 * image.float().std()
    assert abs(out.float().mean() - image.float().mean()) < 2


def test_jpeg_matches_pillow_codec():
    image = make_sample()["image"].as_subclass(torch.Tensor)
    out = JPEG().apply(image, quality=30)
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=30)
    expected = torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(out, expected)


def test_cutout_touches_only_its_rectangles():
    image = make_sample()["image"].as_subclass(torch.Tensor)
    t = Cutout(fill=114)
    rects = [(5, 6, 10, 12), (40, 50, 8, 8)]
    out = t.apply(image, rects=rects)
    inside = torch.zeros(image.shape[-2:], dtype=torch.bool)
    for top, left, h, w in rects:
        inside[top:top + h, left:left + w] = True
    assert (out[:, inside] == 114).all() and torch.equal(out[:, ~inside], image[:, ~inside])


def test_grid_mask_hides_about_ratio_squared():
    image = torch.full((3, 120, 120), 200, dtype=torch.uint8)
    out = GridMask(ratio=0.5).apply(image, d=20, dy=3, dx=7)
    hidden = (out == 0).all(0).float().mean()
    assert hidden == pytest.approx(0.25)


def test_weather_direction_of_change():
    s = make_sample(96, 128)
    image = s["image"].as_subclass(torch.Tensor).float()
    torch.manual_seed(0)
    assert RandomFog()(s)["image"].float().mean() > image.mean() + 10  # fog whitens
    assert RandomRain()(s)["image"].float().mean() < image.mean()  # overcast: darker
    shadow = RandomShadow()(s)["image"].float()
    assert torch.equal(shadow[:, :48], image[:, :48])  # default roi: the lower half only
    assert shadow[:, 48:].mean() < image[:, 48:].mean()
    flare = RandomSunFlare()(s)["image"].float()
    assert flare.mean() > image.mean()
