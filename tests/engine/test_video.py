"""``zir predict`` at scale: videos (annotated MP4 + one JSON line per frame, torch and onnx backends),
globs, batches, sliced prediction from the CLI, and the refusals (corrupt or empty video, a glob matching
nothing, an output over an input)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zir.api import predict_to_folder
from zir.cli import main
from zir.config import RunConfig
from zir.data.image_io import save_png
from zir.engine.predictor import Predictor
from zir.errors import DataError
from zir.models import build_model

cv2 = pytest.importorskip("cv2", reason="pip install 'zir[video]' (opencv-contrib-python-headless)")

CLASSES = ["circle", "square", "triangle"]


class CountingPredictor(Predictor):
    """The real predictor, recording how many images each forward pass got."""

    calls: list[int]

    def predict(self, images, batch_size: int = 16):
        self.calls.append(1 if isinstance(images, torch.Tensor) and images.ndim == 3 else len(images))
        return super().predict(images, batch_size)


def _detector() -> CountingPredictor:
    torch.manual_seed(0)
    model = build_model("yolo_v1", 3, 64, {"backbone": "convnet", "width": 8, "S": 4, "hidden": 32, "neck": 32})
    with torch.no_grad():  # a fresh model finds nothing: biases in [0, 1] make it report boxes
        model.head.fc2.bias.uniform_(0, 1, generator=torch.Generator().manual_seed(0))
    predictor = CountingPredictor(model, CLASSES, RunConfig(model="yolo_v1"))
    predictor.calls = []
    return predictor


def _video(path, n: int = 7, size=(48, 64), fps: float = 10.0):
    """An MP4 of ``n`` noise frames; returns the frames as OpenCV decodes them back (RGB (3, H, W) uint8)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size[1], size[0]))
    rng = np.random.default_rng(0)
    for _ in range(n):
        writer.write(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    writer.release()
    cap, decoded = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = cap.read()
        if not ok:
            return decoded
        decoded.append(torch.from_numpy(np.ascontiguousarray(frame[..., ::-1])).permute(2, 0, 1))


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_video_gives_an_annotated_video_and_one_json_line_per_frame(tmp_path):
    frames = _video(tmp_path / "clip.mp4")
    predictor = _detector()
    out = predict_to_folder(predictor, [tmp_path / "clip.mp4"], tmp_path / "out", batch_size=3, progress=False)
    lines = _lines(out / "clip.jsonl")
    assert [r["frame"] for r in lines] == list(range(7)) and lines[3]["time"] == pytest.approx(0.3)
    expected = predictor.predict(frames)
    for record, pred in zip(lines, expected):
        assert np.allclose(record["boxes"], pred.boxes.tolist(), atol=1e-4) and record["classes"][0] in CLASSES
    assert predictor.calls[:3] == [3, 3, 1]  # frames went in batches of 3
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 7 and cap.get(cv2.CAP_PROP_FPS) == 10
    ok, drawn = cap.read()  # drawing enlarges small frames (labels stay readable): 384 / 64 -> x6
    assert ok and drawn.shape == (48 * 6, 64 * 6, 3)


def test_video_with_the_onnx_backend_matches_torch(tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install 'zir[export]'")
    from zir.export import sidecar, to_onnx
    from zir.export.runtime import OnnxPredictor

    _video(tmp_path / "clip.mp4", n=4)
    predictor = _detector()
    to_onnx(predictor.model, tmp_path / "m.onnx")
    (tmp_path / "m.onnx.json").write_text(json.dumps(sidecar(predictor, "onnx")))
    predict_to_folder(predictor, [tmp_path / "clip.mp4"], tmp_path / "torch", progress=False)
    assert main(["predict", str(tmp_path / "m.onnx"), str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "onnx"),
                 "--backend", "onnx", "--batch-size", "2"]) == 0
    for a, b in zip(_lines(tmp_path / "torch" / "clip.jsonl"), _lines(tmp_path / "onnx" / "clip.jsonl"), strict=True):
        assert a["labels"] == b["labels"] and np.allclose(a["boxes"], b["boxes"], atol=1)
        assert np.allclose(a["scores"], b["scores"], atol=1e-3)
    assert isinstance(OnnxPredictor(tmp_path / "m.onnx").predict_sliced(torch.zeros(3, 80, 100, dtype=torch.uint8),
                                                                        size=48)[0].boxes, torch.Tensor)


def test_bad_videos_are_named_and_skippable(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(5000))  # not a video
    writer = cv2.VideoWriter(str(folder / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    writer.release()  # a container that opens, with no frames
    _video(folder / "good.mp4", n=2)
    predictor = _detector()
    for name, why in (("noise.mp4", "cannot open it as a video"), ("empty.avi", "has no frame that decodes")):
        with pytest.raises(DataError, match=f"{name}: .*{why}.*ffmpeg.*--skip-bad"):
            predict_to_folder(predictor, [folder / name], tmp_path / name, progress=False)
    import zir.api

    monkeypatch.setattr(zir.api, "load", lambda _: predictor)
    code = main(["predict", "r", str(folder / "noise.mp4"), "--out", str(tmp_path / "x")])
    assert code == 2 and "noise.mp4: OpenCV cannot open it" in capsys.readouterr().err
    out = predict_to_folder(predictor, [folder], tmp_path / "all", skip_bad=True, progress=False)
    assert len(_lines(out / "good.jsonl")) == 2 and not list(out.glob("noise*")) + list(out.glob("empty*"))
    assert "skipped 2 unreadable file(s) of 3" in capsys.readouterr().err


def test_globs_folders_batches_and_no_output_over_an_input(tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png", "sub/d.png", "sub/e.bmp"):
        save_png(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8), folder / name)
    predictor = _detector()
    out = predict_to_folder(predictor, [str(folder / "*.png")], tmp_path / "glob", batch_size=2, progress=False)
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json", "b.json", "c.json"]
    assert predictor.calls == [2, 1]
    out = predict_to_folder(predictor, [str(folder / "**" / "*.png")], tmp_path / "rec", progress=False)
    assert (out / "sub" / "d.json").is_file() and not (out / "sub" / "e.json").exists()
    with pytest.raises(DataError, match=r"\*.jpg: the pattern matches no image or video file.*quote it"):
        predict_to_folder(predictor, [str(folder / "*.jpg")], tmp_path / "none", progress=False)
    with pytest.raises(DataError, match="over this input"):  # the input's folder as --out, twice asked
        predict_to_folder(predictor, [folder / "a.png"], folder, exist_ok=True, progress=False)
    code = main(["predict", "unused", str(folder / "nothing-*.jpg"), "--out", str(tmp_path / "x")])
    assert code == 2 and "matches no image" in capsys.readouterr().err


def test_sliced_prediction_from_the_cli_and_its_refusals(tmp_path, capsys, monkeypatch):
    image = tmp_path / "big.png"
    save_png(np.random.default_rng(1).integers(0, 255, (150, 230, 3), dtype=np.uint8), image)
    predictor = _detector()
    out = predict_to_folder(predictor, [image], tmp_path / "sliced", slicing=__import__(
        "zir.engine.sliced", fromlist=["Slicing"]).Slicing(size=64, conf=0.0), progress=False)
    record = json.loads((out / "big.json").read_text())
    boxes = np.array(record["boxes"])
    assert len(boxes) > 0 and boxes[:, 2].max() <= 230 and boxes[:, 3].max() <= 150
    assert len(predictor.calls) == 1 + 1  # one batch of 15 tiles (3 rows x 5 columns at size 64) + the whole
    import zir.api

    monkeypatch.setattr(zir.api, "load", lambda _: predictor)
    assert main(["predict", "r", str(image), "--out", str(tmp_path / "cli"), "--slice", "64", "--overlap", "0.25",
                 "--merge", "nms", "--tiles-only", "--conf", "0.2"]) == 0
    scores = json.loads((tmp_path / "cli" / "big.json").read_text())["scores"]
    assert min(scores, default=1) >= 0.2
    assert main(["predict", "r", str(image), "--out", str(tmp_path / "bad"), "--slice", "64", "--overlap", "1"]) == 2
    assert "overlap" in capsys.readouterr().err
    unet = Predictor(build_model("unet", 3, 64, {"depth": 2, "width": 8}), CLASSES, RunConfig(model="unet"))
    monkeypatch.setattr(zir.api, "load", lambda _: unet)
    assert main(["predict", "r", str(image), "--out", str(tmp_path / "seg"), "--slice", "64"]) == 2
    assert "segment model: predict without --slice" in capsys.readouterr().err


@pytest.mark.parametrize("name,args,n_classes,field", [
    ("convnet", {"width": 8, "depth": 2}, 3, "label"),
    ("unet", {"depth": 2, "width": 8}, 3, "pixels_per_class"),
    ("mask_rcnn", {"pretrained": "none", "fpn_channels": 16, "box_hidden": 32, "mask_channels": 16}, 3, "boxes"),
    ("panoptic_fpn", {"pretrained": "none", "fpn_channels": 16, "box_hidden": 32, "mask_channels": 16,
                      "semantic_channels": 16, "thing_classes": (True, True, False)}, 3, "segments"),
])
def test_every_task_draws_video_frames(tmp_path, name, args, n_classes, field):
    torch.manual_seed(0)
    _video(tmp_path / "clip.mp4", n=2)
    predictor = Predictor(build_model(name, n_classes, 64, args), CLASSES, RunConfig(model=name))
    out = predict_to_folder(predictor, [tmp_path / "clip.mp4"], tmp_path / "out", progress=False)
    lines = _lines(out / "clip.jsonl")
    assert len(lines) == 2 and field in lines[1]
    assert cv2.VideoCapture(str(out / "clip.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 2
