"""The model registry: one explicit dict from name to builder. ``zir models`` prints it; tests loop over it.

Each model lives in its own file with its config dataclass, blocks, model, loss, postprocess and
``build()``. To add one, write the file and add a :class:`ModelSpec` line below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zir.errors import ConfigError
from zir.models.base import Fitting, ZirModel
from zir.models.classify import classifier, convnet
from zir.models.detect import fast_rcnn, faster_rcnn, overfeat, rcnn, sliding_window, yolo_v1
from zir.models.segment import fcn, mask_rcnn, panoptic_fpn, unet


def by_gradient(cfg: Any) -> Fitting:
    """``ModelSpec.fitting`` of most models: gradient steps on ``loss``, whatever the config."""
    return "gradient"


def in_closed_form(cfg: Any) -> Fitting:
    """``ModelSpec.fitting`` of a model solved from cached features (:class:`~zir.models.base.FitsInClosedForm`)."""
    return "closed_form"


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: the task, the config dataclass, its builder, a one-line summary, and how the
    engine fits the model (``fitting(config) -> Fitting``, see :data:`zir.models.base.Fitting`): a function
    of the model's config, so a setting such as the classifier's ``transfer`` can decide it."""

    task: str
    config: type
    build: Callable[[Any], ZirModel]
    summary: str
    fitting: Callable[[Any], Fitting] = by_gradient


MODELS: dict[str, ModelSpec] = {
    "convnet": ModelSpec("classify", convnet.ConvNetConfig, convnet.build,
                         "small ConvNet: conv-BN-ReLU-pool blocks, linear head, softmax + cross-entropy"),
    "classifier": ModelSpec("classify", classifier.ClassifierConfig, classifier.build,
                            "timm backbone + linear head; transfer=scratch|features|finetune, backbone=NAME",
                            classifier.fitting),
    "efficientnet_lite0": ModelSpec("classify", classifier.ClassifierConfig, classifier.build,
                                    "classifier on EfficientNet-Lite0 with ImageNet weights (offline)",
                                    classifier.fitting),
    "yolo_v1": ModelSpec("detect", yolo_v1.YoloV1Config, yolo_v1.build,
                         "YOLO v1: S x S grid, B boxes + C class probabilities per cell, sum-squared loss"),
    "faster_rcnn": ModelSpec("detect", faster_rcnn.FasterRCNNConfig, faster_rcnn.build,
                             "Faster R-CNN + FPN: RPN proposals, RoI Align/pool, 2-FC box head, per-class NMS"),
    "rcnn": ModelSpec("detect", rcnn.RCNNConfig, rcnn.build,
                      "R-CNN: selective search, frozen CNN on each warped region, linear SVMs, ridge box regression",
                      in_closed_form),
    "fast_rcnn": ModelSpec("detect", fast_rcnn.FastRCNNConfig, fast_rcnn.build,
                           "Fast R-CNN: selective search, one feature map, RoI pooling, 2 FC, multi-task loss"),
    "sliding_window": ModelSpec("detect", sliding_window.SlidingWindowConfig, sliding_window.build,
                                "sliding window: a crop classifier over every window of an image pyramid, NMS"),
    "overfeat": ModelSpec("detect", overfeat.OverFeatConfig, overfeat.build,
                          "OverFeat: the window classifier run fully convolutionally over a pyramid, box head"),
    "fcn": ModelSpec("segment", fcn.FCNConfig, fcn.build,
                     "FCN-32s/16s/8s: pretrained backbone, 1x1 classifier, bilinear-initialised transposed convs"),
    "unet": ModelSpec("segment", unet.UNetConfig, unet.build,
                      "U-Net: encoder-decoder with concatenated skips; border-weighted loss, overlap-tile predict"),
    "mask_rcnn": ModelSpec("instance", mask_rcnn.MaskRCNNConfig, mask_rcnn.build,
                           "Mask R-CNN: Faster R-CNN + FPN plus a 4-conv + deconv head, 28x28 mask per class"),
    "panoptic_fpn": ModelSpec("panoptic", panoptic_fpn.PanopticFPNConfig, panoptic_fpn.build,
                              "Panoptic FPN: Mask R-CNN for things + a semantic FPN branch for stuff, merged"),
}


# Fields of a model config filled from the data and the run, never a user's setting: the class count, and
# the input side (``data.image_size``; the rule is zir.config.settle_image_size).
FROM_DATA = ("num_classes", "image_size")


def model_keys(name: str) -> set[str]:
    """The top-level ``model_args`` keys model ``name`` takes: its config's fields (and flat aliases of
    nested ones, where a model has them), less :data:`FROM_DATA`. ``zir.config.resolve_key`` reads it to
    send a bare ``key=value`` to the model."""
    return {f.name for f in dataclasses.fields(get_spec(name).config)} - set(FROM_DATA)


def model_config(name: str, num_classes: int, image_size: int, args: dict[str, Any] | None = None) -> Any:
    """The model's config dataclass filled from ``args`` plus the data's class count and image size."""
    spec = get_spec(name)
    known = {f.name for f in dataclasses.fields(spec.config)}
    args = dict(args or {})
    unknown = set(args) - known
    if unknown:
        raise ConfigError(f"model {name!r} has no settings {sorted(unknown)}; it has {sorted(known)}")
    if "num_classes" in known:
        args["num_classes"] = num_classes
    if "image_size" in known:
        args.setdefault("image_size", image_size)
    return spec.config(**args)


def build_model(name: str, num_classes: int, image_size: int, args: dict[str, Any] | None = None) -> ZirModel:
    """Build a registered model from its name and settings."""
    return get_spec(name).build(model_config(name, num_classes, image_size, args))


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))} (see `zir models`)")
    return MODELS[name]
