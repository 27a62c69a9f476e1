"""Drawn predictions: class colours where the masks are, white outlines around every instance, the image
untouched elsewhere."""

from __future__ import annotations

import torch

from zir.analysis.draw import class_colors, draw_prediction, outlines
from zir.data.contract import DetectionPrediction, PanopticPrediction, SemanticPrediction

CLASSES = ["circle", "square", "sky"]
WHITE = torch.tensor([255, 255, 255], dtype=torch.uint8)


def test_outlines_are_the_inner_border_of_each_mask():
    m = torch.zeros(2, 8, 8, dtype=torch.bool)
    m[0, 1:5, 1:5] = True
    m[1, 1:5, 5:7] = True  # touches the first: the shared edge is outlined on both sides
    out = outlines(m)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1:5, 1:7] = True
    expected[2:4, 2:4] = False
    assert torch.equal(out, expected)
    assert not outlines(torch.zeros(0, 4, 4, dtype=torch.bool)).any()


def test_panoptic_drawing_colours_segments_and_outlines_things():
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    ids = torch.zeros(40, 40, dtype=torch.long)
    ids[:, 20:] = 2  # stuff
    ids[5:15, 5:15] = 1  # a thing
    pred = PanopticPrediction(ids, [{"id": 1, "category_id": 1, "isthing": True, "score": 0.9, "area": 100},
                                    {"id": 2, "category_id": 2, "isthing": False, "score": 1.0, "area": 800}])
    out = draw_prediction(image, pred, CLASSES)
    assert out.shape == image.shape and out.dtype == torch.uint8
    assert torch.equal(out[:, 5, 5], WHITE) and torch.equal(out[:, 14, 10], WHITE)  # the thing's outline
    colours = class_colors(len(CLASSES))
    inside, stuff = out[:, 10, 10].float(), out[:, 30, 30].float()
    torch.testing.assert_close(inside, 0.5 * torch.tensor(colours[1], dtype=torch.float32), atol=1.0, rtol=0)
    torch.testing.assert_close(stuff, 0.5 * torch.tensor(colours[2], dtype=torch.float32), atol=1.0, rtol=0)
    assert not torch.equal(out[:, 30, 20], WHITE)  # stuff is not outlined
    assert not out[:, 30, 2].any()  # unlabelled pixels keep the image
    assert torch.equal(draw_prediction(image, PanopticPrediction(ids * 0, []), CLASSES), image)


def test_instance_masks_are_filled_and_outlined():
    image = torch.zeros(3, 400, 400, dtype=torch.uint8)  # large enough not to be enlarged
    masks = torch.zeros(1, 400, 400, dtype=torch.bool)
    masks[0, 100:200, 100:200] = True
    pred = DetectionPrediction(torch.tensor([[90.0, 90, 210, 210]]), torch.tensor([0.9]), torch.tensor([0]), masks)
    out = draw_prediction(image, pred, CLASSES)
    assert torch.equal(out[:, 100, 150], WHITE) and torch.equal(out[:, 150, 199], WHITE)
    assert out[:, 150, 150].any() and not torch.equal(out[:, 150, 150], WHITE)
    assert not out[:, 300, 300].any()


def test_semantic_drawing_leaves_background_class_alone():
    image = torch.full((3, 10, 10), 100, dtype=torch.uint8)
    sem = torch.zeros(10, 10, dtype=torch.long)
    sem[:5] = 1
    out = draw_prediction(image, SemanticPrediction(sem), CLASSES)
    assert torch.equal(out[:, 8], image[:, 8]) and not torch.equal(out[:, 2], image[:, 2])
