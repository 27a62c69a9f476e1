"""A trained model ready to use: ``zir.load("runs/NAME")`` and ``predict`` on files, PIL images or tensors."""

from __future__ import annotations

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


def find_weights(path: str | Path) -> Path:
    """``runs/NAME`` -> its best (else last) weights; a ``.safetensors`` path is taken as it is."""
    path = Path(path)
    if path.is_file():
        return path
    for name in ("best.safetensors", "last.safetensors"):
        if (path / "weights" / name).is_file():
            return path / "weights" / name
    raise CheckpointError(f"{path}: no weights found (expected {path}/weights/best.safetensors); "
                          "pass a run folder made by `zir train` or a .safetensors file")


def load(path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """Load a trained run (``runs/NAME``) or weights file; it needs nothing else. A model name that is
    not a path (``efficientnet_lite0``) gives that ImageNet classifier with its offline weights."""
    if not Path(path).exists() and "/" not in str(path) and not str(path).endswith(".safetensors"):
        from zir.models.classify.imagenet import IMAGENET_SIZE, imagenet_classes, imagenet_classifier

        model = imagenet_classifier(str(path))  # ConfigError for a name without offline weights
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
    # The checkpoint's weights replace pretrained ones anyway: skip loading ImageNet's.
    build_cfg = cfg.override({"model_args.pretrained": "none"}) if "pretrained" in model_keys(cfg.model) else cfg
    model = get_spec(cfg.model).build(build_cfg.model_config(len(meta["classes"])))
    load_weights(model, weights, get_spec(cfg.model).renames)
    return Predictor(model, list(meta["classes"]), cfg, device)
