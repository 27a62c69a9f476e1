"""A trained model ready to use: ``zir.load("runs/NAME")`` and ``predict`` on files, PIL images or tensors."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zir.config import DataConfig, RunConfig
from zir.data.contract import Prediction
from zir.data.image_io import read_image, to_rgb_array
from zir.engine.checkpoint import load_weights, read_meta
from zir.errors import CheckpointError, ConfigError
from zir.models import get_spec, model_keys
from zir.models.base import ZirModel

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor


class Predictor:
    """A model with its classes and config.

    Attributes:
        model: the :class:`~zir.models.base.ZirModel`, in eval mode.
        classes: class names, index = class id.
        config: the :class:`~zir.config.RunConfig` that trained it.
        task: ``classify``, ``detect``, ``segment``, ``instance`` or ``panoptic``.
    """

    def __init__(self, model: ZirModel, classes: list[str], config: RunConfig, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.classes = classes
        self.config = config
        self.task = model.task

    def predict(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 16) -> list[Prediction]:
        """Predict on one image or many; always returns a list with one prediction per image.

        Images can be file paths, PIL images, ``(H, W, 3)`` uint8 arrays, or ``(3, H, W)`` tensors
        (uint8, or float in [0, 1]). Results are in each input image's own pixels.
        """
        items = [images] if _is_single(images) else list(images)  # type: ignore[arg-type]
        out: list[Prediction] = []
        for i in range(0, len(items), batch_size):
            tensors = [to_float_image(x).to(self.device) for x in items[i: i + batch_size]]
            out += self.model.predict(tensors)
        return out

    __call__ = predict

    def predict_sliced(self, images: ImageLike | Sequence[ImageLike], size: int, overlap: float = 0.2,
                       **settings: Any) -> list[Prediction]:
        """Detections on overlapping ``size`` px tiles of each image, merged (SAHI, for small objects in
        large images); ``settings`` are the other fields of :class:`~zir.engine.sliced.Slicing`
        (``full``, ``merge``, ``metric``, ``threshold``, ``conf``, ``batch_size``)."""
        from zir.engine.sliced import Slicing, predict_sliced

        slicing = Slicing(size=size, overlap=overlap, **settings)
        items = [images] if _is_single(images) else list(images)  # type: ignore[arg-type]
        return [predict_sliced(self, to_float_image(x) if not isinstance(x, torch.Tensor) else x, slicing)
                for x in items]


def _is_single(x: Any) -> bool:
    return isinstance(x, (str, Path, Image.Image, np.ndarray)) or (isinstance(x, torch.Tensor) and x.ndim == 3)


def to_float_image(x: ImageLike) -> torch.Tensor:
    """Any supported image -> float32 ``(3, H, W)`` RGB in [0, 1]."""
    if isinstance(x, (str, Path)):
        t = read_image(x)
    elif isinstance(x, Image.Image):
        t = torch.from_numpy(to_rgb_array(x)).permute(2, 0, 1)
    elif isinstance(x, np.ndarray):
        arr = x if x.ndim == 3 else np.repeat(x[..., None], 3, axis=2)
        t = torch.from_numpy(np.array(arr[..., :3], dtype=np.uint8)).permute(2, 0, 1)
    else:
        t = x
    return t.float() / 255 if t.dtype == torch.uint8 else t.float()


def find_weights(path: str | Path, prefer: str = "best") -> Path:
    """``runs/NAME`` -> its best (else last) weights, or with ``prefer="last"`` its last (else best);
    a ``.safetensors`` path is taken as it is."""
    path = Path(path)
    if path.is_file():
        return path
    if prefer not in ("best", "last"):
        raise ValueError(f"prefer must be 'best' or 'last', got {prefer!r}")
    for name in ("best", "last") if prefer == "best" else ("last", "best"):
        if (path / "weights" / f"{name}.safetensors").is_file():
            return path / "weights" / f"{name}.safetensors"
    raise CheckpointError(f"{path}: no weights found (expected {path}/weights/best.safetensors); "
                          "pass a run folder made by `zir train` or a .safetensors file")


def load(path: str | Path, device: str | torch.device = "cpu", tta: int | None = None) -> Predictor:
    """Load a trained run (``runs/NAME``) or weights file; it needs nothing else. A model name that is
    not a path (``efficientnet_lite0``) gives that ImageNet classifier with its offline weights.

    ``tta``: the model's test-time augmentation instead of the run's (the classifier's and the semantic
    segmenters' ``tta`` setting: views averaged by ``predict``); the weights are the same."""
    if not Path(path).exists() and "/" not in str(path) and not str(path).endswith(".safetensors"):
        from zir.models.classify.imagenet import IMAGENET_SIZE, imagenet_classes, imagenet_classifier

        model = imagenet_classifier(str(path))  # ConfigError for a name without offline weights
        if tta is not None:
            model.cfg = dataclasses.replace(model.cfg, tta=tta)  # checked by the config
        cfg = RunConfig(model="classifier", model_args={"backbone": str(path), "pretrained": "imagenet"},
                        data=DataConfig(image_size=IMAGENET_SIZE))
        return Predictor(model, imagenet_classes(), cfg, device)
    weights = find_weights(path)
    meta = read_meta(weights)
    if "config" not in meta or "classes" not in meta:
        raise CheckpointError(f"{weights}: has no zir config/classes metadata; was it written by zir?")
    try:
        cfg = RunConfig.from_dict(meta["config"])
    except ConfigError as e:
        raise ConfigError(f"{weights}: the run's stored config does not load: {e}") from None
    if tta is not None:
        if "tta" not in model_keys(cfg.model):
            from zir.models import MODELS

            having = sorted(name for name in MODELS if "tta" in model_keys(name))
            raise ConfigError(f"{cfg.model} has no tta setting (test-time augmentation is a setting of "
                              f"{', '.join(having)}); leave tta out")
        cfg = cfg.override({"model_args.tta": tta})  # checked when the model is built
    # The checkpoint's weights replace pretrained ones anyway: skip loading ImageNet's.
    build_cfg = cfg.override({"model_args.pretrained": "none"}) if "pretrained" in model_keys(cfg.model) else cfg
    model = get_spec(cfg.model).build(build_cfg.model_config(len(meta["classes"])))
    load_weights(model, weights, get_spec(cfg.model).renames)
    return Predictor(model, list(meta["classes"]), cfg, device)


def run_data(predictor: Predictor, run: str | Path, data_settings: dict[str, Any], verb: str = "evaluate"
             ) -> tuple[RunConfig, Any]:
    """The data a trained run is measured on (``zir eval``, ``zir analyze``): its own validation data, or
    ``data=PATH`` (all of it, not a split) with any other data settings.

    Returns:
        ``(config, DataBundle)``: the run's config with ``data_settings`` applied and its datasets.

    Raises:
        ConfigError: a setting that is not a data setting. DataError: the data is not there, or is of
            another task or other classes than the model (named as such, before anything runs).
    """
    from zir.config import resolve_key
    from zir.engine.data import build_datasets
    from zir.errors import DataError

    given = {resolve_key(k, predictor.config.model) for k in data_settings}
    if any(path[0] != "data" for path in given):
        raise ConfigError(f"{verb} takes data settings (data=PATH, val_path, batch_size, ...), got "
                          f"{sorted(data_settings)}; the model and its training stay as {run} has them")
    cfg = predictor.config.override(data_settings)
    if ("data", "path") in given and ("data", "val_path") not in given:
        cfg = cfg.override({"data.val_path": cfg.data.path})  # all of the given data, not a split of it
    for path in (cfg.data.path, cfg.data.val_path):
        if path and not path.startswith("synth:") and not Path(path).exists():
            raise DataError(path, f"the data of {run} is not there; pass data=PATH to {verb} it on other data")
    bundle = build_datasets(cfg.data, seed=cfg.train.seed)
    if bundle.task != predictor.task:  # before the class check: a task mismatch is the real problem
        raise DataError(cfg.data.val_path or cfg.data.path, f"this is a {bundle.task} dataset, but the run in "
                        f"{run} is a {predictor.task} model; {verb} it on {predictor.task} data")
    if bundle.classes != predictor.classes:
        raise DataError(cfg.data.path, f"the data has {len(bundle.classes)} classes {bundle.classes[:10]}, the "
                                       f"model {len(predictor.classes)} {predictor.classes[:10]}; {verb} on "
                                       "data with the classes the model was trained on")
    return cfg, bundle
