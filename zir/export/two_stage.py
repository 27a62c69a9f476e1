"""Deployment graphs of the two-stage detectors: Faster R-CNN, Mask R-CNN (masks pasted into the input's
pixels inside the graph) and Panoptic FPN (instances with masks, and the semantic branch's class map).

The steps are ``FasterRCNN.predict``'s (``zir.models.detect.faster_rcnn``), re-stated for a whole batch
of one size with symbolic sizes, so that ``torch.export`` / ONNX keep batch, height and width dynamic:

    uint8 (B, 3, H, W) -> [0, 1] -> resize into the working frame (h, w) -> normalise -> pad to 32
      -> backbone + FPN (the model's own modules)
      -> RPN: per level the best pre_nms_top_n anchors of each image, decoded, clipped to (h, w), small
         boxes dropped, ONE NMS over the batch with every (image, level) moved apart, then each image's
         best post_nms_top_n  -> proposals (R, 4) of every image at once, with their image index
      -> RoI heads on all R proposals, softmax, per-class boxes, threshold, ONE NMS per (image, class)
      -> each image's best max_detections, boxes back to the input's pixels
      [Mask R-CNN] -> the mask head on the kept boxes, the predicted class's mask pasted into the input
         image (:func:`paste_masks`), thresholded at 0.5
      [Panoptic FPN] -> labels as data-set classes; the semantic branch's arg-max as data-set classes

Every batch-wide step works on a flat list of candidates carrying their image index (no Python loop
over images, no branch on how many there are), so an image with no proposal, no detection or a batch
with nothing at all goes through the same graph with zero-length tensors.

Why ``torch.onnx.export(dynamo=True)``: the graph holds data-dependent sizes (how many boxes survive a
threshold or NMS) and symbolic image sizes; the TorchScript exporter traces them into constants of the
example input (torchvision's Faster R-CNN export: one batch size, and a crash on an image with no
detection), the ``torch.export`` path keeps them symbolic.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from zir.errors import ConfigError
from zir.export.graphs import MAX_BATCH, clip_to, rank_in_image, working_frame
from zir.models.base import ZirModel


def to_input(boxes: Tensor, H: Any, W: Any, h: Any, w: Any) -> Tensor:
    """``(N, 4)`` boxes of the ``(h, w)`` working frame -> the ``(H, W)`` input's pixels, clipped
    (``transform.boxes_to_input``: the ratio of the integer sizes, then ``clip``)."""
    sx, sy = W / w, H / h
    return clip_to(torch.stack([boxes[:, 0] * sx, boxes[:, 1] * sy, boxes[:, 2] * sx, boxes[:, 3] * sy], dim=1),
                   H, W)


def to_slots(boxes: Tensor, scores: Tensor, labels: Tensor, image: Tensor, B: Any,
             K: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Detections in score order (flat, each with its ``image``) -> the graph's padded outputs.

    Returns:
        ``boxes (B, K, 4)``, ``scores (B, K)``, ``labels (B, K)``, ``counts (B,)`` (image ``b``'s detections
        are its first ``counts[b]`` rows, best first, the rest zeros) and ``order (D,)``: the kept flat
        items in (image, rank) order, the order of the masks output.
    """
    rank, counts = rank_in_image(image, B)
    slot = image * K + rank  # unique per item
    kept = (rank < K).nonzero().squeeze(1)
    order = kept[slot[kept].argsort()]  # (D,): image by image, best first
    slot = slot[order]
    out_boxes = boxes.new_zeros(B * K, 4).index_put((slot,), boxes[order])
    out_scores = scores.new_zeros(B * K).index_put((slot,), scores[order])
    out_labels = torch.zeros(B * K, dtype=torch.int64, device=boxes.device).index_put((slot,), labels[order])
    return out_boxes.view(B, K, 4), out_scores.view(B, K), out_labels.view(B, K), counts.clamp(max=K), order


