"""Faster R-CNN (Ren et al. 2015) with a Feature Pyramid Network (Lin et al. 2017).

A two-stage detector: a Region Proposal Network proposes boxes that may hold an object, and the RoI
heads of Fast R-CNN (Girshick 2015) classify and refine each of them, both on shared convolutional
features (Ren et al., section 3)::

    image -> resize (longer side image_size) -> normalise -> pad to a multiple of 32
                                                           zir.models.detect.transform
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

The parts are separate modules so that Mask R-CNN adds a mask head by composition
(``FasterRCNN.features``, ``rpn``, ``roi_heads.loss`` returning its :class:`SampledRoIs`,
``roi_heads.detect``) and Fast R-CNN reuses the RoI heads with external proposals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from timm.layers import freeze_batch_norm_2d
from torch import Tensor

from zir.data.contract import DetectionPrediction, Target
from zir.errors import ConfigError
from zir.models.backbones import Backbone, build_backbone, freeze_blocks
from zir.models.base import ZirModel
from zir.models.detect.roi_heads import ROI_OPS, BoxPredictor, RoIHeads, RoIPooler, TwoMLPHead
from zir.models.detect.rpn import RPN
from zir.models.detect.structures import ground_truth
from zir.models.detect.transform import batch_images, image_list, to_input_pixels, unpad
from zir.models.fpn import FPN


@dataclass
class FasterRCNNConfig:
    """Attributes:
    num_classes: object classes K (background is added internally).
    image_size: the working frame's longer side in pixels: ``predict`` resizes any image to it and maps
        boxes back (torchvision's ``max_size``).
    min_size: if > 0, also limit the shorter side to this (torchvision's ``min_size``: the scale is
        ``min(min_size / short side, image_size / long side)``); 0 = longer side only.
    backbone: a timm model name (``zir.models.backbones``); ``pretrained``: ``imagenet``, ``timm``, ``none``.
    backbone_levels: timm ``out_indices`` feeding the FPN (2, 3, 4: strides 8, 16, 32 for EfficientNet).
    frozen_blocks: with pretrained weights, the stem and this many of the backbone's ``blocks`` are frozen.
    fpn_channels: width ``d`` of the pyramid (256 in the paper; 128 is much cheaper on a CPU).
    anchor_sizes: per pyramid level (the backbone's levels, then the pooled one), anchor sizes in pixels.
    aspect_ratios: anchor ``height / width`` ratios, the same at every level.
    anchor_offset: anchor centre within its cell: 0.5 (centred, zir) or 0.0 (torchvision).
    rpn_pre_nms_top_n, rpn_post_nms_top_n: ``[train, test]`` proposals per level before NMS, per image
        after it.
    rpn_nms_iou: the proposals' NMS IoU (0.7); rpn_batch_size: anchors sampled per image (256).
    roi_op: ``align`` (RoI Align, Mask R-CNN) or ``pool`` (RoI max pooling, Fast R-CNN).
    roi_size: RoI grid side S (7); box_hidden: width of the two FC layers.
    roi_batch_size, roi_positive_fraction: RoIs sampled per image (512) and the foreground share (0.25).
    box_loss: ``smooth_l1`` or ``l1``, the RoI heads' box regression loss (the RPN's is smooth-L1).
    train_scales: multi-scale training: each training batch works at ``image_size`` times one of these,
        drawn at random (e.g. ``[0.75, 0.875, 1.0]``); empty: always ``image_size``. Prediction always
        uses ``image_size``.
    score_thresh, nms_iou, detections_per_img: post-processing of the detections.
    """

    num_classes: int = 20
    image_size: int = 512
    min_size: int = 0
    backbone: str = "efficientnet_lite0"
    pretrained: str = "imagenet"
    backbone_levels: tuple[int, ...] = (2, 3, 4)
    frozen_blocks: int = 2
    fpn_channels: int = 128
    anchor_sizes: tuple[tuple[float, ...], ...] = ((32, 48), (64, 96), (128, 192), (256, 384))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_offset: float = 0.5
    rpn_pre_nms_top_n: tuple[int, int] = (1000, 500)
    rpn_post_nms_top_n: tuple[int, int] = (1000, 100)
    rpn_nms_iou: float = 0.7
    rpn_batch_size: int = 256
    roi_op: str = "align"
    roi_size: int = 7
    box_hidden: int = 512
    roi_batch_size: int = 512
    roi_positive_fraction: float = 0.25
    box_loss: str = "smooth_l1"
    train_scales: tuple[float, ...] = ()
    score_thresh: float = 0.05
    nms_iou: float = 0.5
    detections_per_img: int = 100


# --------------------------------------------------------------------------------------------------
# The model


class FasterRCNN(ZirModel):
    """Backbone + FPN + RPN + RoI heads, with the resize in and the mapping back out
    (``zir.models.detect.transform``).

    ``loss`` takes a padded ``(B, 3, H, W)`` batch in [0, 1] and its :class:`~zir.data.contract.Target`
    list (each image's ``size``); ``predict`` a ``(B, 3, H, W)`` batch or a list of ``(3, h, w)``
    images of any sizes.
    """

    task = "detect"
    stages = 2

    def __init__(self, cfg: FasterRCNNConfig, backbone: Backbone, fpn: FPN, rpn: RPN, roi_heads: RoIHeads) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone, self.fpn, self.rpn, self.roi_heads = backbone, fpn, rpn, roi_heads
        # normalise with the statistics the backbone's weights expect
        self.set_normalization(backbone.mean, backbone.std)

    def features(self, x: Tensor) -> list[Tensor]:
        """Normalised ``(B, 3, H, W)`` -> pyramid levels ``[(B, d, H / s, W / s)]``, finest first."""
        return self.fpn(self.backbone(x))

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
        """``{"rpn_objectness", "rpn_box", "roi_cls", "roi_box"}``, each a float32 scalar."""
        x, work_sizes = self.prepare(unpad(images, [t.size for t in targets]))
        gts = [ground_truth(t, work) for t, work in zip(targets, work_sizes)]
        features = self.features(x)
        rpn_out = self.rpn(features, work_sizes)
        roi_losses, _ = self.roi_heads.loss(features, rpn_out.proposals, gts)
        return {**self.rpn.loss(rpn_out, gts), **roi_losses}

    def detect_in_working_frame(self, images: Tensor | Sequence[Tensor]) -> tuple[list[Tensor], list, list, list]:
        """The shared first half of ``predict`` (Mask R-CNN's too): resize, backbone + FPN, RPN, box head.

        Returns:
            ``(features, detections, work_sizes, sizes)``: FPN maps, per-image detections in the working
            frame, each image's working and original ``(h, w)``.
        """
        images = image_list(images)
        sizes = [tuple(im.shape[-2:]) for im in images]
        x, work_sizes = self.prepare(images)
        features = self.features(x)
        proposals = self.rpn(features, work_sizes).proposals
        return features, self.roi_heads.detect(features, proposals, work_sizes), work_sizes, sizes

    @torch.no_grad()
    def predict(self, images: Tensor | Sequence[Tensor]) -> list[DetectionPrediction]:
        """Detections in each input image's own pixels, best first."""
        _, detections, work_sizes, sizes = self.detect_in_working_frame(images)
        return [to_input_pixels(d.boxes, d.scores, d.labels, work, size)
                for d, work, size in zip(detections, work_sizes, sizes)]


# --------------------------------------------------------------------------------------------------
# build()


def build(cfg: FasterRCNNConfig) -> FasterRCNN:
    if cfg.roi_op not in ROI_OPS:
        raise ConfigError(f"roi_op must be one of {', '.join(ROI_OPS)}, got {cfg.roi_op!r}")
    if cfg.box_loss not in ("smooth_l1", "l1"):
        raise ConfigError(f"box_loss must be smooth_l1 or l1, got {cfg.box_loss!r}")
    backbone = build_backbone(cfg.backbone, cfg.pretrained, tuple(cfg.backbone_levels))
    if cfg.pretrained != "none":
        # timm's version: it also freezes BatchNormAct2d (BatchNorm + activation) without dropping the activation
        backbone.body = freeze_batch_norm_2d(backbone.body)
        freeze_blocks(backbone, cfg.frozen_blocks)
    fpn = FPN(backbone.channels, backbone.strides, cfg.fpn_channels, extra_level=True)
    if len(cfg.anchor_sizes) != len(fpn.strides):
        raise ConfigError(f"anchor_sizes has {len(cfg.anchor_sizes)} levels but the pyramid has "
                          f"{len(fpn.strides)} (strides {fpn.strides}); give one tuple of sizes per level")
    rpn = RPN(cfg.fpn_channels, fpn.strides, cfg.anchor_sizes, [cfg.aspect_ratios] * len(fpn.strides),
              pre_nms_top_n=tuple(cfg.rpn_pre_nms_top_n), post_nms_top_n=tuple(cfg.rpn_post_nms_top_n),
              nms_iou=cfg.rpn_nms_iou, batch_size_per_image=cfg.rpn_batch_size, anchor_offset=cfg.anchor_offset)
    roi_heads = RoIHeads(
        RoIPooler(backbone.strides, cfg.roi_op, cfg.roi_size),  # RoIs use P3-P5, not the pooled level
        TwoMLPHead(cfg.fpn_channels * cfg.roi_size**2, cfg.box_hidden),
        BoxPredictor(cfg.box_hidden, cfg.num_classes),
        batch_size_per_image=cfg.roi_batch_size, positive_fraction=cfg.roi_positive_fraction,
        box_loss=cfg.box_loss, score_thresh=cfg.score_thresh, nms_iou=cfg.nms_iou,
        detections_per_img=cfg.detections_per_img)
    return FasterRCNN(cfg, backbone, fpn, rpn, roi_heads)
