"""Run an exported ONNX graph with onnxruntime, giving the same predictions as ``zir.load(run).predict``.

``OnnxPredictor`` is a :class:`~zir.engine.predictor.Predictor` (``predict``, ``classes``, ``task``), so
``zir predict --backend onnx`` and ``zir.api.predict_to_folder`` take it as they take the PyTorch one.
Images of one size go to the graph together, in batches; each result is in its image's own pixels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zir.data.contract import ClassPrediction, Prediction, SemanticPrediction
from zir.engine.predictor import ImageLike, Predictor, _is_single, find_weights, to_float_image
from zir.errors import ZirError


def find_onnx(path: str | Path) -> Path:
    """``runs/NAME`` -> the ONNX file ``zir export`` wrote beside its weights; a ``.onnx`` path as it is."""
    path = Path(path)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ZirError(f"{path}: no such ONNX file; write one with `zir export RUN --format onnx --out {path}`")
        return path
    if not path.exists():
        raise ZirError(f"{path}: no such run folder or .onnx file; give runs/NAME or the file `zir export` wrote")
    onnx = find_weights(path).with_name("model.onnx")
    if not onnx.is_file():
        raise ZirError(f"{onnx}: not exported yet; run `zir export {path} --format onnx` first")
    return onnx


class OnnxPredictor(Predictor):
    """An exported graph and its sidecar JSON, run by onnxruntime on the CPU.

    Attributes:
        classes, task: from the sidecar.
        meta: the whole sidecar (inputs, outputs, image size).
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ZirError("the onnx backend needs onnxruntime: pip install 'zir[export]'") from e
        self.path = find_onnx(path)
        side = Path(f"{self.path}.json")
        if not side.is_file():
            raise ZirError(f"{side}: the sidecar of {self.path.name} is missing; export again with "
                           "`zir export RUN --format onnx` (it writes both)")
        try:
            self.meta = json.loads(side.read_text())
            self.classes, self.task = list(self.meta["classes"]), str(self.meta["task"])
            outputs = list(self.meta["outputs"])
        except (ValueError, KeyError, TypeError) as e:
            raise ZirError(f"{side}: not a zir export sidecar ({e}); export again with `zir export RUN --format "
                           "onnx`") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types, one per failure
            raise ZirError(f"{self.path}: onnxruntime cannot load it ({str(e).splitlines()[0]}); export again "
                           "with `zir export RUN --format onnx`") from None
        got_in = [(i.name, i.type) for i in self.session.get_inputs()]
        got_out = [o.name for o in self.session.get_outputs()]
        want_in = [("images", "tensor(uint8)")] + ([("proposals", "tensor(float)")]
                                                   if "proposals" in self.meta.get("inputs", {}) else [])
        self.search = None  # R-CNN and Fast R-CNN: selective search before the graph (zir.export.selective)
        if len(want_in) > 1:
            from zir.models.detect.proposals import SelectiveSearch

            try:
                self.search = SelectiveSearch(**self.meta["selective_search"])
            except (KeyError, TypeError) as e:
                raise ZirError(f"{side}: its graph takes proposals but the sidecar has no valid 'selective_search' "
                               f"settings ({e}); export again with `zir export RUN --format onnx`") from None
        if got_in != want_in or got_out != outputs:
            raise ZirError(f"{self.path}: this graph takes {got_in} and returns {got_out}, but its sidecar "
                           f"{side.name} describes a {self.task} model returning {outputs}: the file belongs to "
                           "another model or task; export the run again with `zir export RUN --format onnx`")
        self.model = None  # type: ignore[assignment]
        self.config = None  # type: ignore[assignment]
        self.device = torch.device("cpu")

    def predict(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 16) -> list[Prediction]:
        """As :meth:`Predictor.predict`: one prediction per image, in its own pixels."""
        batch_size = min(batch_size, int(self.meta.get("max_batch") or batch_size))  # R-CNN: one image a call
        items = [images] if _is_single(images) else list(images)  # type: ignore[arg-type]
        arrays = [_to_uint8(x) for x in items]
        out: list[Prediction | None] = [None] * len(arrays)
        start = 0
        while start < len(arrays):  # runs of images of one size, at most batch_size each
            end = start + 1
            while end < len(arrays) and end - start < batch_size and arrays[end].shape == arrays[start].shape:
                end += 1
            results = self.run(np.stack(arrays[start:end]))
            out[start:end] = results
            start = end
        return out  # type: ignore[return-value]

    __call__ = predict

    def run(self, batch: np.ndarray) -> list[Prediction]:
        """uint8 ``(B, 3, H, W)`` -> one prediction per image."""
        names = [o.name for o in self.session.get_outputs()]
        feeds = {"images": batch}
        if self.search is not None:
            from zir.export.selective import proposals_input

            feeds["proposals"] = proposals_input(self.search, batch)
        result = dict(zip(names, (torch.from_numpy(a) for a in self.session.run(None, feeds))))
        if "counts" in result:  # detectors; with masks (Mask R-CNN) and a semantic map (Panoptic FPN)
            from zir.export.two_stage import merge_outputs, split_instances

            preds = split_instances(result["boxes"], result["scores"], result["labels"], result["counts"],
                                    result.get("masks"))
            if "semantic" not in result:
                return preds
            from zir.models.segment.panoptic_fpn import MergeConfig

            stuff, merge = torch.tensor(self.meta["stuff_ids"], dtype=torch.int64), MergeConfig(**self.meta["merge"])
            return [merge_outputs(p, m, stuff, merge) for p, m in zip(preds, result["semantic"])]
        if "semantic" in result:
            return [SemanticPrediction(semantic=m) for m in result["semantic"]]
        return [ClassPrediction(scores=s, label=int(lab)) for s, lab in zip(result["scores"], result["labels"])]


def _to_uint8(x: Any) -> np.ndarray:
    """Any image :func:`~zir.engine.predictor.to_float_image` takes -> uint8 ``(3, H, W)``, contiguous."""
    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
        t = x
    else:
        t = (to_float_image(x).clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(t.numpy())