def pool(pooler: nn.Module, features: list[Tensor], rois: Tensor) -> Tensor:
    """``RoIPooler.forward`` on ``rois (R, 5)`` (image index, XYXY): each RoI's level by equation 1 of FPN
    (the pooler's ``LevelMapper``), each level cropped for its own RoIs only and the crops scattered back
    into RoI order. A level with no RoIs (the common case) crops an empty set: no branch on the count, and
    a third of the RoI Align work of cropping every level for every RoI (onnxruntime at 320 px: RoiAlign
    17.4 -> 5.7 ms; ``benchmarks/export_speed.py --profile``)."""
    features = features[:len(pooler.strides)]
    if len(features) == 1:
        return pooler._crop(features[0].float(), rois, 1.0 / pooler.strides[0])
    level = pooler.mapper([rois[:, 1:]])
    S = pooler.output_size
    out = rois.new_zeros((rois.shape[0], features[0].shape[1], S, S))
    for lvl, (f, stride) in enumerate(zip(features, pooler.strides)):
        idx = (level == lvl).nonzero().squeeze(1)
        out = out.index_put((idx,), pooler._crop(f.float(), rois[idx], 1.0 / stride))
    return out


def detect_rois(heads: nn.Module, features: list[Tensor], proposals: Tensor, image: Tensor, h: Any, w: Any,
                S: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``RoIHeads.detect`` + ``postprocess`` on every image's RoIs at once (``heads``: the model's
    ``roi_heads``; ``proposals (R, 4)`` in the ``(h, w)`` working frame, ``image (R,)`` their image index;
    ``S``: more than any working-frame side): the detections in the working frame, best first over the
    batch: ``boxes (D, 4)``, ``scores``, ``labels`` (instance classes), ``image``."""
    from zir.ops.boxes import remove_small_boxes

    rois = torch.cat([image[:, None].to(proposals.dtype), proposals], dim=1)
    class_logits, box_deltas = heads.predictor(heads.box_head(pool(heads.pooler, features, rois)))
    scores = class_logits.float().softmax(dim=1)[:, 1:]  # (R, C): the background column dropped
    C = scores.shape[1]
    det = heads.coder.decode(box_deltas.float().reshape(-1, C, 4), proposals)  # (R, C, 4)
    det = clip_to(det, h, w).reshape(-1, 4)
    label = torch.arange(C, device=det.device)[None].expand(scores.shape[0], -1).reshape(-1)
    det_image = image[:, None].expand(-1, C).reshape(-1)
    flat = scores.reshape(-1)
    keep = (flat > heads.score_thresh).nonzero().squeeze(1)
    det, flat, label, det_image = det[keep], flat[keep], label[keep], det_image[keep]
    keep = remove_small_boxes(det, 1e-2)
    det, flat, label, det_image = det[keep], flat[keep], label[keep], det_image[keep]
    group = (det_image * C + label).to(det.dtype)
    kept = nms(det + (group * (S + 1))[:, None], flat, heads.nms_iou)  # per image and class, best first
    return det[kept], flat[kept], label[kept], det_image[kept]


def paste_masks(masks: Tensor, boxes: Tensor, H: Any, W: Any) -> Tensor:
    """``zir.ops.masks.paste_masks_in_image`` without its Python loop: ``masks (D, M, M')`` probabilities,
    ``boxes (D, 4)`` input pixels -> ``(D, H, W)`` probabilities, 0 outside the pixels each box touches.

    Each pixel takes the bilinear sample of its box's mask at the pixel's centre (``grid_sample``,
    ``align_corners=False``, zero padding). That sampling is separable, so it is two matrix products
    with interpolation weights ``(D, H, M)`` and ``(D, W, M')``: ``1 - |u - j|`` clamped at 0 for the
    sample position ``u`` of a pixel in mask cells and each cell ``j`` (cells outside the mask are the
    zero padding)."""
    M, M2 = masks.shape[-2:]
    x0, y0, x1, y1 = boxes.unbind(1)  # (D,)
    cols = torch.arange(W, device=boxes.device, dtype=torch.float32)
    rows = torch.arange(H, device=boxes.device, dtype=torch.float32)

    def weights(pix: Tensor, a: Tensor, b: Tensor, n: int) -> Tensor:
        u = (pix[None] + 0.5 - a[:, None]) / (b - a).clamp(min=1e-6)[:, None] * n - 0.5  # (D, P) mask coords
        wgt = (1 - (u[..., None] - torch.arange(n, device=u.device, dtype=u.dtype)).abs()).clamp(min=0)
        # only the pixels the box touches (paste_masks_in_image's floor(x0) .. ceil(x1) - 1)
        touched = (pix[None] + 1 > a[:, None]) & (pix[None] < b[:, None]) & (b > a)[:, None]
        return wgt * touched[..., None]  # (D, P, n)

    wy, wx = weights(rows, y0, y1, M), weights(cols, x0, x1, M2)
    return wy @ masks.float() @ wx.transpose(1, 2)  # (D, H, W)


class TwoStageGraph(nn.Module):
    """Faster R-CNN, Mask R-CNN or Panoptic FPN (a ``FasterRCNN`` with no extra head, a mask head, or a
    mask and a semantic head). Outputs: ``boxes``, ``scores``, ``labels``, ``counts`` as every detector;
    with a mask head ``masks`` uint8 ``(D, H, W)``, the masks of all detections, image by image (image
    ``b``'s are the ``counts[b]`` rows after those of images ``< b``), best first; Panoptic FPN adds
    ``semantic`` int64 ``(B, H, W)``: the semantic branch's class of each pixel as a data-set class id,
    ``-1`` where it says "thing". The panoptic merge (``merge_panoptic``: a greedy pass over instances
    in score order, each one's fate depending on the ones before) is not in the graph; a caller runs it
    on these outputs (``zir.export.runtime`` does)."""

    def __init__(self, model: ZirModel) -> None:
        super().__init__()
        if model.cfg.min_size:
            raise ConfigError(f"{type(model).__name__} with min_size={model.cfg.min_size} cannot be exported yet "
                              "(the graph resizes by the longer side only); train with min_size=0 to export")
        unknown = set(model.heads) - {"mask", "semantic"}
        if unknown:
            raise ConfigError(f"no deployment graph for the extra heads {sorted(unknown)}")
        self.model = model
        self.has_masks = "mask" in model.heads
        self.has_semantic = "semantic" in model.heads
        self.outputs = ("boxes", "scores", "labels", "counts") + (("masks",) if self.has_masks else ()) \
            + (("semantic",) if self.has_semantic else ())

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        from zir.models.detect.transform import SIZE_DIVISIBLE

        m = self.model
        S = m.cfg.image_size
        Bn = images.shape[0]
        H, W = images.shape[-2:]
        x, h, w = working_frame(images, m)
        x = F.pad(x, (0, (-w) % SIZE_DIVISIBLE, 0, (-h) % SIZE_DIVISIBLE))
        features = m.features(x)
        proposals, image = self.proposals(features, Bn, h, w, S)
        det, score, label, image = detect_rois(m.roi_heads, features, proposals, image, h, w, S)
        K = m.roi_heads.detections_per_img
        boxes = to_input(det, H, W, h, w)
        labels = label if m.thing_ids is None else m.thing_ids[label]  # instance classes -> data-set classes
        out_boxes, out_scores, out_labels, counts, order = to_slots(boxes, score, labels, image, Bn, K)
        outputs: tuple[Tensor, ...] = (out_boxes, out_scores, out_labels, counts)
        if self.has_masks:
            outputs += (self.masks(features, det[order], image[order], label[order], boxes[order], H, W),)
        if self.has_semantic:
            outputs += (self.semantic(features, h, w, H, W),)
        return outputs

    def proposals(self, features: list[Tensor], Bn: Any, h: Any, w: Any, S: int) -> tuple[Tensor, Tensor]:
        """``RPN.forward`` + ``select_proposals`` (test-time counts) for every image at once:
        ``(proposals (R, 4) working frame, image (R,))``, each image's best first."""
        from zir.ops.boxes import remove_small_boxes

        rpn = self.model.rpn
        level_logits, level_deltas = rpn.head(features)
        anchors = rpn.anchors([f.shape[-2:] for f in features], features[0].device)
        objectness = torch.cat([t.permute(0, 2, 3, 1).reshape(Bn, -1) for t in level_logits], dim=1).float()
        deltas = torch.cat([t.reshape(Bn, -1, 4, t.shape[-2], t.shape[-1]).permute(0, 3, 4, 1, 2).reshape(Bn, -1, 4)
                            for t in level_deltas], dim=1).float()
        pre_n, post_n = rpn.pre_nms_top_n[1], rpn.post_nms_top_n[1]
        top, levels, start = [], [], 0
        for lvl, a in enumerate(anchors):
            n = a.shape[0]
            k = torch.sym_min(pre_n, n)
            top.append(objectness[:, start:start + n].topk(k, dim=1).indices + start)  # (B, k)
            levels.append(torch.full((k,), lvl, dtype=torch.int64, device=objectness.device))
            start = start + n
        top = torch.cat(top, dim=1)  # (B, P)
        P = top.shape[1]
        # decode only the anchors kept (the model decodes all, then gathers: the same numbers)
        cand = rpn.coder.decode(torch.gather(deltas, 1, top[..., None].expand(-1, -1, 4)).reshape(-1, 4),
                                torch.cat(anchors)[top.reshape(-1)])
        cand = clip_to(cand, h, w)  # (B P, 4)
        score = torch.gather(objectness, 1, top).sigmoid().reshape(-1)
        image = torch.arange(Bn, device=cand.device)[:, None].expand(-1, P).reshape(-1)
        level = torch.cat(levels)[None].expand(Bn, -1).reshape(-1)
        keep = remove_small_boxes(cand, rpn.min_size)
        cand, score, image, level = cand[keep], score[keep], image[keep], level[keep]
        # clipped to the working frame, whose sides are at most S: groups S + 1 apart never overlap
        group = (image * len(anchors) + level).to(cand.dtype)
        kept = nms(cand + (group * (S + 1))[:, None], score, rpn.nms_iou)  # per image and level, best first
        cand, image = cand[kept], image[kept]
        rank, _ = rank_in_image(image, Bn)
        keep = (rank < post_n).nonzero().squeeze(1)
        # a bound for the exporter: NMS's output size has none, and R * classes below would overflow int64
        torch._check(keep.shape[0] <= MAX_BATCH * post_n)
        return cand[keep], image[keep]

    def masks(self, features: list[Tensor], det: Tensor, image: Tensor, label: Tensor, boxes: Tensor,
              H: Any, W: Any) -> Tensor:
        """``MaskHead.predict``: the kept detections' masks of their class, pasted into the input image and
        thresholded at 0.5 -> uint8 ``(D, H, W)``."""
        head = self.model.heads["mask"]
        rois = torch.cat([image[:, None].to(det.dtype), det], dim=1)
        probs = head(pool(head.pooler, features, rois)).float().sigmoid()  # (D, C, M, M)
        probs = probs[torch.arange(det.shape[0], device=det.device), label]  # (D, M, M)
        return (paste_masks(probs, boxes, H, W) >= 0.5).to(torch.uint8)

    def semantic(self, features: list[Tensor], h: Any, w: Any, H: Any, W: Any) -> Tensor:
        """``SemanticHead.predict`` before the merge: the head's logits cut to the working frame at its
        stride, up to the input size, arg-max, as data-set classes (``-1``: "thing") -> ``(B, H, W)``."""
        head = self.model.heads["semantic"]
        stride = head.strides[0]
        logits = head(features)[:, :, : (h + stride - 1) // stride, : (w + stride - 1) // stride].float()
        cls = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False).argmax(1)
        ids = torch.cat([head.stuff_ids, head.stuff_ids.new_full((1,), -1)])  # semantic class -> data-set class
        return ids[cls]


def split_instances(boxes: Tensor, scores: Tensor, labels: Tensor, counts: Tensor,
                    masks: Tensor | None = None) -> list[Any]:
    """A detector graph's outputs (one batch) -> one ``DetectionPrediction`` per image, with its ``masks``
    (bool ``(N, H, W)``) when the graph has them."""
    from zir.data.contract import DetectionPrediction

    out, start = [], 0
    for b, s, lab, n in zip(boxes, scores, labels, counts.tolist()):
        pred = DetectionPrediction(boxes=b[:n], scores=s[:n], labels=lab[:n])
        if masks is not None:
            pred.masks = masks[start:start + n].bool()
        out.append(pred)
        start += n
    return out


def merge_outputs(instances: Any, semantic: Tensor, stuff_ids: Tensor, merge: Any) -> Any:
    """Panoptic FPN's merge (``panoptic_fpn.merge_panoptic``) on one image of the graph's outputs: its
    instances with masks and its ``semantic (H, W)`` map of data-set classes (``-1``: "thing")."""
    from zir.models.segment.panoptic_fpn import merge_panoptic

    head = torch.full_like(semantic, len(stuff_ids))  # "thing", and any class the head does not know
    for k, cls in enumerate(stuff_ids.tolist()):
        head[semantic == cls] = k
    return merge_panoptic(instances, head, stuff_ids, merge)
