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

from zir.models import MODELS, build_model

ort = pytest.importorskip("onnxruntime", reason="pip install 'zir[export]' (onnxruntime) to test exports")
from zir.export import to_onnx  # noqa: E402
from zir.export.graphs import graph_for  # noqa: E402

# the registry test's tiny settings, one table for both (tests are not a package: load it by path)
_spec = importlib.util.spec_from_file_location("_registry", Path(__file__).parents[1] / "models" / "test_registry.py")
_registry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_registry)
SIZE, TINY = _registry.SIZE, _registry.TINY

# graphs whose ONNX export another model's covers: the same TwoStageGraph with fewer heads. Panoptic FPN's
# export runs every stage of it (RPN, RoI heads, mask pasting, semantic map, label mapping); these two are
# held to their own predict through the graph's PyTorch module, which is what gets exported (an export
# costs a minute of sympy on 2 cores, the suite's budget)
COVERED_BY = {"faster_rcnn": "panoptic_fpn", "mask_rcnn": "panoptic_fpn"}
# smaller settings than the registry test's where the export's cost allows: a shallower backbone, one scale
# (fewer symbolic sizes for torch.export to reason about: overfeat's export costs 165 CPU
# seconds at [0.5], 30 at [1]; the scaled sizes' rounding is exported and tested through sliding_window's pyramid)
EXPORT = {"panoptic_fpn": {"backbone": "resnet10t"}, "overfeat": {"scales": [1.0]},
          # R-CNN's NMS runs on selective search's integer boxes, whose IoUs often land exactly on 0.3 (3/10
          # of an integer area); onnxruntime and torchvision round such a tie differently, so either may keep
          # the box. A threshold no IoU of small integer boxes equals keeps the comparison about the graph.
          "rcnn": {"nms_iou": 0.3001}}
# (batch, height, width): every batch size at the export size, then two other sizes
SHAPES = [(1, SIZE, SIZE), (2, SIZE, SIZE), (4, SIZE, SIZE), (8, SIZE, SIZE), (2, 50, 70), (2, 90, 40)]


def _model(name: str, **changes):
    torch.manual_seed(0)
    model = build_model(name, 6 if MODELS[name].task == "panoptic" else 3, SIZE,
                        {**TINY[name], **EXPORT.get(name, {})}).eval()
    if changes:
        model.cfg = dataclasses.replace(model.cfg, **changes)
    if "semantic" in getattr(model, "heads", {}):  # every instance into the panoptic merge
        model.heads["semantic"].merge = dataclasses.replace(model.heads["semantic"].merge, instance_score_thresh=0.0)
    return model


def _confident(model) -> None:
    """A fresh detector's outputs are all near 0 (nothing above any threshold): biases of its last layer
    drawn in [0, 1] make every cell propose a box with a score, so there are detections to compare. The
    class-score biases that :func:`_nothing_found` replaces get non-zero values too, so that the export
    keeps them as initializers (it folds zero biases away)."""
    if type(model).__name__ == "RCNN":  # zero SVMs at first: every region would score alike (ties in NMS)
        with torch.no_grad():
            model.svm_weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
            model.box_weight.normal_(0, 0.01, generator=torch.Generator().manual_seed(1))
    biased = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and m.bias is not None]
    with torch.no_grad():
        for last in biased[-1:]:  # none in R-CNN's CNN (its BatchNorms hold the shifts)
            last.bias.uniform_(0, 1, generator=torch.Generator().manual_seed(0))
        for key in _nothing_found(model):
            p = model.get_parameter(key)
            p.copy_(p + torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)


def _nothing_found(model) -> dict[str, torch.Tensor]:
    """Class-score biases under which the model finds nothing in any image: background certain, or every
    object score 0; by parameter name."""
    kind = type(model).__name__
    if kind in ("FasterRCNN", "FastRCNN"):
        names, value = ["roi_heads.predictor.cls_score.bias"], "background"
    elif kind == "RCNN":  # every SVM margin -50
        names, value = ["svm_bias"], "none"
    elif kind in ("SlidingWindow", "OverFeat"):
        names, value = ["classifier.cls.bias"], "background"
    elif kind == "AnchorFree":
        names, value = [f"head.cls.{i}.{len(c) - 1}.bias" for i, c in enumerate(model.head.cls)], "none"
    elif kind == "YoloV1":  # its head's last layer: confidences and class scores clamped to 0
        names = [n + ".bias" for n, m in model.head.named_modules(prefix="head")
                 if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and m.bias is not None][-1:]
        value = "none"
    else:
        return {}
    out = {}
    for key in names:
        p = model.get_parameter(key)
        v = torch.full_like(p, -50.0)
        if value == "background":
            v[0] = 50.0
        out[key] = v
    return out


