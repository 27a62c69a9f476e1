"""Box encodings against torchvision's BoxCoder and the YOLO v1 paper by hand."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from zir.ops.coder import RCNN_HEAD_WEIGHTS, RPN_WEIGHTS, BoxCoder, decode_yolo_v1, encode_yolo_v1


def random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 300
    wh = torch.rand(n, 2, generator=g) * 200 + 10  # size ratios < 1000/16, inside the decode clip
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("weights", [RPN_WEIGHTS, RCNN_HEAD_WEIGHTS])
def test_equals_torchvision(weights):
    boxes, anchors = random_boxes(50, 0), random_boxes(50, 1)
    ours, theirs = BoxCoder(weights), TVBoxCoder(weights)
    deltas = ours.encode(boxes, anchors)
    torch.testing.assert_close(deltas, theirs.encode_single(boxes, anchors))
    torch.testing.assert_close(ours.decode(deltas, anchors), theirs.decode_single(deltas, anchors))
    # Per-class deltas of a box head: (N, 4K) in torchvision, (N, K, 4) here.
    per_class = torch.randn(50, 3 * 4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours.decode(per_class.view(50, 3, 4), anchors),
                               theirs.decode_single(per_class, anchors).view(50, 3, 4))


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 10_000), st.sampled_from([RPN_WEIGHTS, RCNN_HEAD_WEIGHTS]))
def test_decode_inverts_encode(seed, weights):
    boxes, anchors = random_boxes(20, seed).double(), random_boxes(20, seed + 1).double()
    coder = BoxCoder(weights)
    torch.testing.assert_close(coder.decode(coder.encode(boxes, anchors), anchors), boxes)


def test_by_hand():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), 10 x 20
    box = torch.tensor([[5.0, 0.0, 25.0, 20.0]])  # centre (15, 10), 20 x 20
    deltas = BoxCoder(RCNN_HEAD_WEIGHTS).encode(box, anchor)
    torch.testing.assert_close(deltas, torch.tensor([[10 * 10 / 10, 0.0, 5 * math.log(2), 0.0]]))
    assert BoxCoder().encode(anchor, anchor).tolist() == [[0, 0, 0, 0]]


def test_decode_clips_huge_scales():
    anchor = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    box = BoxCoder().decode(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), anchor)  # exp(50) would overflow
    torch.testing.assert_close(box, torch.tensor([[-492.0, -492.0, 508.0, 508.0]]))  # 1000 wide


# ---------------------------------------------------------------------------------------------- YOLO v1

def test_yolo_v1_by_hand():
    # A 448 x 448 image, S = 7 (64 px cells): a box centred at (224, 224) falls in cell (3, 3), x = y = 0.5.
    boxes = torch.tensor([[174.0, 124.0, 274.0, 324.0]])
    target = encode_yolo_v1(boxes, torch.tensor([2]), (448, 448), S=7, num_classes=4)
    assert target.shape == (7, 7, 9)
    torch.testing.assert_close(target[3, 3], torch.tensor([0.5, 0.5, 100 / 448, 200 / 448, 1, 0, 0, 1, 0]))
    assert target.sum() == target[3, 3].sum()  # every other cell is empty


def test_yolo_v1_non_square_image():
    # H = 300, W = 600, S = 3: cells 200 wide, 100 tall; centre (500, 50) -> row 0, column 2.
    target = encode_yolo_v1(torch.tensor([[450.0, 20.0, 550.0, 80.0]]), torch.tensor([0]), (300, 600), 3, 1)
    torch.testing.assert_close(target[0, 2], torch.tensor([0.5, 0.5, 100 / 600, 60 / 300, 1, 1]))


def test_yolo_v1_round_trip():
    H, W, S = 375, 500, 7
    g = torch.Generator().manual_seed(0)
    centres = (torch.randperm(S * S, generator=g)[:10])  # distinct cells
    cy = (centres // S + torch.rand(10, generator=g)) * H / S
    cx = (centres % S + torch.rand(10, generator=g)) * W / S
    wh = torch.rand(10, 2, generator=g) * 100 + 5
    boxes = torch.stack([cx - wh[:, 0] / 2, cy - wh[:, 1] / 2, cx + wh[:, 0] / 2, cy + wh[:, 1] / 2], 1)
    labels = torch.randint(0, 20, (10,), generator=g)
    target = encode_yolo_v1(boxes, labels, (H, W), S, 20)
    occupied = target[..., 4] > 0
    assert occupied.sum() == 10
    decoded = decode_yolo_v1(target[..., :4], (H, W))[occupied]  # row-major order of the cells
    order = torch.argsort((cy * S / H).floor() * S + (cx * S / W).floor())
    torch.testing.assert_close(decoded, boxes[order], atol=1e-3, rtol=0)
    assert torch.equal(target[..., 5:][occupied].argmax(-1), labels[order])


def test_yolo_v1_one_object_per_cell_largest_wins():
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 30.0, 30.0], [12.0, 12.0, 18.0, 18.0]])
    target = encode_yolo_v1(boxes, torch.tensor([0, 1, 2]), (448, 448), 7, 3)
    assert (target[..., 4] > 0).sum() == 1
    torch.testing.assert_close(target[0, 0], torch.tensor([15 / 64, 15 / 64, 30 / 448, 30 / 448, 1, 0, 1, 0]))


def test_yolo_v1_edges_and_empty():
    target = encode_yolo_v1(torch.tensor([[400.0, 400.0, 448.0, 448.0]]), torch.tensor([0]), (448, 448), 7, 1)
    assert target[6, 6, 4] == 1  # centre (424, 424) in the last cell
    edge = encode_yolo_v1(torch.tensor([[448.0, 0.0, 448.0, 10.0]]), torch.tensor([0]), (448, 448), 7, 1)
    assert edge[0, 6, 4] == 1  # a centre on the right edge stays in the grid
    assert encode_yolo_v1(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), (448, 448), 7, 3).abs().sum() == 0


def test_decode_yolo_v1_predictions_with_batch_and_boxes():
    pred = torch.rand(2, 7, 7, 2 * 5 + 20, generator=torch.Generator().manual_seed(5))  # (B, S, S, 5B + C)
    boxes = torch.stack([decode_yolo_v1(pred[..., 5 * b: 5 * b + 4], (448, 448)) for b in range(2)], dim=3)
    assert boxes.shape == (2, 7, 7, 2, 4)
    x, y, w, h = pred[1, 4, 2, 5:9].tolist()  # batch 1, row 4, column 2, second box
    expected = [(2 + x) * 64 - w * 224, (4 + y) * 64 - h * 224, (2 + x) * 64 + w * 224, (4 + y) * 64 + h * 224]
    torch.testing.assert_close(boxes[1, 4, 2, 1], torch.tensor(expected))
