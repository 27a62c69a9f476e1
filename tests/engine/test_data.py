"""Loading for training applies the data checks: a bad sample names its file, or is skipped and reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from zir.config import load_config
from zir.data.synth import SynthConfig, write_synth
from zir.engine.data import build_datasets, build_loader, collate
from zir.engine.trainer import train
from zir.errors import DataError


@pytest.fixture
def shapes(tmp_path) -> Path:
    out = tmp_path / "shapes"
    write_synth(SynthConfig(task="classify", n=40, seed=1, image_size=32), out, progress=False)
    return out


def test_truncated_image_raises_naming_the_file(shapes, tmp_path):
    bad = sorted((shapes / "star").glob("*.png"))[0]
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated PNG (header intact)
    cfg = load_config(overrides=[f"data={shapes}", "image_size=32", "val_split=0.5", "batch_size=64"])
    with pytest.raises(DataError, match=bad.name):
        bundle = build_datasets(cfg.data)
        for ds in (bundle.train, bundle.val):
            for _ in build_loader(ds, cfg.data, train=False, seed=0):
                pass


def test_skip_bad_drops_and_reports_once(shapes, tmp_path, capsys):
    bad = sorted((shapes / "circle").glob("*.png"))[0]
    bad.write_bytes(b"not an image at all")
    cfg = load_config(overrides=[f"data={shapes}", "image_size=32", "epochs=1", "batch_size=8", "threads=1",
                                 "model_args={width: 4, depth: 1}", f"project={tmp_path}", "skip_bad=true"])
    train(cfg, progress=True)
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "skipped 1 bad samples" in out
    assert len([line for line in out.splitlines() if bad.name in line]) == 1


def test_missing_image_in_annotations_stops_before_training(tmp_path):
    out = tmp_path / "det"
    write_synth(SynthConfig(task="detect", n=4, seed=0, image_size=64), out, progress=False)
    (out / "images" / "00002.png").unlink()
    cfg = load_config(overrides=[f"data={out}"])
    with pytest.raises(DataError, match="00002.png") as e:
        build_datasets(cfg.data)
    assert "zir data check" in str(e.value)


def test_collate_pads_images_of_different_sizes():
    import torch
    from torchvision import tv_tensors

    a = {"image": tv_tensors.Image(torch.full((3, 4, 6), 255, dtype=torch.uint8)), "label": 0}
    b = {"image": tv_tensors.Image(torch.full((3, 5, 3), 255, dtype=torch.uint8)), "label": 1}
    batch = collate([a, b, {"bad": "x.jpg: broken"}])
    assert batch.images.shape == (2, 3, 5, 6) and batch.images.dtype == torch.float32
    assert batch.targets[1].size == (5, 3) and batch.targets[1].label == 1 and batch.skipped == ["x.jpg: broken"]
    assert len(batch.targets[1].boxes) == 0 and batch.targets[1].masks is None  # classification: no boxes
    assert batch.images[1, :, :, 3:].abs().sum() == 0 and batch.images[0].max() == 1.0


def test_classify_augmentation_crops_from_the_image_as_read():
    """The random resized crop of a classification preset sees the image as it was read, not a copy
    squashed to image_size first: a 16 px bar in a 64 x 256 image stays about 16 px wide at 64 px
    (a crop at most 85 px wide, by the crop's aspect limit 4/3), where the squashed copy's bar is 4 px
    and at most doubled by the crop (8 px)."""
    import torch
    from torchvision import tv_tensors

    from zir.engine.data import train_transform

    image = torch.zeros(3, 64, 256, dtype=torch.uint8)
    image[:, :, 120:136] = 255
    transform = train_transform("classify", 64, "standard")
    widths = []
    for seed in range(20):
        torch.manual_seed(seed)
        out = transform({"image": tv_tensors.Image(image), "label": 0})["image"]
        assert out.shape[-2:] == (64, 64)
        widths.append(int((out[0, 32] > 128).sum()))
    assert max(widths) >= 11, widths
