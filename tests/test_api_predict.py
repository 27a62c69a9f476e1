"""``zir predict`` output files: drawn PNG, JSON, and the label PNGs a user can load back."""

from __future__ import annotations

import json

import numpy as np
import torch

from zir.api import predict_to_folder
from zir.config import RunConfig
from zir.data.image_io import read_label_png, save_png
from zir.engine.predictor import Predictor
from zir.models import build_model


def _photo(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    save_png(rng.integers(0, 255, (48, 72, 3), dtype=np.uint8), folder / "a.png")
    return folder


def test_semantic_prediction_is_written_as_a_class_index_png(tmp_path):
    torch.manual_seed(0)
    model = build_model("unet", 3, 64, {"depth": 2, "width": 8})
    predictor = Predictor(model, ["bg", "cell", "membrane"], RunConfig(model="unet"))
    out = predict_to_folder(predictor, [_photo(tmp_path)], tmp_path / "out")
    expected = predictor.predict(str(tmp_path / "in" / "a.png"))[0].semantic.numpy()
    assert np.array_equal(read_label_png(out / "a_mask.png"), expected)
    assert (out / "a.png").is_file() and "pixels_per_class" in json.loads((out / "a.json").read_text())


def test_instance_masks_are_written_as_an_object_id_png(tmp_path):
    torch.manual_seed(0)
    model = build_model("mask_rcnn", 2, 64, {"pretrained": "none", "fpn_channels": 16, "box_hidden": 32,
                                             "mask_channels": 16, "score_thresh": 0.0})
    predictor = Predictor(model, ["a", "b"], RunConfig(model="mask_rcnn"))
    out = predict_to_folder(predictor, [_photo(tmp_path)], tmp_path / "out")
    pred = predictor.predict(str(tmp_path / "in" / "a.png"))[0]
    ids = read_label_png(out / "a_instances.png")
    assert ids.shape == (48, 72) and len(pred.masks) > 0
    expected = np.zeros((48, 72), np.int64)
    for i in reversed(range(len(pred.masks))):  # the best detection on top
        expected[pred.masks[i].numpy()] = i + 1
    assert np.array_equal(ids, expected)
    assert len(json.loads((out / "a.json").read_text())["boxes"]) == len(pred.masks)
