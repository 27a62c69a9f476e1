"""The model registry: one explicit dict from name to builder. ``zir models`` prints it; tests loop over it.

Each model lives in its own file with its config dataclass, blocks, model, loss, postprocess and
``build()``. To add one, write the file and add a :class:`ModelSpec` line below.

A model's config is built in one place, :func:`model_config`, from a (possibly nested) dict: sections are
dataclass-typed fields (``{"rpn": {"nms_iou": 0.6}}``, or the dotted key ``"rpn.nms_iou"``), and a
model's flat names from before its sections existed (``rpn_nms_iou``) are mapped by its entry's ``aliases``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zir.errors import ConfigError
from zir.models.base import Fitting, ZirModel
from zir.models.classify import classifier, convnet
from zir.models.detect import anchor_free, fast_rcnn, faster_rcnn, overfeat, rcnn, sliding_window, yolo_v1
from zir.models.segment import fcn, mask_rcnn, panoptic_fpn, unet


def by_gradient(cfg: Any) -> Fitting:
    """``ModelSpec.fitting`` of most models: gradient steps on ``loss``, whatever the config."""
    return "gradient"


def in_closed_form(cfg: Any) -> Fitting:
    """``ModelSpec.fitting`` of a model solved from cached features (:class:`~zir.models.base.FitsInClosedForm`)."""
    return "closed_form"


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: the task, the config dataclass, its builder, a one-line summary and facts about
    the architecture that tools read without building the model.

    Attributes:
        stages: detectors: 1 for one-stage (one dense pass decides boxes and classes), 2 for two-stage
            (proposals, then a classifier per region), as in the lecture's speed/accuracy comparison
            (``zir bench detectors`` marks them); 0 for other tasks.
        fitting: how the engine fits the model, a function of the model's config (so a setting such as
            the classifier's ``transfer`` can decide it) returning a :data:`zir.models.base.Fitting`.
        aliases: old flat setting name -> its dotted place in the config now (``"rpn_nms_iou": "rpn.nms_iou"``),
            so README commands and old runs' ``config.yaml`` keep working.
        renames: old parameter-name prefix -> new prefix (``"mask_head.": "heads.mask."``), applied when
            weights written by an older zir are loaded (``zir.engine.checkpoint.load_weights``).
    """

    task: str
    config: type
    build: Callable[[Any], ZirModel]
    summary: str
    fitting: Callable[[Any], Fitting] = by_gradient
    aliases: Mapping[str, str] = field(default_factory=dict)
    renames: Mapping[str, str] = field(default_factory=dict)
    stages: int = 0


MODELS: dict[str, ModelSpec] = {
    "convnet": ModelSpec("classify", convnet.ConvNetConfig, convnet.build,
                         "small ConvNet: conv-BN-ReLU-pool blocks, linear head, softmax + cross-entropy"),
    "classifier": ModelSpec("classify", classifier.ClassifierConfig, classifier.build,
                            "timm backbone + linear head; transfer=scratch|features|finetune, backbone=NAME",
                            fitting=classifier.fitting),
    "efficientnet_lite0": ModelSpec("classify", classifier.ClassifierConfig, classifier.build,
                                    "classifier on EfficientNet-Lite0 with ImageNet weights (offline)",
                                    fitting=classifier.fitting),
    "yolo_v1": ModelSpec("detect", yolo_v1.YoloV1Config, yolo_v1.build,
                         "YOLO v1: S x S grid, B boxes + C class probabilities per cell, sum-squared loss",
                         stages=1),
    "anchor_free": ModelSpec("detect", anchor_free.AnchorFreeConfig, anchor_free.build,
                             "anchor-free one-stage: PAN, decoupled head, task-aligned assigner, DFL + CIoU (YOLOv8-style)",
                             stages=1),
    "faster_rcnn": ModelSpec("detect", faster_rcnn.FasterRCNNConfig, faster_rcnn.build,
                             "Faster R-CNN + FPN: RPN proposals, RoI Align/pool, 2-FC box head, per-class NMS",
                             aliases=faster_rcnn.FLAT_KEYS, stages=2),
    "rcnn": ModelSpec("detect", rcnn.RCNNConfig, rcnn.build,
                      "R-CNN: selective search, frozen CNN on each warped region, linear SVMs, ridge box regression",
                      stages=2, fitting=in_closed_form),
    "fast_rcnn": ModelSpec("detect", fast_rcnn.FastRCNNConfig, fast_rcnn.build,
                           "Fast R-CNN: selective search, one feature map, RoI pooling, 2 FC, multi-task loss",
                           aliases=fast_rcnn.FLAT_KEYS, stages=2),
    "sliding_window": ModelSpec("detect", sliding_window.SlidingWindowConfig, sliding_window.build,
                                "sliding window: a crop classifier over every window of an image pyramid, NMS",
                                stages=1),
    "overfeat": ModelSpec("detect", overfeat.OverFeatConfig, overfeat.build,
                          "OverFeat: the window classifier run fully convolutionally over a pyramid, box head",
                          stages=1),
    "fcn": ModelSpec("segment", fcn.FCNConfig, fcn.build,
                     "FCN-32s/16s/8s: pretrained backbone, 1x1 classifier, bilinear-initialised transposed convs"),
    "unet": ModelSpec("segment", unet.UNetConfig, unet.build,
                      "U-Net: encoder-decoder with concatenated skips; border-weighted loss, overlap-tile predict"),
    "mask_rcnn": ModelSpec("instance", mask_rcnn.MaskRCNNConfig, mask_rcnn.build,
                           "Mask R-CNN: Faster R-CNN + FPN plus a 4-conv + deconv head, 28x28 mask per class",
                           aliases=mask_rcnn.FLAT_KEYS, renames={"mask_head.": "heads.mask."}, stages=2),
    "panoptic_fpn": ModelSpec("panoptic", panoptic_fpn.PanopticFPNConfig, panoptic_fpn.build,
                              "Panoptic FPN: Mask R-CNN for things + a semantic FPN branch for stuff, merged",
                              aliases=panoptic_fpn.FLAT_KEYS,
                              renames={"mask_head.": "heads.mask.", "semantic_head.": "heads.semantic."}, stages=2),
}


