"""OverFeat: one output per sliding-window position (the same count and the same classifier as
sliding_window), window labels, overfitting, pixel mapping, the merge option, empty inputs."""

from __future__ import annotations

import pytest
import torch

from zir.data.contract import Target
from zir.models import build_model, get_spec
from zir.models.detect.overfeat import OverFeatConfig, build, label_windows, position_windows, postprocess
from zir.models.detect.sliding_window import sliding_windows, window_count
from zir.models.detect.structures import GroundTruth
from zir.ops.boxes import batched_nms, iou
from zir.ops.matching import BELOW_LOW, BETWEEN


def tiny(**kw):
    cfg = dict(num_classes=2, image_size=64, window=16, scales=(1.0, 0.5), width=8, level=2, hidden=32,
               batch_size_per_image=64)
    return build(OverFeatConfig(**{**cfg, **kw}))


def target(boxes, labels, size) -> Target:
    return Target(size=size, boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  labels=torch.tensor(labels, dtype=torch.int64))


def test_one_output_per_window_position():
    model = tiny()
    logits, deltas = model(torch.rand(2, 3, 64, 96))
    # stride 4, window 16: (64 - 16) / 4 + 1 = 13 rows, (96 - 16) / 4 + 1 = 21 columns
    assert logits.shape == (2, 3, 13, 21) and deltas.shape == (2, 4, 13, 21)
    assert 13 * 21 == window_count(64, 96, 16, 4)
    torch.testing.assert_close(position_windows((13, 21), 4, 16), sliding_windows(64, 96, 16, 4))


def test_each_position_is_the_same_classifier_on_a_shifted_window():
    # Sliding = shift equivariance at the stride: the image cut at (16, 16) (4 positions of stride 4)
    # gives the full image's outputs shifted by 4 positions, except next to the cut, where the 3x3
    # convolutions see zero padding instead of the neighbouring pixels.
    torch.manual_seed(0)
    model = tiny().eval()
    image = torch.rand(1, 3, 64, 64)
    full, full_deltas = model(image)
    cut, cut_deltas = model(image[:, :, 16:, 16:])
    torch.testing.assert_close(full[..., 5:, 5:], cut[..., 1:, 1:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full_deltas[..., 5:, 5:], cut_deltas[..., 1:, 1:], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(full[..., 4, 4], cut[..., 0, 0], atol=1e-5)  # the cut's border does differ


def test_label_windows_thresholds_and_low_quality_matches():
    windows = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20], [30, 30, 40, 40], [2, 0, 12, 10], [60, 0, 70, 10]])
    gt = GroundTruth(boxes=torch.tensor([[0.0, 0, 10, 10], [30, 30, 40, 50], [60, 0, 100, 40]]),
                     labels=torch.tensor([0, 1, 1]), crowd=torch.zeros(0, 4), index=torch.arange(3))
    matched = label_windows(gt, windows, fg_iou=0.5, bg_iou=0.4)
    # IoUs: window 0 - gt 0: 1; window 1 - gt 0: 100/200 = 0.5; window 2 - gt 1: 100/200 = 0.5;
    # window 3 - gt 0: 80/120 = 0.667; window 4 - gt 2: 100/1600 = 0.0625.
    assert matched.tolist() == [0, 0, 1, 0, BELOW_LOW]
    # fg 0.7, bg 0.55: 0.5 is background, 0.667 ignored; gt 1's best window (0.5) is under bg_iou: not forced
    matched = label_windows(gt, windows, fg_iou=0.7, bg_iou=0.55)
    assert matched.tolist() == [0, BELOW_LOW, BELOW_LOW, BETWEEN, BELOW_LOW]
    # fg 0.7, bg 0.45: 0.5 is ignored, but it is gt 1's best window, so it becomes gt 1's positive;
    # gt 2's best window (0.0625, under bg_iou) stays background: small objects are not forced onto big windows
    matched = label_windows(gt, windows, fg_iou=0.7, bg_iou=0.45)
    assert matched.tolist() == [0, BETWEEN, 1, BETWEEN, BELOW_LOW]


def test_loss_shapes_gradients_padded_batch_and_empty_image():
    torch.manual_seed(0)
    model = tiny()
    images = torch.rand(2, 3, 64, 64)
    targets = [target([[5, 5, 30, 30], [40, 30, 60, 60]], [1, 0], (64, 64)), target([], [], (40, 64))]
    model.cfg.scales = (1.0,)
    losses = model.loss(images, targets)
    assert set(losses) == {"cls", "box"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())
    empty = model.loss(images[1:], targets[1:])
    assert empty["box"].item() == 0 and empty["cls"].item() > 0


