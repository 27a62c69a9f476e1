"""``zir export --format onnx`` of a trained run, then ``zir predict --backend onnx``: the same answers as the
PyTorch backend; a missing run, a missing sidecar and a graph of another model are refused by name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from zir.cli import main
from zir.errors import ZirError

pytest.importorskip("onnxruntime", reason="pip install 'zir[export]' (onnxruntime) to test exports")
from zir.export.runtime import OnnxPredictor  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    data = root / "shapes"
    assert main(["data", "synth", "--task", "segment", "--n", "16", "--size", "48", "--out", str(data)]) == 0
    assert main(["train", f"data={data}", f"project={root}", "name=run", "model=unet", "image_size=48",
                 "batch_size=8", "epochs=1", "threads=1", "model_args={depth: 2, width: 8}"]) == 0
    run = root / "run"
    assert main(["export", str(run), "--format", "onnx"]) == 0
    return data, run


def test_predict_backend_onnx_writes_what_torch_writes(exported, tmp_path):
    data, run = exported
    images = sorted((data / "images").glob("*.png"))[:3] if (data / "images").is_dir() else None
    images = images or sorted(p for p in data.rglob("*.png") if "mask" not in str(p))[:3]
    for backend in ("torch", "onnx"):
        assert main(["predict", str(run), *map(str, images), "--out", str(tmp_path / backend),
                     "--backend", backend]) == 0
    torch_masks = sorted((tmp_path / "torch").rglob("*_mask.png"))
    assert len(torch_masks) == len(images)
    from zir.data.image_io import read_image
    for a in torch_masks:
        b = tmp_path / "onnx" / a.relative_to(tmp_path / "torch")
        same = (read_image(a) == read_image(b)).float().mean()
        assert same >= 0.999
    meta = json.loads((run / "weights" / "model.onnx.json").read_text())
    assert meta["task"] == "segment" and meta["inputs"]["images"][0] == "uint8" and list(meta["outputs"]) == ["semantic"]


def test_onnx_predictor_refuses_what_it_cannot_run(exported, tmp_path):
    _, run = exported
    with pytest.raises(ZirError, match="no such run folder"):
        OnnxPredictor(tmp_path / "missing")
    with pytest.raises(ZirError, match="not exported yet"):
        shutil.copytree(run / "weights", tmp_path / "r" / "weights", ignore=shutil.ignore_patterns("model.onnx*"))
        OnnxPredictor(tmp_path / "r")
    lone = tmp_path / "lone.onnx"
    shutil.copy(run / "weights" / "model.onnx", lone)
    with pytest.raises(ZirError, match="sidecar .* is missing"):
        OnnxPredictor(lone)
    meta = json.loads((run / "weights" / "model.onnx.json").read_text())
    meta.update(task="classify", outputs={"scores": [], "labels": []})  # a sidecar of another model
    (tmp_path / "lone.onnx.json").write_text(json.dumps(meta))
    with pytest.raises(ZirError, match="another model or task"):
        OnnxPredictor(lone)
    (tmp_path / "lone.onnx.json").write_text("{not json")
    with pytest.raises(ZirError, match="not a zir export sidecar"):
        OnnxPredictor(lone)


def test_onnx_predictor_batches_images_of_one_size(exported):
    _, run = exported
    predictor = OnnxPredictor(run)
    images = [torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8) for _ in range(3)] + \
        [torch.randint(0, 256, (3, 64, 48), dtype=torch.uint8)]
    preds = predictor.predict(images, batch_size=2)
    assert [tuple(p.semantic.shape) for p in preds] == [(40, 56)] * 3 + [(64, 48)]
