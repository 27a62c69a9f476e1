"""The detection input path: sizes by hand, resize / normalise / pad against torchvision's
GeneralizedRCNNTransform, pad-unpad and box round trips, label maps, scores, the letterbox."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from zir.data.contract import Target
from zir.models.base import ZirModel
from zir.models.detect.structures import ground_truth
from zir.models.detect.transform import (
    batch_images,
    boxes_to_input,
    boxes_to_working,
    labels_to_working,
    letterbox_batch,
    normalize,
    pad_batch,
    resize,
    resize_scale,
    scores_to_input,
    to_input_pixels,
    unpad,
    working_size,
)
from zir.ops.boxes import letterbox_boxes

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


# --------------------------------------------------------------------------------------------------
# Sizes


def test_working_size_by_hand():
    assert resize_scale((300, 417), 128) == 128 / 417
    assert working_size((300, 417), 128) == (92, 128)  # 300 * 128 / 417 = 92.09
    assert working_size((128, 80), 128) == (128, 80)  # already there
    assert working_size((50, 100), 200) == (100, 200)  # enlarged
    # torchvision's min_size: the shorter side at most 150, so the longer side stays below image_size
    assert resize_scale((100, 200), 400, min_size=150) == 1.5 and working_size((100, 200), 400, 150) == (150, 300)
    assert working_size((1, 1000), 100) == (1, 100)  # never below one pixel


# --------------------------------------------------------------------------------------------------
# Against torchvision


def torchvision_transform(image_size: int) -> GeneralizedRCNNTransform:
    # a min_size this large never binds: torchvision then scales the longer side to max_size, as zir
    return GeneralizedRCNNTransform(10**6, image_size, MEAN.tolist(), STD.tolist(), size_divisible=32).eval()


def test_batch_matches_torchvision_when_the_sizes_are_whole():
    # upscaled by whole factors, so torchvision's floor and zir's round agree on every size
    torch.manual_seed(0)
    images = [torch.rand(3, 50, 100), torch.rand(3, 40, 25)]  # x2 -> (100, 200); x5 -> (200, 125)
    boxes = [torch.tensor([[10.0, 5, 60, 45]]), torch.tensor([[0.0, 0, 25, 40], [3, 7, 11, 19]])]
    theirs, tv_targets = torchvision_transform(200)(images, [{"boxes": b} for b in boxes])
    x, work = batch_images(images, 200, MEAN, STD)
    assert work == [(100, 200), (200, 125)] == theirs.image_sizes
    assert x.shape == theirs.tensors.shape == (2, 3, 224, 224)  # padded to multiples of 32
    torch.testing.assert_close(x, theirs.tensors)
    for b, im, w, t in zip(boxes, images, work, tv_targets):
        torch.testing.assert_close(boxes_to_working(b, tuple(im.shape[-2:]), w), t["boxes"])


def test_boxes_back_to_the_input_match_torchvision_postprocess():
    t = torchvision_transform(128)
    boxes = torch.tensor([[0.0, 0, 128, 92], [10.5, 20.25, 64, 80]])
    result = t.postprocess([{"boxes": boxes.clone()}], [(92, 128)], [(300, 417)])
    torch.testing.assert_close(boxes_to_input(boxes, (92, 128), (300, 417)), result[0]["boxes"])


# --------------------------------------------------------------------------------------------------
# Pixels


def test_resize_antialiases_only_when_shrinking():
    torch.manual_seed(0)
    image = torch.rand(3, 40, 60)
    torch.testing.assert_close(resize(image, (20, 30)),
                               F.interpolate(image[None], (20, 30), mode="bilinear", antialias=True)[0])
    torch.testing.assert_close(resize(image, (80, 120)),
                               F.interpolate(image[None], (80, 120), mode="bilinear", antialias=False)[0])
    torch.testing.assert_close(resize(image[None], (80, 120), antialias=True),
                               F.interpolate(image[None], (80, 120), mode="bilinear", antialias=True))
    assert resize(image, (40, 60)) is image  # nothing to do


def test_normalize_is_the_models_normalisation_for_one_image_or_a_batch():
    torch.manual_seed(0)
    batch = torch.rand(2, 3, 5, 7)
    model = ZirModel()
    expected = (batch - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)
    assert torch.equal(normalize(batch, model.mean, model.std), expected)
    assert torch.equal(model.normalize(batch), expected)
    assert torch.equal(normalize(batch[1], MEAN, STD), expected[1])


@pytest.mark.parametrize("divisor", [1, 32])
def test_pad_then_unpad_gives_the_images_back(divisor):
    torch.manual_seed(0)
    images = [torch.rand(3, 37, 50), torch.rand(3, 64, 20), torch.rand(3, 1, 1)]
    batch = pad_batch(images, divisor)
    H, W = (64, 50) if divisor == 1 else (64, 64)
    assert batch.shape == (3, 3, H, W)
    for im, back, b in zip(images, unpad(batch, [tuple(im.shape[-2:]) for im in images]), batch):
        assert torch.equal(back, im)
        padding = b.clone()
        padding[:, : im.shape[-2], : im.shape[-1]] = 0
        assert not padding.any()  # zeros outside each image
    assert pad_batch(images, 32, min_size=96).shape[-2:] == (96, 96)  # at least min_size (OverFeat's window)
    masks = [torch.ones(2, 3, 4, dtype=torch.uint8), torch.ones(2, 2, 2, dtype=torch.uint8)]
    assert pad_batch(masks, 1).shape == (2, 2, 3, 4) and pad_batch(masks, 1).dtype == torch.uint8  # any C, dtype


def test_batch_images_resizes_normalises_and_pads():
    torch.manual_seed(0)
    images = [torch.rand(3, 300, 417), torch.rand(3, 64, 64)]
    x, work = batch_images(images, 128, MEAN, STD)
    assert work == [(92, 128), (128, 128)] and x.shape == (2, 3, 128, 128)
    expected = normalize(resize(images[0], (92, 128)), MEAN, STD)
    assert torch.equal(x[0, :, :92], expected) and not x[0, :, 92:].any()  # padding = 0 = the mean colour


def test_letterbox_batch_puts_pixels_where_letterbox_boxes_puts_boxes():
    image = torch.ones(3, 50, 100)
    out = letterbox_batch([image], 100, fill=0.25)
    assert out.shape == (1, 3, 100, 100)
    inside = letterbox_boxes(torch.tensor([[0.0, 0, 100, 50]]), (50, 100), (100, 100))[0].int().tolist()
    assert inside == [0, 25, 100, 75]
    x1, y1, x2, y2 = inside
    assert (out[0, :, y1:y2, x1:x2] == 1).all()
    assert (out[0, :, :y1] == 0.25).all() and (out[0, :, y2:] == 0.25).all()


# --------------------------------------------------------------------------------------------------
# Annotations and results


def test_boxes_round_trip_through_the_working_frame():
    torch.manual_seed(0)
    boxes = torch.rand(20, 4) * 300
    boxes[:, 2:] += boxes[:, :2]
    size, work = (300, 417), working_size((300, 417), 128)
    there = boxes_to_working(boxes, size, work)
    torch.testing.assert_close(there[:, [0, 2]], boxes[:, [0, 2]] * 128 / 417)  # x by the width ratio
    torch.testing.assert_close(there[:, [1, 3]], boxes[:, [1, 3]] * 92 / 300)  # y by the height ratio
    torch.testing.assert_close(boxes_to_input(there, work, size), boxes)


def test_to_input_pixels_clips_to_the_input_image():
    pred = to_input_pixels(torch.tensor([[-5.0, 10, 140, 50]]), torch.tensor([0.5], dtype=torch.float64),
                           torch.tensor([2]), (64, 128), (128, 256))
    assert pred.boxes.tolist() == [[0.0, 20.0, 256.0, 100.0]]
    assert pred.boxes.dtype == pred.scores.dtype == torch.float32 and pred.labels.tolist() == [2]


def test_label_maps_sample_pixel_centres():
    labels = torch.arange(16).view(4, 4)
    # halving takes every second pixel starting at the centre of the first 2 x 2 block's last pixel
    assert labels_to_working(labels, (2, 2)).tolist() == [[5, 7], [13, 15]]
    assert labels_to_working(torch.tensor([[1, 2], [3, 4]]), (4, 4)).tolist() == [
        [1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    assert labels_to_working(labels, (4, 4)).dtype == torch.int64


def test_scores_back_to_the_input():
    torch.manual_seed(0)
    scores = torch.rand(1, 3, 8, 8)
    assert scores_to_input(scores, (8, 8)) is scores
    up = scores_to_input(scores, (16, 12))
    torch.testing.assert_close(up, F.interpolate(scores, (16, 12), mode="bilinear", align_corners=False))


def test_ground_truth_in_the_working_frame():
    target = Target(size=(300, 417), boxes=torch.tensor([[0.0, 0, 417, 300], [10, 10, 10, 50]]),
                    labels=torch.tensor([1, 2]))
    gt = ground_truth(target, working_size(target.size, 128))
    torch.testing.assert_close(gt.boxes, torch.tensor([[0.0, 0, 128, 92]]))  # the degenerate box is gone
    assert gt.labels.tolist() == [1] and gt.index.tolist() == [0] and gt.crowd.shape == (0, 4)