# Fields of a model config filled from the data and the run, never a user's setting: the class count, and
# the input side (``data.image_size``; the rule is zir.config.settle_image_size).
FROM_DATA = ("num_classes", "image_size")


def model_keys(name: str) -> set[str]:
    """The top-level ``model_args`` keys model ``name`` takes: its config's fields (and flat aliases of
    nested ones, where a model has them), less :data:`FROM_DATA`. ``zir.config.resolve_key`` reads it to
    send a bare ``key=value`` to the model."""
    spec = get_spec(name)
    return ({f.name for f in dataclasses.fields(spec.config)} | set(spec.aliases)) - set(FROM_DATA)


def model_config(name: str, num_classes: int, image_size: int, args: Mapping[str, Any] | None = None) -> Any:
    """The model's config dataclass filled from ``args`` plus the data's class count and image size.

    ``args`` may nest sections (``{"rpn": {"nms_iou": 0.6}}``), address them with dotted keys
    (``{"rpn.nms_iou": 0.6}``) or use the model's old flat names (``{"rpn_nms_iou": 0.6}``, see
    :attr:`ModelSpec.aliases`); a setting given twice, an unknown key or a mapping given for a plain
    setting raises :class:`~zir.errors.ConfigError`.
    """
    spec = get_spec(name)
    tree: dict[str, Any] = {}
    for key, value in (args or {}).items():
        path = spec.aliases.get(key, key).split(".")
        _put(tree, path, value, name, key)
    known = {f.name for f in dataclasses.fields(spec.config)}
    if "num_classes" in known:
        tree["num_classes"] = num_classes
    if "image_size" in known:
        tree.setdefault("image_size", image_size)
    return _fill(spec.config, tree, name, "", spec.aliases)


def _put(tree: dict[str, Any], path: list[str], value: Any, name: str, key: str) -> None:
    """Set ``tree[path[0]][path[1]]... = value``, merging mappings key by key."""
    node = tree
    for i, p in enumerate(path[:-1]):
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"model {name!r}: {key!r} sets a part of {'.'.join(path[:i + 1])!r}, which is also "
                              "given a plain value; give it once")
        node = child
    leaf = path[-1]
    if isinstance(value, Mapping):
        if leaf in node and not isinstance(node[leaf], dict):
            raise ConfigError(f"model {name!r}: {'.'.join(path)!r} is given twice (check {key!r}); give it once")
        node.setdefault(leaf, {})
        for k, v in value.items():
            _put(tree, [*path, str(k)], v, name, key)
    elif leaf in node:
        raise ConfigError(f"model {name!r}: {'.'.join(path)!r} is given twice (check {key!r} and its old flat "
                          "name or section); give it once")
    else:
        node[leaf] = value


def _fill(cls: type, tree: dict[str, Any], name: str, prefix: str, aliases: Mapping[str, str],
          base: Any = None) -> Any:
    """``cls(**tree)`` (or ``base`` with ``tree``'s settings replaced) with dataclass-typed fields built from
    their sub-mappings, recursively. A section starts from its field's default (Fast R-CNN's RoI heads
    default to RoI pooling, Faster R-CNN's to RoI Align), not from the section class's defaults."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - set(fields))
    if unknown:
        if not prefix:
            old = f", and the old flat names {sorted(aliases)}" if aliases else ""
            raise ConfigError(f"model {name!r} has no settings {unknown}; it has {sorted(fields)}{old}")
        raise ConfigError(f"model {name!r} has no settings {[prefix + k for k in unknown]}; {prefix[:-1]!r} has "
                          f"{sorted(fields)}")
    types = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in tree.items():
        section = types[key] if dataclasses.is_dataclass(types[key]) else None
        if section is not None and isinstance(value, dict):
            f = fields[key]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            kwargs[key] = _fill(section, value, name, f"{prefix}{key}.", aliases, default)
        elif section is not None and not isinstance(value, section):
            raise ConfigError(f"model {name!r}: {prefix}{key} is a section, give its settings as a mapping "
                              f"(e.g. model_args.{prefix}{key}.{dataclasses.fields(section)[0].name}=...)")
        elif section is None and isinstance(value, dict):
            raise ConfigError(f"model {name!r}: {prefix}{key} is a single setting, not a section; got {value!r}")
        else:
            kwargs[key] = value
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def build_model(name: str, num_classes: int, image_size: int, args: dict[str, Any] | None = None) -> ZirModel:
    """Build a registered model from its name and settings."""
    return get_spec(name).build(model_config(name, num_classes, image_size, args))


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))} (see `zir models`)")
    return MODELS[name]
