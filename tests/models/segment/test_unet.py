"""U-Net and the segmentation losses: shapes, gradients, overfitting, border weights, overlap-tile."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zir.data.contract import Target
from zir.data.synth import SynthDataset
from zir.errors import ConfigError
from zir.metrics.semantic import SemanticMetrics
from zir.models import MODELS, build_model
from zir.models.segment.losses import (
    binary_cross_entropy,
    border_weight_map,
    connected_components,
    cross_entropy,
    semantic_targets,
    soft_dice,
)
from zir.models.segment.unet import mirror_pad


def unet(num_classes: int = 2, image_size: int = 64, **args):
    torch.manual_seed(0)
    return build_model("unet", num_classes, image_size, {"width": 8, "depth": 3, **args})


def test_registered_for_segment():
    assert MODELS["unet"].task == "segment"


# ------------------------------------------------------------------------------------------------ shapes

@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("num_classes", [2, 5])
def test_logits_have_the_input_size(depth, num_classes):
    model = unet(num_classes, depth=depth).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 37, 53))
    assert out.shape == (2, 1 if num_classes == 2 else num_classes, 37, 53)


def test_pretrained_encoder_shapes():
    model = unet(3, encoder="efficientnet_lite0", pretrained="none", depth=5).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 45, 70)).shape == (1, 3, 45, 70)


@pytest.mark.parametrize("args", [{"num_classes": 2}, {"num_classes": 4},
                                  {"num_classes": 3, "encoder": "efficientnet_lite0", "pretrained": "none",
                                   "depth": 2}])
def test_every_parameter_gets_a_gradient(args):
    args = dict(args)
    model = unet(args.pop("num_classes"), **args)
    C = model.cfg.num_classes
    targets = [Target(semantic=torch.randint(0, C, (32, 40)), size=(32, 40)) for _ in range(2)]
    sum(model.loss(torch.rand(2, 3, 32, 40), targets).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing


# ------------------------------------------------------------------------------------------------ losses

def test_semantic_targets_ignore_the_padding():
    t = semantic_targets([Target(semantic=torch.ones(3, 4, dtype=torch.int64), size=(3, 4)),
                          Target(semantic=torch.zeros(5, 2, dtype=torch.int64), size=(5, 2))], (5, 4), torch.device("cpu"))
    assert t.shape == (2, 5, 4)
    assert (t[0, :3] == 1).all() and (t[0, 3:] == 255).all()
    assert (t[1, :, :2] == 0).all() and (t[1, :, 2:] == 255).all()


def test_losses_count_only_labelled_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 6, 7, generator=g, requires_grad=True)
    target = semantic_targets([Target(semantic=torch.randint(0, 3, (4, 5), generator=g), size=(4, 5))], (6, 7),
                              torch.device("cpu"))
    loss = cross_entropy(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits[..., :4, :5], target[:, :4, :5]))
    loss.backward()
    assert logits.grad[..., 4:, :].abs().sum() == 0 and logits.grad[..., 5:].abs().sum() == 0

    logit = torch.randn(1, 1, 6, 7, generator=g)
    weight = torch.rand(1, 6, 7, generator=g)
    binary = target.clamp(max=1).masked_fill(target == 255, 255)
    expected = (F.binary_cross_entropy_with_logits(logit[0, 0, :4, :5], binary[0, :4, :5].float(), reduction="none")
                * weight[0, :4, :5]).sum() / 20
    torch.testing.assert_close(binary_cross_entropy(logit, binary, weight), expected)


def test_soft_dice_by_hand():
    target = torch.tensor([[[0, 1], [1, 255]]])
    perfect = F.one_hot(target.clamp(max=1), 2).permute(0, 3, 1, 2).float()
    assert float(soft_dice(perfect, target, eps=0)) == pytest.approx(0.0)
    half = torch.full((1, 2, 2, 2), 0.5)
    # per class: 2 * sum(p y) / (sum p + sum y) over the 3 labelled pixels: class 0 2*0.5/(1.5+1), class 1 2*1/(1.5+2)
    expected = 1 - (1.0 / 2.5 + 2.0 / 3.5) / 2
    assert float(soft_dice(half, target, eps=0)) == pytest.approx(expected)


@pytest.mark.parametrize("loss", ["ce", "ce+dice", "border", "border+dice"])
@pytest.mark.parametrize("num_classes", [2, 3])
def test_every_loss_setting(loss, num_classes):
    model = unet(num_classes, loss=loss)
    semantic = torch.zeros(32, 32, dtype=torch.int64)
    semantic[4:14, 4:14] = 1
    semantic[4:14, 16:28] = num_classes - 1
    out = model.loss(torch.rand(1, 3, 32, 32), [Target(semantic=semantic, size=(32, 32))])
    assert set(out) == {"bce" if num_classes == 2 else "ce"} | ({"dice"} if "dice" in loss else set())
    assert all(torch.isfinite(v) for v in out.values())


# ------------------------------------------------------------------------------------------------ border weights

def _two_squares() -> torch.Tensor:
    s = torch.zeros(40, 60, dtype=torch.int64)
    s[10:30, 5:28] = 1  # columns 5..27
    s[10:30, 30:55] = 1  # columns 30..54: a gap of two background columns, 28 and 29
    return s


def test_border_weight_is_highest_in_the_gap_and_w_c_far_away():
    s = _two_squares()
    w = border_weight_map(s, w0=10, sigma=5)
    n, n_fg = s.numel(), int(s.sum())
    w_bg, w_fg = n / (2 * (n - n_fg)), n / (2 * n_fg)  # w_c: both classes weigh the same in total
    # gap pixel (20, 28): nearest pixels of the two squares at columns 27 and 30: d1 = 1, d2 = 2
    assert float(w[20, 28]) == pytest.approx(w_bg + 10 * math.exp(-(1 + 2) ** 2 / (2 * 5**2)), rel=1e-5)
    assert float(w[20, 29]) == pytest.approx(float(w[20, 28]), rel=1e-6)
    assert int(w.argmax()) // 60 in range(10, 30) and int(w.argmax()) % 60 in (28, 29)
    assert float(w[0, 0]) == pytest.approx(w_bg, rel=1e-6)  # far from both: d1 + d2 ~ 43 px
    assert float(w[20, 10]) == pytest.approx(w_fg, rel=1e-6)  # inside an object: w_c only


def test_border_weight_map_matches_brute_force():
    s = _two_squares()
    s[33:38, 40:50] = 2  # a third object, of another class
    s[0:3, 0:3] = 255  # ignored
    w = border_weight_map(s, w0=10, sigma=5).numpy()
    objects = connected_components(s).numpy()
    assert objects.max() == 3
    ys, xs = np.mgrid[:40, :60]
    dist = np.stack([np.sqrt((ys[..., None] - oy) ** 2 + (xs[..., None] - ox) ** 2).min(-1)
                     for oy, ox in (np.nonzero(objects == k) for k in (1, 2, 3))])  # (3, H, W)
    dist.sort(axis=0)
    gap = 10 * np.exp(-(dist[0] + dist[1]) ** 2 / 50)
    sem = s.numpy()
    counts = {c: (sem == c).sum() for c in (0, 1, 2)}
    valid = sum(counts.values())
    w_c = np.vectorize(lambda c: valid / (3 * counts[c]) if c != 255 else 0.0)(sem)
    expected = w_c + np.where(sem == 0, gap, 0)
    np.testing.assert_allclose(w, expected, atol=1e-3)


def test_connected_components_by_class_and_4_neighbours():
    s = torch.zeros(6, 6, dtype=torch.int64)
    s[0:2, 0:2] = 1
    s[2:4, 2:4] = 1  # touches the first only at a corner: another object
    s[0:2, 2:4] = 2  # touches the first along an edge, but another class: another object
    s[5, :] = 255
    objects = connected_components(s)
    assert objects.max() == 3
    assert len({int(objects[0, 0]), int(objects[2, 2]), int(objects[0, 2])}) == 3
    assert (objects[s == 0] == 0).all() and (objects[5] == 0).all()


# ------------------------------------------------------------------------------------------------ training

def test_overfits_one_synthetic_image():
    sample = SynthDataset(task="segment", n=1, seed=4, image_size=64)[0]  # all 5 classes, none tiny
    image = sample["image"].float().unsqueeze(0) / 255
    semantic = torch.as_tensor(sample["semantic"]).long()
    C = len(SynthDataset(task="segment", n=1).classes)
    model = unet(C, width=16, depth=3)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    target = [Target(semantic=semantic, size=tuple(semantic.shape))]
    losses = []
    for _ in range(60):
        loss = sum(model.loss(image, target).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.4 * losses[0]
    model.eval()
    metric = SemanticMetrics(C)
    metric.update(model.predict([image[0]]), [semantic])
    assert metric.compute()["miou"] > 0.85


# ------------------------------------------------------------------------------------------------ predict

def _eval_unet_with_statistics():
    model = unet(3).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # BatchNorm statistics other than 0 / 1, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    return model


def test_overlap_tile_equals_whole_image_prediction():
    model = _eval_unet_with_statistics()
    image = torch.rand(1, 3, 150, 190, generator=torch.Generator().manual_seed(2))
    whole = model.predict_tiles(image, tile=0)
    tile = 2 * model.context + 32  # 32 x 32 centres: 5 x 6 tiles
    tiled = model.predict_tiles(image, tile=tile)
    assert whole.shape == tiled.shape == (1, 3, 150, 190)
    # every output pixel sees its whole receptive field in its tile and pools on the same grid: equal up
    # to float rounding (no seams along the tile borders at rows / columns 32, 64, ...)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    # the oracle can fail: the same tiles without context differ from the whole image at their borders
    naive = torch.cat([torch.cat([model(image[..., y: y + 32, x: x + 32]) for x in range(0, 190, 32)], -1)
                       for y in range(0, 150, 32)], -2)
    assert (naive - whole).abs().max() > 1e-2


def test_predict_with_tiles_returns_the_whole_image_result():
    model = _eval_unet_with_statistics()
    image = torch.rand(3, 100, 140, generator=torch.Generator().manual_seed(4))
    model.cfg.tile = 2 * model.context + 64
    tiled = model.predict([image])[0]
    model.cfg.tile = 1000  # larger than the image: one tile
    whole = model.predict([image])[0]
    assert tiled.semantic.shape == (100, 140)
    torch.testing.assert_close(tiled.scores, whole.scores, atol=1e-5, rtol=1e-5)


def test_predict_resizes_and_maps_back():
    model = unet(3, image_size=48).eval()
    preds = model.predict([torch.rand(3, 61, 33), torch.zeros(3, 48, 48), torch.rand(3, 200, 120)])
    assert [tuple(p.semantic.shape) for p in preds] == [(61, 33), (48, 48), (200, 120)]
    assert all(p.semantic.dtype == torch.int64 and p.scores.shape[0] == 3 for p in preds)
    binary = unet(2, image_size=48).eval().predict([torch.rand(3, 50, 40)])[0]
    assert binary.scores.shape == (2, 50, 40)
    torch.testing.assert_close(binary.scores.sum(0), torch.ones(50, 40))
    assert torch.equal(binary.semantic, (binary.scores[1] > 0.5).long())


@pytest.mark.parametrize("pads", [(3, 1, 0, 5), (12, 30, 25, 9)])
def test_mirror_pad_matches_numpy_reflect(pads):
    x = torch.arange(7 * 9, dtype=torch.float32).view(1, 1, 7, 9)
    top, bottom, left, right = pads
    expected = np.pad(x[0, 0].numpy(), ((top, bottom), (left, right)), mode="reflect")
    np.testing.assert_array_equal(mirror_pad(x, top, bottom, left, right)[0, 0].numpy(), expected)


def test_tta_averages_the_turned_back_views():
    model = _eval_unet_with_statistics()
    image = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(5))
    model.cfg.tile = 1000  # native pixels, one tile
    views = []
    for k in range(4):
        for flip in (False, True):
            x = torch.rot90(image.flip(-1) if flip else image, k, dims=(-2, -1))
            p = torch.rot90(model.predict([x])[0].scores, -k, dims=(-2, -1))
            views.append(p.flip(-1) if flip else p)
    model.cfg.tta = 8
    pred = model.predict([image])[0]
    assert pred.scores.shape == (3, 40, 56)
    torch.testing.assert_close(pred.scores, torch.stack(views).mean(0))
    # the views differ (no symmetry built in), so the mean is not the plain prediction
    assert (views[0] - pred.scores).abs().max() > 1e-3
    assert torch.equal(pred.semantic, pred.scores.argmax(0))


def test_tta_setting_is_checked():
    with pytest.raises(ConfigError, match="tta"):
        unet(tta=3)
