"""Sliding window: the window count formula against enumeration and hand counts, training crops, shapes,
overfitting, pixel mapping, empty images and windows that do not fit."""

from __future__ import annotations

import pytest
import torch

from zir.data.contract import Target
from zir.models import build_model, get_spec
from zir.models.detect.sliding_window import (
    SlidingWindowConfig,
    build,
    crop_windows,
    pyramid_windows,
    sample_crops,
    sliding_windows,
    window_count,
)
from zir.ops.boxes import iou


def tiny(**kw):
    cfg = dict(num_classes=2, image_size=64, windows=((16, 16),), stride=4, scales=(1.0, 0.5), input_size=16,
               width=8, level=2, hidden=32, crops_per_image=32)
    return build(SlidingWindowConfig(**{**cfg, **kw}))


def target(boxes, labels, size) -> Target:
    return Target(size=size, boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  labels=torch.tensor(labels, dtype=torch.int64))


# --------------------------------------------------------------------------------------------------
# Window count


def test_window_count_by_hand():
    # 100 x 60 image, 32 x 20 window (h, w), stride 8: rows floor(68 / 8) + 1 = 9, columns floor(40 / 8) + 1 = 6
    assert window_count(100, 60, (32, 20), 8) == 54
    assert window_count(64, 64, 64, 8) == 1  # exactly fits: one position
    assert window_count(64, 64, 16, 16) == 16  # a 4 x 4 tiling
    assert window_count(31, 100, 32, 8) == 0  # does not fit
    assert window_count(100, 31, (16, 32), 1) == 0


@pytest.mark.parametrize("H,W,window,stride", [(100, 60, (32, 20), 8), (37, 41, (7, 5), 3), (16, 16, 16, 4),
                                               (20, 50, (21, 5), 2), (33, 33, 1, 1)])
def test_window_count_matches_enumerated_windows(H, W, window, stride):
    boxes = sliding_windows(H, W, window, stride)
    assert len(boxes) == window_count(H, W, window, stride)
    if len(boxes):
        h, w = (window, window) if isinstance(window, int) else window
        assert torch.all(boxes[:, 2] - boxes[:, 0] == w) and torch.all(boxes[:, 3] - boxes[:, 1] == h)
        assert boxes[:, :2].min() >= 0 and boxes[:, 2].max() <= W and boxes[:, 3].max() <= H
        # consecutive positions in a row are one stride apart; the last one fits, one more would not
        assert boxes[:, 2].max() + stride > W and boxes[:, 3].max() + stride > H
        assert len(torch.unique(boxes, dim=0)) == len(boxes)


def test_pyramid_windows_are_the_sum_over_scales_and_shapes():
    # 64 x 96 image; scale 1: 16 x 16 window stride 8 -> 7 * 11 = 77, 8 x 24 -> 8 * 10 = 80;
    # scale 0.5 (32 x 48): 3 * 5 = 15 and 4 * 4 = 16. Scale-0.5 windows cover twice the pixels.
    windows = pyramid_windows((64, 96), ((16, 16), (8, 24)), 8, (1.0, 0.5))
    assert len(windows) == 77 + 80 + 15 + 16
    torch.testing.assert_close(windows[-1], torch.tensor([48.0, 48, 96, 64]))  # (x 24, y 24) at 0.5, 8 x 24
    model = tiny(windows=((16, 16), (8, 24)), stride=8, scales=(1.0, 0.5))
    assert model.windows_per_image((64, 96)) == len(windows)


def test_crop_windows_cuts_exact_pixels():
    image = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    crops = crop_windows(image, torch.tensor([[2.0, 3, 6, 7], [0, 0, 4, 4]]), torch.tensor([1, 0]), 4)
    torch.testing.assert_close(crops[0], image[1, :, 3:7, 2:6])
    torch.testing.assert_close(crops[1], image[0, :, 0:4, 0:4])


# --------------------------------------------------------------------------------------------------
# Training crops


