"""Dense detectors' losses and the anchor-free box coding, on values computed by hand."""

from __future__ import annotations

import math

import torch
from torchvision.ops import complete_box_iou_loss

from zir.ops.coder import decode_ltrb, dfl_expectation, encode_ltrb
from zir.ops.losses import distribution_focal_loss, power_complete_box_iou_loss, varifocal_loss


def test_distribution_focal_loss_weights_the_two_neighbouring_bins():
    logits = torch.tensor([[0.5, 0.25, 0.25]]).log()  # softmax gives back 0.5, 0.25, 0.25
    # y = 0.5: -(0.5 log 0.5 + 0.5 log 0.25)
    loss = distribution_focal_loss(logits, torch.tensor([0.5]))
    torch.testing.assert_close(loss, torch.tensor([0.5 * math.log(2) + 0.5 * math.log(4)]))
    # y = 1: all the weight on bin 1 -> -log 0.25
    torch.testing.assert_close(distribution_focal_loss(logits, torch.tensor([1.0])), torch.tensor([math.log(4)]))
    # y = R = 2 is clamped to 1.99: -(0.01 log 0.25 + 0.99 log 0.25)
    torch.testing.assert_close(distribution_focal_loss(logits, torch.tensor([2.0])), torch.tensor([math.log(4)]))


def test_distribution_focal_loss_is_smallest_at_the_two_point_distribution():
    target = torch.tensor([1.3])
    best = torch.tensor([[1e-6, 0.7, 0.3, 1e-6]]).log()
    other = torch.tensor([[0.25, 0.25, 0.25, 0.25]]).log()
    assert distribution_focal_loss(best, target) < distribution_focal_loss(other, target)
    # the minimum is the entropy of (0.7, 0.3)
    torch.testing.assert_close(distribution_focal_loss(best, target),
                               torch.tensor([-(0.7 * math.log(0.7) + 0.3 * math.log(0.3))]), atol=1e-4, rtol=0)


def test_varifocal_loss_by_hand():
    logits = torch.zeros(1, 2)  # p = 0.5
    quality = torch.tensor([[0.8, 0.0]])
    loss = varifocal_loss(logits, quality, alpha=0.75, gamma=2.0)
    # positive: q * BCE(0.5, 0.8) = 0.8 * log 2; negative: 0.75 * 0.5^2 * (-log 0.5)
    torch.testing.assert_close(loss, torch.tensor([[0.8 * math.log(2), 0.75 * 0.25 * math.log(2)]]))


def test_varifocal_loss_gradient_flows_only_through_the_prediction_not_the_weight():
    logits = torch.tensor([[1.0]], requires_grad=True)
    varifocal_loss(logits, torch.zeros(1, 1)).sum().backward()
    p = torch.sigmoid(torch.tensor(1.0))
    # d/dx [0.75 p^2 * -log(1 - p)] with p^2 held fixed = 0.75 p^2 * p
    torch.testing.assert_close(logits.grad, (0.75 * p ** 2 * p).reshape(1, 1))


def test_ltrb_coding_by_hand_and_round_trip():
    points = torch.tensor([[10.0, 10.0]])
    boxes = torch.tensor([[4.0, 6.0, 16.0, 20.0]])
    d = encode_ltrb(points, boxes, torch.tensor([2.0]))
    torch.testing.assert_close(d, torch.tensor([[3.0, 2.0, 3.0, 5.0]]))
    torch.testing.assert_close(decode_ltrb(points, d, torch.tensor([2.0])), boxes)
    torch.testing.assert_close(encode_ltrb(points, boxes, 1.0), torch.tensor([[6.0, 4.0, 6.0, 10.0]]))


def test_dfl_expectation_is_the_mean_distance():
    logits = torch.tensor([[0.5, 0.25, 0.25], [1.0, 1e-9, 1e-9]]).log()
    torch.testing.assert_close(dfl_expectation(logits), torch.tensor([0.75, 0.0]), atol=1e-6, rtol=0)
    # any leading shape (the head's (B, A, 4, R + 1)), and none at all
    many = torch.randn(2, 5, 4, 16)
    want = (many.softmax(-1) * torch.arange(16.0)).sum(-1)
    torch.testing.assert_close(dfl_expectation(many), want)
    assert dfl_expectation(torch.zeros(0, 4, 16)).shape == (0, 4)


def test_power_ciou_by_hand():
    # concentric squares 2x2 in 4x4: IoU 1/4, no centre distance, same aspect -> 1 - (1/4)^3
    pred, target = torch.tensor([[1.0, 1, 3, 3]]), torch.tensor([[0.0, 0, 4, 4]])
    torch.testing.assert_close(power_complete_box_iou_loss(pred, target, 3.0), torch.tensor([1 - 0.25**3]))
    # 2x2 squares shifted by 1: IoU 2/6, centres 1 apart, enclosing 3x2 (c^2 = 13) -> 1 - (1/3)^3 + (1/13)^3
    pred, target = torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 0, 3, 2]])
    torch.testing.assert_close(power_complete_box_iou_loss(pred, target, 3.0),
                               torch.tensor([1 - (1 / 3) ** 3 + (1 / 13) ** 3]))
    assert power_complete_box_iou_loss(target, target, 3.0).item() == 0


def test_power_ciou_at_power_one_is_torchvisions_ciou():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(64, 2, generator=g) * 50
    pred = torch.cat([xy, xy + 1 + torch.rand(64, 2, generator=g) * 30], 1)
    target = torch.cat([xy + torch.randn(64, 2, generator=g) * 5, xy + 1 + torch.rand(64, 2, generator=g) * 30], 1)
    target[:, 2:] = torch.maximum(target[:, 2:], target[:, :2] + 1)
    torch.testing.assert_close(power_complete_box_iou_loss(pred, target, 1.0),
                               complete_box_iou_loss(pred, target, reduction="none"), atol=1e-5, rtol=1e-5)


def test_power_ciou_pushes_harder_on_well_overlapping_boxes():
    # the gradient of the loss on a box's shift: power 3 gives a box at IoU ~0.9 more push than CIoU does,
    # and a box at IoU ~0.2 less (Alpha-IoU's reweighting)
    def push(shift: float, power: float) -> float:
        s = torch.tensor(shift, requires_grad=True)
        pred = torch.stack([s, torch.tensor(0.0), s + 10, torch.tensor(10.0)])[None]
        power_complete_box_iou_loss(pred, torch.tensor([[0.0, 0, 10, 10]]), power).sum().backward()
        return s.grad.abs().item()
    assert push(0.5, 3.0) > 1.5 * push(0.5, 1.0)
    assert push(7.0, 3.0) < 0.5 * push(7.0, 1.0)
