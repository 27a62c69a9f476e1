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

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn

from zir.data.contract import Target
from zir.models.backbones import Backbone, build_backbone, freeze_blocks
from zir.models.base import ZirModel
from zir.models.detect.roi_heads import (
    ROI_HEADS_FLAT_KEYS,
    Detections,
    RoIHeads,
    RoIHeadsConfig,
    SampledRoIs,
    build_roi_heads,
)
from zir.models.detect.rpn import RPN, RPNConfig, build_rpn
from zir.models.detect.structures import GroundTruth, ground_truth
from zir.models.detect.transform import batch_images, image_list, to_input_pixels, unpad
from zir.models.fpn import FPN
from zir.models.inference import channels_last, inference_copy


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
    **ROI_HEADS_FLAT_KEYS,
}


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

    def loss(self, features: list[Tensor], frame: Frame, targets: Sequence[Target],
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

    ``loss`` takes a padded ``(B, 3, H, W)`` batch in [0, 1] and its :class:`~zir.data.contract.Target`
    list (each image's ``size``); ``predict`` a ``(B, 3, H, W)`` batch or a list of ``(3, h, w)`` images
    of any sizes. The resize in and the mapping out are ``zir.models.detect.transform``'s. ``loss`` is the union
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

    def features(self, x: Tensor, net: nn.Module | None = None) -> list[Tensor]:
        """Normalised ``(B, 3, H, W)`` -> pyramid levels ``[(B, d, H / s, W / s)]``, finest first; ``net``: a
        module with this model's ``backbone`` and ``fpn`` (default: this model; ``predict`` passes its folded
        copy, :meth:`inference_net`)."""
        if net is None:
            return self.fpn(self.backbone(x))
        return net.fpn(net.backbone(channels_last(x)))

    def inference_net(self) -> nn.Module:
        """The backbone and FPN as ``predict`` runs them: BatchNorm folded, channels-last
        (``zir.models.inference``; checked against the model when built, rebuilt when a weight changed)."""
        # the class's own ``features``: an instance may shadow it (``zir.analysis.analyze`` memoises it per batch)
        return inference_copy(self, {"backbone": self.backbone, "fpn": self.fpn},
                              lambda x, net: FasterRCNN.features(self, x, net), type(self).__name__)

    def prepare(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Resize each ``(3, h, w)`` image in [0, 1] into the working frame, normalise, pad into one batch
        (:func:`~zir.models.detect.transform.batch_images`): ``(batch (B, 3, H', W'), each image's (h, w) in
        the working frame)``."""
        frame = self.cfg.image_size
        if self.training and self.cfg.train_scales:  # multi-scale training, one scale per batch
            scales = list(self.cfg.train_scales)
            frame = round(frame * scales[int(torch.randint(len(scales), ()))])
        return batch_images(images, frame, self.mean, self.std, self.cfg.min_size)

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        """``{"rpn_objectness", "rpn_box", "roi_cls", "roi_box"}`` and each extra head's terms, float32 scalars
        (Ren et al., section 3.2: the sum is trained jointly)."""
        sizes = [t.size for t in targets]
        x, work_sizes = self.prepare(unpad(images, sizes))
        frame = Frame(sizes, work_sizes, tuple(x.shape[-2:]))
        if self.to_thing is not None:
            targets = [thing_targets(t, self.to_thing) for t in targets]
        gts = [ground_truth(t, work) for t, work in zip(targets, work_sizes)]
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
        images = image_list(images)
        sizes = [tuple(im.shape[-2:]) for im in images]
        x, work_sizes = self.prepare(images)
        frame = Frame(sizes, work_sizes, tuple(x.shape[-2:]))
        features = self.features(x, None if self.training else self.inference_net())
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


def thing_targets(target: Target, to_thing: Tensor) -> Target:
    """A target with only the objects of instance classes (``to_thing[label] >= 0``), labels renumbered to
    them; its other annotations (``semantic``, ``size``) unchanged."""
    labels = target.labels.long()
    keep = to_thing.to(labels.device)[labels] >= 0
    return dataclasses.replace(target, boxes=target.boxes[keep], iscrowd=target.iscrowd[keep], difficult=target.difficult[keep],
                               masks=None if target.masks is None else target.masks[keep],
                               labels=to_thing.to(labels.device)[labels[keep]])


# --------------------------------------------------------------------------------------------------
# build()


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
