"""RoI heads: the second stage of Fast R-CNN (Girshick 2015) and Faster R-CNN (Ren et al. 2015).

Each region of interest (a proposal) is cropped from the feature maps to a fixed ``S x S`` grid, fed to
two fully connected layers, and classified into ``K + 1`` classes (background is 0) with a box
regression per object class (Fast R-CNN, section 2):

    features, RoIs (R, 4) -> RoIPooler (R, d, S, S) -> TwoMLPHead (R, hidden)
                          -> BoxPredictor: class logits (R, K + 1), box deltas (R, 4K)

* ``RoIPooler``: RoI Align (He et al. 2017, section 3: bilinear samples, no rounding) or RoI pooling
  (Fast R-CNN, section 2.1: max over a rounded grid), on the FPN level chosen by the size of the RoI
  (Lin et al. 2017, equation 1: ``k = floor(k0 + log2(sqrt(wh) / 224))``, ``k0 = 4``).
* Training (Fast R-CNN, section 2.3): proposals plus the ground-truth boxes are matched to the ground
  truth; IoU >= 0.5 is foreground, [0, 0.5) background; 512 RoIs per image, 25 % foreground. The
  multi-task loss (equation 1) ``L = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v)``: cross-entropy plus
  smooth-L1 (or L1) on the deltas of the ground-truth class only.
* Inference: softmax scores, per-class decoded boxes, clipped, score threshold, NMS per class, the
  best ``detections_per_img``.

The pieces are separate so other detectors compose them: Mask R-CNN uses :meth:`RoIHeads.loss`'s
:class:`SampledRoIs` (foreground RoIs and their ground truth) and the boxes of :meth:`RoIHeads.detect`;
Fast R-CNN gives external proposals (selective search) and a single feature map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.poolers import LevelMapper

from zir.errors import ConfigError
from zir.models.detect.structures import GroundTruth, match_to_ground_truth
from zir.ops import roi_align, roi_pool
from zir.ops.boxes import batched_nms, clip, remove_small_boxes
from zir.ops.coder import RCNN_HEAD_WEIGHTS, BoxCoder
from zir.ops.matching import balanced_sample

ROI_OPS = ("align", "pool")
BOX_LOSSES = ("smooth_l1", "l1")


@dataclass
class RoIHeadsConfig:
    """The RoI heads' settings (a section of the two-stage detectors' configs: ``model_args.roi_heads.hidden=256``).

    Attributes:
        op: ``align`` (RoI Align, Mask R-CNN) or ``pool`` (RoI max pooling, Fast R-CNN).
        output_size: the RoI grid side S (7).
        hidden: width of the two FC layers (fc6, fc7).
        batch_size, positive_fraction: RoIs sampled per image for the loss (512) and the foreground share (0.25).
        box_loss: ``smooth_l1`` or ``l1``, the box regression loss.
        score_thresh, nms_iou, detections_per_img: post-processing of the detections.
    """

    op: str = "align"
    output_size: int = 7
    hidden: int = 512
    batch_size: int = 512
    positive_fraction: float = 0.25
    box_loss: str = "smooth_l1"
    score_thresh: float = 0.05
    nms_iou: float = 0.5
    detections_per_img: int = 100


#: The RoI heads' settings by the flat names they had before they were a section (README commands, old runs'
#: config.yaml) -> their place in a detector's config; part of each two-stage detector's aliases.
ROI_HEADS_FLAT_KEYS: dict[str, str] = {
    "roi_size": "roi_heads.output_size",
    "box_hidden": "roi_heads.hidden",
    "roi_batch_size": "roi_heads.batch_size",
    "roi_positive_fraction": "roi_heads.positive_fraction",
    "box_loss": "roi_heads.box_loss",
    "score_thresh": "roi_heads.score_thresh",
    "nms_iou": "roi_heads.nms_iou",
    "detections_per_img": "roi_heads.detections_per_img",
}


class RoIPooler(nn.Module):
    """Features of each RoI on a fixed grid: ``[(B, d, H_l, W_l)]``, per-image boxes -> ``(R, d, S, S)``.

    Args:
        strides: strides of the feature maps it will be given (powers of two), finest first.
        op: ``align`` (RoI Align, ``aligned=True``) or ``pool`` (RoI max pooling).
        output_size: ``S``.
        sampling_ratio: bilinear samples per bin side for RoI Align (2, as Mask R-CNN).

    With one feature map (no FPN) every RoI uses it. torchvision's ``MultiScaleRoIAlign`` does the same
    level assignment but hard-codes ``aligned=False``, which shifts every sample by half a pixel for
    zir's boxes (exclusive ``x2``, pixel ``x``'s value at ``x + 0.5``); so the level loop is written
    here, with torchvision's ``LevelMapper`` for equation 1.
    """

    def __init__(self, strides: Sequence[int], op: str = "align", output_size: int = 7,
                 sampling_ratio: int = 2) -> None:
        super().__init__()
        if op not in ROI_OPS:
            raise ValueError(f"roi_op must be one of {ROI_OPS}, got {op!r}")
        levels = [math.log2(s) for s in strides]
        if any(lv != int(lv) for lv in levels):
            raise ValueError(f"feature strides must be powers of two, got {list(strides)}")
        self.strides, self.op = list(strides), op
        self.output_size, self.sampling_ratio = output_size, sampling_ratio
        self.mapper = LevelMapper(int(levels[0]), int(levels[-1]), canonical_scale=224, canonical_level=4)

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        features = features[:len(self.strides)]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1)
                          for i, b in enumerate(boxes)]).float()  # (R, 5): image index, x1, y1, x2, y2
        level = self.mapper(list(boxes)) if len(features) > 1 else torch.zeros(len(rois), dtype=torch.int64)
        S = self.output_size
        out = rois.new_zeros((len(rois), features[0].shape[1], S, S))
        for lvl, (x, stride) in enumerate(zip(features, self.strides)):
            idx = torch.where(level == lvl)[0]
            if idx.numel() == 0:
                continue
            # RoI ops in float32: under bf16 autocast the bins' bilinear weights would lose precision
            out[idx] = self._crop(x.float(), rois[idx], 1.0 / stride)
        return out

    def _crop(self, x: Tensor, rois: Tensor, scale: float) -> Tensor:
        S = self.output_size
        if self.op == "align":
            return roi_align(x, rois, S, spatial_scale=scale, sampling_ratio=self.sampling_ratio, aligned=True)
        # roi_pool treats x2/y2 as inclusive (Caffe's convention): move zir's exclusive edges in by a pixel.
        inclusive = rois.clone()
        inclusive[:, 3:] = torch.maximum(rois[:, 3:] - 1, rois[:, 1:3])
        return roi_pool(x, inclusive, S, spatial_scale=scale)


class TwoMLPHead(nn.Module):
    """Fast R-CNN's fc6 and fc7 (section 2): ``(R, d, S, S)`` -> flatten -> FC -> ReLU -> FC -> ReLU ->
    ``(R, hidden)``."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, hidden)
        self.fc7 = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class BoxPredictor(nn.Module):
    """The two sibling layers (Fast R-CNN, section 2.2): ``(R, hidden)`` -> class logits ``(R, K + 1)``
    (0 = background) and per-class box deltas ``(R, 4K)`` for the K object classes."""

    def __init__(self, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(hidden, num_classes + 1)
        self.bbox_pred = nn.Linear(hidden, 4 * num_classes)
        # section 2.3: zero-mean Gaussians with std 0.01 (classification) and 0.001 (regression)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


@dataclass
class SampledRoIs:
    """The RoIs a training step used, per image, for heads that add their own loss (Mask R-CNN).

    Attributes:
        proposals: float32 ``(S_i, 4)`` XYXY, foreground first.
        labels: int64 ``(S_i,)``: ``c + 1`` for zir class ``c``, 0 for background.
        matched: int64 ``(S_i,)``: index into the image's ``GroundTruth.boxes`` (-1 for background).
    """

    proposals: list[Tensor]
    labels: list[Tensor]
    matched: list[Tensor]


class Detections(NamedTuple):
    """One image's detections in the working frame: boxes ``(D, 4)``, scores ``(D,)`` descending,
    labels int64 ``(D,)`` (zir class ids)."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def fast_rcnn_loss(class_logits: Tensor, box_deltas: Tensor, labels: Tensor, box_targets: Tensor,
                   box_loss: str = "smooth_l1") -> tuple[Tensor, Tensor]:
    """Fast R-CNN's multi-task loss (section 2.3, equation 1), in float32.

    Args:
        class_logits: ``(R, K + 1)``.
        box_deltas: ``(R, 4K)``.
        labels: int64 ``(R,)``, 0 = background.
        box_targets: ``(F, 4)`` encoded targets of the ``F`` foreground RoIs (``labels > 0``, in order).
        box_loss: ``smooth_l1`` (beta 1/9, as torchvision) or ``l1``.

    Returns:
        ``(cross-entropy averaged over the R RoIs, box loss summed over the foreground deltas of their
        ground-truth class and divided by R)``.
    """
    if labels.numel() == 0:  # no RoI at all: zero losses that still reach every parameter of the heads
        zero = class_logits.float().sum() * 0 + box_deltas.float().sum() * 0
        return zero, zero
    cls = F.cross_entropy(class_logits.float(), labels)
    fg = torch.where(labels > 0)[0]
    deltas = box_deltas.float().view(len(box_deltas), -1, 4)[fg, labels[fg] - 1]  # (F, 4): t^u only
    if box_loss == "smooth_l1":
        box = F.smooth_l1_loss(deltas, box_targets, beta=1 / 9, reduction="sum")
    elif box_loss == "l1":
        box = F.l1_loss(deltas, box_targets, reduction="sum")
    else:
        raise ValueError(f"box_loss must be smooth_l1 or l1, got {box_loss!r}")
    return cls, box / max(labels.numel(), 1)


class RoIHeads(nn.Module):
    """Sampling, the box branch, its loss and the detection post-processing.

    Args:
        pooler: crops RoI features (:class:`RoIPooler`).
        box_head: ``(R, d, S, S)`` -> ``(R, hidden)`` (:class:`TwoMLPHead`).
        predictor: ``(R, hidden)`` -> logits, deltas (:class:`BoxPredictor`).
        fg_iou: IoU with a ground-truth box at or above which a RoI is foreground (below: background).
        batch_size_per_image, positive_fraction: RoIs sampled per image (512, 0.25).
        box_loss: ``smooth_l1`` or ``l1``.
        score_thresh, nms_iou, detections_per_img: post-processing.
    """

    def __init__(self, pooler: RoIPooler, box_head: nn.Module, predictor: BoxPredictor, fg_iou: float = 0.5,
                 batch_size_per_image: int = 512, positive_fraction: float = 0.25, box_loss: str = "smooth_l1",
                 score_thresh: float = 0.05, nms_iou: float = 0.5, detections_per_img: int = 100) -> None:
        super().__init__()
        self.pooler, self.box_head, self.predictor = pooler, box_head, predictor
        self.fg_iou = fg_iou
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.box_loss = box_loss
        self.score_thresh, self.nms_iou, self.detections_per_img = score_thresh, nms_iou, detections_per_img
        self.coder = BoxCoder(RCNN_HEAD_WEIGHTS)

    def forward(self, features: Sequence[Tensor], proposals: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """The box branch on any RoIs: -> class logits ``(R, K + 1)``, deltas ``(R, 4K)``."""
        return self.predictor(self.box_head(self.pooler(features, proposals)))

    def sample(self, proposals: Sequence[Tensor], targets: Sequence[GroundTruth]) -> SampledRoIs:
        """Add the ground-truth boxes to the proposals, match, and draw each image's mini-batch."""
        out = SampledRoIs([], [], [])
        for props, gt in zip(proposals, targets):
            props = torch.cat([props, gt.boxes.to(props)])
            matched = match_to_ground_truth(gt, props, self.fg_iou, self.fg_iou)
            pos, neg = balanced_sample(matched, self.batch_size_per_image, self.positive_fraction)
            keep = torch.cat([pos, neg])
            out.proposals.append(props[keep])
            out.labels.append(torch.cat([gt.labels[matched[pos]] + 1, torch.zeros_like(neg)]))
            out.matched.append(torch.cat([matched[pos], torch.full_like(neg, -1)]))
        return out

    def loss(self, features: Sequence[Tensor], proposals: Sequence[Tensor],
             targets: Sequence[GroundTruth]) -> tuple[dict[str, Tensor], SampledRoIs]:
        """``{"roi_cls", "roi_box"}`` on a sampled mini-batch, and the sample itself."""
        sampled = self.sample(proposals, targets)
        class_logits, box_deltas = self(features, sampled.proposals)
        box_targets = torch.cat([
            self.coder.encode(gt.boxes[m[m >= 0]], p[m >= 0])
            for p, m, gt in zip(sampled.proposals, sampled.matched, targets)])
        cls, box = fast_rcnn_loss(class_logits, box_deltas, torch.cat(sampled.labels), box_targets, self.box_loss)
        return {"roi_cls": cls, "roi_box": box}, sampled

    def detect(self, features: Sequence[Tensor], proposals: Sequence[Tensor],
               image_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        """Score and refine the proposals and keep the best boxes per image (working frame)."""
        class_logits, box_deltas = self(features, proposals)
        scores = class_logits.float().softmax(dim=1)[:, 1:]  # (R, K): drop the background column
        # (R, K, 4); K from the scores, so that a batch without any RoI keeps its shape
        boxes = self.coder.decode(box_deltas.float().view(len(box_deltas), scores.shape[1], 4),
                                  torch.cat(proposals).float())
        out = []
        for s, b, size in zip(scores.split([len(p) for p in proposals]),
                              boxes.split([len(p) for p in proposals]), image_sizes):
            out.append(self.postprocess(b, s, size))
        return out

    def postprocess(self, boxes: Tensor, scores: Tensor, image_size: tuple[int, int]) -> Detections:
        """``boxes (R, K, 4)`` and ``scores (R, K)`` of one image -> its final :class:`Detections`."""
        K = scores.shape[1]
        boxes = clip(boxes.reshape(-1, 4), image_size)
        labels = torch.arange(K, device=scores.device).repeat(len(scores))
        scores = scores.reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, self.nms_iou)[:self.detections_per_img]  # per class
        return Detections(boxes[keep], scores[keep], labels[keep])


def build_roi_heads(cfg: RoIHeadsConfig, in_channels: int, strides: Sequence[int], num_classes: int) -> RoIHeads:
    """RoI heads for ``num_classes`` object classes on feature maps of ``in_channels`` channels at ``strides``."""
    if cfg.op not in ROI_OPS:
        raise ConfigError(f"roi_heads.op (roi_op) must be one of {', '.join(ROI_OPS)}, got {cfg.op!r}")
    if cfg.box_loss not in BOX_LOSSES:
        raise ConfigError(f"roi_heads.box_loss (box_loss) must be one of {', '.join(BOX_LOSSES)}, got {cfg.box_loss!r}")
    return RoIHeads(
        RoIPooler(strides, cfg.op, cfg.output_size),
        TwoMLPHead(in_channels * cfg.output_size**2, cfg.hidden),
        BoxPredictor(cfg.hidden, num_classes),
        batch_size_per_image=cfg.batch_size, positive_fraction=cfg.positive_fraction, box_loss=cfg.box_loss,
        score_thresh=cfg.score_thresh, nms_iou=cfg.nms_iou, detections_per_img=cfg.detections_per_img)
