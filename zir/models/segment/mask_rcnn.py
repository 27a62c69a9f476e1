"""Mask R-CNN (He et al. 2017): Faster R-CNN plus a mask branch, for instance segmentation.

The two-stage detector of ``zir.models.detect.faster_rcnn`` (backbone, FPN, RPN, box head) is composed with
one extra head, parallel to the box head, that predicts one ``M x M`` binary mask per class for each RoI
(section 3); this file holds only that head, its loss, its config and ``build()``::

    features (FPN P3-P5), RoIs -> RoI Align (or pool: mask_head.roi_op) 14 x 14 -> 4 x (3x3 conv, ReLU) -> 2x2 stride-2 deconv, ReLU
                               -> 1x1 conv -> (R, K, 28, 28) mask logits            (Figure 4, right)

* Training: the mask loss ``L_mask`` is the average per-pixel sigmoid binary cross-entropy of the
  ground-truth class's mask only (section 3, "decouples mask and class prediction"), on positive RoIs
  only. The target is the ground-truth instance mask RoI-aligned to the RoI's ``28 x 28`` grid (the
  RoI's "intersection with its associated ground-truth mask", as torchvision's
  ``project_masks_on_boxes``). ``L = L_cls + L_box + L_mask`` plus the RPN's two terms.
* Inference (section 3.1): the mask branch runs on the kept detections; the mask of the predicted
  class is pasted into the image at full resolution (``zir.ops.masks.paste_masks_in_image``) and
  thresholded at 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zir.data.contract import DetectionPrediction, Target
from zir.errors import ConfigError
from zir.models.detect import faster_rcnn
from zir.models.detect.faster_rcnn import ExtraHead, FasterRCNN, FasterRCNNConfig, Frame
from zir.models.detect.roi_heads import ROI_OPS, Detections, RoIPooler, SampledRoIs
from zir.models.detect.structures import GroundTruth
from zir.models.detect.transform import boxes_to_input
from zir.ops import roi_align
from zir.ops.masks import paste_masks_in_image


@dataclass
class MaskHeadConfig:
    """The mask head's settings (``model_args.mask_head.channels=128``).

    Attributes:
        roi_size: RoI Align grid of the mask head (14).
        mask_size: side ``M`` of the predicted masks (28 = twice ``roi_size``: one 2x deconvolution).
        channels: width of the mask head's convolutions (256 in the paper; 64 is much cheaper on a CPU).
        roi_op: how the mask head crops its RoI features: ``align`` (RoI Align, the paper's) or ``pool``
            (RoI max pooling, Fast R-CNN's quantised grid), to measure the paper's Table 2c claim
            (``benchmarks/roi_ops.py``); independent of the box head's ``roi_heads.op``.
    """

    roi_size: int = 14
    mask_size: int = 28
    channels: int = 64
    roi_op: str = "align"


@dataclass
class MaskRCNNConfig(FasterRCNNConfig):
    """Faster R-CNN's settings (:class:`~zir.models.detect.faster_rcnn.FasterRCNNConfig`) plus the mask head's
    section ``mask_head`` (:class:`MaskHeadConfig`)."""

    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)


#: Flat names of old runs and README commands -> their section.
FLAT_KEYS: dict[str, str] = {
    **faster_rcnn.FLAT_KEYS,
    "mask_roi_size": "mask_head.roi_size",
    "mask_size": "mask_head.mask_size",
    "mask_channels": "mask_head.channels",
    "mask_roi_op": "mask_head.roi_op",
}


# --------------------------------------------------------------------------------------------------
# The mask head


class MaskHead(ExtraHead):
    """The FPN mask head (Figure 4, right): RoI Align ``14 x 14`` on P3-P5 -> mask logits ``(R, K, 28, 28)``.

    Four 3x3 convolutions with ReLU, a 2x2 stride-2 transposed convolution with ReLU, and a 1x1
    convolution to one mask per class (no background mask). As an extra head of the two-stage detector it
    adds ``roi_mask`` to the loss and ``masks`` to the detections.

    Args:
        in_channels: width ``d`` of the FPN levels.
        strides: strides of the levels the RoIs are cropped from, finest first.
        cfg: the head's settings.
        num_classes: object classes K.
    """

    def __init__(self, in_channels: int, strides: Sequence[int], cfg: MaskHeadConfig, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.roi_op not in ROI_OPS:
            raise ConfigError(f"mask_head.roi_op (mask_roi_op) must be one of {', '.join(ROI_OPS)}, "
                              f"got {cfg.roi_op!r}")
        self.pooler = RoIPooler(strides, cfg.roi_op, cfg.roi_size)
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(in_channels if i == 0 else cfg.channels, cfg.channels, 3, padding=1),
                       nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(cfg.channels, cfg.channels, 2, stride=2)
        self.logits = nn.Conv2d(cfg.channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):  # as Detectron / torchvision: He-normal, zero bias
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """RoI features ``(R, d, 14, 14)`` -> mask logits ``(R, K, 28, 28)``."""
        return self.logits(F.relu(self.deconv(self.convs(x))))

    def loss(self, features: list[Tensor], frame: Frame, targets: Sequence[Target],
             gts: Sequence[GroundTruth], rois: SampledRoIs) -> dict[str, Tensor]:
        """``{"roi_mask": L_mask}`` on the positive RoIs; targets carry ``masks`` uint8 ``(N, H, W)`` in the
        (padded) input image's pixels."""
        M = self.cfg.mask_size
        boxes, labels, gt_targets = [], [], []
        for props, lab, matched, gt, t, work in zip(rois.proposals, rois.labels, rois.matched,
                                                    gts, targets, frame.work_sizes):
            fg = lab > 0
            boxes.append(props[fg])
            labels.append(lab[fg] - 1)
            # the GT masks are in the input frame: take the RoIs there (inverse of ground_truth's scaling)
            in_input = boxes_to_input(props[fg], work, t.size)
            masks = t.masks.to(props.device)[gt.index]  # (G, h, w), in gts' order
            gt_targets.append(project_masks_on_boxes(masks, in_input, matched[fg], M))
        if sum(len(b) for b in boxes) == 0:  # no positive RoI: an empty batch still reaches every weight
            R = features[0].new_zeros((0, features[0].shape[1], self.cfg.roi_size, self.cfg.roi_size))
        else:
            R = self.pooler(features, boxes)
        return {"roi_mask": mask_loss(self(R), torch.cat(labels), torch.cat(gt_targets))}

    def predict(self, features: list[Tensor], frame: Frame, detections: Sequence[Detections],
                predictions: list[DetectionPrediction]) -> list[DetectionPrediction]:
        """The mask of each kept detection's class (section 3.1), pasted into the input image at full
        resolution and thresholded at 0.5: ``masks`` bool ``(N, h, w)``."""
        for i, (d, pred, size) in enumerate(zip(detections, predictions, frame.sizes)):
            if len(d.boxes):
                R = self.pooler([f[i:i + 1] for f in features], [d.boxes])
                probs = self(R).float().sigmoid()[torch.arange(len(d.labels)), d.labels]  # (D, M, M)
                pred.masks = paste_masks_in_image(probs, pred.boxes, size) >= 0.5
            else:
                pred.masks = torch.zeros((0, *size), dtype=torch.bool, device=d.boxes.device)
        return predictions


# --------------------------------------------------------------------------------------------------
# Targets and loss


def project_masks_on_boxes(masks: Tensor, boxes: Tensor, matched: Tensor, M: int) -> Tensor:
    """Mask targets: each RoI's matched ground-truth mask, RoI-aligned to ``M x M``.

    Args:
        masks: ``(G, H, W)`` binary ground-truth masks (any dtype).
        boxes: float ``(R, 4)`` XYXY RoIs in the masks' pixels.
        matched: int64 ``(R,)`` index of each RoI's mask in ``masks``.
        M: the target side.

    Returns:
        float32 ``(R, M, M)`` in [0, 1]: the mask's coverage at each cell (soft at the edges, as torchvision).

    ``aligned=True`` because zir's pixel ``x`` has its centre at ``x + 0.5``; ``sampling_ratio=2`` as the
    RoI heads: a 56-pixel RoI gives each cell the mean of a 2x2 block of mask pixels.
    """
    if len(boxes) == 0:
        return boxes.new_zeros((0, M, M), dtype=torch.float32)
    rois = torch.cat([matched[:, None].to(boxes), boxes], dim=1).float()  # (R, 5): mask index, box
    return roi_align(masks[:, None].float(), rois, M, spatial_scale=1.0, sampling_ratio=2, aligned=True)[:, 0]


def mask_loss(mask_logits: Tensor, labels: Tensor, mask_targets: Tensor) -> Tensor:
    """``L_mask`` (section 3): mean per-pixel sigmoid BCE on the ground-truth class's mask only, in float32.

    Args:
        mask_logits: ``(F, K, M, M)`` of the positive RoIs.
        labels: int64 ``(F,)`` zir class ids (0-based).
        mask_targets: ``(F, M, M)`` in [0, 1].
    """
    if labels.numel() == 0:
        return mask_logits.float().sum() * 0
    logits = mask_logits.float()[torch.arange(len(labels), device=labels.device), labels]  # (F, M, M)
    return F.binary_cross_entropy_with_logits(logits, mask_targets.float())


# --------------------------------------------------------------------------------------------------
# build()


def build(cfg: MaskRCNNConfig) -> FasterRCNN:
    backbone, fpn, rpn, roi_heads = faster_rcnn.build_parts(cfg, cfg.num_classes)
    # the mask head crops P3-P5 as the box head does, not the pooled level
    mask_head = MaskHead(cfg.fpn_channels, backbone.strides, cfg.mask_head, cfg.num_classes)
    return FasterRCNN(cfg, backbone, fpn, rpn, roi_heads, {"mask": mask_head}, task="instance")