def test_overfits_one_image():
    torch.manual_seed(0)
    model = tiny(scales=(1.0,))
    image = torch.full((1, 3, 64, 64), 0.2)
    image[0, :, 20:38, 24:40] = torch.tensor([1.0, 0.3, 0.1])[:, None, None]
    box = [[24.0, 20, 40, 38]]
    targets = [target(box, [1], (64, 64))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = sum(model.loss(image, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5
    pred = model.eval().predict(image)[0]
    assert len(pred.boxes) and pred.labels[0] == 1
    assert iou(pred.boxes[:1], torch.tensor(box)).item() > 0.6


def test_predict_maps_boxes_to_input_pixels_and_counts_windows(monkeypatch):
    # A 90 x 127 input: working frame 64 / 127 -> 45 x 64, padded to 48 x 64; positions (48 - 16) / 4 + 1 = 9
    # rows (only (45 - 16) // 4 + 1 = 8 fit the image) by 13 columns. Position (row 2, column 3) = window
    # [12, 8, 28, 24] is class 1 with zero deltas (the window itself).
    model = tiny(scales=(1.0,)).eval()

    def forward(x):
        logits = torch.zeros(1, 3, 9, 13)
        logits[0, 0] = 10.0
        logits[0, :, 2, 3] = torch.tensor([0.0, 0.0, 10.0])
        return logits, torch.zeros(1, 4, 9, 13)

    monkeypatch.setattr(model, "forward", forward)
    pred = model.predict([torch.rand(3, 90, 127)])[0]
    assert window_count(45, 64, 16, 4) == 8 * 13  # the positions inside the image, of the 9 x 13 map
    assert pred.labels.tolist() == [1]
    sx, sy = 127 / 64, 90 / 45
    torch.testing.assert_close(pred.boxes, torch.tensor([[12 * sx, 8 * sy, 28 * sx, 24 * sy]]))


def test_evaluates_as_many_windows_as_sliding_window():
    # The same pyramid, window and stride: OverFeat's one pass per scale covers exactly sliding_window's crops
    # (the positions of its output map whose window lies inside the working frame).
    scales = (1.3, 1.0, 0.5)
    model = tiny(scales=scales).eval()
    sliding = build_model("sliding_window", num_classes=2, image_size=64,
                          args=dict(windows=[[16, 16]], stride=4, scales=scales, input_size=16, level=2, width=8))
    image = torch.rand(3, 50, 77)
    positions = 0
    with torch.no_grad():
        for s in scales:
            x, ((h, w),) = model.scaled_batch([image], s)
            logits, _ = model(x)
            windows = position_windows(logits.shape[-2:], model.stride, 16)
            positions += int(((windows[:, 2] <= w) & (windows[:, 3] <= h)).sum())
    assert positions == sliding.windows_per_image((42, 64))  # working frame of 50 x 77
    assert positions == sum(window_count(round(42 * s), round(64 * s), 16, 4) for s in scales)


def test_merge_option_nms_and_overfeat():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.6, 0.8, 0.5])
    labels = torch.tensor([0, 0, 0, 1])
    b, s, lab = postprocess(boxes, scores, labels, "nms", 0.5, 100)
    keep = batched_nms(boxes, scores, labels, 0.5)
    torch.testing.assert_close(b, boxes[keep])
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.5]) and lab.tolist() == [0, 0, 1]
    b, s, lab = postprocess(boxes, scores, labels, "overfeat", 0.5, 100)
    # the first box absorbs the second (IoU 81/119 > 0.5): score-weighted mean (0.9 b0 + 0.6 b1) / 1.5
    torch.testing.assert_close(b[0], torch.tensor([0.4, 0.4, 10.4, 10.4]))
    torch.testing.assert_close(b[1:], boxes[[2, 3]])
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.5]) and lab.tolist() == [0, 0, 1]
    b, s, lab = postprocess(boxes, scores, labels, "overfeat", 0.5, 2)  # detections_per_img
    assert len(b) == len(s) == len(lab) == 2


def test_empty_image_and_window_larger_than_the_image():
    model = tiny(merge="overfeat").eval()
    pred = model.predict(torch.zeros(1, 3, 64, 64))[0]
    assert pred.boxes.shape[1:] == (4,) and len(pred.scores) == len(pred.labels) == len(pred.boxes)
    big = tiny(window=96).eval()  # the working frame is 64 px: no window fits at any scale
    pred = big.predict([torch.rand(3, 50, 70)])[0]
    assert pred.boxes.shape == (0, 4) and pred.scores.shape == (0,) and pred.labels.shape == (0,)
    assert window_count(46, 64, 96, 4) == 0  # why nothing is found: no position at all


def test_registered_and_bad_merge_refused():
    model = build_model("overfeat", num_classes=3, image_size=64, args={"scales": [1, 0.5], "merge": "overfeat"})
    assert get_spec("overfeat").stages == 1 and model.cfg.scales == (1.0, 0.5)
    with pytest.raises(Exception, match="merge"):
        build_model("overfeat", num_classes=3, image_size=64, args={"merge": "mean"})
