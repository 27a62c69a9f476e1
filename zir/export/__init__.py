"""Export trained models for deployment. Runtime workarounds live here, never in model files.

The exported graph is the model's deployment graph (:mod:`zir.export.graphs`): uint8 RGB images
``(B, 3, H, W)`` in, results in the input's pixels out, pre- and post-processing inside, ``B``, ``H`` and
``W`` dynamic; R-CNN's and Fast R-CNN's graphs also take selective search's boxes, ``proposals (N, 5)``
(:mod:`zir.export.selective`). Formats:

* ``onnx``: ``torch.onnx.export(dynamo=True)``, standard operators only (NMS is ONNX's
  ``NonMaxSuppression``), for onnxruntime (:mod:`zir.export.runtime`, ``zir predict --backend onnx``).
* ``pt2`` (default): the ``torch.export`` program; loads with ``torch.export.load(path).module()`` and no zir.
* ``torchscript``: ``torch.jit.trace`` of the graph; classifiers only (the other graphs hold symbolic
  sizes and ``torch.cond``, which tracing would freeze at the example's size).

The sidecar ``<file>.json`` names the inputs, the outputs and the classes (:func:`sidecar`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from zir.errors import ConfigError, ZirError

FORMATS = ("onnx", "pt2", "torchscript")
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".torchscript.pt"}
OUTPUTS = {
    "classify": {"scores": ["float32", ["batch", "classes"], "softmax probabilities"],
                 "labels": ["int64", ["batch"], "arg-max class id"]},
    "segment": {"semantic": ["int64", ["batch", "height", "width"], "class id of every input pixel"]},
    "detect": {"boxes": ["float32", ["batch", "max_detections", 4], "XYXY, input pixels; rows past counts are 0"],
               "scores": ["float32", ["batch", "max_detections"], "best first"],
               "labels": ["int64", ["batch", "max_detections"], "class id"],
               "counts": ["int64", ["batch"], "detections of each image (its first counts[b] rows)"]},
}
MAX_SIDE = 8192
MAX_PROPOSALS = 1 << 20  # the proposals input's bound (selective search keeps 2000 per image by default)


def export(run: str | Path, format: str = "pt2", out: str | Path | None = None) -> Path:
    """Export the run's best weights as ``format``; returns the written file (its sidecar is ``<file>.json``)."""
    from zir.data.output import check_writable
    from zir.engine.predictor import find_weights, load
    from zir.export.graphs import graph_for

    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; use {', '.join(FORMATS)}")
    if out:
        check_writable(out, "file")  # before the model loads and traces
    predictor = load(run)
    graph = graph_for(predictor.model)  # ConfigError for an architecture without one
    weights = find_weights(run)
    check_writable(out or weights.parent, "file" if out else "folder")
    out = Path(out) if out else weights.with_name("model" + SUFFIX[format])
    with torch.no_grad():
        if format == "onnx":
            to_onnx(predictor.model, out, graph)
        elif format == "pt2":
            args, dynamic = example_args(predictor.model, graph)
            torch.export.save(torch.export.export(graph, args, dynamic_shapes=dynamic), str(out))
        else:
            if predictor.task != "classify":
                raise ConfigError(f"torchscript export takes classifiers only (this run is {predictor.task}): "
                                  "tracing would fix the image size; use --format onnx or pt2")
            torch.jit.trace(graph, example_input(predictor.model)[0]).save(str(out))
    Path(f"{out}.json").write_text(json.dumps(sidecar(predictor, format), indent=1))
    return out


def to_onnx(model: Any, out: str | Path, graph: torch.nn.Module | None = None) -> Path:
    """Write ``model``'s deployment graph (or ``graph``) as ONNX to ``out``."""
    from zir.export.graphs import graph_for
    from zir.export.selective import roi_pool_onnx

    _check_onnx()
    graph = graph if graph is not None else graph_for(model)
    args, dynamic = example_args(model, graph)
    with torch.no_grad():
        torch.onnx.export(graph, args, str(out), dynamo=True, dynamic_shapes=dynamic,
                          input_names=list(getattr(graph, "inputs", ("images",))), output_names=list(graph.outputs),
                          verbose=False, external_data=False,  # one file: the weights inside, nothing to lose
                          custom_translation_table={torch.ops.torchvision.roi_pool.default: roi_pool_onnx})
    return Path(out)


