"""Mosaic: four samples tiled 2x2, boxes scaled and shifted into their quadrant."""

from __future__ import annotations

import torch
from torchvision import tv_tensors

from zir.augment.mosaic import Mosaic, tile
from zir.config import load_config
from zir.engine.data import build_datasets


def _sample(h: int, w: int, box: list[float], label: int) -> dict:
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    x1, y1, x2, y2 = map(int, box)
    image[:, y1:y2, x1:x2] = 255
    return {"image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(torch.tensor([box]), format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([label]), "iscrowd": torch.tensor([False]), "image_id": label}


def test_tile_places_each_sample_in_its_quadrant():
    samples = [_sample(100, 100, [10, 20, 50, 60], 0), _sample(100, 200, [100, 0, 200, 50], 1),
               _sample(50, 50, [0, 0, 50, 50], 2), _sample(100, 100, [0, 0, 100, 100], 3)]
    out = tile(samples, 100)
    assert out["image"].shape == (3, 100, 100) and out["labels"].tolist() == [0, 1, 2, 3]
    boxes = out["boxes"].as_subclass(torch.Tensor)
    # top-left: scale 0.5; top-right: 200-wide image scaled 0.25, shifted right by 50
    torch.testing.assert_close(boxes[0], torch.tensor([5.0, 10, 25, 30]))
    torch.testing.assert_close(boxes[1], torch.tensor([75.0, 0, 100, 12.5]))
    torch.testing.assert_close(boxes[2], torch.tensor([0.0, 50, 50, 100]))  # 50 px image fills its quadrant
    torch.testing.assert_close(boxes[3], torch.tensor([50.0, 50, 100, 100]))
    # the pixels follow the boxes: the first white square lands where its box says
    assert out["image"][:, 12:28, 7:23].float().mean() > 250
    assert out["image"][:, 30:45, 30:45].float().mean() < 5


def test_probability_zero_is_identity_and_one_always_tiles():
    ds = [_sample(64, 64, [4, 4, 20, 20], i % 2) for i in range(6)]
    assert Mosaic(ds, p=0.0, size=64)[2] is ds[2]
    torch.manual_seed(0)
    out = Mosaic(ds, p=1.0, size=64)[2]
    assert out["image"].shape == (3, 64, 64) and len(out["boxes"]) == 4


def test_training_data_gets_mosaic_from_the_config():
    cfg = load_config(overrides=["data=synth:detect", "synth_n=8", "image_size=64", "mosaic=1.0"])
    bundle = build_datasets(cfg.data)
    assert isinstance(bundle.train, Mosaic) and not isinstance(bundle.val, Mosaic)
    torch.manual_seed(1)
    sample = bundle.train[0]
    assert sample["image"].shape == (3, 64, 64)
    assert len(sample["boxes"]) == len(sample["labels"]) >= 4


def test_mosaic_switches_off_for_the_last_epochs():
    ds = [_sample(64, 64, [8, 8, 40, 40], k) for k in range(4)]
    mosaic = Mosaic(ds, p=1.0, size=64, off_epochs=2)
    mosaic.set_epoch(7, 10)
    assert len(mosaic[0]["boxes"]) == 4  # epoch 8 of 10: still tiled
    mosaic.set_epoch(8, 10)
    assert mosaic[0] is ds[0]  # the last two epochs see the images as they are
    mosaic.set_epoch(0, 10)
    assert len(mosaic[0]["boxes"]) == 4  # it follows the epoch number (a resumed run starts anywhere)


def test_the_engine_tells_the_training_data_each_epoch(tmp_path, monkeypatch):
    from zir.engine.trainer import train

    seen: list[tuple[int, int, bool]] = []
    original = Mosaic.set_epoch

    def recording(self: Mosaic, epoch: int, epochs: int) -> None:
        original(self, epoch, epochs)
        seen.append((epoch, epochs, self.on))

    monkeypatch.setattr(Mosaic, "set_epoch", recording)
    cfg = load_config(overrides=["data=synth:detect", "synth_n=8", "image_size=64", "mosaic=1.0",
                                 "mosaic_off_epochs=1", "epochs=2", "batch_size=4", "model=yolo_v1",
                                 "model_args.backbone=convnet", "model_args.width=8", "model_args.S=4",
                                 "model_args.hidden=16", "model_args.neck=8", f"project={tmp_path}", "name=m"])
    train(cfg, progress=False)
    assert seen == [(0, 2, True), (1, 2, False)]
