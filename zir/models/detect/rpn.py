"""Region Proposal Network (Ren et al. 2015, "Faster R-CNN", section 3.1), over an FPN (Lin et al. 2017,
section 4.1).

At every position of every pyramid level, ``A`` anchors (section 3.1.1; ``zir.ops.anchors``) are scored
as object / not object and regressed towards the object's box by a small head shared by all levels:

    features (B, d, H, W) -> conv3x3 + ReLU -> conv1x1: objectness logits (B, A, H, W)
                                            -> conv1x1: box deltas      (B, 4A, H, W)

Training (section 3.1.2): anchors with IoU >= 0.7 with a ground-truth box (or the best anchors of each
box) are positive, IoU < 0.3 negative; 256 anchors per image, up to half positive, enter the loss

    L = 1/N_cls sum_i BCE(p_i, p_i*) + lambda 1/N_reg sum_i p_i* smoothL1(t_i - t_i*)

(torchvision's normalisation: both terms divided by the number of sampled anchors, lambda = 1).
Proposals (section 3.3): decoded anchors, the ``pre_nms_top_n`` best per level (FPN), clipped, NMS at
IoU 0.7 per level, then the ``post_nms_top_n`` best; fewer at test time than in training.

Anchors are centred on their cell by default (``anchor_offset=0.5``, zir's convention); ``0.0`` puts
them on the cell's corner as torchvision does. Cross-boundary anchors are kept in training, as
torchvision does (the paper ignores them, section 3.3), so objects at the border get anchors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zir.errors import ConfigError
from zir.ops.anchors import anchors as level_anchors
from zir.ops.boxes import batched_nms, clip, ioa, iou, remove_small_boxes
from zir.ops.coder import RPN_WEIGHTS, BoxCoder
from zir.ops.matching import BELOW_LOW, BETWEEN, balanced_sample, match


@dataclass
class RPNConfig:
    """The RPN's settings (a section of the two-stage detectors' configs: ``model_args.rpn.nms_iou=0.6``).

    Attributes:
        anchor_sizes: per pyramid level (the backbone's levels, then the pooled one), anchor sizes in pixels.
        aspect_ratios: anchor ``height / width`` ratios, the same at every level.
        anchor_offset: anchor centre within its cell: 0.5 (centred, zir) or 0.0 (torchvision).
        pre_nms_top_n, post_nms_top_n: ``[train, test]`` proposals per level before NMS, per image after it.
        nms_iou: the proposals' NMS IoU (0.7).
        batch_size: anchors sampled per image for the loss (256).
    """

    anchor_sizes: tuple[tuple[float, ...], ...] = ((32, 48), (64, 96), (128, 192), (256, 384))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_offset: float = 0.5
    pre_nms_top_n: tuple[int, int] = (1000, 500)
    post_nms_top_n: tuple[int, int] = (1000, 100)
    nms_iou: float = 0.7
    batch_size: int = 256


@dataclass
class GroundTruth:
    """The annotations of one image as the detection heads use them (in the model's working pixels).

    Attributes:
        boxes: float32 ``(G, 4)`` XYXY of the objects to detect (non-crowd, non-degenerate).
        labels: int64 ``(G,)`` zir class ids (0-based, no background).
        crowd: float32 ``(C, 4)`` crowd regions: never positives, and predictions inside them are not
            trained as background either.
        index: int64 ``(G,)`` position of each box in the sample's own ``boxes`` (so Mask R-CNN can
            pick the masks that go with them).
    """

    boxes: Tensor
    labels: Tensor
    crowd: Tensor
    index: Tensor


def match_to_ground_truth(gt: GroundTruth, candidates: Tensor, high: float, low: float,
                          allow_low_quality_matches: bool = False) -> Tensor:
    """``zir.ops.matching.match`` of ``candidates (P, 4)`` to ``gt.boxes``, with crowd regions ignored.

    A candidate that would be negative but lies mostly (> 50 % of its area) inside a crowd region is
    marked :data:`BETWEEN` (ignored): it may well show one of the crowd's objects.

    Returns:
        int64 ``(P,)``: ground-truth index, ``BELOW_LOW`` (negative) or ``BETWEEN`` (ignored).
    """
    matched = match(iou(gt.boxes, candidates), high, low, allow_low_quality_matches)
    if len(gt.crowd) and len(candidates):
        in_crowd = ioa(gt.crowd, candidates).max(dim=0).values > 0.5
        matched[in_crowd & (matched == BELOW_LOW)] = BETWEEN
    return matched


class RPNHead(nn.Module):
    """The sliding 3x3 network and its two sibling 1x1 layers (section 3.1), shared by all levels."""

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)  # section 3.1.3: "zero-mean Gaussian, std 0.01"
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """``[(B, d, H, W)]`` -> objectness ``[(B, A, H, W)]`` and deltas ``[(B, 4A, H, W)]``."""
        logits, deltas = [], []
        for x in features:
            h = F.relu(self.conv(x))
            logits.append(self.cls_logits(h))
            deltas.append(self.bbox_pred(h))
        return logits, deltas


@dataclass
class RPNOutput:
    """What the RPN computed for a batch.

    Attributes:
        proposals: per image float32 ``(P_i, 4)`` XYXY in the working image's pixels, detached.
        objectness: ``(B, N)`` logits of all ``N`` anchors (levels concatenated, finest first).
        deltas: ``(B, N, 4)`` predicted deltas.
        anchors: float32 ``(N, 4)`` XYXY, the same for every image of the (padded) batch.
    """

    proposals: list[Tensor]
    objectness: Tensor
    deltas: Tensor
    anchors: Tensor


class RPN(nn.Module):
    """Anchors, head, proposal selection (``forward``) and the RPN loss (``loss``).

    Args:
        in_channels: width of the pyramid levels.
        strides: stride of each level in image pixels, finest first.
        anchor_sizes: per level, anchor sizes in pixels (square root of the area).
        aspect_ratios: per level, ``height / width`` ratios.
        pre_nms_top_n, post_nms_top_n: ``(train, test)`` numbers of proposals kept per level before
            NMS, and per image after it.
        nms_iou: IoU of the proposal NMS.
        fg_iou, bg_iou: matching thresholds (0.7, 0.3).
        batch_size_per_image, positive_fraction: the sampled mini-batch (256, 0.5).
        anchor_offset: anchor centre within its cell (0.5 zir, 0.0 torchvision).
    """

    def __init__(self, in_channels: int, strides: Sequence[int], anchor_sizes: Sequence[Sequence[float]],
                 aspect_ratios: Sequence[Sequence[float]], pre_nms_top_n: tuple[int, int] = (2000, 1000),
                 post_nms_top_n: tuple[int, int] = (2000, 1000), nms_iou: float = 0.7,
                 fg_iou: float = 0.7, bg_iou: float = 0.3, batch_size_per_image: int = 256,
                 positive_fraction: float = 0.5, min_size: float = 1e-3, anchor_offset: float = 0.5) -> None:
        super().__init__()
        if not len(strides) == len(anchor_sizes) == len(aspect_ratios):
            raise ValueError(f"{len(strides)} pyramid levels but {len(anchor_sizes)} anchor size lists and "
                             f"{len(aspect_ratios)} aspect-ratio lists; give one of each per level")
        num_anchors = {len(s) * len(r) for s, r in zip(anchor_sizes, aspect_ratios)}
        if len(num_anchors) != 1:
            raise ValueError("every level needs the same number of anchors (sizes x ratios): the head is shared")
        self.head = RPNHead(in_channels, num_anchors.pop())
        self.strides = list(strides)
        self.anchor_sizes = [list(s) for s in anchor_sizes]
        self.aspect_ratios = [list(r) for r in aspect_ratios]
        self.pre_nms_top_n, self.post_nms_top_n = pre_nms_top_n, post_nms_top_n
        self.nms_iou, self.fg_iou, self.bg_iou = nms_iou, fg_iou, bg_iou
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.min_size, self.anchor_offset = min_size, anchor_offset
        self.coder = BoxCoder(RPN_WEIGHTS)

    def anchors(self, feature_sizes: Sequence[tuple[int, int]], device: torch.device) -> list[Tensor]:
        """Anchors of each level ``(H_l * W_l * A, 4)``, at the levels' nominal strides."""
        return [level_anchors(size, stride, s, r, self.anchor_offset, device=device)
                for size, stride, s, r in zip(feature_sizes, self.strides, self.anchor_sizes, self.aspect_ratios)]

    def forward(self, features: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]) -> RPNOutput:
        """Score and regress every anchor, and select each image's proposals.

        Args:
            features: pyramid levels ``[(B, d, H_l, W_l)]``, finest first.
            image_sizes: each image's ``(h, w)`` in the working (resized, unpadded) frame.
        """
        level_logits, level_deltas = self.head(features)
        B = level_logits[0].shape[0]
        anchors = self.anchors([x.shape[-2:] for x in features], features[0].device)
        per_level = [len(a) for a in anchors]
        # (B, A, H, W) -> (B, H*W*A): the anchors' order (row-major positions, then the A anchors)
        objectness = torch.cat([x.permute(0, 2, 3, 1).reshape(B, -1) for x in level_logits], dim=1)
        # (B, 4A, H, W) -> (B, A, 4, H, W) -> (B, H*W*A, 4)
        deltas = torch.cat([x.view(B, -1, 4, *x.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(B, -1, 4)
                            for x in level_deltas], dim=1)
        all_anchors = torch.cat(anchors)
        with torch.no_grad():  # proposals are inputs to the RoI heads, not differentiated through
            boxes = self.coder.decode(deltas.detach().float().reshape(-1, 4), all_anchors.repeat(B, 1))
            proposals = self.select_proposals(boxes.view(B, -1, 4), objectness.detach().float(), per_level,
                                              image_sizes)
        return RPNOutput(proposals, objectness, deltas, all_anchors)

    def select_proposals(self, boxes: Tensor, logits: Tensor, per_level: Sequence[int],
                         image_sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """Section 3.3 with FPN's per-level top-k: ``boxes (B, N, 4)``, ``logits (B, N)`` -> per image
        ``(P_i, 4)``, ``P_i <= post_nms_top_n``, best first."""
        mode = 0 if self.training else 1
        pre_n, post_n = self.pre_nms_top_n[mode], self.post_nms_top_n[mode]
        top_idx, levels, start = [], [], 0
        for lvl, n in enumerate(per_level):
            k = min(pre_n, n)
            top_idx.append(logits[:, start:start + n].topk(k, dim=1).indices + start)  # (B, k)
            levels.append(torch.full((k,), lvl, dtype=torch.int64, device=boxes.device))
            start += n
        top_idx = torch.cat(top_idx, dim=1)  # (B, K)
        level = torch.cat(levels)
        proposals = []
        for b, (h, w) in enumerate(image_sizes):
            bx = clip(boxes[b, top_idx[b]], (h, w))
            scores = logits[b, top_idx[b]].sigmoid()
            keep = remove_small_boxes(bx, self.min_size)
            bx, scores, lvl = bx[keep], scores[keep], level[keep]
            keep = batched_nms(bx, scores, lvl, self.nms_iou)[:post_n]  # NMS within each level
            proposals.append(bx[keep])
        return proposals

    def loss(self, out: RPNOutput, targets: Sequence[GroundTruth]) -> dict[str, Tensor]:
        """The RPN's two loss terms (section 3.1.2), in float32.

        Returns:
            ``{"rpn_objectness": BCE over the sampled anchors, "rpn_box": smooth-L1 (beta 1/9) over the
            positives, divided by the number of sampled anchors}``.
        """
        pos_all, neg_all, box_targets = [], [], []
        N = len(out.anchors)
        for b, gt in enumerate(targets):
            matched = match_to_ground_truth(gt, out.anchors, self.fg_iou, self.bg_iou,
                                            allow_low_quality_matches=True)
            pos, neg = balanced_sample(matched, self.batch_size_per_image, self.positive_fraction)
            box_targets.append(self.coder.encode(gt.boxes[matched[pos]], out.anchors[pos]))
            pos_all.append(pos + b * N)  # indices into the flattened (B * N) anchors
            neg_all.append(neg + b * N)
        pos, neg = torch.cat(pos_all), torch.cat(neg_all)
        sampled = torch.cat([pos, neg])
        logits = out.objectness.float().reshape(-1)
        labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).float()
        objectness = F.binary_cross_entropy_with_logits(logits[sampled], labels)
        deltas = out.deltas.float().reshape(-1, 4)
        box = F.smooth_l1_loss(deltas[pos], torch.cat(box_targets), beta=1 / 9, reduction="sum")
        return {"rpn_objectness": objectness, "rpn_box": box / max(sampled.numel(), 1)}


def build_rpn(cfg: RPNConfig, in_channels: int, strides: Sequence[int]) -> RPN:
    """The RPN of ``cfg`` over pyramid levels of ``in_channels`` channels at ``strides`` (finest first)."""
    if len(cfg.anchor_sizes) != len(strides):
        raise ConfigError(f"rpn.anchor_sizes (anchor_sizes) has {len(cfg.anchor_sizes)} levels but the pyramid has "
                          f"{len(strides)} (strides {list(strides)}); give one list of sizes per level")
    return RPN(in_channels, strides, cfg.anchor_sizes, [cfg.aspect_ratios] * len(strides),
               pre_nms_top_n=tuple(cfg.pre_nms_top_n), post_nms_top_n=tuple(cfg.post_nms_top_n),
               nms_iou=cfg.nms_iou, batch_size_per_image=cfg.batch_size, anchor_offset=cfg.anchor_offset)
