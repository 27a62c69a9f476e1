"""An anchor-free one-stage detector with a decoupled head, task-aligned assignment and DFL boxes: the
modern one-stage design (YOLOv8 / YOLO11, NanoDet-Plus, PP-PicoDet), on zir's offline ImageNet backbone.

The lecture's chart says one-stage detectors are much faster than two-stage ones at a small cost in
accuracy; YOLO v1 (``yolo_v1.py``) is the idea as taught. What closed the accuracy gap since then, each
free or nearly free at inference::

    image -> resize (longer side image_size) -> normalise -> pad to a multiple of 32   zir.models.detect.transform
      -> backbone (EfficientNet-Lite0, ImageNet weights offline; strides 8/16/32)   zir.models.backbones
         (the photo recipe cuts it after stride 16: ``backbone_levels=(2, 3)``, a quarter less time)
      -> FPN top-down (Lin et al. 2017)                                               zir.models.fpn
         + PAN bottom-up path (Liu et al. 2018, "Path Aggregation Network", section 3.1)   PAN below
           (``extra_levels``: the path goes on past the backbone's coarsest map, stride 32 from stride 16)
      -> decoupled head per level (YOLOX, Ge et al. 2021, section 2.1: +1.1 AP): a classification branch
         (C logits per point) and a box branch (4 distributions over 0..R distances per point)
      -> anchor-free points: every cell centre of every level predicts (FCOS, Tian et al. 2019)
      -> box side = expectation of its distribution (GFL, Li et al. 2020, eq. 5): a softmax and a matmul
      -> class scores (sigmoid) -> score threshold -> per-class NMS (torchvision) -> input image's pixels

Training (``loss``): TOOD's task-aligned assigner (Feng et al. 2021; ``zir.ops.assign``) picks, per object,
the ``topk`` points inside it whose score and predicted box agree best (``s^alpha * u^beta``); their class
target is that alignment, normalised (a quality, not 1). The loss is YOLOv8's three terms
(``zir.ops.losses``): BCE (or VarifocalNet's loss) towards those targets, CIoU (Zheng et al. 2020) on the
decoded boxes and GFL's distribution focal loss on the distances, the box terms weighted by the target
quality, all divided by the batch's total target quality.

Bad input: an image without objects trains its points as negatives only; a box smaller than a pixel in the
working frame is dropped with a warning that counts them (it has no point inside it and no valid CIoU).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn
from torchvision.ops import roi_align

from zir.data.contract import DetectionPrediction, Target
from zir.errors import ConfigError
from zir.models.backbones import build_backbone, freeze_blocks
from zir.models.base import ZirModel, lr_groups
from zir.models.detect.transform import batch_images, boxes_to_working, image_list, to_input_pixels, unpad
from zir.models.fpn import FPN
from zir.models.inference import channels_last, inference_copy
from zir.ops.assign import anchor_points, task_aligned_assign
from zir.ops.boxes import Size, aligned_iou, batched_nms, clip, weighted_merge
from zir.ops.coder import BoxCoder, decode_ltrb, dfl_expectation, encode_ltrb
from zir.ops.losses import (
    complete_box_iou_loss,
    distribution_focal_loss,
    power_complete_box_iou_loss,
    varifocal_loss,
)


@dataclass
class AnchorFreeConfig:
    """Attributes:
    num_classes: C, object classes (filled from the data).
    image_size: the working frame's longer side in pixels (``predict`` resizes every image to it).
    train_scales: multi-scale training: each training batch works at ``image_size`` times one of these,
        drawn at random (e.g. ``[0.75, 1.0, 1.25]``); empty: always ``image_size``.
    backbone, pretrained: a timm model (``zir.models.backbones``) and its weights: ``imagenet`` (offline),
        ``timm`` or ``none``.
    backbone_levels: timm ``out_indices`` of the maps the neck takes (2, 3, 4: strides 8, 16, 32); the
        backbone's blocks after the last one are cut off (``Backbone``; EfficientNet-Lite0's stride-32 blocks are about a
        quarter of its time at 320 px).
    extra_levels: levels the neck adds after the backbone's coarsest map by stride-2 convolutions (``PAN``):
        ``backbone_levels=(2, 3)`` with ``extra_levels=1`` gives strides 8, 16, 32 from a backbone cut at 16.
    frozen_blocks: with pretrained weights, the stem and this many of the backbone's blocks are frozen.
    backbone_lr: the backbone's learning rate as a fraction of ``train.lr`` (the neck's and head's), as the
        classifier's fine-tuning (1: one rate for all).
    neck_channels: width of the FPN/PAN levels and of the head's branches (YOLOv8n: 64).
    head_convs: 3x3 conv-BN-SiLU layers in each branch of the decoupled head (YOLOv8: 2).
    head: how those layers are built: ``dense`` (YOLOv8: full 3x3 convolutions in both branches), ``light``
        (YOLOv10's "lightweight classification head", Wang et al. 2024, as in YOLO11: the classification
        branch's layers depthwise-separable, a 3x3 depthwise and a 1x1 pointwise conv each; the box branch
        dense) or ``depthwise`` (both branches depthwise-separable, as PP-PicoDet's and NanoDet-Plus's heads;
        3x3 depthwise kernels unless ``head_kernel``). At 320 px the head takes 0.32 G of the network's 1.18 G
        multiply-adds at ``dense``, 0.18 G at ``light``, 0.05 G at ``depthwise`` (README: raccoon accuracy and
        onnxruntime speed of each).
    head_kernel: the depthwise convolutions' kernel in the ``light`` and ``depthwise`` heads: 3, or 5 as
        PP-PicoDet's and NanoDet-Plus's heads (a wider view of each point for a few more multiply-adds).
    reg_max: ``R``: each box side is a distribution over the distances ``0..R`` in units of the level's
        stride (YOLOv8: 15, i.e. 16 bins); sides longer than ``R`` strides are out of reach.
    topk, alpha, beta: the task-aligned assigner's positives per object and exponents of ``s^alpha u^beta``
        (YOLOv8: 10, 0.5, 6).
    cls_loss: ``bce`` (YOLOv8) or ``varifocal`` (VarifocalNet; PP-YOLOE) towards the aligned targets.
    iou_power: the box loss is CIoU (1, YOLOv8) or Alpha-IoU's power CIoU with this power (3 as the paper:
        more weight on boxes that already overlap well, for the high-IoU thresholds of mAP50-95).
    cls_weight, box_weight, dfl_weight: the loss terms' weights (YOLOv8: 0.5, 7.5, 1.5).
    score_thresh: class score below which detections are dropped (low for mAP evaluation).
    nms_iou: per-class NMS IoU threshold.
    box_voting: 0: plain NMS; ``p > 0``: box voting (Gidaris and Komodakis 2015, as OverFeat's merging,
        ``zir.ops.boxes.weighted_merge``): each kept box becomes the mean of the boxes it suppresses,
        weighted by their scores to the power ``p`` (a high ``p`` lets only the near-best boxes vote).
    pre_nms_top_n: best (point, class) pairs per image that reach NMS.
    max_detections: per image, after NMS.
    refine: 0: one stage; ``K > 0``: a light second look at the best ``K`` detections of each image after NMS
        (Cascade R-CNN's refinement stage, Cai and Vasconcelos 2018, on a one-stage detector as BorderDet,
        Qiu et al. 2020): RoIAlign of the finest neck level over each box and a small MLP that predicts R-CNN's
        deltas of the true box from it (:class:`BoxRefiner`).
    refine_weight: the refinement's loss weight (smooth L1 on the deltas, BCE on the predicted IoU).
    refine_score: ``b`` in ``score^(1 - b) * IoU^b``: how much the refiner's predicted IoU counts in a refined
        detection's score (0: not at all; 0.5: PP-YOLO's IoU-aware geometric mean), the image's detections then
        sorted again.
    """

    num_classes: int = 20
    image_size: int = 320
    train_scales: tuple[float, ...] = ()
    backbone: str = "efficientnet_lite0"
    pretrained: str = "imagenet"
    backbone_levels: tuple[int, ...] = (2, 3, 4)
    extra_levels: int = 0
    frozen_blocks: int = 2
    backbone_lr: float = 1.0
    neck_channels: int = 64
    head_convs: int = 2
    head: str = "dense"
    head_kernel: int = 3
    reg_max: int = 15
    topk: int = 10
    alpha: float = 0.5
    beta: float = 6.0
    cls_loss: str = "bce"
    iou_power: float = 1.0
    cls_weight: float = 0.5
    box_weight: float = 7.5
    dfl_weight: float = 1.5
    score_thresh: float = 0.05
    nms_iou: float = 0.6
    box_voting: float = 0.0
    pre_nms_top_n: int = 1000
    max_detections: int = 100
    refine: int = 0
    refine_weight: float = 1.0
    refine_score: float = 0.0


CLS_LOSSES = ("bce", "varifocal")
#: settings that act after the network, so a trained model can be scored or timed with other values of them
#: (``benchmarks/after_network.py``, ``detect.py --latency --set``); ``refine`` only up to the trained refiner
AFTER_NETWORK = ("score_thresh", "nms_iou", "pre_nms_top_n", "box_voting", "refine", "refine_score")
HEADS = ("dense", "light", "depthwise")


# --------------------------------------------------------------------------------------------------
# Blocks


def conv_bn_silu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv -> BatchNorm -> SiLU, YOLOv8's ``Conv``."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU(inplace=True))


def separable_bn_silu(c_in: int, c_out: int, k: int = 3) -> nn.Sequential:
    """k x k depthwise conv -> BN -> SiLU, then 1x1 conv -> BN -> SiLU (MobileNet's depthwise-separable layer;
    YOLOv10's light classification head): at ``k = 3`` about ``9 / c_out + 1 / 9`` of a dense 3x3 conv's
    multiply-adds."""
    return nn.Sequential(nn.Sequential(nn.Conv2d(c_in, c_in, k, 1, k // 2, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
                                       nn.SiLU(inplace=True)),
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU(inplace=True)))


class PAN(nn.Module):
    """FPN's top-down pathway, then PANet's bottom-up path augmentation (Liu et al. 2018, section 3.1):
    ``N_1 = P_1``, ``N_{l+1} = conv3x3(P_{l+1} + conv3x3_stride2(N_l))``, so the coarse levels also get the
    fine levels' localisation signal by a short path. ``extra_levels`` continue that path past the backbone's
    coarsest map, ``N_{l+1} = conv3x3(conv3x3_stride2(N_l))`` (RetinaNet's P6 from a stride-2 convolution,
    Lin et al. 2017b, section 4): a backbone cut at stride 16 still gives a stride-32 level.

    Args:
        in_channels, in_strides: the backbone maps', finest first.
        d: width of every output level.
        extra_levels: levels added after the coarsest, each at twice the stride of the one before.
    """

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], d: int, extra_levels: int = 0) -> None:
        super().__init__()
        self.fpn = FPN(in_channels, in_strides, d, extra_level=False)
        steps = len(in_channels) - 1 + extra_levels
        self.down = nn.ModuleList(conv_bn_silu(d, d, stride=2) for _ in range(steps))
        self.merge = nn.ModuleList(conv_bn_silu(d, d) for _ in range(steps))
        self.strides = list(in_strides) + [in_strides[-1] * 2**k for k in range(1, extra_levels + 1)]

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """``[(B, C_l, H_l, W_l)]`` finest first -> ``[(B, d, H_l, W_l)]``, ``extra_levels`` more at the end."""
        p = self.fpn(features)
        out = [p[0]]
        for i, (down, merge) in enumerate(zip(self.down, self.merge), 1):
            lower = down(out[-1])
            if i < len(p):  # odd sizes: stride 2 rounds up
                lower = p[i] + lower[..., : p[i].shape[-2], : p[i].shape[-1]]
            out.append(merge(lower))
        return out


class DecoupledHead(nn.Module):
    """One classification and one box branch per level (YOLOX section 2.1; YOLOv8's ``Detect``).

    Returns, for ``L`` levels of ``(B, d, H_l, W_l)``: class logits ``(B, A, C)`` and box-side logits
    ``(B, A, 4, R + 1)``, ``A = sum_l H_l W_l`` points level after level, row-major.
    """

    def __init__(self, d: int, num_classes: int, reg_max: int, convs: int, strides: Sequence[int],
                 image_size: int, kind: str = "dense", kernel: int = 3) -> None:
        super().__init__()
        self.C, self.bins = num_classes, reg_max + 1
        separable = functools.partial(separable_bn_silu, k=kernel)
        cls_layer = conv_bn_silu if kind == "dense" else separable
        box_layer = separable if kind == "depthwise" else conv_bn_silu
        self.cls = nn.ModuleList(nn.Sequential(*[cls_layer(d, d) for _ in range(convs)], nn.Conv2d(d, num_classes, 1))
                                 for _ in strides)
        self.box = nn.ModuleList(nn.Sequential(*[box_layer(d, d) for _ in range(convs)], nn.Conv2d(d, 4 * self.bins, 1))
                                 for _ in strides)
        for cls, box, s in zip(self.cls, self.box, strides):
            # YOLOv8's prior: about 5 objects per image spread over the level's (image_size / s)^2 points, so the
            # first steps are not swamped by the background's loss (RetinaNet section 4.1's idea).
            nn.init.constant_(cls[-1].bias, math.log(5 / num_classes / (image_size / s) ** 2))
            nn.init.constant_(box[-1].bias, 1.0)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        cls, box = [], []
        for f, cls_branch, box_branch in zip(features, self.cls, self.box):
            B = f.shape[0]
            cls.append(cls_branch(f).flatten(2).transpose(1, 2))  # (B, H W, C)
            box.append(box_branch(f).flatten(2).transpose(1, 2).reshape(B, -1, 4, self.bins))  # (B, H W, 4, R + 1)
        return torch.cat(cls, 1), torch.cat(box, 1)


class BoxRefiner(nn.Module):
    """A second look at boxes the first stage found: RoIAlign (Mask R-CNN's, ``aligned=True``) of one neck level
    over each box into ``size x size`` cells, two fully connected layers (Fast R-CNN's box head, narrower) and
    R-CNN's deltas ``(dx, dy, dw, dh)`` of the object's true box relative to the given one, with Cascade R-CNN's
    second-stage weights (20, 20, 10, 10): its inputs are already good boxes, so the deltas are small. A fifth
    output predicts the IoU of the moved box with its object (IoU-Net's localisation confidence, Jiang et al.
    2018), which ``refine_score`` folds into the detection's score: among near-duplicate boxes of one object the
    tightest then ranks first, which is what the high IoU thresholds of mAP50-95 reward.

    The last layer starts at zero, so an untrained refiner returns its boxes unchanged (and an IoU of 0.5).
    """

    coder = BoxCoder((20.0, 20.0, 10.0, 10.0))

    def __init__(self, d: int, stride: int, size: int = 7, hidden: int = 256) -> None:
        super().__init__()
        self.stride, self.size = stride, size
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(d * size * size, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 5))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, feature: Tensor, boxes: Tensor | Sequence[Tensor]) -> Tensor:
        """``feature (B, d, H, W)`` of stride ``stride`` and XYXY boxes in the working frame, per image
        ``[(N_b, 4)]`` or as ``(N, 5)`` rows ``(image index, x1, y1, x2, y2)`` (the exported graph's form) ->
        ``(N, 5)``, in the boxes' order: the deltas and the IoU's logit."""
        boxes = boxes.to(feature.dtype) if isinstance(boxes, Tensor) else [b.to(feature.dtype) for b in boxes]
        return self.mlp(roi_align(feature, boxes, self.size, 1.0 / self.stride, sampling_ratio=2, aligned=True))

    @staticmethod
    def rescore(scores: Tensor, iou: Tensor, beta: float) -> Tensor:
        """``refine_score``: ``scores^(1 - beta) * iou^beta`` (IoU-aware scores, PP-YOLO's form at 0.5)."""
        return scores ** (1 - beta) * iou**beta

    def refine(self, feature: Tensor, boxes: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Per image ``(N_b, 4)`` boxes -> ``(the boxes moved by their deltas (N_b, 4), their predicted IoU
        (N_b,))``."""
        sizes = [len(b) for b in boxes]
        if not sum(sizes):
            return [(b, b.new_zeros(0)) for b in boxes]
        out = self(feature, boxes).float()
        moved = self.coder.decode(out[:, :4], torch.cat(list(boxes)).float())
        return list(zip(moved.split(sizes), out[:, 4].sigmoid().split(sizes)))


def refine_samples(pred: Tensor, assigned: Tensor, gt_boxes: Tensor, copies: int = 4, jitter: float = 0.06,
                   min_iou: float = 0.4) -> tuple[Tensor, Tensor]:
    """One image's training boxes for :class:`BoxRefiner` and their objects' boxes: the first stage's own boxes
    at its positive points (``pred (P, 4)``, detached) whose IoU with their object ``assigned (P, 4)`` is at
    least ``min_iou`` (what NMS would keep of them), and ``copies`` jittered copies of each object ``gt_boxes
    (G, 4)`` (centre moved and sides scaled by ``jitter`` of the box, Gaussian), so the refiner has inputs before
    the first stage boxes well. -> ``(boxes (N, 4), targets (N, 4))``."""
    good = aligned_iou(pred, assigned) >= min_iou
    g = gt_boxes.repeat(copies, 1)
    cx, cy = (g[:, 0] + g[:, 2]) / 2, (g[:, 1] + g[:, 3]) / 2
    w, h = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    n = torch.randn(len(g), 4, device=g.device) * jitter
    cx, cy, w, h = cx + n[:, 0] * w, cy + n[:, 1] * h, w * torch.exp(n[:, 2]), h * torch.exp(n[:, 3])
    jittered = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    return torch.cat([pred[good], jittered]), torch.cat([assigned[good], g])


# --------------------------------------------------------------------------------------------------
# Model


class AnchorFree(ZirModel):
    """Backbone + PAN + decoupled head; ``loss`` and ``predict`` as every zir model, ``forward`` the plain graph
    (images in, class scores and boxes out) that export traces."""

    task = "detect"

    def __init__(self, cfg: AnchorFreeConfig) -> None:
        super().__init__()
        if cfg.cls_loss not in CLS_LOSSES:
            raise ConfigError(f"anchor_free cls_loss must be one of {', '.join(CLS_LOSSES)}, got {cfg.cls_loss!r}")
        if cfg.head not in HEADS:
            raise ConfigError(f"anchor_free head must be one of {', '.join(HEADS)}, got {cfg.head!r}")
        if not 0 < cfg.backbone_lr <= 1:
            raise ConfigError(f"anchor_free backbone_lr is a fraction of train.lr in (0, 1], got {cfg.backbone_lr}")
        if cfg.box_voting < 0:
            raise ConfigError(f"anchor_free box_voting must be 0 (plain NMS) or a positive power, got {cfg.box_voting}")
        if cfg.head_kernel not in (3, 5) or (cfg.head == "dense" and cfg.head_kernel != 3):
            raise ConfigError(f"anchor_free head_kernel must be 3 or 5, and 5 only with head=light or head=depthwise "
                              f"(the dense head's convolutions are 3x3), got head_kernel={cfg.head_kernel} with "
                              f"head={cfg.head}")
        if not cfg.iou_power >= 1:
            raise ConfigError(f"anchor_free iou_power must be at least 1 (1: CIoU, 3: Alpha-IoU's), got {cfg.iou_power}")
        if cfg.refine < 0:
            raise ConfigError(f"anchor_free refine is the number of boxes per image to refine (0: off), got {cfg.refine}")
        if not 0 <= cfg.refine_score <= 1:
            raise ConfigError(f"anchor_free refine_score weighs the predicted IoU in [0, 1], got {cfg.refine_score}")
        if len(cfg.backbone_levels) < 2:
            raise ConfigError(f"anchor_free backbone_levels needs at least two levels, got {cfg.backbone_levels}")
        if cfg.extra_levels < 0:
            raise ConfigError(f"anchor_free extra_levels is a number of neck levels to add (0: none), got "
                              f"{cfg.extra_levels}")
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, cfg.pretrained, tuple(cfg.backbone_levels))
        if cfg.pretrained != "none":
            # timm's freeze keeps BatchNormAct2d's activation; a few images per batch give too noisy statistics
            self.backbone.body = freeze_batch_norm_2d(self.backbone.body)
            freeze_blocks(self.backbone, cfg.frozen_blocks)
        self.set_normalization(self.backbone.mean, self.backbone.std)
        self.neck = PAN(self.backbone.channels, self.backbone.strides, cfg.neck_channels, cfg.extra_levels)
        self.head = DecoupledHead(cfg.neck_channels, cfg.num_classes, cfg.reg_max, cfg.head_convs,
                                  self.neck.strides, cfg.image_size, cfg.head, cfg.head_kernel)
        # a submodule only when on, so the weights of runs without it load as before
        self.refiner = BoxRefiner(cfg.neck_channels, self.backbone.strides[0]) if cfg.refine else None
        self.dropped_boxes = 0  # boxes under a pixel dropped by ``loss`` so far (also warned about)

    def raw(self, x: Tensor, net: nn.Module | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, list[Tensor]]:
        """Normalised, padded ``(B, 3, H, W)`` -> ``(class logits (B, A, C), box-side logits (B, A, 4, R + 1),
        points (A, 2), strides (A,), the neck's levels [(B, d, H_l, W_l)] finest first)``; ``net``: a module
        with this model's ``backbone``, ``neck`` and ``head`` (default: this model; ``predict`` passes its
        folded channels-last copy, :meth:`inference_net`)."""
        if net is None:
            net = self
        else:
            x = channels_last(x)
        features = net.neck(net.backbone(x))
        cls, box = net.head(features)
        points, strides = anchor_points([tuple(f.shape[-2:]) for f in features], self.neck.strides, device=x.device)
        return cls, box, points, strides, features

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 3, H, W)`` in [0, 1], ``H, W`` multiples of 32 -> ``(class scores (B, A, C) in [0, 1],
        boxes (B, A, 4) XYXY in the input's pixels)``, before thresholds and NMS."""
        cls, box, points, strides, _ = self.raw(self.normalize(images))
        return cls.sigmoid(), decode_ltrb(points, dfl_expectation(box), strides)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """The neck's, head's and refiner's groups first (the trainer logs group 0's rate), then the backbone's
        at ``lr * backbone_lr``; no decay on 1-D parameters. At ``backbone_lr = 1`` the base model's two groups (so runs
        saved before the setting existed resume)."""
        if self.cfg.backbone_lr == 1:
            return super().param_groups(lr, weight_decay)
        head = [p for part in (self.neck, self.head, self.refiner) if part is not None for p in part.parameters()
                if p.requires_grad]
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return lr_groups([(head, lr), (backbone, lr * self.cfg.backbone_lr)], weight_decay)

    def prepare(self, images: Sequence[Tensor]) -> tuple[Tensor, list[Size]]:
        """Each ``(3, h, w)`` image in [0, 1] into the working frame, normalised, padded into one batch;
        in training at one of ``train_scales`` drawn per batch (multi-scale training)."""
        frame = self.cfg.image_size
        if self.training and self.cfg.train_scales:
            scales = list(self.cfg.train_scales)
            frame = round(frame * scales[int(torch.randint(len(scales), ()))])
        return batch_images(images, frame, self.mean, self.std)

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        """``{"cls", "box", "dfl"}``, float32 scalars (weights applied), for a padded ``(B, 3, H, W)`` batch
        in [0, 1] and its targets (``iscrowd`` objects are left out)."""
        cfg = self.cfg
        x, work_sizes = self.prepare(unpad(images, [t.size for t in targets]))
        cls, box, points, strides, features = self.raw(x)  # (B, A, C), (B, A, 4, R + 1)
        cls, box = cls.float(), box.float()
        pred_boxes = decode_ltrb(points, dfl_expectation(box), strides)  # (B, A, 4)
        scores = cls.detach().sigmoid()
        target_scores, pos_terms, refine_terms = torch.zeros_like(cls), [], []
        dropped = 0
        for n, (t, work) in enumerate(zip(targets, work_sizes)):
            gt_boxes, gt_labels, small = working_ground_truth(t, work)
            dropped += small
            a = task_aligned_assign(scores[n], pred_boxes[n].detach(), points, gt_boxes, gt_labels,
                                    cfg.topk, cfg.alpha, cfg.beta)
            target_scores[n] = a.scores
            pos = a.positive
            pos_terms.append((pred_boxes[n][pos], box[n][pos], a.boxes[pos], a.scores[pos].sum(-1), points[pos],
                              strides[pos]))
            if self.refiner is not None:
                refine_terms.append(refine_samples(pred_boxes[n][pos].detach(), a.boxes[pos], gt_boxes))
        if dropped:
            self.dropped_boxes += dropped
            warnings.warn(f"anchor_free: dropped {dropped} boxes smaller than a pixel after resizing to the working "
                          f"frame ({self.dropped_boxes} so far); check the annotations with `zir data check`",
                          stacklevel=2)
        norm = target_scores.sum().clamp(min=1.0)  # YOLOv8: the batch's total target quality
        if cfg.cls_loss == "varifocal":
            cls_loss = varifocal_loss(cls, target_scores).sum() / norm
        else:
            cls_loss = nn.functional.binary_cross_entropy_with_logits(cls, target_scores, reduction="sum") / norm
        pb, pd, tb, w, pts, st = (torch.cat(parts) for parts in zip(*pos_terms))
        box_loss = complete_box_iou_loss(pb, tb, reduction="none") if cfg.iou_power == 1 else \
            power_complete_box_iou_loss(pb, tb, cfg.iou_power)
        box_loss = (box_loss * w).sum() / norm
        ltrb = encode_ltrb(pts, tb, st).clamp(0, cfg.reg_max - 0.01)  # (P, 4) in strides
        dfl = distribution_focal_loss(pd.reshape(-1, cfg.reg_max + 1), ltrb.reshape(-1)).view(-1, 4).mean(-1)
        losses = {"cls": cfg.cls_weight * cls_loss, "box": cfg.box_weight * box_loss,
                  "dfl": cfg.dfl_weight * (dfl * w).sum() / norm}
        if self.refiner is not None:
            box_term, iou_term = self.refine_loss(features[0], refine_terms)
            losses["refine"], losses["refine_iou"] = cfg.refine_weight * box_term, cfg.refine_weight * iou_term
        return losses

    def refine_loss(self, feature: Tensor, samples: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """For each image's training boxes (:func:`refine_samples`): Fast R-CNN's smooth L1 (beta 1/9, as
        torchvision) between the refiner's deltas and those of their objects, and the BCE between its
        predicted IoU and the IoU its moved box has with the object (IoU-Net; the IoU is a target, not a path
        for gradients); each the mean over boxes."""
        boxes = [b for b, _ in samples]
        if not sum(len(b) for b in boxes):
            zero = feature.sum() * 0.0  # keeps the graph (and DDP's used parameters) without a NaN
            return zero, zero
        out = self.refiner(feature, boxes).float()
        anchors, objects = torch.cat(boxes), torch.cat([t for _, t in samples])
        targets = self.refiner.coder.encode(objects, anchors)
        box_term = nn.functional.smooth_l1_loss(out[:, :4], targets, beta=1 / 9, reduction="sum") / len(out)
        with torch.no_grad():
            iou = aligned_iou(self.refiner.coder.decode(out[:, :4], anchors), objects)
        return box_term, nn.functional.binary_cross_entropy_with_logits(out[:, 4], iou)

    @torch.no_grad()
    def predict(self, images: Tensor | list[Tensor]) -> list[DetectionPrediction]:
        """Images of any sizes (``(B, 3, H, W)`` or a list of ``(3, h, w)`` in [0, 1]) -> detections in each
        input image's pixels, best first."""
        images = image_list(images)
        x, work_sizes = self.prepare(images)
        net = None if self.training else self.inference_net()
        cls, box, points, strides, features = self.raw(x, net)
        scores, boxes = cls.float().sigmoid(), decode_ltrb(points, dfl_expectation(box.float()), strides)
        found = [postprocess(s, clip(b, work), self.cfg.score_thresh, self.cfg.nms_iou, self.cfg.pre_nms_top_n,
                             self.cfg.max_detections, self.cfg.box_voting) for s, b, work in zip(scores, boxes, work_sizes)]
        if self.refiner is not None and self.cfg.refine:  # the best ``refine`` boxes of each image get a second look
            K, beta = self.cfg.refine, self.cfg.refine_score
            better = (self if net is None else net).refiner.refine(features[0], [b[:K] for b, _, _ in found])
            moved = []
            for (r, iou), (b, s, lab), work in zip(better, found, work_sizes):
                b = torch.cat([clip(r, work), b[K:]])
                if beta:  # the predicted IoU into the score, then best first again
                    b, s, lab = rescored(b, torch.cat([BoxRefiner.rescore(s[:K], iou, beta), s[K:]]), lab)
                moved.append((b, s, lab))
            found = moved
        return [to_input_pixels(b, s, lab, work, tuple(im.shape[-2:]))
                for (b, s, lab), work, im in zip(found, work_sizes, images)]

    def inference_net(self) -> nn.Module:
        """This model's network (backbone, neck, head, refiner) as ``predict`` runs it: a copy with every
        BatchNorm folded into its convolution, channels-last (``zir.models.inference``): the same function to
        float rounding (checked on a small input each time it is built) in about a fifth less time at batch 1.
        Rebuilt when any weight or buffer changed since."""
        parts = {"backbone": self.backbone, "neck": self.neck, "head": self.head, "refiner": self.refiner}
        return inference_copy(self, parts, lambda x, net: self.raw(x, net)[:2], "anchor_free")


def working_ground_truth(target: Target, work_size: Size) -> tuple[Tensor, Tensor, int]:
    """``target``'s objects in the ``work_size`` frame, without crowds and without boxes narrower or lower
    than a pixel there: ``(boxes (G, 4), labels (G,), number of small boxes dropped)``."""
    boxes = boxes_to_working(target.boxes.float().reshape(-1, 4), target.size, work_size)
    labels = target.labels.to(boxes.device).long().reshape(-1)
    keep = ~target.iscrowd.to(boxes.device).bool().reshape(-1)
    big = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    return boxes[keep & big], labels[keep & big], int((keep & ~big).sum())


# --------------------------------------------------------------------------------------------------
# Postprocess


def postprocess(scores: Tensor, boxes: Tensor, score_thresh: float, nms_iou: float, pre_nms_top_n: int,
                max_detections: int, box_voting: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """One image's ``scores (A, C)`` and ``boxes (A, 4)`` -> ``(boxes (D, 4), scores (D,), labels (D,))``: every
    (point, class) pair above ``score_thresh``, the best ``pre_nms_top_n``, per-class NMS (``box_voting > 0``:
    each kept box the ``score^box_voting``-weighted mean of the boxes it suppresses), the best
    ``max_detections``."""
    C = scores.shape[1]
    flat = scores.reshape(-1)  # (A C,)
    keep = (flat > score_thresh).nonzero().squeeze(1)
    keep = keep[flat[keep].topk(min(pre_nms_top_n, len(keep))).indices]
    sc, labels, b = flat[keep], keep % C, boxes[keep // C]
    if box_voting > 0:
        merged, kept = weighted_merge(b, sc.pow(box_voting), nms_iou, labels)
        kept = kept[:max_detections]
        return merged[:max_detections], sc[kept], labels[kept]
    kept = batched_nms(b, sc, labels, nms_iou)[:max_detections]
    return b[kept], sc[kept], labels[kept]


def rescored(boxes: Tensor, scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One image's detections sorted again by their (changed) scores, best first (ties keep their order)."""
    order = scores.argsort(descending=True, stable=True)
    return boxes[order], scores[order], labels[order]


def build(cfg: AnchorFreeConfig) -> AnchorFree:
    return AnchorFree(cfg)
