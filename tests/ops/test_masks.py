"""Mask geometry against the COCO mask codec, torchvision and by hand."""

import numpy as np
import torch
import torch.nn.functional as F
from faster_coco_eval.core import mask as mask_codec
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

from zir.ops.masks import mask_iou, masks_to_boxes, paste_masks_in_image, polygons_to_mask


def random_masks(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Blob-like binary masks (smoothed noise), some empty."""
    g = torch.Generator().manual_seed(seed)
    noise = F.avg_pool2d(torch.rand(n, 1, h, w, generator=g), 7, 1, 3)[:, 0]
    masks = noise > 0.55
    masks[0] = False
    return masks


# ------------------------------------------------------------------------------------------------ paste

def test_paste_full_mask_covers_exactly_the_box():
    out = paste_masks_in_image(torch.ones(1, 28, 28), torch.tensor([[10.0, 5.0, 20.0, 15.0]]), (30, 40))
    assert out.shape == (1, 30, 40)
    expected = torch.zeros(30, 40, dtype=torch.bool)
    expected[5:15, 10:20] = True
    assert torch.equal(out[0] > 0.5, expected)
    # torchvision's paste spreads the same mask over pixels 9..20 (it treats x2 as inclusive and pads).
    theirs = tv_paste(torch.ones(1, 1, 28, 28), torch.tensor([[10.0, 5.0, 20.0, 15.0]]), (30, 40))[0, 0]
    assert (theirs > 0.5).sum() == 12 * 12


def test_paste_box_of_mask_size_reproduces_the_mask():
    masks = torch.rand(3, 14, 14, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[0.0, 0.0, 14.0, 14.0], [20.0, 7.0, 34.0, 21.0], [30.0, 30.0, 44.0, 44.0]])
    out = paste_masks_in_image(masks, boxes, (40, 40))
    torch.testing.assert_close(out[0, :14, :14], masks[0])
    torch.testing.assert_close(out[1, 7:21, 20:34], masks[1])
    torch.testing.assert_close(out[2, 30:, 30:], masks[2][:10, :10])  # cut at the image border
    outside = out[1].clone()
    outside[7:21, 20:34] = 0
    assert not outside.any()


def test_paste_upsampling_equals_bilinear_interpolation():
    mask = torch.rand(1, 10, 10, generator=torch.Generator().manual_seed(1))
    out = paste_masks_in_image(mask, torch.tensor([[3.0, 5.0, 23.0, 25.0]]), (30, 30))[0, 5:25, 3:23]
    ref = F.interpolate(mask[None], size=(20, 20), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(out[1:-1, 1:-1], ref[1:-1, 1:-1])  # the border fades to zero outside


def test_paste_agrees_with_torchvision_up_to_its_pixel_offset():
    g = torch.Generator().manual_seed(2)
    n = 6
    yy, xx = torch.meshgrid(torch.arange(28) + 0.5, torch.arange(28) + 0.5, indexing="ij")
    radii = torch.rand(n, generator=g) * 6 + 6
    masks = (((xx - 14) ** 2 + (yy - 14) ** 2)[None] < radii[:, None, None] ** 2).float()  # discs
    xy = torch.rand(n, 2, generator=g) * 100 - 10  # some boxes reach outside the image
    wh = torch.rand(n, 2, generator=g) * 60 + 30
    boxes = torch.cat([xy, xy + wh], 1).round()
    ours = paste_masks_in_image(masks, boxes, (110, 120)) > 0.5
    inclusive = boxes - torch.tensor([0.0, 0.0, 1.0, 1.0])  # torchvision's reading of the same pixels
    theirs = tv_paste(masks[:, None], inclusive, (110, 120))[:, 0] > 0.5
    assert (mask_iou(ours, theirs).diag() > 0.9).all()


def test_paste_degenerate_and_empty():
    out = paste_masks_in_image(torch.ones(2, 7, 7), torch.tensor([[5.0, 5.0, 5.0, 9.0], [50, 50, 60, 60]]), (20, 20))
    assert out.abs().sum() == 0  # zero width; outside the image
    assert paste_masks_in_image(torch.zeros(0, 7, 7), torch.zeros(0, 4), (20, 20)).shape == (0, 20, 20)


# ------------------------------------------------------------------------------------ boxes and IoU

def test_masks_to_boxes_equals_coco_bbox():
    masks = random_masks(6, 37, 53, seed=3)
    rles = mask_codec.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8)))
    xywh = torch.from_numpy(mask_codec.toBbox(rles)).float()
    expected = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    assert torch.equal(masks_to_boxes(masks), expected)
    assert masks_to_boxes(masks)[0].tolist() == [0, 0, 0, 0]  # empty mask


def test_masks_to_boxes_exclusive_by_hand():
    m = torch.zeros(1, 20, 30, dtype=torch.bool)
    m[0, 4:9, 10:20] = True
    assert masks_to_boxes(m).tolist() == [[10, 4, 20, 9]]
    assert masks_to_boxes(torch.zeros(0, 5, 5)).shape == (0, 4)


def test_mask_iou_equals_coco():
    a, b = random_masks(5, 31, 29, seed=4), random_masks(4, 31, 29, seed=5)

    def rle(m):
        return mask_codec.encode(np.asfortranarray(m.permute(1, 2, 0).numpy().astype(np.uint8)))

    expected = torch.from_numpy(mask_codec.iou(rle(a), rle(b), [0] * len(b))).float()
    torch.testing.assert_close(mask_iou(a, b), expected)
    assert mask_iou(a, b)[0].tolist() == [0.0] * 4  # an empty mask overlaps nothing


# -------------------------------------------------------------------------------------------- polygons

def test_polygons_to_mask():
    m = polygons_to_mask([[10, 10, 20, 10, 20, 20, 10, 20]], (30, 40))
    expected = torch.zeros(30, 40, dtype=torch.bool)
    expected[10:20, 10:20] = True
    assert m.dtype == torch.bool and torch.equal(m, expected)
    two = polygons_to_mask([[0, 0, 5, 0, 5, 5, 0, 5], [30, 20, 40, 20, 40, 30, 30, 30], [1, 2]], (30, 40))
    assert two[:5, :5].all() and masks_to_boxes(two[None]).tolist() == [[0, 0, 40, 30]]
    assert not polygons_to_mask([], (30, 40)).any()
