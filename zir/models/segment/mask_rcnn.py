"""Mask R-CNN (He et al. 2017): Faster R-CNN plus a mask branch, for instance segmentation.

Faster R-CNN's backbone, FPN, RPN and box head (``zir.models.detect.faster_rcnn``) are reused as they are;
a third head, parallel to the box head, predicts one ``M x M`` binary mask per class for each RoI
(section 3)::

    features (FPN P3-P5), RoIs -> RoI Align 14 x 14 -> 4 x (3x3 conv, ReLU) -> 2x2 stride-2 deconv, ReLU
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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zir.data.contract import DetectionPrediction, Target
from zir.models.detect import faster_rcnn
from zir.models.detect.faster_rcnn import FasterRCNN, FasterRCNNConfig
from zir.models.detect.roi_heads import RoIPooler, SampledRoIs
from zir.models.detect.structures import GroundTruth, ground_truth
from zir.models.detect.transform import boxes_to_input, to_input_pixels, unpad
from zir.ops import roi_align
from zir.ops.masks import paste_masks_in_image


@dataclass
class MaskRCNNConfig(FasterRCNNConfig):
    """Faster R-CNN's settings (:class:`~zir.models.detect.faster_rcnn.FasterRCNNConfig`) plus the mask branch's.

    Attributes:
        mask_roi_size: RoI Align grid of the mask branch (14).
        mask_size: side ``M`` of the predicted masks (28 = twice ``mask_roi_size``: one 2x deconvolution).
        mask_channels: width of the mask head's convolutions (256 in the paper; 64 is much cheaper on a CPU).
    """

    mask_roi_size: int = 14
    mask_size: int = 28
    mask_channels: int = 64


# --------------------------------------------------------------------------------------------------
# The mask head


class MaskHead(nn.Module):
    """The FPN mask head (Figure 4, right): ``(R, d, 14, 14)`` -> mask logits ``(R, K, 28, 28)``.

    Four 3x3 convolutions with ReLU, a 2x2 stride-2 transposed convolution with ReLU, and a 1x1
    convolution to one mask per class (no background mask).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.logits = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):  # as Detectron / torchvision: He-normal, zero bias
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(F.relu(self.deconv(self.convs(x))))


# --------------------------------------------------------------------------------------------------
# The model


class MaskRCNN(FasterRCNN):
    """Faster R-CNN (``backbone``, ``fpn``, ``rpn``, ``roi_heads``) plus ``mask_pooler`` and ``mask_head``.

    ``loss`` and ``predict`` take the same inputs as :class:`~zir.models.detect.faster_rcnn.FasterRCNN`;
    targets also carry ``masks`` uint8 ``(N, h, w)`` in the input image's pixels.
    """

    task = "instance"

    def __init__(self, cfg: MaskRCNNConfig, detector: FasterRCNN, mask_pooler: RoIPooler, mask_head: MaskHead) -> None:
        super().__init__(cfg, detector.backbone, detector.fpn, detector.rpn, detector.roi_heads)
        self.mask_pooler, self.mask_head = mask_pooler, mask_head

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        """``{"rpn_objectness", "rpn_box", "roi_cls", "roi_box", "roi_mask"}``, each a float32 scalar."""
        x, work_sizes = self.prepare(unpad(images, [t.size for t in targets]))
        return self.losses_on_features(self.features(x), targets, work_sizes)

    def losses_on_features(self, features: list[Tensor], targets: Sequence[Target],
                           work_sizes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        """The five loss terms from the FPN maps of a prepared batch (Panoptic FPN adds its own term)."""
        gts = [ground_truth(t, work) for t, work in zip(targets, work_sizes)]
        rpn_out = self.rpn(features, work_sizes)
        roi_losses, sampled = self.roi_heads.loss(features, rpn_out.proposals, gts)
        mask_logits, labels, mask_targets = self._mask_batch(features, sampled, gts, targets, work_sizes)
        return {**self.rpn.loss(rpn_out, gts), **roi_losses, "roi_mask": mask_loss(mask_logits, labels, mask_targets)}

    def _mask_batch(self, features: list[Tensor], sampled: SampledRoIs, gts: Sequence[GroundTruth],
                    targets: Sequence[Target], work_sizes: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor]:
        """Mask logits ``(F, K, M, M)``, zir labels ``(F,)`` and targets ``(F, M, M)`` of the positive RoIs."""
        M = self.cfg.mask_size
        boxes, labels, gt_targets = [], [], []
        for props, lab, matched, gt, t, work in zip(sampled.proposals, sampled.labels, sampled.matched,
                                                    gts, targets, work_sizes):
            fg = lab > 0
            boxes.append(props[fg])
            labels.append(lab[fg] - 1)
            # the GT masks are in the input frame: take the RoIs there (inverse of ground_truth's scaling)
            in_input = boxes_to_input(props[fg], work, t.size)
            masks = t.masks.to(props.device)[gt.index]  # (G, h, w), in gts' order
            gt_targets.append(project_masks_on_boxes(masks, in_input, matched[fg], M))
        if sum(len(b) for b in boxes) == 0:  # no positive RoI: an empty batch still reaches every weight
            R = features[0].new_zeros((0, features[0].shape[1], self.cfg.mask_roi_size, self.cfg.mask_roi_size))
        else:
            R = self.mask_pooler(features, boxes)
        return self.mask_head(R), torch.cat(labels), torch.cat(gt_targets)

    @torch.no_grad()
    def predict(self, images: Tensor | Sequence[Tensor]) -> list[DetectionPrediction]:
        """Detections with ``masks`` bool ``(N, h, w)`` in each input image's own pixels, best first."""
        return self.instances(*self.detect_in_working_frame(images))

    def instances(self, features: list[Tensor], detections: Sequence[Any], work_sizes: Sequence[tuple[int, int]],
                  sizes: Sequence[tuple[int, int]]) -> list[DetectionPrediction]:
        """The mask branch on the kept detections (section 3.1), masks pasted into the input images."""
        out = []
        for i, (d, work, size) in enumerate(zip(detections, work_sizes, sizes)):
            pred = to_input_pixels(d.boxes, d.scores, d.labels, work, size)
            if len(d.boxes):
                R = self.mask_pooler([f[i:i + 1] for f in features], [d.boxes])
                probs = self.mask_head(R).float().sigmoid()[torch.arange(len(d.labels)), d.labels]  # (D, M, M)
                pred.masks = paste_masks_in_image(probs, pred.boxes, size) >= 0.5
            else:
                pred.masks = torch.zeros((0, *size), dtype=torch.bool, device=d.boxes.device)
            out.append(pred)
        return out


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


def build(cfg: MaskRCNNConfig) -> MaskRCNN:
    detector = faster_rcnn.build(cfg)
    levels = detector.backbone.strides  # RoIs use P3-P5 as the box head, not the pooled level
    mask_pooler = RoIPooler(levels, "align", cfg.mask_roi_size)
    mask_head = MaskHead(cfg.fpn_channels, cfg.mask_channels, cfg.num_classes)
    return MaskRCNN(cfg, detector, mask_pooler, mask_head)