def test_sampled_crops_follow_their_labels():
    torch.manual_seed(0)
    gt = torch.tensor([[10.0, 10, 40, 50], [60, 20, 90, 40]])
    boxes, labels = sample_crops(gt, torch.tensor([0, 1]), (100, 120), 64, 0.25, ((32, 32),), (1.0, 0.5))
    assert (labels > 0).sum() == 16 and len(boxes) == len(labels) <= 64
    overlap = iou(boxes, gt).max(dim=1).values
    assert torch.all(overlap[labels > 0] >= 0.6) and torch.all(overlap[labels == 0] < 0.3)
    near = (labels == 0) & (overlap >= 0.1)
    assert near.sum() > 0  # some hard-ish negatives
    assert boxes[:, :2].min() >= 0 and boxes[:, 2].max() <= 120 and boxes[:, 3].max() <= 100
    assert torch.all(boxes[:, 2:] > boxes[:, :2])
    # a positive has the class of the box it came from (+1, 0 is background)
    best = iou(boxes, gt).argmax(dim=1)
    assert torch.equal(labels[labels > 0], best[labels > 0] + 1)


def test_image_without_objects_gives_only_background_crops():
    boxes, labels = sample_crops(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), (64, 64), 20, 0.25,
                                 ((16, 16),), (1.0,))
    assert len(boxes) == 20 and torch.all(labels == 0)


# --------------------------------------------------------------------------------------------------
# The model


def test_shapes_and_gradients():
    model = tiny()
    crops = torch.rand(5, 3, 16, 16)
    assert model.classify(crops).shape == (5, 3)  # K + 1
    images = torch.rand(2, 3, 64, 64)
    targets = [target([[5, 5, 30, 30]], [1], (64, 64)), target([], [], (48, 64))]  # padded, and empty
    losses = model.loss(images, targets)
    assert set(losses) == {"cls"} and torch.isfinite(losses["cls"])
    losses["cls"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_overfits_one_image_and_finds_its_object():
    torch.manual_seed(0)
    model = tiny(num_classes=2)
    image = torch.full((1, 3, 64, 64), 0.2)
    image[0, :, 20:36, 24:40] = torch.tensor([1.0, 0.3, 0.1])[:, None, None]
    targets = [target([[24, 20, 40, 36]], [1], (64, 64))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model.loss(image, targets)["cls"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5
    pred = model.eval().predict(image)[0]
    assert len(pred.boxes) and pred.labels[0] == 1
    assert iou(pred.boxes[:1], torch.tensor([[24.0, 20, 40, 36]])).item() > 0.5


def test_predict_maps_windows_to_input_pixels(monkeypatch):
    # A 90 x 127 input: working frame 64 / 127 -> 45 x 64 (scale 0.5039...). One window (16 x 16 at scale
    # 1, x 8, y 4 with stride 4) is class 0; every other window is background.
    model = tiny(scales=(1.0,), chunk=100).eval()
    windows = sliding_windows(45, 64, 16, 4)
    hit = int(((windows[:, 0] == 8) & (windows[:, 1] == 4)).nonzero())

    seen = []  # windows classified so far: predict classifies them in order, in chunks

    def fake(crops):
        logits = torch.zeros(len(crops), 3)
        logits[:, 0] = 10.0  # background
        if len(seen) <= hit < len(seen) + len(crops):
            logits[hit - len(seen)] = torch.tensor([0.0, 10.0, 0.0])  # class 0 (column 1)
        seen.extend(range(len(crops)))
        return logits

    monkeypatch.setattr(model, "classify", fake)
    pred = model.predict([torch.rand(3, 90, 127)])[0]
    assert len(seen) == window_count(45, 64, 16, 4) == len(windows)  # every window classified once
    assert pred.labels.tolist() == [0]
    sx, sy = 127 / 64, 90 / 45
    torch.testing.assert_close(pred.boxes, torch.tensor([[8 * sx, 4 * sy, 24 * sx, 20 * sy]]))


def test_empty_image_and_window_larger_than_the_image():
    model = tiny().eval()
    pred = model.predict([torch.zeros(3, 64, 64)])[0]  # nothing to find: no crash, 0..N boxes
    assert pred.boxes.shape[1:] == (4,)
    big = tiny(windows=((80, 80),), input_size=16, scales=(1.0,)).eval()  # 80 px window, 64 px working frame
    pred = big.predict([torch.rand(3, 50, 70)])[0]
    assert pred.boxes.shape == (0, 4) and pred.scores.shape == (0,) and pred.labels.shape == (0,)
    assert big.windows_per_image((46, 64)) == window_count(46, 64, (80, 80), 4) == 0


def test_registered_and_built_from_the_registry():
    model = build_model("sliding_window", num_classes=3, image_size=64,
                        args={"windows": [[16, 16]], "scales": [1], "input_size": 16, "level": 2, "width": 8})
    assert get_spec("sliding_window").stages == 1 and model.task == "detect"
    assert model.cfg.windows == ((16, 16),) and model.cfg.scales == (1.0,)
