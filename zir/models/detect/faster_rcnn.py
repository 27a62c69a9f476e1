"""Faster R-CNN (Ren et al. 2015) with a Feature Pyramid Network (Lin et al. 2017).

A two-stage detector: a Region Proposal Network proposes boxes that may hold an object, and the RoI
heads of Fast R-CNN (Girshick 2015) classify and refine each of them, both on shared convolutional
features (Ren et al., section 3)::

    image -> resize (longer side image_size) -> normalise -> pad to a multiple of 32
      -> backbone (EfficientNet-Lite0, strides 8/16/32)    zir.models.backbones
      -> FPN (d channels, + a stride-64 level)             zir.models.fpn
      -> RPN: anchors, objectness, deltas -> proposals     zir.models.detect.rpn
      -> RoI heads: RoI Align / pool -> 2 FC -> softmax over K+1 classes + per-class box deltas
                                                           zir.models.detect.roi_heads
      -> per-class NMS -> boxes mapped back to the input image's pixels

Training sums the four losses (section 3.2, "approximate joint training"): the RPN's objectness and
box terms and the RoI heads' classification and box terms. The pretrained backbone's BatchNorm is
frozen (a few images per batch give too noisy statistics) and so are its first blocks (generic,
high-resolution features that need no fine-tuning, and whose gradients would cost the most time).

The model is composed of its parts, as torchvision's ``GeneralizedRCNN``: :class:`FasterRCNN` takes a
backbone, an FPN, an RPN, RoI heads and optional extra heads (:class:`ExtraHead`), and its loss is the
union of its parts' loss terms. Mask R-CNN (``zir.models.segment.mask_rcnn``) and Panoptic FPN
(``zir.models.segment.panoptic_fpn``) are this detector with a mask head, and a mask and a semantic head;
their files hold only those heads, their losses, their configs and ``build()``. Fast R-CNN reuses the RoI
heads with external proposals. The class lives here rather than in a file of its own because Faster
R-CNN is exactly these parts with no extra head.

Settings come in sections next to their modules: ``rpn`` (:class:`~zir.models.detect.rpn.RPNConfig`) and
``roi_heads`` (:class:`~zir.models.detect.roi_heads.RoIHeadsConfig`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn

from zir.data.contract import DetectionPrediction
from zir.errors import ConfigError
from zir.models.backbones import Backbone, build_backbone
from zir.models.base import ZirModel
from zir.models.detect.roi_heads import Detections, RoIHeads, RoIHeadsConfig, SampledRoIs, build_roi_heads
from zir.models.detect.rpn import RPN, GroundTruth, RPNConfig, build_rpn
from zir.models.fpn import FPN
from zir.ops.boxes import clip, remove_small_boxes


@dataclass
class FasterRCNNConfig:
    """Attributes:
    num_classes: object classes K (background is added internally).
    image_size: the working frame's longer side in pixels: ``predict`` resizes any image to it and maps
        boxes back (torchvision's ``max_size``).
    min_size: if > 0, also limit the shorter side to this (torchvision's ``min_size``: the scale is
        ``min(min_size / short side, image_size / long side)``); 0 = longer side only.
    train_scales: multi-scale training: each training batch works at ``image_size`` times one of these,
        drawn at random (e.g. ``[0.75, 0.875, 1.0]``); empty: always ``image_size``. Prediction always
        uses ``image_size``.
    backbone: a timm model name (``zir.models.backbones``); ``pretrained``: ``imagenet``, ``timm``, ``none``.
    backbone_levels: timm ``out_indices`` feeding the FPN (2, 3, 4: strides 8, 16, 32 for EfficientNet).
    frozen_blocks: with pretrained weights, the stem and this many of the backbone's ``blocks`` are frozen.
    fpn_channels: width ``d`` of the pyramid (256 in the paper; 128 is much cheaper on a CPU).
    rpn: the RPN's section (:class:`~zir.models.detect.rpn.RPNConfig`: anchors, proposal counts, NMS).
    roi_heads: the RoI heads' section (:class:`~zir.models.detect.roi_heads.RoIHeadsConfig`: RoI op, box
        head width, sampling, box loss, post-processing).

    Before the sections existed these settings were flat; the flat names still work (:data:`FLAT_KEYS`).
    """

    num_classes: int = 20
    image_size: int = 512
    min_size: int = 0
    train_scales: tuple[float, ...] = ()
    backbone: str = "efficientnet_lite0"
    pretrained: str = "imagenet"
    backbone_levels: tuple[int, ...] = (2, 3, 4)
    frozen_blocks: int = 2
    fpn_channels: int = 128
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)


#: The flat names the settings had before the sections (README commands, old runs' config.yaml) -> their
#: place now. Applied by ``zir.models.model_config``.
FLAT_KEYS: dict[str, str] = {
    "anchor_sizes": "rpn.anchor_sizes",
    "aspect_ratios": "rpn.aspect_ratios",
    "anchor_offset": "rpn.anchor_offset",
    "rpn_pre_nms_top_n": "rpn.pre_nms_top_n",
    "rpn_post_nms_top_n": "rpn.post_nms_top_n",
    "rpn_nms_iou": "rpn.nms_iou",
    "rpn_batch_size": "rpn.batch_size",
    "roi_op": "roi_heads.op",
    "roi_size": "roi_heads.output_size",
    "box_hidden": "roi_heads.hidden",
    "roi_batch_size": "roi_heads.batch_size",
    "roi_positive_fraction": "roi_heads.positive_fraction",
    "box_loss": "roi_heads.box_loss",
    "score_thresh": "roi_heads.score_thresh",
    "nms_iou": "roi_heads.nms_iou",
    "detections_per_img": "roi_heads.detections_per_img",
}


# --------------------------------------------------------------------------------------------------
# The transform: resize inside the model, as torchvision's GeneralizedRCNNTransform


SIZE_DIVISIBLE = 32  # the coarsest backbone stride: every level then divides the padded batch exactly


def resize_scale(size: tuple[int, int], image_size: int, min_size: int = 0) -> float:
    """Scale factor that brings an ``(h, w)`` image into the working frame."""
    h, w = size
    scale = image_size / max(h, w)
    return min(scale, min_size / min(h, w)) if min_size > 0 else scale


def resize_image(image: Tensor, scale: float) -> Tensor:
    """``(3, h, w)`` -> ``(3, round(h * scale), round(w * scale))``, antialiased when shrinking."""
    h, w = image.shape[-2:]
    new = (max(1, round(h * scale)), max(1, round(w * scale)))
    if new == (h, w):
        return image
    return F.interpolate(image[None], size=new, mode="bilinear", align_corners=False,
                         antialias=scale < 1)[0]


def pad_batch(images: Sequence[Tensor]) -> Tensor:
    """Zero-pad ``(3, h_i, w_i)`` images to one ``(B, 3, H, W)`` with ``H, W`` multiples of 32."""
    H = math.ceil(max(im.shape[-2] for im in images) / SIZE_DIVISIBLE) * SIZE_DIVISIBLE
    W = math.ceil(max(im.shape[-1] for im in images) / SIZE_DIVISIBLE) * SIZE_DIVISIBLE
    batch = images[0].new_zeros((len(images), 3, H, W))
    for b, im in zip(batch, images):
        b[:, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch


# --------------------------------------------------------------------------------------------------
# The model: parts composed, as torchvision's GeneralizedRCNN


@dataclass
class Frame:
    """Where the images of a batch are.

    Attributes:
        sizes: each input image's own ``(h, w)``.
        work_sizes: each image's ``(h, w)`` in the working frame (resized, before padding).
        padded: ``(H, W)`` of the padded batch the backbone saw.
    """

    sizes: list[tuple[int, int]]
    work_sizes: list[tuple[int, int]]
    padded: tuple[int, int]


class ExtraHead(nn.Module):
    """A head added to the two-stage detector (Mask R-CNN's mask head, Panoptic FPN's semantic head).

    It adds its own loss terms and its part of the prediction; the detector calls it after the RoI heads.
    """

    def loss(self, features: list[Tensor], frame: Frame, targets: Sequence[dict[str, Any]],
             gts: Sequence[GroundTruth], rois: SampledRoIs) -> dict[str, Tensor]:
        """This head's loss terms, float32 scalars.

        Args:
            features: FPN levels ``[(B, d, H / s, W / s)]``, finest first.
            frame: where the images are.
            targets: the samples' annotations in the input's pixels (only the instance classes' objects).
            gts: the same objects in the working frame, as the RPN and RoI heads used them.
            rois: the RoIs the box head was trained on (foreground first) and their ground truth.
        """
        raise NotImplementedError

    def predict(self, features: list[Tensor], frame: Frame, detections: Sequence[Detections],
                predictions: list[Any]) -> list[Any]:
        """The predictions so far (``DetectionPrediction`` in each input's pixels, or what an earlier head
        made of them) with this head's part added: one per image."""
        raise NotImplementedError


class FasterRCNN(ZirModel):
    """The two-stage detector: backbone + FPN + RPN + RoI heads (+ extra heads), with the resize in and the
    mapping back out. Faster R-CNN has no extra head; Mask R-CNN adds a mask head, Panoptic FPN a mask
    and a semantic head (their files build it).

    ``loss`` and ``predict`` take float images in [0, 1]: a ``(B, 3, H, W)`` batch (with ``size`` in
    each target for padded batches) or a list of ``(3, h, w)`` images of any sizes. ``loss`` is the union
    of its parts' loss terms; ``predict`` gives ``DetectionPrediction`` unless a head turns them into
    another type (Panoptic FPN: ``PanopticPrediction``).

    Args:
        heads: extra heads by name, run in this order after the RoI heads.
        thing_classes: per data-set class, True if the detector finds its instances (Panoptic FPN's
            things); None: every class. The RPN and RoI heads then know the instance classes only.
        task: what the model does with the data: ``detect``, ``instance`` or ``panoptic``.

    Attributes:
        thing_classes: as given (a list), read by panoptic evaluation and output.
    """

    stages = 2

    def __init__(self, cfg: FasterRCNNConfig, backbone: Backbone, fpn: FPN, rpn: RPN, roi_heads: RoIHeads,
                 heads: Mapping[str, ExtraHead] | None = None, thing_classes: Sequence[bool] | None = None,
                 task: str = "detect") -> None:
        super().__init__()
        self.cfg, self.task = cfg, task
        self.backbone, self.fpn, self.rpn, self.roi_heads = backbone, fpn, rpn, roi_heads
        self.heads = nn.ModuleDict(heads or {})
        self.thing_classes = None if thing_classes is None else [bool(t) for t in thing_classes]
        # data-set class -> instance class (-1: none) and back; None when every class is an instance class
        to_thing = thing_ids = None
        if thing_classes is not None:
            flags = torch.tensor([bool(t) for t in thing_classes], dtype=torch.bool)
            to_thing = torch.full((len(flags),), -1, dtype=torch.long)
            to_thing[flags] = torch.arange(int(flags.sum()))
            thing_ids = torch.arange(len(flags))[flags]
        self.register_buffer("to_thing", to_thing, persistent=False)
        self.register_buffer("thing_ids", thing_ids, persistent=False)
        # normalise with the statistics the backbone's weights expect
        self.set_normalization(backbone.mean, backbone.std)

    def features(self, x: Tensor) -> list[Tensor]:
        """Normalised ``(B, 3, H, W)`` -> pyramid levels ``[(B, d, H / s, W / s)]``, finest first."""
        return self.fpn(self.backbone(x))

    def prepare(self, images: Tensor | Sequence[Tensor], sizes: Sequence[tuple[int, int]] | None = None
                ) -> tuple[Tensor, list[tuple[int, int]]]:
        """Resize each image into the working frame, normalise, pad into one batch.

        Args:
            images: ``(B, 3, H, W)`` or a list of ``(3, h, w)``, in [0, 1].
            sizes: each image's own ``(h, w)`` inside a padded batch (default: the whole tensor).

        Returns:
            ``(batch (B, 3, H', W'), each image's (h, w) in the working frame)``.
        """
        if sizes is None:
            sizes = [tuple(im.shape[-2:]) for im in images]
        frame = self.cfg.image_size
        if self.training and self.cfg.train_scales:  # multi-scale training, one scale per batch
            scales = list(self.cfg.train_scales)
            frame = round(frame * scales[int(torch.randint(len(scales), ()))])
        resized = []
        for im, (h, w) in zip(images, sizes):
            im = resize_image(im[:, :h, :w], resize_scale((h, w), frame, self.cfg.min_size))
            resized.append((im - self.mean[0]) / self.std[0])  # padding stays 0 = the mean colour
        return pad_batch(resized), [tuple(im.shape[-2:]) for im in resized]

    def loss(self, images: Tensor | Sequence[Tensor], targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        """``{"rpn_objectness", "rpn_box", "roi_cls", "roi_box"}`` and each extra head's terms, float32 scalars
        (Ren et al., section 3.2: the sum is trained jointly)."""
        sizes = [tuple(t["size"]) if "size" in t else tuple(im.shape[-2:]) for t, im in zip(targets, images)]
        x, work_sizes = self.prepare(images, sizes)
        frame = Frame(sizes, work_sizes, tuple(x.shape[-2:]))
        if self.to_thing is not None:
            targets = [thing_targets(t, self.to_thing) for t in targets]
        gts = [ground_truth(t, size, work) for t, size, work in zip(targets, sizes, work_sizes)]
        features = self.features(x)
        rpn_out = self.rpn(features, work_sizes)
        roi_losses, rois = self.roi_heads.loss(features, rpn_out.proposals, gts)
        # the RoI heads draw their sample before the RPN: the order of random draws fixes the numbers
        losses = {**self.rpn.loss(rpn_out, gts), **roi_losses}
        for head in self.heads.values():
            losses.update(head.loss(features, frame, targets, gts, rois))
        return losses

    @torch.no_grad()
    def predict(self, images: Tensor | Sequence[Tensor]) -> list[Any]:
        """One prediction per image in its own pixels: detections best first, with what the heads add."""
        if isinstance(images, Tensor) and images.ndim == 3:
            images = images[None]
        sizes = [tuple(im.shape[-2:]) for im in images]
        x, work_sizes = self.prepare(images, sizes)
        frame = Frame(sizes, work_sizes, tuple(x.shape[-2:]))
        features = self.features(x)
        proposals = self.rpn(features, work_sizes).proposals
        detections = self.roi_heads.detect(features, proposals, work_sizes)
        predictions: list[Any] = [to_input_pixels(d.boxes, d.scores, d.labels, work, size)
                                  for d, work, size in zip(detections, work_sizes, sizes)]
        if self.thing_ids is not None:  # instance classes -> data-set classes
            for p in predictions:
                p.labels = self.thing_ids[p.labels]
        for head in self.heads.values():
            predictions = head.predict(features, frame, detections, predictions)
        return predictions


def thing_targets(target: dict[str, Any], to_thing: Tensor) -> dict[str, Any]:
    """A sample with only the objects of instance classes (``to_thing[label] >= 0``), labels renumbered to
    them; its other annotations (``semantic``, ``size``) unchanged."""
    labels = torch.as_tensor(target["labels"]).long()
    keep = to_thing.to(labels.device)[labels] >= 0
    out = {**target, **{k: target[k][keep] for k in ("boxes", "masks", "iscrowd") if k in target}}
    out["labels"] = to_thing.to(labels.device)[labels[keep]]
    return out


def ground_truth(target: dict[str, Any], size: tuple[int, int], work_size: tuple[int, int]) -> GroundTruth:
    """A sample's annotations in the working frame, without degenerate boxes, crowds set apart."""
    boxes = torch.as_tensor(target["boxes"]).as_subclass(Tensor).float().reshape(-1, 4)
    labels = torch.as_tensor(target["labels"], device=boxes.device).long().reshape(-1)
    crowd = torch.as_tensor(target.get("iscrowd", torch.zeros(len(boxes))), device=boxes.device).bool()
    boxes = boxes * boxes.new_tensor([work_size[1] / size[1], work_size[0] / size[0]] * 2)
    index = torch.arange(len(boxes), device=boxes.device)
    # BoxCoder takes the log of box sizes: zero-size boxes must not become targets
    valid = torch.zeros_like(crowd)
    valid[remove_small_boxes(boxes, 1e-2)] = True
    keep = valid & ~crowd
    return GroundTruth(boxes[keep], labels[keep], boxes[valid & crowd], index[keep])


def to_input_pixels(boxes: Tensor, scores: Tensor, labels: Tensor, work_size: tuple[int, int],
                    size: tuple[int, int]) -> DetectionPrediction:
    """Map working-frame detections back to the ``(h, w)`` input image."""
    scale = boxes.new_tensor([size[1] / work_size[1], size[0] / work_size[0]] * 2)
    return DetectionPrediction(boxes=clip(boxes * scale, size).float(), scores=scores.float(), labels=labels)


# --------------------------------------------------------------------------------------------------
# build()


def freeze_blocks(backbone: Backbone, n: int) -> None:
    """Freeze the stem and the first ``n`` of the backbone's ``blocks`` (timm EfficientNet / MobileNet
    layout): every parameter registered before ``blocks.{n}``."""
    if n <= 0:
        return
    names = [name for name, _ in backbone.body.named_parameters()]
    if not any(name.startswith(f"blocks.{n}.") for name in names):
        raise ConfigError(f"frozen_blocks={n}: backbone {backbone.name!r} has no 'blocks.{n}' "
                          "(EfficientNet/MobileNet layout); use frozen_blocks=0")
    for name, p in backbone.body.named_parameters():
        if name.startswith(f"blocks.{n}."):
            break
        p.requires_grad_(False)


def build_parts(cfg: FasterRCNNConfig, num_classes: int) -> tuple[Backbone, FPN, RPN, RoIHeads]:
    """The detector's parts for ``num_classes`` object classes, created in a fixed order (initialisation
    draws random numbers in it)."""
    backbone = build_backbone(cfg.backbone, cfg.pretrained, tuple(cfg.backbone_levels))
    if cfg.pretrained != "none":
        # timm's version: it also freezes BatchNormAct2d (BatchNorm + activation) without dropping the activation
        backbone.body = freeze_batch_norm_2d(backbone.body)
        freeze_blocks(backbone, cfg.frozen_blocks)
    fpn = FPN(backbone.channels, backbone.strides, cfg.fpn_channels, extra_level=True)
    rpn = build_rpn(cfg.rpn, cfg.fpn_channels, fpn.strides)
    # RoIs use P3-P5, not the pooled level
    roi_heads = build_roi_heads(cfg.roi_heads, cfg.fpn_channels, backbone.strides, num_classes)
    return backbone, fpn, rpn, roi_heads


def build(cfg: FasterRCNNConfig) -> FasterRCNN:
    return FasterRCNN(cfg, *build_parts(cfg, cfg.num_classes))
