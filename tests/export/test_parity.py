"""Every registry model's deployment graph, exported to ONNX and run by onnxruntime, against the model's own
``predict`` on the same uint8 images: batches of 1, 2, 4 and 8, two sizes other than the export size, and
an image with nothing found in it. Tolerances of the export issue: boxes within 1 px, scores within 1e-3,
the same detections, class maps equal on at least 99.9 % of pixels."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from zir.errors import ConfigError
from zir.models import MODELS, build_model

ort = pytest.importorskip("onnxruntime", reason="pip install 'zir[export]' (onnxruntime) to test exports")
from zir.export import to_onnx  # noqa: E402
from zir.export.graphs import graph_for  # noqa: E402

# the registry test's tiny settings, one table for both (tests are not a package: load it by path)
_spec = importlib.util.spec_from_file_location("_registry", Path(__file__).parents[1] / "models" / "test_registry.py")
_registry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_registry)
SIZE, TINY = _registry.SIZE, _registry.TINY

# models without a deployment graph, and why (graph_for must say so with a ConfigError)
NO_GRAPH = {"rcnn": "selective search", "fast_rcnn": "selective search", "sliding_window": "not implemented",
            "overfeat": "not implemented", "faster_rcnn": "not implemented", "mask_rcnn": "not implemented",
            "panoptic_fpn": "not implemented"}
# (batch, height, width): every batch size at the export size, then two other sizes
SHAPES = [(1, SIZE, SIZE), (2, SIZE, SIZE), (4, SIZE, SIZE), (8, SIZE, SIZE), (2, 50, 70), (2, 90, 40)]


def _model(name: str, **changes):
    torch.manual_seed(0)
    model = build_model(name, 6 if MODELS[name].task == "panoptic" else 3, SIZE, TINY[name]).eval()
    if changes:
        model.cfg = dataclasses.replace(model.cfg, **changes)
    return model


def _confident(model) -> None:
    """A fresh detector's outputs are all near 0 (nothing above any threshold): biases of its last layer
    drawn in [0, 1] make every cell propose a box with a score, so there are detections to compare."""
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and m.bias is not None][-1]
    with torch.no_grad():
        last.bias.uniform_(0, 1, generator=torch.Generator().manual_seed(0))


def _images(shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Smooth random pictures (blocks of colour, as objects), uint8 ``(B, 3, H, W)``."""
    g = torch.Generator().manual_seed(seed)
    B, H, W = shape
    coarse = torch.rand(B, 3, max(2, H // 8), max(2, W // 8), generator=g)
    return (torch.nn.functional.interpolate(coarse, size=(H, W), mode="nearest") * 255).to(torch.uint8)


def _run(session, images: torch.Tensor) -> list[torch.Tensor]:
    return [torch.from_numpy(a) for a in session.run(None, {"images": images.numpy()})]


def _check(task: str, outputs: list[torch.Tensor], reference: list, thresh: float = 0.0) -> None:
    if task == "classify":
        scores, labels = outputs
        for s, lab, p in zip(scores, labels, reference):
            torch.testing.assert_close(s, p.scores, atol=1e-3, rtol=0)
            assert int(lab) == p.label
    elif task == "segment":
        (semantic,) = outputs
        for m, p in zip(semantic, reference):
            assert m.shape == p.semantic.shape
            assert (m == p.semantic).float().mean() >= 0.999
    else:
        boxes, scores, labels, counts = outputs
        for b, s, lab, n, p in zip(boxes, scores, labels, counts, reference):
            assert int(n) == len(p.boxes), (int(n), len(p.boxes))
            assert not b[n:].any() and not s[n:].any()  # rows past the count are zeros
            for box, score, label in zip(p.boxes, p.scores, p.labels):  # each reference detection is there
                same = (lab[:n] == label) & ((s[:n] - score).abs() <= 1e-3) \
                    & ((b[:n] - box).abs().amax(1) <= 1.0)
                assert same.any(), f"no exported detection matches {box.tolist()} {float(score):.4f} {int(label)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_matches_predict(name, tmp_path):
    model = _model(name)
    if name in NO_GRAPH:
        with pytest.raises(ConfigError, match="export|exported"):
            graph_for(model)
        return
    if hasattr(model.cfg, "score_thresh"):
        _confident(model)
    task = {"instance": "detect", "panoptic": "detect"}.get(model.task, model.task)
    path = to_onnx(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    found = 0
    for k, shape in enumerate(SHAPES):
        images = _images(shape, k)
        outputs = _run(session, images)
        _check(task, outputs, model.predict([im.float() / 255 for im in images]))
        found += int(outputs[3].sum()) if task == "detect" else 1
    assert found, "no detections to compare: lower the test's score_thresh"
    if task == "detect":  # an image with nothing found: nothing passes a threshold of 1
        model = _model(name, score_thresh=1.0)
        session = ort.InferenceSession(str(to_onnx(model, tmp_path / "empty.onnx")))
        for shape in [(1, SIZE, SIZE), (4, 50, 70)]:
            outputs = _run(session, _images(shape, 9))
            assert outputs[3].tolist() == [0] * shape[0] and not outputs[0].any()
            _check(task, outputs, model.predict(list(_images(shape, 9).float() / 255)))
