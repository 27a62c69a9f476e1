"""Deployment graphs: a trained model wrapped so that one tensor-to-tensor ``forward`` goes from uint8 images
to results in the input's pixels, pre- and post-processing included, ready for ``torch.export`` / ONNX.

Every graph takes ``images``: uint8 ``(B, 3, H, W)`` RGB, one size per call, ``B``, ``H`` and ``W`` dynamic.
What it returns, by task (the sidecar JSON lists the same):

* classify: ``scores`` float32 ``(B, C)`` softmax probabilities, ``labels`` int64 ``(B,)``.
* segment: ``semantic`` int64 ``(B, H, W)``, the arg-max class of every input pixel.
* detect: ``boxes`` float32 ``(B, K, 4)`` XYXY input pixels, ``scores`` ``(B, K)``, ``labels`` int64
  ``(B, K)`` and ``counts`` int64 ``(B,)``: image ``b``'s detections are the first ``counts[b]`` rows,
  best first, the rest zeros (``K`` = the model's ``max_detections``). The whole batch goes through one
  NMS (boxes of different images never suppress each other), so every image of a batch is filtered,
  whatever the batch size.
* instance (Mask R-CNN): the detector's outputs and ``masks`` uint8 ``(D, H, W)``, one per detection, image
  by image; panoptic (Panoptic FPN): those and ``semantic`` int64 ``(B, H, W)`` (``zir.export.two_stage``).

These wrappers are the export-only code (house style 14): they re-state a model's ``predict`` with
symbolic sizes (``torch.sym_max``, integer arithmetic, ``torch.cond`` for the resize's antialias choice)
and batch-wide tensor operations instead of Python loops over images, calling the model's own
``forward`` and the pure functions of ``zir.models.detect.transform`` / ``zir.ops``. The parity tests
(``tests/export``) hold them to ``model.predict``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from zir.errors import ConfigError
from zir.models.base import ZirModel
from zir.ops.boxes import iou
from zir.ops.coder import decode_yolo_v1

MAX_BATCH = 1024  # the largest batch an exported graph takes (its dynamic batch dimension's bound)

# --------------------------------------------------------------------------------------------------
# Sizes with symbolic integers (the same numbers as zir.models.detect.transform's, traced, not constants)


def _round_div(a: Any, b: Any) -> Any:
    """``round(a / b)`` for non-negative integers (Python ints or SymInts), halves rounded up.

    ``transform.working_size`` rounds ``h * (S / m)`` half to even in floating point; the two differ
    only when ``h * S / m`` is exactly ``k + 1/2`` with ``k`` even, an odd side paired with a power of two."""
    return (2 * a + b) // (2 * b)


def working_hw(h: Any, w: Any, image_size: int) -> tuple[Any, Any]:
    """``transform.working_size((h, w), image_size)`` (``min_size=0``) in integer arithmetic."""
    m = torch.sym_max(h, w)
    return torch.sym_max(1, _round_div(h * image_size, m)), torch.sym_max(1, _round_div(w * image_size, m))


def resize_to(x: Tensor, h: Any, w: Any, shrink: Any) -> Tensor:
    """``transform.resize`` of ``(B, 3, H, W)`` to ``(h, w)``: antialiased when shrinking. ``shrink`` is a
    symbolic boolean, so the choice stays in the graph (an ONNX ``If``) instead of being fixed at export."""
    return torch.cond(shrink,
                      lambda t: F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True),
                      lambda t: F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=False),
                      (x,))


def to_unit(images: Tensor) -> Tensor:
    """uint8 ``(B, 3, H, W)`` -> float32 in [0, 1], as ``zir.engine.predictor.to_float_image``."""
    return images.float() / 255


# --------------------------------------------------------------------------------------------------
# Post-processing shared by the detectors


def working_frame(images: Tensor, model: ZirModel) -> tuple[Tensor, Any, Any]:
    """uint8 ``(B, 3, H, W)`` -> the detectors' working frame, as their ``predict`` makes it: resized so the
    longer side is at most ``model.cfg.image_size`` (``working_hw``), normalised with the model's statistics.

    Returns:
        ``(x (B, 3, h, w) float, h, w)`` with ``h, w`` symbolic when traced."""
    from zir.models.detect.transform import normalize

    S = model.cfg.image_size
    H, W = images.shape[-2:]
    h, w = working_hw(H, W, S)
    return normalize(resize_to(to_unit(images), h, w, torch.sym_max(H, W) > S), model.mean, model.std), h, w


def batched_detections(boxes: Tensor, scores: Tensor, score_thresh: float, nms_iou: float,
                       max_detections: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Threshold, per-image per-class NMS and the best ``max_detections`` per image, for a whole batch.

    Args:
        boxes: ``(B, N, 4)`` candidate boxes.
        scores: ``(B, N, C)`` class scores of each candidate (every class of a box is a detection).

    Returns:
        ``boxes (B, K, 4)``, ``scores (B, K)``, ``labels (B, K)`` int64, ``counts (B,)`` int64; the first
        ``counts[b]`` rows of image ``b`` are its detections, best first, the rest zeros.
    """
    B, N, C = scores.shape
    K = max_detections
    flat = scores.reshape(-1)  # (B N C,)
    keep = (flat > score_thresh).nonzero().squeeze(1)
    sc = flat[keep]
    image = keep // (N * C)
    label = keep % C
    box = boxes.reshape(-1, 4)[keep // C]
    # one NMS over the batch: boxes of another image or class are moved apart (torchvision's coordinate
    # trick), so they never overlap
    span = boxes.max() - boxes.min() + 1  # over every candidate: defined when none passes the threshold
    offset = (image * C + label).to(box.dtype) * span
    kept = nms(box + offset[:, None], sc, nms_iou)  # best first
    box, sc, label, image = box[kept], sc[kept], label[kept], image[kept]
    # rank of each detection within its image, in score order: a running count per image
    same = (image[:, None] == torch.arange(B, device=image.device)[None]).long()  # (M, B)
    rank = (same.cumsum(0) * same).sum(1) - 1
    take = rank < K
    slot = image[take] * K + rank[take]
    out_boxes = boxes.new_zeros(B * K, 4).index_put((slot,), box[take])
    out_scores = scores.new_zeros(B * K).index_put((slot,), sc[take])
    out_labels = torch.zeros(B * K, dtype=torch.int64, device=boxes.device).index_put((slot,), label[take])
    counts = same.sum(0).clamp(max=K)
    return out_boxes.view(B, K, 4), out_scores.view(B, K), out_labels.view(B, K), counts


def clip_to(boxes: Tensor, h: Any, w: Any) -> Tensor:
    """``(..., 4)`` XYXY boxes clipped to an ``(h, w)`` image (``torchvision.ops.clip_boxes_to_image``)."""
    x = boxes[..., 0::2].clamp(min=0).clamp(max=w)
    y = boxes[..., 1::2].clamp(min=0).clamp(max=h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


# --------------------------------------------------------------------------------------------------
# The graphs


class ClassifyGraph(nn.Module):
    """Classifiers (``convnet``, ``classifier``): resize to ``image_size`` square (antialiased both ways,
    as ``predict``), the model, softmax (``tta=2``: the mean with the left-right mirror's, as ``predict``)."""

    outputs = ("scores", "labels")

    def __init__(self, model: ZirModel) -> None:
        super().__init__()
        self.model, self.size = model, model.cfg.image_size

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = F.interpolate(to_unit(images), size=(self.size, self.size), mode="bilinear", align_corners=False,
                          antialias=True)
        probs = self.model(x).float().softmax(dim=1)  # (B, C)
        if getattr(self.model.cfg, "tta", 1) == 2:  # the classifier's flip view, as its predict
            probs = (probs + self.model(x.flip(-1)).float().softmax(dim=1)) / 2
        return probs, probs.argmax(dim=1)


class SemanticGraph(nn.Module):
    """Semantic segmenters (``fcn``, ``unet`` with ``tile=0``): resize into the working frame, the model's
    class probabilities (test-time views as ``predict``), back to the input's size, arg-max."""

    outputs = ("semantic",)

    def __init__(self, model: ZirModel) -> None:
        super().__init__()
        self.model, self.size = model, model.cfg.image_size
        if getattr(model.cfg, "tile", 0):
            raise ConfigError(f"unet with tile={model.cfg.tile} cannot be exported (its tile loop depends on the "
                              "image size); export a run with tile=0: zir export RUN ... after setting "
                              "model_args.tile=0 in RUN/config.yaml")

    def probs(self, x: Tensor) -> Tensor:
        """``(B, 3, h, w)`` working frame in [0, 1] -> ``(B, C, h, w)`` probabilities."""
        from zir.models.segment.unet import UNet
        from zir.ops.tta import dihedral_mean

        if isinstance(self.model, UNet):
            return dihedral_mean(lambda v: self.model._probs(_unet_whole(self.model, v)), x, self.model.cfg.tta)
        return dihedral_mean(lambda v: self.model(v).float().softmax(1), x, self.model.cfg.tta)

    def forward(self, images: Tensor) -> Tensor:
        H, W = images.shape[-2:]
        h, w = working_hw(H, W, self.size)
        x = resize_to(to_unit(images), h, w, torch.sym_max(H, W) > self.size)
        probs = self.probs(x)
        probs = F.interpolate(probs, size=(H, W), mode="bilinear", align_corners=False)
        return probs.argmax(dim=1)


def _unet_whole(model: ZirModel, x: Tensor) -> Tensor:
    """``UNet.predict_tiles(x, tile=0)``: the image with ``context`` px of mirror image on each side, padded
    to the stride, one pass, the image's part cut out. One reflection suffices when each side is longer than
    ``context + stride`` (the exported input's minimum)."""
    H, W = x.shape[-2:]
    m, s = model.context, model.stride
    padded = F.pad(x, (m, m + (-W) % s, m, m + (-H) % s), mode="reflect")
    return model(padded).float()[..., m: m + H, m: m + W]


class YoloV1Graph(nn.Module):
    """YOLO v1: letterbox onto the ``image_size`` canvas (the FC head fixes the canvas, not the input: any
    input size goes in), the model, class-specific scores, NMS, boxes back to the input's pixels."""

    outputs = ("boxes", "scores", "labels", "counts")

    def __init__(self, model: ZirModel) -> None:
        super().__init__()
        self.model, self.size = model, model.cfg.image_size

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from zir.models.detect.yolo_v1 import PAD_VALUE

        cfg, s = self.model.cfg, self.size
        H, W = images.shape[-2:]
        # zir.ops.boxes.letterbox with a square canvas: the longer side becomes s
        h, w = working_hw(H, W, s)
        top, left = (s - h) // 2, (s - w) // 2
        x = F.interpolate(to_unit(images), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        x = F.pad(x, (left, s - w - left, top, s - h - top), value=PAD_VALUE)
        pred = self.model(x).float()  # (B, S, S, 5B + C)
        B_ = cfg.B
        C = pred.shape[-1] - 5 * B_
        cells = pred[..., : 5 * B_].unflatten(-1, (B_, 5))  # (B, S, S, B_, 5)
        xyxy = decode_yolo_v1(cells[..., :4].movedim(3, 1), (s, s)).movedim(1, 3)  # (B, S, S, B_, 4)
        scores = cells[..., 4:5].clamp(0, 1) * pred[..., None, 5 * B_:].clamp(0, 1)  # (B, S, S, B_, C)
        n = images.shape[0]
        boxes, scores, labels, counts = batched_detections(
            xyxy.reshape(n, -1, 4), scores.reshape(n, -1, C), cfg.score_thresh, cfg.nms_iou, cfg.max_detections)
        # unletterbox_boxes: off the canvas, then scale by the integer sizes (zir.ops.boxes.scale_boxes)
        xs = (boxes[..., 0::2] - left) * (W / w)
        ys = (boxes[..., 1::2] - top) * (H / h)
        boxes = torch.stack([xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]], dim=-1)
        filled = torch.arange(boxes.shape[1], device=boxes.device) < counts[:, None]  # (B, K)
        boxes = clip_to(boxes, H, W) * filled[..., None]
        return boxes, scores, labels, counts


class AnchorFreeGraph(nn.Module):
    """The one-stage anchor-free detector: resize into the working frame, normalise, pad to the stride, the
    model's raw outputs decoded (as ``AnchorFree.predict``), boxes clipped to the working frame, then per
    image the best ``pre_nms_top_n`` (point, class) pairs above ``score_thresh``, per-class NMS over the
    whole batch at once and the best ``max_detections`` (with ``box_voting``, each the vote of the boxes
    it suppressed: :func:`box_votes`; with ``refine``, the best of each image moved by the model's
    ``BoxRefiner`` and, with ``refine_score``, scored and sorted again), boxes back to the input's pixels."""

    outputs = ("boxes", "scores", "labels", "counts")

    def __init__(self, model: ZirModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from zir.models.detect.anchor_free import decode_ltrb, dfl_expectation
        from zir.models.detect.transform import SIZE_DIVISIBLE

        m, cfg = self.model, self.model.cfg
        S = cfg.image_size
        Bn = images.shape[0]
        H, W = images.shape[-2:]
        x, h, w = working_frame(images, m)
        x = F.pad(x, (0, (-w) % SIZE_DIVISIBLE, 0, (-h) % SIZE_DIVISIBLE))
        cls, box, points, strides, features = m.raw(x)
        scores = cls.float().sigmoid()  # (B, A, C)
        C = scores.shape[2]
        boxes = clip_to(decode_ltrb(points, dfl_expectation(box.float()), strides), h, w)  # (B, A, 4)
        # per image: the best pre_nms_top_n pairs among those above the threshold (postprocess's order)
        flat = scores.reshape(Bn, -1)
        k = torch.sym_min(cfg.pre_nms_top_n, flat.shape[1])
        top = torch.where(flat > cfg.score_thresh, flat, -1.0).topk(k, dim=1)
        image = torch.arange(Bn, device=x.device)[:, None].expand(-1, k).reshape(-1)
        idx, sc = top.indices.reshape(-1), top.values.reshape(-1)
        keep = (sc > cfg.score_thresh).nonzero().squeeze(1)
        idx, sc, image = idx[keep], sc[keep], image[keep]
        label = idx % C
        cand = boxes.reshape(-1, 4)[image * boxes.shape[1] + idx // C]
        group = (image * C + label).to(cand.dtype)
        # clipped to the working frame, whose sides are at most S: groups S + 1 apart never overlap
        apart = cand + (group * (S + 1))[:, None]
        kept = nms(apart, sc, cfg.nms_iou)
        K = cfg.max_detections
        image = image[kept]
        rank, counts = rank_in_image(image, Bn)
        take = rank < K
        slot = image[take] * K + rank[take]
        best = kept[take]  # the detections that fit in max_detections, as indices of the candidates
        det = cand[best]
        if cfg.box_voting > 0:
            det = box_votes(apart[best], apart, cand, sc, cfg.nms_iou, cfg.box_voting, det)
        score, lab = sc[best], label[best]
        if m.refiner is not None and cfg.refine:  # the best ``refine`` of each image: RoIAlign + MLP, as predict
            its = image[take]
            sel = (rank[take] < cfg.refine).nonzero().squeeze(1)
            out = m.refiner(features[0], torch.cat([its[sel, None].to(det.dtype), det[sel]], dim=1)).float()
            det = det.index_put((sel,), clip_to(m.refiner.coder.decode(out[:, :4], det[sel]), h, w))
            if cfg.refine_score > 0:  # the predicted IoU into the score, then each image best first again
                score = score.index_put((sel,), m.refiner.rescore(score[sel], out[:, 4].sigmoid(), cfg.refine_score))
                order = (its.to(score.dtype) * 2 - score).argsort()  # scores in [0, 1]: images 2 apart
                det, score, lab, its = det[order], score[order], lab[order], its[order]
                slot = its * K + rank_in_image(its, Bn)[0]
        det = clip_to(torch.stack([det[:, 0] * (W / w), det[:, 1] * (H / h), det[:, 2] * (W / w),
                                   det[:, 3] * (H / h)], dim=1), H, W)
        out_boxes = x.new_zeros(Bn * K, 4).index_put((slot,), det)
        out_scores = x.new_zeros(Bn * K).index_put((slot,), score)
        out_labels = torch.zeros(Bn * K, dtype=torch.int64, device=x.device).index_put((slot,), lab)
        return out_boxes.view(Bn, K, 4), out_scores.view(Bn, K), out_labels.view(Bn, K), counts.clamp(max=K)


def box_votes(owners: Tensor, voters: Tensor, boxes: Tensor, scores: Tensor, iou_thresh: float, power: float,
              fallback: Tensor) -> Tensor:
    """``AnchorFree``'s box voting (``zir.ops.boxes.weighted_merge``) as plain operators: each of ``owners
    (K, 4)`` (kept boxes, best first) becomes the ``scores^power``-weighted mean of ``boxes (M, 4)``, the
    candidates whose ``voters (M, 4)`` (the same boxes, shifted apart by image and class) overlap it by more than
    ``iou_thresh`` and no better-ranked owner; an owner no candidate votes for keeps ``fallback (K, 4)``.
    ``owners`` may be the first ``K`` kept boxes of each image only: a candidate's first owner is always among
    its image's first kept boxes."""
    over = iou(owners, voters) > iou_thresh  # (K, M)
    first = over & (over.long().cumsum(0) == 1)  # each candidate votes once, for its best owner
    w = first.to(boxes.dtype) * scores.pow(power)[None]
    total = w.sum(1, keepdim=True)
    return torch.where(total > 0, (w @ boxes) / total.clamp(min=1e-12), fallback)


def rank_in_image(image: Tensor, B: Any) -> tuple[Tensor, Tensor]:
    """For items in order, each one's rank among the items of its image (``image (M,)`` int64 in
    ``[0, B)``): ``(rank (M,), count per image (B,))``."""
    same = (image[:, None] == torch.arange(B, device=image.device)[None]).long()  # (M, B)
    return (same.cumsum(0) * same).sum(1) - 1, same.sum(0)


# --------------------------------------------------------------------------------------------------
# Which graph a model gets


def graph_for(model: ZirModel) -> nn.Module:
    """The deployment graph of ``model`` (in eval mode), or a :class:`~zir.errors.ConfigError` that says why
    the architecture has none yet and what to use instead."""
    from zir.models.classify.classifier import Classifier
    from zir.models.classify.convnet import ConvNet
    from zir.models.detect.yolo_v1 import YoloV1
    from zir.models.segment.fcn import FCN
    from zir.models.segment.unet import UNet

    model = model.eval()
    if isinstance(model, (ConvNet, Classifier)):
        return ClassifyGraph(model).eval()
    if isinstance(model, (FCN, UNet)):
        return SemanticGraph(model).eval()
    if isinstance(model, YoloV1):
        return YoloV1Graph(model).eval()
    if type(model).__name__ == "AnchorFree":
        return AnchorFreeGraph(model).eval()
    if type(model).__name__ == "FasterRCNN":  # and Mask R-CNN, Panoptic FPN: the same class with heads
        from zir.export.two_stage import TwoStageGraph

        return TwoStageGraph(model).eval()
    if type(model).__name__ in ("SlidingWindow", "OverFeat"):
        from zir.export.windows import OverFeatGraph, SlidingWindowGraph

        return (SlidingWindowGraph if type(model).__name__ == "SlidingWindow" else OverFeatGraph)(model).eval()
    name = type(model).__name__
    if name in ("RCNN", "FastRCNN"):  # on selective search proposals, a second input
        from zir.export.selective import FastRCNNGraph, RCNNGraph

        return (RCNNGraph if name == "RCNN" else FastRCNNGraph)(model).eval()
    raise ConfigError(f"export of {name} ({model.task}) into one graph is not implemented yet; the graphs that "
                      "exist: convnet, classifier, efficientnet_lite0, fcn, unet, yolo_v1, anchor_free, faster_rcnn, "
                      "mask_rcnn, panoptic_fpn, sliding_window, overfeat, rcnn, fast_rcnn. Use `zir predict` "
                      "(PyTorch) for this run")
