"""Box geometry against torchvision and hand calculations."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import batched_nms, box_iou, nms

from zir.ops.boxes import (
    aligned_iou,
    clip,
    convert,
    from_voc,
    from_yolo,
    giou,
    ioa,
    iou,
    letterbox,
    letterbox_boxes,
    scale_boxes,
    to_voc,
    to_yolo,
    unletterbox_boxes,
    weighted_merge,
)

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None)


def random_boxes(n: int, seed: int, size: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


coords = st.floats(-500, 500, allow_nan=False, width=32)
sizes = st.floats(0.5, 300, allow_nan=False, width=32)
box_lists = st.lists(st.tuples(coords, coords, sizes, sizes), min_size=1, max_size=8).map(
    lambda rows: torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rows], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- formats

def test_convert_by_hand():
    b = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert convert(b, "xyxy", "xywh").tolist() == [[10, 20, 20, 40]]
    assert convert(b, "xyxy", "cxcywh").tolist() == [[20, 40, 20, 40]]
    assert convert(torch.tensor([[20.0, 40, 20, 40]]), "cxcywh", "xyxy").tolist() == b.tolist()


def test_convert_keeps_leading_dims():
    b = random_boxes(6, 0).reshape(2, 3, 4)
    out = convert(b, "xyxy", "xywh")
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out[1, 2], convert(b[1, 2:3], "xyxy", "xywh")[0])


@SETTINGS
@given(box_lists, st.sampled_from(["xywh", "cxcywh"]))
def test_convert_round_trip(boxes, fmt):
    back = convert(convert(boxes, "xyxy", fmt), fmt, "xyxy")
    torch.testing.assert_close(back, boxes)


def test_yolo_by_hand_and_round_trip():
    size = (100, 200)  # (H, W)
    b = torch.tensor([[0.0, 0.0, 200.0, 100.0], [50.0, 10.0, 70.0, 30.0]])
    y = to_yolo(b, size)
    torch.testing.assert_close(y, torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.3, 0.2, 0.1, 0.2]]))
    torch.testing.assert_close(from_yolo(y, size), b)


def test_voc_first_ten_columns():
    # VOC xmin=1..xmax=10 are the first ten pixels: zir [0, 10), width 10.
    voc = torch.tensor([[1.0, 1.0, 10.0, 20.0]])
    assert from_voc(voc).tolist() == [[0, 0, 10, 20]]
    assert to_voc(from_voc(voc)).tolist() == voc.tolist()


# --------------------------------------------------------------------------------------------- overlaps

def test_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(iou(a, b), torch.tensor([[1 / 3, 0.0]]))
    # hull 15 x 10 = 150, union 150: giou = iou; disjoint: hull 900, union 200.
    torch.testing.assert_close(giou(a, b), torch.tensor([[1 / 3, 200 / 900 - 1]]))


@SETTINGS
@given(box_lists, box_lists)
def test_iou_properties(a, b):
    m = iou(a, b)
    torch.testing.assert_close(m, iou(b, a).T)
    assert ((m >= 0) & (m <= 1 + 1e-9)).all()
    g = giou(a, b)
    assert (g <= m + 1e-9).all() and (g >= -1 - 1e-9).all()
    torch.testing.assert_close(iou(a, a).diag(), torch.ones(len(a), dtype=a.dtype))


@SETTINGS
@given(box_lists)
def test_aligned_iou_is_diagonal_of_pairwise(a):
    b = a.flip(0) + 3.0
    torch.testing.assert_close(aligned_iou(a, b), box_iou(a, b).diag())


def test_aligned_iou_broadcasts_and_empty_cells_give_zero():
    pred = random_boxes(2 * 7 * 7 * 2, 1).reshape(2, 7, 7, 2, 4)  # (B, S, S, boxes, 4)
    target = random_boxes(2 * 7 * 7, 2).reshape(2, 7, 7, 1, 4)
    target[0, 0, 0] = 0  # an empty cell
    pred[0, 0, 0, 0] = 0
    pred.requires_grad_(True)
    out = aligned_iou(pred, target)
    assert out.shape == (2, 7, 7, 2)
    assert out[0, 0, 0, 0] == 0
    torch.testing.assert_close(out[1, 3, 4], box_iou(pred[1, 3, 4], target[1, 3, 4])[:, 0])
    out.sum().backward()
    assert torch.isfinite(pred.grad).all()


def test_ioa_matches_torchvision_intersection():
    a, b = random_boxes(7, 3), random_boxes(5, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    m = box_iou(a, b)
    inter = m * (area_a[:, None] + area_b[None, :]) / (1 + m)  # from iou = i / (a + b - i)
    torch.testing.assert_close(ioa(a, b), inter / area_b[None, :])


def test_ioa_occlusion_by_hand():
    big = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    small = torch.tensor([[10.0, 10.0, 20.0, 30.0], [90.0, 0.0, 110.0, 10.0], [5.0, 5.0, 5.0, 9.0]])
    torch.testing.assert_close(ioa(big, small), torch.tensor([[1.0, 0.5, 0.0]]))  # empty box: 0
    torch.testing.assert_close(ioa(small[:1], big), torch.tensor([[200 / 10000]]))


# ------------------------------------------------------------------------------------ size mappings

def test_scale_boxes_by_hand_and_back():
    b = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    out = scale_boxes(b, (100, 100), (200, 50))  # (H, W): twice as tall, half as wide
    assert out.tolist() == [[5, 20, 10, 40]]
    torch.testing.assert_close(scale_boxes(out, (200, 50), (100, 100)), b)


def test_scale_boxes_follows_pixels_of_a_resized_mask():
    # A mask over columns 3..6 and rows 2..4, upsampled 3x by pixel repetition.
    mask = torch.zeros(10, 8)
    mask[2:5, 3:7] = 1
    big = mask.repeat_interleave(3, 0).repeat_interleave(3, 1)
    ys, xs = torch.nonzero(big, as_tuple=True)
    expected = [[xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]]
    assert scale_boxes(torch.tensor([[3.0, 2.0, 7.0, 5.0]]), (10, 8), (30, 24)).tolist() == expected


def test_letterbox_by_hand():
    lb = letterbox((100, 200), (320, 320))  # landscape into a square
    assert lb.resized == (160, 320) and lb.pad == (80, 0)
    whole = torch.tensor([[0.0, 0.0, 200.0, 100.0]])
    assert letterbox_boxes(whole, (100, 200), (320, 320)).tolist() == [[0, 80, 320, 240]]


@SETTINGS
@given(st.integers(5, 900), st.integers(5, 900), st.integers(32, 640), st.integers(32, 640))
def test_letterbox_round_trip_and_image_agree(h0, w0, h1, w1):
    lb = letterbox((h0, w0), (h1, w1))
    (h, w), (top, left) = lb.resized, lb.pad
    s = min(h1 / h0, w1 / w0)
    assert h == h1 or w == w1  # the limiting side fills the canvas
    assert abs(h - h0 * s) <= 0.5 + 1e-9 or h == 1  # the aspect ratio is kept, up to whole pixels
    assert abs(w - w0 * s) <= 0.5 + 1e-9 or w == 1
    # The image, resized and padded with these numbers, lies exactly where its full box maps.
    whole = torch.tensor([[0.0, 0.0, w0, h0]], dtype=torch.float64)
    mapped = letterbox_boxes(whole, (h0, w0), (h1, w1))
    torch.testing.assert_close(mapped, torch.tensor([[left, top, left + w, top + h]], dtype=torch.float64))
    b = torch.tensor([[0.1 * w0, 0.2 * h0, 0.7 * w0, 0.9 * h0]], dtype=torch.float64)
    torch.testing.assert_close(unletterbox_boxes(letterbox_boxes(b, (h0, w0), (h1, w1)), (h0, w0), (h1, w1)), b)


def test_clip_uses_exclusive_edge():
    b = torch.tensor([[-5.0, -1.0, 130.0, 50.0]])
    assert clip(b, (40, 120)).tolist() == [[0, 0, 120, 40]]  # x2 = W, not W - 1


# -------------------------------------------------------------------------------------------- merging

def test_weighted_merge_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([3.0, 1.0, 0.5])  # boxes 0 and 1 overlap with IoU 80 / 120
    merged, keep = weighted_merge(boxes, scores, 0.5)
    assert keep.tolist() == [0, 2]
    torch.testing.assert_close(merged, torch.tensor([[0.5, 0.0, 10.5, 10.0], [50.0, 50.0, 60.0, 60.0]]))
    merged, keep = weighted_merge(boxes, scores, 0.7)  # nothing overlaps enough: plain NMS
    assert keep.tolist() == [0, 1, 2] and torch.equal(merged, boxes)


def test_weighted_merge_keeps_what_nms_keeps_and_averages_inside_groups():
    boxes = random_boxes(60, 5, size=60.0)
    scores = torch.rand(60, generator=torch.Generator().manual_seed(6))
    merged, keep = weighted_merge(boxes, scores, 0.4)
    assert torch.equal(keep, nms(boxes, scores, 0.4))
    # Each merged box lies within the hull of the boxes overlapping its kept box.
    group = box_iou(boxes[keep], boxes) > 0.4
    for k in range(len(keep)):
        members = boxes[group[k]]
        assert (merged[k, :2] >= members[:, :2].min(0).values - 1e-5).all()
        assert (merged[k, 2:] <= members[:, 2:].max(0).values + 1e-5).all()


def test_weighted_merge_per_class():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.0, 1.0, 10.0, 11.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([0, 1, 0])
    merged, keep = weighted_merge(boxes, scores, 0.5, idxs=labels)
    assert torch.equal(keep, batched_nms(boxes, scores, labels, 0.5))
    assert keep.tolist() == [0, 1]
    torch.testing.assert_close(merged, torch.tensor([[0.0, 0.7 / 1.6, 10.0, 10 + 0.7 / 1.6],
                                                     [1.0, 0.0, 11.0, 10.0]]))


def test_weighted_merge_empty():
    merged, keep = weighted_merge(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert merged.shape == (0, 4) and keep.shape == (0,)

