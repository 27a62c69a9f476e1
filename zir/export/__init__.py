"""Export trained models for deployment. Runtime workarounds live here, never in model files.

* ``pt2`` (default): ``torch.export`` of the model's tensor-to-tensor ``forward`` (for classifiers:
  float ``(B, 3, S, S)`` in [0, 1] -> logits) with a dynamic batch size; loads with
  ``torch.export.load(path).module()`` and no zir installed.
* ``torchscript``: ``torch.jit.trace`` of the same graph, for runtimes that still take TorchScript.
* ``onnx``: ``torch.onnx.export`` of the same graph (needs the ``onnx`` package; ``pip install onnx``).

The class names and the input size are written next to the file as ``<file>.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zir.errors import ConfigError, ZirError


def export(run: str | Path, format: str = "pt2", out: str | Path | None = None) -> Path:
    """Export the run's best weights; returns the written file."""
    from zir.data.output import check_writable
    from zir.engine.predictor import find_weights, load

    if out:
        check_writable(out, "file")  # before the model loads and traces
    predictor = load(run)
    model = predictor.model.eval()
    size = predictor.config.data.image_size
    if predictor.task != "classify":
        raise ConfigError(f"export of {predictor.task} models is not supported yet; classifiers export today")
    example = torch.rand(1, 3, size, size)
    weights = find_weights(run)
    check_writable(out or weights.parent, "file" if out else "folder")
    if format == "pt2":
        out = Path(out) if out else weights.with_name("model.pt2")
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.export.export(model, (example.expand(2, -1, -1, -1).contiguous(),),
                                      dynamic_shapes=({0: batch},))
        torch.export.save(program, str(out))
    elif format == "torchscript":
        out = Path(out) if out else weights.with_name("model.torchscript.pt")
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        traced.save(str(out))
    elif format == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError as e:
            raise ZirError("ONNX export needs the onnx package: pip install onnx onnxscript") from e
        out = Path(out) if out else weights.with_name("model.onnx")
        torch.onnx.export(model, (example,), str(out), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    else:
        raise ConfigError(f"unknown export format {format!r}; use pt2, torchscript or onnx")
    sidecar = {"classes": predictor.classes, "task": predictor.task, "input": [3, size, size],
               "input_range": "float32 RGB in [0, 1]", "output": "logits (apply softmax)"}
    Path(f"{out}.json").write_text(json.dumps(sidecar, indent=1))
    return Path(out)
