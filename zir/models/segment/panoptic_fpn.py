"""Panoptic FPN (Kirillov, Girshick, He and Dollár 2019, "Panoptic Feature Pyramid Networks").

Panoptic segmentation gives every pixel a class and, for *thing* classes (countable objects), an
instance id; *stuff* (sky, road, grass) has no instances (Kirillov et al. 2019, "Panoptic
Segmentation"). Panoptic FPN is Mask R-CNN with one more, light branch on the same FPN maps: the two-stage
detector of ``zir.models.detect.faster_rcnn`` composed with Mask R-CNN's mask head and this file's semantic
head, which also merges; this file holds only that head, its loss, the merge, the config and ``build()``::

    image -> backbone + FPN (shared)                               zir.models.detect.faster_rcnn
      -> instance branch: RPN, box head, mask head (Mask R-CNN)   zir.models.segment.mask_rcnn   -> things
      -> semantic branch: each level -> [3x3 conv, GroupNorm, ReLU, 2x up] until stride 8, summed,
                          1x1 conv to (stuff classes + 1 "thing") logits, bilinear up to the image
                                                                   (section 3.2, Figure 3) -> stuff
      -> merge (section 3.3 / 4.1): instances in score order, each keeps the pixels no better instance
         took unless more than ``overlap_thresh`` of it was taken; then stuff regions on the pixels left,
         dropping regions smaller than ``stuff_min_area``

* Training: ``L = L_rpn + L_cls + L_box + L_mask + lambda_s L_sem``; ``L_sem`` is the per-pixel
  cross-entropy of the semantic branch, whose target maps every thing pixel to the one extra class
  "thing" (the paper's "other") and leaves void pixels out. ``lambda_s = 0.5`` as the paper's COCO setting.
* The instance branch sees only the thing segments of a panoptic sample, with labels renumbered to the
  thing classes; the semantic branch sees the sample's ``semantic`` map.
* The semantic branch here starts at stride 8 (zir's FPN levels are strides 8-32; the paper's start at 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zir.data.contract import IGNORE_INDEX, DetectionPrediction, PanopticPrediction
from zir.errors import ConfigError
from zir.models.detect import faster_rcnn
from zir.models.detect.faster_rcnn import ExtraHead, FasterRCNN, Frame
from zir.models.detect.roi_heads import Detections, SampledRoIs
from zir.models.detect.rpn import GroundTruth
from zir.models.segment import mask_rcnn
from zir.models.segment.mask_rcnn import MaskHead, MaskRCNNConfig


@dataclass
class SemanticHeadConfig:
    """The semantic head's settings (``model_args.semantic_head.channels=128``).

    Attributes:
        channels: width of the semantic head (128 in the paper).
        loss_weight: ``lambda_s`` of the semantic cross-entropy.
    """

    channels: int = 64
    loss_weight: float = 0.5


@dataclass
class MergeConfig:
    """How instances and stuff become one segment per pixel (``model_args.merge.overlap_thresh=0.4``).

    Attributes:
        instance_score_thresh: instances below this detection score are left out of the panoptic output.
        overlap_thresh: an instance is dropped when more than this share of its mask is already taken.
        stuff_min_area: stuff regions smaller than this share of the image are dropped (Detectron2's 4096
            pixels at COCO's ~800 x 1333 is about 0.4%).
    """

    instance_score_thresh: float = 0.5
    overlap_thresh: float = 0.5
    stuff_min_area: float = 0.004


@dataclass
class PanopticFPNConfig(MaskRCNNConfig):
    """Mask R-CNN's settings (:class:`~zir.models.segment.mask_rcnn.MaskRCNNConfig`) plus the semantic head
    and the merge. ``num_classes`` counts every class, things and stuff; the data fills ``thing_classes``.

    Attributes:
        thing_classes: per class, True for a thing (instance branch), False for stuff (semantic branch).
        semantic_head: :class:`SemanticHeadConfig`.
        merge: :class:`MergeConfig`.
    """

    thing_classes: tuple[bool, ...] = ()
    semantic_head: SemanticHeadConfig = field(default_factory=SemanticHeadConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)


#: Flat names of old runs and README commands -> their section.
FLAT_KEYS: dict[str, str] = {
    **mask_rcnn.FLAT_KEYS,
    "semantic_channels": "semantic_head.channels",
    "semantic_loss_weight": "semantic_head.loss_weight",
    "instance_score_thresh": "merge.instance_score_thresh",
    "overlap_thresh": "merge.overlap_thresh",
    "stuff_min_area": "merge.stuff_min_area",
}


# --------------------------------------------------------------------------------------------------
# The semantic head


class SemanticHead(ExtraHead):
    """FPN levels ``[(B, d, H / s, W / s)]`` (finest first, stride ``s_0`` first) -> logits ``(B, S + 1, H / s_0, W / s_0)``
    over the ``S`` stuff classes and "thing".

    Each level goes through ``log2(s / s_0)`` stages of 3x3 conv + GroupNorm + ReLU + 2x bilinear
    upsampling (one stage without upsampling for the finest level), the levels are summed and a 1x1
    convolution gives the class logits (section 3.2). As an extra head of the two-stage detector it adds
    ``semantic`` to the loss and merges the detector's instances with its stuff into panoptic segments.

    Args:
        in_channels: width ``d`` of the FPN levels.
        strides: strides of the levels it reads, finest first.
        cfg: the head's settings.
        thing_classes: per data-set class, True for things.
        merge: the merge's settings.

    Attributes:
        stuff_ids: int64 buffer, the data-set class of each semantic class but the last ("thing").
        to_semantic: int64 ``(256,)`` buffer, data-set class (any uint8 value) -> semantic class, 255 = void.
    """

    def __init__(self, in_channels: int, strides: Sequence[int], cfg: SemanticHeadConfig,
                 thing_classes: Sequence[bool], merge: MergeConfig) -> None:
        super().__init__()
        self.cfg, self.merge, self.strides = cfg, merge, list(strides)
        flags = torch.tensor([bool(t) for t in thing_classes], dtype=torch.bool)
        stuff_ids = torch.arange(len(flags))[~flags]
        channels = cfg.channels
        self.levels = nn.ModuleList()
        for s in strides:
            n_up = max(0, (s // strides[0]).bit_length() - 1)
            stages: list[nn.Module] = []
            for k in range(max(1, n_up)):
                stages += [nn.Conv2d(in_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                           nn.GroupNorm(min(32, channels // 4), channels), nn.ReLU(inplace=True)]
                if n_up:
                    stages.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.levels.append(nn.Sequential(*stages))
        self.classifier = nn.Conv2d(channels, len(stuff_ids) + 1, 1)
        # data-set class -> semantic class: stuff k -> k, every thing -> "thing"
        to_semantic = torch.full((256,), IGNORE_INDEX, dtype=torch.long)  # any uint8 value; 255 stays void
        to_semantic[: len(flags)] = len(stuff_ids)
        to_semantic[stuff_ids] = torch.arange(len(stuff_ids))
        self.register_buffer("stuff_ids", stuff_ids, persistent=False)
        self.register_buffer("to_semantic", to_semantic, persistent=False)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        features = features[: len(self.levels)]  # the detector's extra pooled level is not read
        size = features[0].shape[-2:]
        out = 0
        for level, f in zip(self.levels, features):
            y = level(f)
            # odd sizes do not double exactly: bring every level to the finest one's size
            out = out + (y if y.shape[-2:] == size else F.interpolate(y, size=size, mode="bilinear",
                                                                       align_corners=False))
        return self.classifier(out)

    def loss(self, features: list[Tensor], frame: Frame, targets: Sequence[dict[str, Any]],
             gts: Sequence[GroundTruth], rois: SampledRoIs) -> dict[str, Tensor]:
        """``{"semantic": lambda_s L_sem}``: per-pixel cross-entropy against each target's ``semantic`` int64
        ``(H, W)`` map (255 = void), every thing pixel counting as "thing"."""
        logits = F.interpolate(self(features), size=frame.padded, mode="bilinear", align_corners=False)
        device = logits.device
        target = torch.full((logits.shape[0], *frame.padded), IGNORE_INDEX, dtype=torch.long, device=device)
        for b, (t, (h, w)) in enumerate(zip(targets, frame.work_sizes)):
            sem = torch.as_tensor(t["semantic"], device=device).long()[None, None].float()
            # sampled at pixel centres, the grid of the image's bilinear resize ("nearest" is half a pixel off)
            sem = F.interpolate(sem, size=(h, w), mode="nearest-exact")[0, 0].long()
            target[b, :h, :w] = self.to_semantic[sem.clamp(0, 255)]
        if (target != IGNORE_INDEX).any():
            sem_loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)
        else:  # nothing labelled: keep every weight in the graph
            sem_loss = logits.float().sum() * 0
        return {"semantic": self.cfg.loss_weight * sem_loss}

    def predict(self, features: list[Tensor], frame: Frame, detections: Sequence[Detections],
                predictions: list[DetectionPrediction]) -> list[PanopticPrediction]:
        """The detector's instances (with masks, labels as data-set classes) merged with this head's stuff:
        one :class:`~zir.data.contract.PanopticPrediction` per image, in its own pixels."""
        logits = self(features)
        stride = self.strides[0]
        out = []
        for b, (inst, (h, w), size) in enumerate(zip(predictions, frame.work_sizes, frame.sizes)):
            # crop the image's own part of the padded batch at the head's stride, then up to the input size
            lg = logits[b:b + 1, :, : -(-h // stride), : -(-w // stride)].float()
            semantic = F.interpolate(lg, size=size, mode="bilinear", align_corners=False)[0].argmax(0)
            out.append(merge_panoptic(inst, semantic, self.stuff_ids, self.merge))
        return out


# --------------------------------------------------------------------------------------------------
# Merge


def merge_panoptic(instances: DetectionPrediction, semantic: Tensor, stuff_ids: Tensor,
                   cfg: MergeConfig) -> PanopticPrediction:
    """Combine instances and a semantic map into non-overlapping segments (the paper's section 4.1 rules).

    Args:
        instances: detections with ``masks`` bool ``(N, H, W)`` and ``labels`` as data-set class ids.
        semantic: int64 ``(H, W)`` semantic-branch classes: ``k`` is stuff class ``stuff_ids[k]``,
            ``len(stuff_ids)`` is "thing" (never becomes a segment).
        stuff_ids: int64 ``(S,)`` data-set class id of each stuff class.
        cfg: ``instance_score_thresh``, ``overlap_thresh``, ``stuff_min_area``.

    Returns:
        Segment ids ``1..M``: instances first (by score), then stuff regions (by class); 0 = unlabelled.
    """
    H, W = semantic.shape
    ids = torch.zeros((H, W), dtype=torch.long, device=semantic.device)
    taken = torch.zeros((H, W), dtype=torch.bool, device=semantic.device)
    segments: list[dict[str, Any]] = []
    masks = instances.masks if instances.masks is not None else torch.zeros((0, H, W), dtype=torch.bool)
    for k in torch.argsort(instances.scores, descending=True).tolist():
        score = float(instances.scores[k])
        if score < cfg.instance_score_thresh:
            break
        m = masks[k].to(semantic.device)
        area = int(m.sum())
        if area == 0 or int((m & taken).sum()) > cfg.overlap_thresh * area:
            continue
        m = m & ~taken
        taken |= m
        ids[m] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": int(instances.labels[k]), "isthing": True,
                         "score": score, "area": int(m.sum())})
    min_area = cfg.stuff_min_area * H * W
    for k, cls in enumerate(stuff_ids.tolist()):
        m = (semantic == k) & ~taken
        area = int(m.sum())
        if area == 0 or area < min_area:
            continue
        taken |= m
        ids[m] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": int(cls), "isthing": False, "score": 1.0,
                         "area": area})
    return PanopticPrediction(ids=ids, segments=segments)


# --------------------------------------------------------------------------------------------------
# build()


def build(cfg: PanopticFPNConfig) -> FasterRCNN:
    things = [bool(t) for t in cfg.thing_classes]
    if len(things) != cfg.num_classes:
        raise ConfigError(f"panoptic_fpn needs thing_classes, one True (thing) / False (stuff) per class: got "
                          f"{len(things)} flags for {cfg.num_classes} classes (training on a panoptic data "
                          "set fills them)")
    if not any(things):
        raise ConfigError("panoptic_fpn: no thing class; train a semantic model (unet, fcn) on stuff-only data")
    # the instance branch (RPN, box and mask heads) knows only the thing classes
    backbone, fpn, rpn, roi_heads = faster_rcnn.build_parts(cfg, sum(things))
    mask_head = MaskHead(cfg.fpn_channels, backbone.strides, cfg.mask_head, sum(things))
    semantic_head = SemanticHead(cfg.fpn_channels, backbone.strides, cfg.semantic_head, things, cfg.merge)
    return FasterRCNN(cfg, backbone, fpn, rpn, roi_heads, {"mask": mask_head, "semantic": semantic_head},
                      thing_classes=things, task="panoptic")
