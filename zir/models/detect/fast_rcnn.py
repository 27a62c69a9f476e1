"""Fast R-CNN (Girshick 2015): one shared feature map per image, RoI pooling, trained end to end.

R-CNN runs the CNN once per proposal; Fast R-CNN runs it once per image and crops each proposal's
features from the shared map (section 2)::

    image -> selective search proposals                     zir.models.detect.proposals (OpenCV contrib)
    image -> resize (longer side image_size) -> normalise -> backbone -> one map at stride 16
      -> RoI max pooling to 7 x 7 (section 2.1)             zir.models.detect.roi_heads (op="pool")
      -> fc6, fc7 -> softmax over K + 1 classes and per-class box deltas (section 2.2)
      -> per-class NMS -> boxes mapped back to the input image's pixels

Training (section 2.3) is one network and one loss: the multi-task loss ``L = L_cls + [u >= 1] L_loc``
on mini-batches of RoIs, 25 % of them foreground (IoU >= 0.5 with a ground-truth box), sampled from the
proposals plus the ground-truth boxes (:class:`zir.models.detect.roi_heads.RoIHeads`, shared with Faster
R-CNN). The proposals stay fixed during training, so they are computed once per training image
(:class:`~zir.models.detect.proposals.ProposalCache`); prediction always searches afresh, so its time includes
selective search, the cost Faster R-CNN's RPN removes.

The backbone is EfficientNet-Lite0 cut at stride 16 (the paper's conv5 of VGG16 is at stride 16), its
BatchNorm frozen and its first blocks frozen as in Faster R-CNN (the paper fine-tunes from conv3_1 on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from timm.layers import freeze_batch_norm_2d
from torch import Tensor

from zir.data.contract import DetectionPrediction, Target
from zir.errors import ConfigError
from zir.models.backbones import Backbone, build_backbone, freeze_blocks
from zir.models.base import ZirModel
from zir.models.detect.proposals import MODES, ProposalCache, SelectiveSearch
from zir.models.detect.roi_heads import ROI_HEADS_FLAT_KEYS, RoIHeads, RoIHeadsConfig, build_roi_heads
from zir.models.detect.structures import ground_truth
from zir.models.detect.transform import batch_images, boxes_to_working, image_list, to_input_pixels, unpad


@dataclass
class FastRCNNConfig:
    """Attributes:
    num_classes: object classes K (background is added internally).
    image_size: the working frame's longer side in pixels (the paper resizes the shorter side to 600).
    backbone, pretrained: a timm name and ``imagenet`` (offline), ``timm`` or ``none``.
    backbone_level: the timm ``out_indices`` entry whose map the RoIs are pooled from (3: stride 16).
    frozen_blocks: with pretrained weights, the stem and this many of the backbone's blocks are frozen.
    roi_heads: the RoI heads' section (:class:`~zir.models.detect.roi_heads.RoIHeadsConfig`, shared with
        Faster R-CNN), with the paper's settings: RoI max pooling to 7 x 7, 64 RoIs per image, NMS IoU 0.3
        (fc6 and fc7 are 4096 wide in the paper, ``hidden`` 512 here).
    ss_mode, ss_size, max_proposals: selective search (``zir.models.detect.proposals``): ``fast`` or
        ``quality``, the longer side it runs at, the most proposals kept per image (2000).

    The RoI settings' flat names of older zir still work (:data:`FLAT_KEYS`).
    """

    num_classes: int = 20
    image_size: int = 512
    backbone: str = "efficientnet_lite0"
    pretrained: str = "imagenet"
    backbone_level: int = 3
    frozen_blocks: int = 2
    roi_heads: RoIHeadsConfig = field(default_factory=lambda: RoIHeadsConfig(op="pool", batch_size=64, nms_iou=0.3))
    ss_mode: str = "fast"
    ss_size: int = 256
    max_proposals: int = 2000


#: Flat names of old runs and README commands -> their section.
FLAT_KEYS: dict[str, str] = dict(ROI_HEADS_FLAT_KEYS)


class FastRCNN(ZirModel):
    """Backbone (one map) + RoI heads on external selective search proposals.

    ``loss`` takes a padded ``(B, 3, H, W)`` batch in [0, 1] and its :class:`~zir.data.contract.Target`
    list; ``predict`` a ``(B, 3, H, W)`` batch or a list of ``(3, h, w)`` images of any sizes.
    """

    task = "detect"

    def __init__(self, cfg: FastRCNNConfig, backbone: Backbone, roi_heads: RoIHeads, search: SelectiveSearch) -> None:
        super().__init__()
        self.cfg, self.backbone, self.roi_heads, self.search = cfg, backbone, roi_heads, search
        self.train_proposals = ProposalCache(search)  # training images repeat every epoch
        self.set_normalization(backbone.mean, backbone.std)

    def prepare(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Resize each ``(3, h, w)`` image into the working frame, normalise, pad:
        ``(batch (B, 3, H', W'), each image's working (h, w))``."""
        return batch_images(images, self.cfg.image_size, self.mean, self.std)

    def proposals(self, images: Sequence[Tensor], work_sizes: Sequence[tuple[int, int]], cached: bool) -> list[Tensor]:
        """Selective search on each ``(3, h, w)`` input image, boxes scaled into the working frame: ``[(N_i, 4)]``."""
        search = self.train_proposals if cached else self.search
        return [boxes_to_working(search(im).to(im.device), tuple(im.shape[-2:]), work)
                for im, work in zip(images, work_sizes)]

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        """``{"roi_cls", "roi_box"}``: the multi-task loss (section 2.3, equation 1) on sampled RoIs."""
        images = unpad(images, [t.size for t in targets])
        x, work_sizes = self.prepare(images)
        gts = [ground_truth(t, work) for t, work in zip(targets, work_sizes)]
        proposals = self.proposals(images, work_sizes, cached=True)
        features = self.backbone(x)
        losses, _ = self.roi_heads.loss(features, proposals, gts)  # adds the GT boxes to the proposals
        return losses

    @torch.no_grad()
    def predict(self, images: Tensor | Sequence[Tensor]) -> list[DetectionPrediction]:
        """Detections in each input image's own pixels, best first (none where selective search finds
        no region)."""
        images = image_list(images)
        sizes = [tuple(im.shape[-2:]) for im in images]
        x, work_sizes = self.prepare(images)
        proposals = self.proposals(images, work_sizes, cached=False)
        detections = self.roi_heads.detect(self.backbone(x), proposals, work_sizes)
        return [to_input_pixels(d.boxes, d.scores, d.labels, work, size)
                for d, work, size in zip(detections, work_sizes, sizes)]


def build(cfg: FastRCNNConfig) -> FastRCNN:
    if cfg.ss_mode not in MODES:
        raise ConfigError(f"ss_mode must be one of {', '.join(MODES)}, got {cfg.ss_mode!r}")
    backbone = build_backbone(cfg.backbone, cfg.pretrained, (cfg.backbone_level,))
    if cfg.pretrained != "none":
        backbone.body = freeze_batch_norm_2d(backbone.body)
        freeze_blocks(backbone, cfg.frozen_blocks)
    roi_heads = build_roi_heads(cfg.roi_heads, backbone.channels[0], backbone.strides, cfg.num_classes)
    search = SelectiveSearch(cfg.ss_mode, cfg.ss_size, cfg.max_proposals)
    return FastRCNN(cfg, backbone, roi_heads, search)
