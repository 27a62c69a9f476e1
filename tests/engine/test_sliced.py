"""Sliced prediction end to end: tiles cut, predicted, shifted back and merged into one detection per object."""

from __future__ import annotations

import pytest
import torch

from zir.config import RunConfig
from zir.data.contract import DetectionPrediction
from zir.engine.predictor import Predictor
from zir.engine.sliced import Slicing, predict_sliced
from zir.errors import ConfigError
from zir.models import build_model


class BrightBlobDetector(Predictor):
    """A 'detector' with a known answer: the bright pixels of each image are one object (class 0), its
    score the fraction of the image's side it spans (so the whole-image pass and cut pieces differ)."""

    def __init__(self, task: str = "instance") -> None:
        self.task, self.classes, self.calls = task, ["blob"], []

    def predict(self, images, batch_size: int = 16):
        items = [images] if isinstance(images, torch.Tensor) and images.ndim == 3 else list(images)
        self.calls.append([tuple(x.shape[-2:]) for x in items])
        out = []
        for x in items:
            mask = x.float().mean(0) > 0.5  # (h, w)
            if not mask.any():
                out.append(DetectionPrediction(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                                               torch.zeros(0, *mask.shape, dtype=torch.bool)))
                continue
            ys, xs = torch.where(mask)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            score = torch.tensor([0.5 + 0.4 * float(mask.sum()) / mask.numel()])
            out.append(DetectionPrediction(box, score, torch.zeros(1, dtype=torch.int64), mask[None]))
        return out


def _image_with_square(x1: int, y1: int, side: int, hw=(300, 500)) -> torch.Tensor:
    image = torch.zeros(3, *hw)
    image[:, y1:y1 + side, x1:x1 + side] = 1.0
    return image


@pytest.mark.parametrize("full", [True, False])
def test_an_object_cut_by_tiles_comes_back_as_one_box_and_one_mask(full):
    # 128 px tiles, overlap 0.25 (32 px, step 96): x starts 0, 96, 192, 288, 372; the square at x 180..196
    # lies in tiles 96.. and 192.. (cut at 192), y 90..106 in rows 0.. and 96.. (cut at 96).
    image = _image_with_square(180, 90, 16)
    detector = BrightBlobDetector()
    pred = predict_sliced(detector, image, Slicing(size=128, overlap=0.25, full=full, conf=0.0))
    assert pred.boxes.tolist() == [[180.0, 90.0, 196.0, 106.0]]
    assert pred.masks.shape == (1, 300, 500) and pred.masks[0].equal(image[0] > 0.5)
    tiles = sum(len(c) for c in detector.calls)
    assert tiles == 3 * 5 + full  # rows 0, 96, 172 x five columns, and the whole image once


def test_nms_merge_keeps_the_best_piece_and_empty_images_give_nothing():
    image = _image_with_square(180, 90, 16)
    pred = predict_sliced(BrightBlobDetector(), image, Slicing(size=128, overlap=0.25, full=False, merge="nms",
                                                              conf=0.0))
    assert len(pred.boxes) == 1  # IoS of every piece with the largest is 1: one box left
    empty = predict_sliced(BrightBlobDetector(), torch.zeros(3, 300, 500), Slicing(size=128))
    assert empty.boxes.shape == (0, 4) and empty.masks.shape == (0, 300, 500)


def test_predictor_predict_sliced_on_a_real_detector_and_refusals():
    torch.manual_seed(0)
    model = build_model("yolo_v1", 3, 64, {"backbone": "convnet", "width": 8, "S": 4, "hidden": 32, "neck": 32})
    with torch.no_grad():  # a fresh model finds nothing: biases in [0, 1] make it report boxes
        model.head.fc2.bias.uniform_(0, 1, generator=torch.Generator().manual_seed(0))
    predictor = Predictor(model, ["a", "b", "c"], RunConfig(model="yolo_v1"))
    image = torch.randint(0, 256, (3, 150, 200), dtype=torch.uint8)
    [pred] = predictor.predict_sliced(image, size=64, overlap=0.2, conf=0.0)
    assert len(pred.boxes) > 0 and (pred.boxes[:, 2] <= 200).all() and (pred.boxes[:, 3] <= 150).all()
    assert (pred.scores[:-1] >= pred.scores[1:]).all()
    with pytest.raises(ConfigError, match="overlap"):
        predictor.predict_sliced(image, size=64, overlap=1.5)
    unet = Predictor(build_model("unet", 3, 64, {"depth": 2, "width": 8}), ["a", "b", "c"], RunConfig(model="unet"))
    with pytest.raises(ConfigError, match="segment model"):
        unet.predict_sliced(image, size=64)
