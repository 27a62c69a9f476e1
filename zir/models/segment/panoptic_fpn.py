"""Panoptic FPN (Kirillov, Girshick, He and Dollár 2019, "Panoptic Feature Pyramid Networks").

Panoptic segmentation gives every pixel a class and, for *thing* classes (countable objects), an
instance id; *stuff* (sky, road, grass) has no instances (Kirillov et al. 2019, "Panoptic
Segmentation"). Panoptic FPN is Mask R-CNN with one more, light branch on the same FPN maps::

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

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zir.data.contract import IGNORE_INDEX, DetectionPrediction, PanopticPrediction, Target
from zir.errors import ConfigError
from zir.models.detect.transform import labels_to_working, scores_to_input, unpad
from zir.models.segment import mask_rcnn
from zir.models.segment.mask_rcnn import MaskRCNN, MaskRCNNConfig


@dataclass
class PanopticFPNConfig(MaskRCNNConfig):
    """Mask R-CNN's settings (:class:`~zir.models.segment.mask_rcnn.MaskRCNNConfig`) plus the semantic branch and
    the merge. ``num_classes`` counts every class, things and stuff; the data fills ``thing_classes``.

    Attributes:
        thing_classes: per class, True for a thing (instance branch), False for stuff (semantic branch).
        semantic_channels: width of the semantic branch (128 in the paper).
        semantic_loss_weight: ``lambda_s`` of the semantic cross-entropy.
        instance_score_thresh: instances below this detection score are left out of the panoptic output.
        overlap_thresh: an instance is dropped when more than this share of its mask is already taken.
        stuff_min_area: stuff regions smaller than this share of the image are dropped (Detectron2's 4096
            pixels at COCO's ~800 x 1333 is about 0.4%).
    """

    thing_classes: tuple[bool, ...] = ()
    semantic_channels: int = 64
    semantic_loss_weight: float = 0.5
    instance_score_thresh: float = 0.5
    overlap_thresh: float = 0.5
    stuff_min_area: float = 0.004


# --------------------------------------------------------------------------------------------------
# The semantic branch


class SemanticHead(nn.Module):
    """FPN levels ``[(B, d, H / s, W / s)]`` (finest first, stride ``s_0`` first) -> logits ``(B, K, H / s_0, W / s_0)``.

    Each level goes through ``log2(s / s_0)`` stages of 3x3 conv + GroupNorm + ReLU + 2x bilinear
    upsampling (one stage without upsampling for the finest level), the levels are summed and a 1x1
    convolution gives ``K`` class logits (section 3.2).
    """

    def __init__(self, in_channels: int, strides: Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__()
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
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        size = features[0].shape[-2:]
        out = 0
        for level, f in zip(self.levels, features):
            y = level(f)
            # odd sizes do not double exactly: bring every level to the finest one's size
            out = out + (y if y.shape[-2:] == size else F.interpolate(y, size=size, mode="bilinear",
                                                                       align_corners=False))
        return self.classifier(out)


# --------------------------------------------------------------------------------------------------
# The model


class PanopticFPN(MaskRCNN):
    """Mask R-CNN over the thing classes plus ``semantic_head`` over the stuff classes and "thing".

    Attributes:
        thing_classes: per data-set class, True for things.
        thing_ids, stuff_ids: int64 buffers, the data-set class id of each instance-branch class and of
            each semantic-branch class (the last semantic class, "thing", has none).
    """

    task = "panoptic"

    def __init__(self, cfg: PanopticFPNConfig, detector: MaskRCNN, semantic_head: SemanticHead) -> None:
        super().__init__(detector.cfg, detector, detector.mask_pooler, detector.mask_head)
        self.panoptic_cfg = cfg
        self.semantic_head = semantic_head
        self.thing_classes = [bool(t) for t in cfg.thing_classes]
        ids = torch.arange(len(self.thing_classes))
        flags = torch.tensor(self.thing_classes, dtype=torch.bool)
        self.register_buffer("thing_ids", ids[flags], persistent=False)
        self.register_buffer("stuff_ids", ids[~flags], persistent=False)
        # data-set class -> instance-branch class (things) and -> semantic-branch class (stuff; things -> "thing")
        to_thing = torch.full((len(ids),), -1, dtype=torch.long)
        to_thing[flags] = torch.arange(int(flags.sum()))
        to_semantic = torch.full((256,), IGNORE_INDEX, dtype=torch.long)  # any uint8 value; 255 stays void
        to_semantic[: len(ids)] = len(self.stuff_ids)
        to_semantic[self.stuff_ids] = torch.arange(len(self.stuff_ids))
        self.register_buffer("to_thing", to_thing, persistent=False)
        self.register_buffer("to_semantic", to_semantic, persistent=False)

    # ------------------------------------------------------------------------------------------ loss

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        """Mask R-CNN's five terms on the things, plus ``"semantic"``, each a float32 scalar.

        Targets are panoptic: ``masks`` uint8 ``(N, h, w)``, ``labels``, ``boxes``, ``iscrowd`` of every
        segment (things and stuff) and ``semantic`` int64 ``(h, w)`` (255 = void).
        """
        x, work_sizes = self.prepare(unpad(images, [t.size for t in targets]))
        features = self.features(x)
        losses = self.losses_on_features(features, [self.thing_targets(t) for t in targets], work_sizes)
        logits = F.interpolate(self.semantic_head(features[: len(self.backbone.strides)]), size=x.shape[-2:],
                               mode="bilinear", align_corners=False)
        target = torch.full((x.shape[0], *x.shape[-2:]), IGNORE_INDEX, dtype=torch.long, device=x.device)
        for b, (t, (h, w)) in enumerate(zip(targets, work_sizes)):
            sem = labels_to_working(t.semantic.to(x.device).long(), (h, w))
            target[b, :h, :w] = self.to_semantic[sem.clamp(0, 255)]
        if (target != IGNORE_INDEX).any():
            sem_loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)
        else:  # nothing labelled: keep every weight in the graph
            sem_loss = logits.float().sum() * 0
        return {**losses, "semantic": self.panoptic_cfg.semantic_loss_weight * sem_loss}

    def thing_targets(self, target: Target) -> Target:
        """A panoptic target's thing segments as an instance target, labels renumbered to the thing classes."""
        labels = target.labels.long()
        keep = self.to_thing.to(labels.device)[labels] >= 0
        return dataclasses.replace(target, boxes=target.boxes[keep], iscrowd=target.iscrowd[keep],
                                   labels=self.to_thing.to(labels.device)[labels[keep]],
                                   masks=None if target.masks is None else target.masks[keep])

    # --------------------------------------------------------------------------------------- predict

    @torch.no_grad()
    def predict(self, images: Tensor | Sequence[Tensor]) -> list[PanopticPrediction]:  # type: ignore[override]
        """One :class:`~zir.data.contract.PanopticPrediction` per image, in its own pixels."""
        features, detections, work_sizes, sizes = self.detect_in_working_frame(images)
        instances = self.instances(features, detections, work_sizes, sizes)
        logits = self.semantic_head(features[: len(self.backbone.strides)])
        stride = self.backbone.strides[0]
        out = []
        for b, (inst, (h, w), size) in enumerate(zip(instances, work_sizes, sizes)):
            # crop the image's own part of the padded batch at the branch's stride, then up to the input size
            lg = logits[b:b + 1, :, : -(-h // stride), : -(-w // stride)].float()
            semantic = scores_to_input(lg, size)[0].argmax(0)
            inst.labels = self.thing_ids[inst.labels]
            out.append(merge_panoptic(inst, semantic, self.stuff_ids, self.panoptic_cfg))
        return out


# --------------------------------------------------------------------------------------------------
# Merge


def merge_panoptic(instances: DetectionPrediction, semantic: Tensor, stuff_ids: Tensor,
                   cfg: PanopticFPNConfig) -> PanopticPrediction:
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


def build(cfg: PanopticFPNConfig) -> PanopticFPN:
    things = [bool(t) for t in cfg.thing_classes]
    if len(things) != cfg.num_classes:
        raise ConfigError(f"panoptic_fpn needs thing_classes, one True (thing) / False (stuff) per class: got "
                          f"{len(things)} flags for {cfg.num_classes} classes (training on a panoptic data "
                          "set fills them)")
    if not any(things):
        raise ConfigError("panoptic_fpn: no thing class; train a semantic model (unet, fcn) on stuff-only data")
    detector = mask_rcnn.build(dataclasses.replace(cfg, num_classes=sum(things)))  # type: ignore[arg-type]
    n_stuff = len(things) - sum(things)
    head = SemanticHead(cfg.fpn_channels, detector.backbone.strides, cfg.semantic_channels, n_stuff + 1)
    return PanopticFPN(cfg, detector, head)
