"""YOLO v1: the loss term by term against hand arithmetic, shapes, gradients, overfitting, pixel mapping."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import zir.models.detect.yolo_v1 as yolo
from zir.data.contract import Target
from zir.errors import ConfigError
from zir.models import build_model
from zir.models.detect.yolo_v1 import YoloV1Config, loss_yolo_v1
from zir.ops.boxes import iou
from zir.ops.coder import encode_yolo_v1


def tiny(**kw) -> yolo.YoloV1:
    cfg = dict(num_classes=3, image_size=64, S=2, B=2, backbone="convnet", width=8, neck=8, hidden=16)
    return yolo.build(YoloV1Config(**{**cfg, **kw}))


def target(boxes: list[list[float]], labels: list[int], size: tuple[int, int]) -> Target:
    return Target(size=size, boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  labels=torch.tensor(labels, dtype=torch.int64))


# --------------------------------------------------------------------------------------------------
# The loss, by hand: S = 2, B = 2, C = 3, one object.
#
# Ground truth: box (10, 30, 50, 90) of class 2 in a 100 x 100 image. Centre (30, 60) -> in cell units
# (0.6, 1.2): column j = 0, row i = 1, x = 0.6, y = 0.2; w = 40/100 = 0.4, h = 60/100 = 0.6.
# In image units the box is [0.1, 0.3, 0.5, 0.9], area 0.24.
#
# Prediction in cell (1, 0):
#   box 0: x 0.5, y 0.2, w 0.36, h 0.49, c 0.7 -> centre (0.25, 0.6) -> [0.07, 0.355, 0.43, 0.845]
#          intersection 0.33 * 0.49 = 0.1617; union 0.1764 + 0.24 - 0.1617 = 0.2547; IoU = 0.63486...
#   box 1: x 0.6, y 0.2, w 0.16, h 0.25, c 0.3 -> [0.22, 0.475, 0.38, 0.725], inside the ground truth:
#          IoU = 0.04 / 0.24 = 1/6
#   box 0 has the higher IoU: it is responsible.
#   class probabilities [0.1, 0.2, 0.6]
# Elsewhere: cell (0, 0) box 0 has c 0.2; cell (0, 1) has class probabilities 0.5 (no object: ignored).

IOU0 = 0.1617 / 0.2547
COORD = 5 * ((0.6 - 0.5) ** 2 + (0.2 - 0.2) ** 2 + (math.sqrt(0.4) - 0.6) ** 2 + (math.sqrt(0.6) - 0.7) ** 2)
OBJ = (IOU0 - 0.7) ** 2
NOOBJ = 0.5 * (0.3**2 + 0.2**2)  # box 1 of the object's cell, box 0 of cell (0, 0)
CLS = 0.1**2 + 0.2**2 + (1 - 0.6) ** 2


def hand_target() -> torch.Tensor:
    t = torch.zeros(1, 2, 2, 5 + 3)
    t[0, 1, 0] = torch.tensor([0.6, 0.2, 0.4, 0.6, 1, 0, 0, 1])
    return t


def hand_pred(swap: bool = False) -> torch.Tensor:
    p = torch.zeros(1, 2, 2, 5 * 2 + 3)
    box0, box1 = [0.5, 0.2, 0.36, 0.49, 0.7], [0.6, 0.2, 0.16, 0.25, 0.3]
    if swap:
        box0, box1 = box1, box0
    p[0, 1, 0] = torch.tensor(box0 + box1 + [0.1, 0.2, 0.6])
    p[0, 0, 0, 4] = 0.2
    p[0, 0, 1, 10:] = 0.5
    return p


def test_target_built_by_hand_matches_encoder():
    grid = encode_yolo_v1(torch.tensor([[10.0, 30, 50, 90]]), torch.tensor([2]), (100, 100), S=2, num_classes=3)
    torch.testing.assert_close(grid[None], hand_target())


def test_every_loss_term_matches_hand_computation():
    losses = loss_yolo_v1(hand_pred(), hand_target(), B=2)
    assert set(losses) == {"coord", "obj", "noobj", "cls"}
    for name, expected in [("coord", COORD), ("obj", OBJ), ("noobj", NOOBJ), ("cls", CLS)]:
        assert losses[name].item() == pytest.approx(expected, rel=1e-5), name


def test_loss_is_divided_by_batch_size():
    pred, tgt = torch.cat([hand_pred(), hand_pred()]), torch.cat([hand_target(), hand_target()])
    losses = loss_yolo_v1(pred, tgt, B=2)
    assert losses["coord"].item() == pytest.approx(COORD, rel=1e-5)
    assert losses["noobj"].item() == pytest.approx(NOOBJ, rel=1e-5)


def test_responsible_predictor_is_the_one_with_highest_iou():
    # The better box now sits in slot 1: it stays responsible, and the no-object term now takes slot 0's
    # confidence (0.3): every term is unchanged.
    losses = loss_yolo_v1(hand_pred(swap=True), hand_target(), B=2)
    for name, expected in [("coord", COORD), ("obj", OBJ), ("noobj", NOOBJ), ("cls", CLS)]:
        assert losses[name].item() == pytest.approx(expected, rel=1e-5), name


def test_confidence_target_iou_carries_no_gradient_to_the_box():
    pred = hand_pred().requires_grad_()
    loss_yolo_v1(pred, hand_target(), B=2)["obj"].backward()
    assert torch.all(pred.grad[0, 1, 0, :4] == 0)  # x, y, w, h of the responsible box
    assert pred.grad[0, 1, 0, 4].item() == pytest.approx(2 * (0.7 - IOU0), rel=1e-5)  # d/dc (IoU - c)^2


def test_loss_of_a_perfect_prediction_is_zero():
    pred = torch.zeros(1, 2, 2, 13)
    pred[0, 1, 0] = torch.tensor([0.6, 0.2, 0.4, 0.6, 1.0] + [0.0] * 5 + [0, 0, 1])
    losses = loss_yolo_v1(pred, hand_target(), B=2)
    for name, value in losses.items():
        assert value.item() == pytest.approx(0.0, abs=1e-6), name


# --------------------------------------------------------------------------------------------------
# The model


@pytest.mark.parametrize("head", ["fc", "conv"])
def test_output_is_S_by_S_by_5B_plus_C(head):
    model = build_model("yolo_v1", num_classes=20, image_size=64, args=dict(backbone="convnet", width=8, neck=8,
                                                                            hidden=16, S=7, B=2, head=head))
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 7, 7, 30)
    eff = tiny(num_classes=20, S=7, backbone="efficientnet_lite0", pretrained="none", image_size=96)
    assert eff(torch.rand(1, 3, 96, 96)).shape == (1, 7, 7, 30)


@pytest.mark.parametrize("head", ["fc", "conv"])
def test_every_parameter_gets_a_gradient(head):
    model = tiny(num_classes=3, head=head)
    images = torch.rand(2, 3, 60, 64)
    targets = [target([[5, 5, 40, 30]], [1], (60, 64)), target([[20, 10, 60, 50], [0, 0, 10, 10]], [0, 2], (50, 64))]
    sum(model.loss(images, targets).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_empty_images_and_degenerate_boxes_give_finite_loss():
    model = tiny()
    targets = [target([], [], (64, 64)), target([[10, 10, 10, 30], [70, 5, 90, 20]], [0, 1], (64, 64))]
    losses = model.loss(torch.rand(2, 3, 64, 64), targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["coord"].item() == 0 and losses["cls"].item() == 0  # nothing left to locate
    sum(losses.values()).backward()


def test_predict_maps_boxes_into_the_input_image_pixels(monkeypatch):
    # S = 2, image_size 128. Cell (row 1, column 0), box 0: x 0.5, y 0.25, w = h = 0.25 (the output holds
    # w and h), confidence 0.9, Pr(class 1) 0.8 -> on the canvas: centre (32, 80), box [16, 64, 48, 96].
    # A 300 x 417 image is letterboxed to 128 x round(300 * 128 / 417) = 92 rows, 18 rows of padding on top;
    # back in its pixels: x * 417 / 128, (y - 18) * 300 / 92.
    model = tiny(image_size=128).eval()
    pred = torch.zeros(1, 2, 2, 13)
    pred[0, 1, 0, :5] = torch.tensor([0.5, 0.25, 0.25, 0.25, 0.9])
    pred[0, 1, 0, 10:] = torch.tensor([0.0, 0.8, 0.0])
    monkeypatch.setattr(model, "raw", lambda x, net=None: pred.expand(len(x), -1, -1, -1))
    out = model.predict([torch.rand(3, 300, 417)])[0]
    expected = torch.tensor([[16 * 417 / 128, (64 - 18) * 300 / 92, 48 * 417 / 128, (96 - 18) * 300 / 92]])
    torch.testing.assert_close(out.boxes, expected)
    torch.testing.assert_close(out.scores, torch.tensor([0.72]))
    assert out.labels.tolist() == [1]


def test_loss_targets_and_predict_use_the_same_mapping(monkeypatch):
    # Capture the grid the loss builds for a 300 x 417 image in a padded batch, feed it back as the
    # network's output: predict must return the original box in the original pixels.
    model = tiny(image_size=128, S=4).eval()
    box = [[100.0, 40.0, 250.0, 200.0]]
    captured = {}

    def capture(pred, grid, B, *args):
        captured["grid"] = grid
        return {"coord": pred.sum() * 0}

    monkeypatch.setattr(yolo, "loss_yolo_v1", capture)
    images = torch.zeros(2, 3, 320, 417)
    model.loss(images, [target(box, [2], (300, 417)), target([], [], (320, 400))])
    grid = captured["grid"][:1]  # (1, 4, 4, 8)
    perfect = torch.cat([grid[..., :5], torch.zeros(1, 4, 4, 5), grid[..., 5:]], dim=-1)
    monkeypatch.setattr(model, "raw", lambda x, net=None: perfect)
    out = model.predict(images[0, :, :300, :417])[0]
    assert out.labels.tolist() == [2]
    torch.testing.assert_close(out.boxes, torch.tensor(box), atol=0.01, rtol=0)


@pytest.mark.parametrize("head", ["fc", "conv"])
def test_overfits_two_images(head):
    torch.manual_seed(0)
    model = tiny(num_classes=2, image_size=64, S=4, width=8, neck=16, hidden=64, dropout=0.0, head=head)
    images = torch.full((2, 3, 64, 64), 0.1)
    images[0, :, 10:45, 8:36] = torch.tensor([1.0, 0.2, 0.2])[:, None, None]
    images[1, :, 35:60, 30:62] = torch.tensor([0.2, 0.3, 1.0])[:, None, None]
    images[1, :, 4:20, 4:18] = torch.tensor([1.0, 0.2, 0.2])[:, None, None]
    boxes = [[[8, 10, 36, 45]], [[30, 35, 62, 60], [4, 4, 18, 20]]]
    targets = [target(boxes[0], [0], (64, 64)), target(boxes[1], [1, 0], (64, 64))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0)
    first = None
    for _ in range(40):
        loss = sum(model.loss(images, targets).values())
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first
    model.eval()
    predictions = model.predict(images)
    # predict ran a copy with the trained BatchNorms folded into the convolutions: the same detections
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.inference_net().modules())
    plain = copy.deepcopy(model)
    plain.inference_net = lambda: None
    for fast, slow in zip(predictions, plain.predict(images)):
        torch.testing.assert_close(fast.boxes, slow.boxes, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(fast.scores, slow.scores, rtol=1e-4, atol=1e-4)
    for pred, b, t in zip(predictions, boxes, targets):
        for gt, label in zip(torch.tensor(b, dtype=torch.float32), t.labels):
            ious = iou(gt[None], pred.boxes)[0]
            hits = (ious > 0.5) & (pred.labels == label) & (pred.scores > 0.3)
            assert hits.any(), (gt, pred)


def test_conv_head_predicts_every_cell_with_the_same_weights():
    # shift the feature map by one cell: away from the zero-padded border, each cell's output moves with it
    torch.manual_seed(0)
    head = yolo.YoloConvHead(6, YoloV1Config(num_classes=3, S=8, neck=4)).eval()
    f = torch.randn(1, 6, 8, 8)
    out, shifted = head(f), head(f.roll(1, dims=-1))  # (1, S, S, 5B + C)
    torch.testing.assert_close(shifted[:, :, 3:6], out[:, :, 2:5])  # two 3x3 convs: 2 cells of context
    with pytest.raises(ConfigError, match="head"):
        tiny(head="anchors")


def test_pretrained_backbone_has_frozen_batchnorm_and_keeps_its_activations():
    from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d

    model = yolo.build(YoloV1Config(num_classes=1, image_size=64, neck=8, hidden=16)).eval()  # default backbone
    kinds = {type(m) for m in model.backbone.modules()}
    assert FrozenBatchNormAct2d in kinds and not any(issubclass(k, torch.nn.BatchNorm2d) for k in kinds)
    # zir.load builds the backbone with pretrained=none (plain BatchNormAct2d, eval mode): same function.
    loaded = yolo.build(YoloV1Config(num_classes=1, image_size=64, neck=8, hidden=16, pretrained="none"))
    assert any(isinstance(m, BatchNormAct2d) for m in loaded.modules())
    loaded.load_state_dict(model.state_dict(), strict=False)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x))
