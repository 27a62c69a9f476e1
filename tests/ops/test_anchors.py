"""Anchors against torchvision's AnchorGenerator and by hand."""

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from zir.ops.anchors import anchors, cell_anchors, pyramid_anchors


def torchvision_anchors(image_size, feature_sizes, sizes, aspect_ratios):
    gen = AnchorGenerator(sizes, aspect_ratios)
    images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
    feats = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
    return gen(images, feats)[0]


@pytest.mark.parametrize("image_size", [(256, 320), (203, 301)])  # divisible and not
def test_pyramid_equals_torchvision_fpn(image_size):
    # torchvision's fasterrcnn_resnet50_fpn set-up: one size per level, three ratios everywhere.
    sizes = ((32,), (64,), (128,), (256,), (512,))
    ratios = ((0.5, 1.0, 2.0),) * 5
    H, W = image_size
    feature_sizes = [(-(-H // s), -(-W // s)) for s in (4, 8, 16, 32, 64)]  # ceil, as strided convs give
    ours = pyramid_anchors(image_size, feature_sizes, sizes, ratios, offset=0.0)
    assert [len(a) for a in ours] == [h * w * 3 for h, w in feature_sizes]
    assert torch.equal(torch.cat(ours), torchvision_anchors(image_size, feature_sizes, sizes, ratios))


def test_single_level_many_sizes_equals_torchvision():
    sizes, ratios = ((32, 40.3, 50, 101),), ((0.3, 0.5, 1.0, 2.0, 3.7),)
    ours = anchors((9, 13), 16, sizes[0], ratios[0], offset=0.0)
    assert ours.shape == (9 * 13 * 20, 4)
    assert torch.equal(ours, torchvision_anchors((144, 208), [(9, 13)], sizes, ratios))


def test_by_hand_centred_on_cells():
    a = anchors((2, 3), 16, [16], [1.0])  # offset 0.5: cell centres
    expected = [[0, 0, 16, 16], [16, 0, 32, 16], [32, 0, 48, 16],
                [0, 16, 16, 32], [16, 16, 32, 32], [32, 16, 48, 32]]
    assert a.tolist() == expected
    # Order within a position: ratios outer, sizes inner; ratio is height / width.
    base = cell_anchors([12, 20], [0.25, 4.0])
    assert (base[:, 2] - base[:, 0]).tolist() == [24, 40, 6, 10]  # w = size / sqrt(ratio)
    assert (base[:, 3] - base[:, 1]).tolist() == [6, 10, 24, 40]  # h = size * sqrt(ratio)
    # Half-extents round to whole pixels (half to even, as torchvision): 5 / 2 -> 2.
    assert cell_anchors([10], [4.0]).tolist() == [[-2, -10, 2, 10]]


def test_offset_shifts_by_half_a_stride():
    a0 = anchors((4, 5), (8, 12), [24, 48], [0.5, 1.0], offset=0.0)
    a5 = anchors((4, 5), (8, 12), [24, 48], [0.5, 1.0], offset=0.5)
    torch.testing.assert_close(a5 - a0, torch.tensor([6.0, 4.0, 6.0, 4.0]).expand_as(a0))


def test_pyramid_rejects_mismatched_levels():
    with pytest.raises(ValueError, match="one of each per level"):
        pyramid_anchors((64, 64), [(16, 16), (8, 8)], [(32,)], [(1.0,)])