def _without_detections(model, path: Path):
    """The same ONNX graph with :func:`_nothing_found`'s biases (no new export): its session, and a copy of
    the model changed the same way."""
    import copy

    import onnx
    from onnx import numpy_helper

    model = copy.deepcopy(model)

    proto = onnx.load(str(path))
    initializers = {i.name: i for i in proto.graph.initializer}
    changes = _nothing_found(model)
    for key, value in changes.items():
        init = initializers.get(f"model.{key}")
        assert init is not None, f"model.{key} is not an initializer of the exported graph"
        init.CopyFrom(numpy_helper.from_array(value.numpy(), init.name))
        with torch.no_grad():
            model.get_parameter(key).copy_(value)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]), model


def _images(shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Smooth random pictures (blocks of colour, as objects), uint8 ``(B, 3, H, W)``."""
    g = torch.Generator().manual_seed(seed)
    B, H, W = shape
    coarse = torch.rand(B, 3, max(2, H // 8), max(2, W // 8), generator=g)
    return (torch.nn.functional.interpolate(coarse, size=(H, W), mode="nearest") * 255).to(torch.uint8)


def _run(session, images: torch.Tensor, model=None) -> list[torch.Tensor]:
    """The session's outputs on uint8 ``images``; a graph with a ``proposals`` input (R-CNN, Fast R-CNN) gets
    ``model``'s selective search of each image, as ``OnnxPredictor`` feeds it."""
    from zir.export.selective import proposals_input

    feeds = {"images": images.numpy()}
    if len(session.get_inputs()) > 1:
        feeds["proposals"] = proposals_input(model.search, images)
    return [torch.from_numpy(a) for a in session.run(None, feeds)]


def _reference(model, images: torch.Tensor) -> tuple[list, list | None]:
    """``model.predict`` on uint8 ``images``; for Panoptic FPN also its instances before the merge (the
    same detector with its mask head only): ``(detections, panoptic or None)``."""
    images = [im.float() / 255 for im in images]
    if "semantic" not in getattr(model, "heads", {}):
        return model.predict(images), None
    heads = model.heads
    model.heads = torch.nn.ModuleDict({"mask": heads["mask"]})
    try:
        instances = model.predict(images)
    finally:
        model.heads = heads
    return instances, model.predict(images)


def _check(model, task: str, outputs: list[torch.Tensor], images: torch.Tensor) -> None:
    reference, panoptic = _reference(model, images)
    if task == "classify":
        scores, labels = outputs
        for s, lab, p in zip(scores, labels, reference):
            torch.testing.assert_close(s, p.scores, atol=1e-3, rtol=0)
            assert int(lab) == p.label
        return
    if task == "segment":
        (semantic,) = outputs
        for m, p in zip(semantic, reference):
            assert m.shape == p.semantic.shape
            assert (m == p.semantic).float().mean() >= 0.999
        return
    boxes, scores, labels, counts = outputs[:4]
    masks = outputs[4] if len(outputs) > 4 else None  # (D, H, W), image by image
    start = 0
    for b, s, lab, n, p in zip(boxes, scores, labels, counts, reference):
        n = int(n)
        assert n == len(p.boxes), (n, len(p.boxes))
        assert not b[n:].any() and not s[n:].any()  # rows past the count are zeros
        for i, (box, score, label) in enumerate(zip(p.boxes, p.scores, p.labels)):  # each reference detection is there
            same = (lab[:n] == label) & ((s[:n] - score).abs() <= 1e-3) & ((b[:n] - box).abs().amax(1) <= 1.0)
            assert same.any(), f"no exported detection matches {box.tolist()} {float(score):.4f} {int(label)}"
            if masks is not None:  # its mask, pasted into the input's pixels
                j = start + int(same.nonzero()[0])
                assert (masks[j].bool() == p.masks[i]).float().mean() >= 0.999
        start += n
    if masks is not None:
        assert masks.shape == (start, *images.shape[-2:])
    if panoptic is not None:  # the merge on the graph's outputs, against predict's panoptic segments
        from zir.export.two_stage import merge_outputs, split_instances

        head = model.heads["semantic"]
        for inst, sem, p in zip(split_instances(*outputs[:5]), outputs[5], panoptic):
            got = merge_outputs(inst, sem, head.stuff_ids, head.merge)
            assert (got.ids == p.ids).float().mean() >= 0.999
            assert [(g["category_id"], g["isthing"]) for g in got.segments] == \
                [(g["category_id"], g["isthing"]) for g in p.segments]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each model exported to ONNX once for the whole module (an export is the slow part): name ->
    ``(model, path)``."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            model = _model(name)
            if MODELS[name].task not in ("classify", "segment"):
                _confident(model)
            cache[name] = (model, to_onnx(model, tmp_path_factory.mktemp(name) / "m.onnx"))
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_matches_predict(name, exported):
    """Every registry model has a graph (R-CNN and Fast R-CNN on selective search's proposals, a second
    input that ``_run`` makes as ``OnnxPredictor`` does)."""
    task = {"instance": "detect", "panoptic": "detect"}.get(MODELS[name].task, MODELS[name].task)
    if name in COVERED_BY:  # the graph that is exported, run by PyTorch
        model = _model(name)
        _confident(model)
        graph = graph_for(model)

        def run(images):
            with torch.no_grad():
                return list(graph(images))
    else:
        model, path = exported(name)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(images):
            return _run(session, images, model)
    found = 0
    for k, shape in enumerate(SHAPES):
        images = _images(shape, k)
        outputs = run(images)
        _check(model, task, outputs, images)
        found += int(outputs[3].sum()) if task == "detect" else 1
    assert found, "no detections to compare: lower the test's score_thresh"
    if task == "detect":  # images with nothing found: the same graph with class biases that find nothing
        if name in COVERED_BY:
            with torch.no_grad():
                for key, value in _nothing_found(model).items():
                    model.get_parameter(key).copy_(value)
        else:
            session, model = _without_detections(model, path)
        for shape in [(1, SIZE, SIZE), (4, 50, 70)]:
            images = _images(shape, 9)
            outputs = run(images)
            assert outputs[3].tolist() == [0] * shape[0] and not outputs[0].any()
            _check(model, task, outputs, images)


@pytest.mark.slow
def test_anchor_free_box_voting_and_refine_export(tmp_path):
    """``box_voting`` and ``refine`` with ``refine_score``, in one graph (one export: the suite's budget): the
    ONNX graph's voted boxes (``weighted_merge`` in ``predict``), then its RoIAlign + MLP's moved and rescored
    boxes, sorted again, are ``predict``'s, batch by batch; each of the two settings changes detections
    (which boxes ``predict`` refines: the unit tests). The backbone is cut at stride 16 and the neck makes the
    stride-32 level (``extra_levels``); the generic test above has the whole backbone."""
    import copy

    torch.manual_seed(0)
    model = build_model("anchor_free", 3, SIZE, {**TINY["anchor_free"], "refine": 3, "refine_score": 0.5,
                                                 "backbone_levels": (2, 3), "extra_levels": 1}).eval()
    model.cfg = dataclasses.replace(model.cfg, nms_iou=0.5, box_voting=3.0)
    refiner, model.refiner = model.refiner, None  # _confident biases the last layer: the head's, not the refiner's
    _confident(model)
    model.refiner = refiner
    with torch.no_grad():  # deltas and IoUs that depend on the crop, so the graph's RoIAlign must match predict's
        refiner.mlp[-1].weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(to_onnx(model, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    unrefined = copy.deepcopy(model)
    unrefined.refiner = None
    plain = copy.deepcopy(unrefined)
    plain.cfg = dataclasses.replace(plain.cfg, box_voting=0.0)
    voted = moved = rescored = 0
    for k, shape in enumerate([(1, SIZE, SIZE), (4, SIZE, SIZE), (2, 50, 70)]):
        images = _images(shape, k)
        _check(model, "detect", _run(session, images), images)
        floats = [im.float() / 255 for im in images]
        for r, u, n in zip(model.predict(floats), unrefined.predict(floats), plain.predict(floats)):
            voted += int((u.boxes - n.boxes).abs().amax(1).gt(0.1).sum())
            moved += int(torch.cdist(r.boxes, u.boxes).amin(1).gt(0.1).sum())  # boxes no unrefined one matches
            rescored += int(not torch.allclose(r.scores, u.scores))
    assert voted, "box voting moved no box: the test's detections do not overlap"
    assert moved and rescored, "the refiner changed no detection"


@pytest.mark.slow
def test_onnx_predictor_merges_panoptic(exported):
    """``OnnxPredictor`` on Panoptic FPN's graph (the module's export, a sidecar written beside it): the
    merge after the graph gives ``predict``'s panoptic segments."""
    import json
    from types import SimpleNamespace

    from zir.export import sidecar
    from zir.export.runtime import OnnxPredictor

    model, path = exported("panoptic_fpn")
    predictor = SimpleNamespace(model=model, config=SimpleNamespace(model="panoptic_fpn"), task="panoptic",
                                classes=[f"c{i}" for i in range(6)])
    Path(f"{path}.json").write_text(json.dumps(sidecar(predictor, "onnx")))
    images = list(_images((3, 50, 70), 4))
    got = OnnxPredictor(path).predict(images)
    for g, p in zip(got, _reference(model, torch.stack(images))[1]):
        assert (g.ids == p.ids).float().mean() >= 0.999
        assert [s["category_id"] for s in g.segments] == [s["category_id"] for s in p.segments]
        assert any(s["isthing"] for s in g.segments)  # instances went through the merge, not only stuff


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rcnn", "fast_rcnn"])
def test_onnx_predictor_runs_selective_search_first(name, exported):
    """``OnnxPredictor`` on a graph with a ``proposals`` input: it runs selective search with the sidecar's
    settings (the run's: here a non-default size) and gives ``predict``'s detections; a sidecar without
    those settings is refused by name."""
    import json
    from types import SimpleNamespace

    from zir.errors import ZirError
    from zir.export import sidecar
    from zir.export.runtime import OnnxPredictor

    model, path = exported(name)
    predictor = SimpleNamespace(model=model, config=SimpleNamespace(model=name), task="detect", classes=["a", "b", "c"])
    meta = sidecar(predictor, "onnx")
    assert meta["selective_search"]["size"] == TINY[name]["ss_size"] != 256  # the run's, not the default
    assert list(meta["inputs"]) == ["images", "proposals"]
    assert meta.get("max_batch") == (1 if name == "rcnn" else None)  # R-CNN's crops: one image per call
    Path(f"{path}.json").write_text(json.dumps(meta))
    images = _images((3, 50, 70), 5)
    onnx, calls = OnnxPredictor(path), []
    real = onnx.run
    onnx.run = lambda batch: (calls.append(len(batch)), real(batch))[1]
    got = onnx.predict(list(images))
    assert calls == ([1, 1, 1] if name == "rcnn" else [3])  # the sidecar's max_batch is honoured
    assert sum(len(g.boxes) for g in got) > 0
    _check(model, "detect", [torch.stack([torch.nn.functional.pad(g.boxes, (0, 0, 0, 100 - len(g.boxes)))
                                          for g in got]),
                             torch.stack([torch.nn.functional.pad(g.scores, (0, 100 - len(g.scores))) for g in got]),
                             torch.stack([torch.nn.functional.pad(g.labels, (0, 100 - len(g.labels))) for g in got]),
                             torch.tensor([len(g.boxes) for g in got])], images)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    empty = session.run(None, {"images": images.numpy(), "proposals": torch.zeros(0, 5).numpy()})
    assert empty[3].tolist() == [0, 0, 0] and not empty[0].any()  # no proposal at all: nothing, no error
    del meta["selective_search"]
    Path(f"{path}.json").write_text(json.dumps(meta))
    with pytest.raises(ZirError, match="no valid 'selective_search' settings"):
        OnnxPredictor(path)