def example_args(model: Any, graph: torch.nn.Module) -> tuple[tuple[torch.Tensor, ...], tuple[dict[int, Any], ...]]:
    """The graph's example inputs and their dynamic dimensions: ``images`` (:func:`example_input`), and for the
    graphs on selective search proposals (``zir.export.selective``) ``proposals (N, 5)``, three boxes inside
    each example image, ``N`` dynamic from 0."""
    example, dynamic = example_input(model)
    if "proposals" not in getattr(graph, "inputs", ()):
        return (example,), dynamic
    B, H, W = example.shape[0], example.shape[-2], example.shape[-1]
    boxes = torch.tensor([[0.0, 0.0, W / 2, H / 2], [W / 4, H / 4, W - 1.0, H - 1.0], [1.0, 2.0, W / 3, H - 3.0]])
    proposals = torch.cat([torch.cat([torch.full((3, 1), float(b)), boxes], dim=1) for b in range(B)])
    return (example, proposals), (*dynamic, {0: torch.export.Dim("proposals", min=0, max=MAX_PROPOSALS)})


def example_input(model: Any) -> tuple[torch.Tensor, tuple[dict[int, Any]]]:
    """An example uint8 batch for tracing and the dynamic dimensions of ``images``: batch 1..1024, sides from
    the smallest the graph handles (U-Net's mirrored context must fit in the image) to :data:`MAX_SIDE`."""
    from zir.export.graphs import MAX_BATCH

    size = getattr(model.cfg, "image_size", None) or 128  # R-CNN has none: it crops from the input itself
    low = 32
    if hasattr(model, "context"):  # U-Net: one reflection of `context + stride` pixels
        low = max(low, model.context + model.stride + 1)
    # distinct sides and a batch > 1, so that the tracer cannot take any of them for a constant
    h, w = max(low + 3, size * 3 // 4 + 1), max(low + 5, size + 3)
    example = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8)
    dims = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH), 2: torch.export.Dim("height", min=low, max=MAX_SIDE),
            3: torch.export.Dim("width", min=low, max=MAX_SIDE)}
    return example, (dims,)


def sidecar(predictor: Any, format: str) -> dict[str, Any]:
    """What a caller needs beside the graph: the task, classes, input and outputs."""
    from zir.export.graphs import graph_for

    model = predictor.model
    kind = {"instance": "detect", "panoptic": "detect"}.get(predictor.task, predictor.task)
    low = example_input(model)[1][0][2].min
    meta = {"format": format, "task": predictor.task, "model": predictor.config.model, "classes": predictor.classes,
            "image_size": getattr(model.cfg, "image_size", None),
            "inputs": {"images": ["uint8", ["batch", 3, "height", "width"],
                                  f"RGB 0-255, one size per batch, sides {low}..{MAX_SIDE}"]},
            "outputs": dict(OUTPUTS[kind])}
    if kind == "detect":
        cfg = model.cfg  # the name differs by family: max_detections, detections_per_img, roi_heads'
        meta["max_detections"] = int(getattr(cfg, "max_detections", None) or getattr(cfg, "detections_per_img", None)
                                     or cfg.roi_heads.detections_per_img)
    graph = graph_for(model)  # a wrapper: building it costs nothing
    if "proposals" in getattr(graph, "inputs", ()):  # R-CNN, Fast R-CNN: the caller runs selective search
        meta["inputs"]["proposals"] = ["float32", ["proposals", 5],
                                       "[image index, x1, y1, x2, y2] in input pixels: selective search's boxes of "
                                       "each image, made with the settings in 'selective_search' "
                                       "(zir.models.detect.proposals.SelectiveSearch)"]
        meta["selective_search"] = dataclasses.asdict(model.search)
    if getattr(graph, "max_batch", None):
        meta["max_batch"] = graph.max_batch  # images per call that OnnxPredictor sends
    if predictor.task in ("instance", "panoptic"):  # the two-stage graphs (zir.export.two_stage)
        meta["outputs"]["masks"] = ["uint8", ["detections", "height", "width"],
                                    "0/1 mask of every detection in input pixels, image by image (counts[0] rows "
                                    "of image 0, then image 1's, ...), best first"]
    if predictor.task == "panoptic":
        head = model.heads["semantic"]
        meta["outputs"]["semantic"] = ["int64", ["batch", "height", "width"],
                                       "the semantic branch's data-set class of every pixel, -1 = a thing"]
        meta["stuff_ids"] = head.stuff_ids.tolist()
        meta["merge"] = dataclasses.asdict(head.merge)  # the panoptic merge runs on the outputs, after the graph
    return meta


def _check_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ZirError("ONNX export needs the onnx and onnxscript packages: pip install 'zir[export]'") from e
