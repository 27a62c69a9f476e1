"""OverFeat (Sermanet et al. 2013, "OverFeat: Integrated Recognition, Localization and Detection using
Convolutional Networks"): the sliding-window classifier made fully convolutional.

A classifier whose fully connected layers are convolutions (a ``k x k`` convolution over the ``k x k``
feature map of a window is a fully connected layer) can be applied to a whole image at once: its
output is then a map with one prediction per window position, ``S`` pixels apart (``S`` the features'
stride), and the computation shared by overlapping windows is done once (paper section 3.5, figure 5).
One forward pass per scale replaces ``zir.models.detect.sliding_window``'s thousands of crops::

    image -> resize (longer side image_size) -> for every scale s of the pyramid (section 4.1):
      resize by s -> normalise -> pad to a multiple of S
      -> features (stride S) -> conv k x k ("FC 1") -> ReLU -> conv 1x1 ("FC 2") -> ReLU   WindowClassifier
           -> conv 1x1: class logits (K + 1, 0 = background)   per window position  (B, K + 1, h, w)
           -> conv 1x1: box regression (4)                     per window position  (B, 4, h, w)
    every position's window: [x S, y S, x S + window, y S + window] in the scaled image
    -> decode the boxes (relative to the window), score threshold, all scales together
    -> per-class NMS, or OverFeat's merge (section 4.3: boxes of one object averaged) -> input pixels

The box head regresses each window's object as R-CNN-style deltas ``(dx, dy, dw, dh)`` of the window
(``zir.ops.coder.BoxCoder``): the centre offset ``x, y`` in window widths and the size ``w, h`` as log
ratios; the paper regresses the box's edges from pool-5 features with a class-specific head (section
4.2); a class-agnostic head on the shared FC layers is simpler and enough for a few classes.

Training is dense, on the image pyramid: each batch is resized by one of ``scales`` (drawn at random),
every valid window position (window inside the image) is labelled by its IoU with the ground truth
(>= ``fg_iou``: the object's class; < ``bg_iou``: background; in between: ignored; an object whose
best window has IoU in ``[bg_iou, fg_iou)`` gets that window too, so square windows still learn
elongated objects), ``batch_size_per_image`` positions per image are sampled (at most
``positive_fraction`` positive), and the loss is cross-entropy over K + 1 classes plus smooth-L1 box
regression on the positives (both divided by the number sampled, as in Fast R-CNN).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zir.data.contract import DetectionPrediction, Target
from zir.errors import ConfigError
from zir.models.base import ZirModel
from zir.models.detect.sliding_window import WindowClassifier, sliding_windows, window_count
from zir.models.detect.structures import GroundTruth, ground_truth, ignore_crowd
from zir.models.detect.transform import (
    boxes_to_input,
    image_list,
    normalize,
    pad_batch,
    resize,
    scaled_size,
    unpad,
    working_size,
)
from zir.ops.boxes import batched_nms, clip, iou, weighted_merge
from zir.ops.coder import RCNN_HEAD_WEIGHTS, BoxCoder
from zir.ops.matching import BETWEEN, balanced_sample, match

MERGES = ("nms", "overfeat")


@dataclass
class OverFeatConfig:
    """Attributes:
    num_classes: object classes K (background is added internally as class 0).
    image_size: the working frame's longer side in pixels; ``predict`` resizes any image to it and maps
        boxes back.
    window: side of the square window of one output position, in pixels of the scaled image (the
        classifier's input size); a multiple of the feature stride ``2**level``, which is the step
        between windows.
    scales: the image pyramid, factors of the working image (a window covers ``window / s`` working
        pixels); training draws one per batch.
    backbone: ``convnet`` (``level`` blocks of ``zir.models.classify.convnet``) or a timm name (its feature map
        of stride ``2**level``); ``pretrained``: weights of a timm backbone.
    width: channels of the first ConvNet block; hidden: channels of the convolutional FC layers.
    level: the feature stride is ``2**level``.
    fg_iou, bg_iou: window labels: IoU >= fg_iou object, < bg_iou background, between ignored.
    batch_size_per_image, positive_fraction: window positions sampled per image for the loss.
    merge: ``nms`` (per-class NMS) or ``overfeat`` (each kept box replaced by the score-weighted mean
        of the boxes it suppresses, ``zir.ops.boxes.weighted_merge``).
    score_thresh, nms_iou, pre_nms_top_n (per scale), detections_per_img: post-processing.
    """

    num_classes: int = 4
    image_size: int = 256
    window: int = 32
    scales: tuple[float, ...] = (2.0, 1.41, 1.0, 0.71, 0.5, 0.35, 0.25)
    backbone: str = "convnet"
    pretrained: str = "imagenet"
    width: int = 16
    hidden: int = 128
    level: int = 3
    fg_iou: float = 0.5
    bg_iou: float = 0.4
    batch_size_per_image: int = 256
    positive_fraction: float = 0.25
    merge: str = "nms"
    score_thresh: float = 0.05
    nms_iou: float = 0.5
    pre_nms_top_n: int = 1000
    detections_per_img: int = 100


# --------------------------------------------------------------------------------------------------
# The model


class OverFeat(ZirModel):
    """The window classifier of ``sliding_window`` run as one convolution per scale, plus a box head."""

    task = "detect"

    def __init__(self, cfg: OverFeatConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.classifier = WindowClassifier(cfg.num_classes + 1, cfg.window, cfg.backbone, cfg.pretrained,
                                           cfg.width, cfg.level, cfg.hidden)
        self.box = nn.Conv2d(cfg.hidden, 4, 1)
        nn.init.normal_(self.box.weight, std=0.001)  # start at the window itself
        nn.init.zeros_(self.box.bias)
        self.set_normalization(self.classifier.mean, self.classifier.std)
        self.stride = self.classifier.stride
        self.coder = BoxCoder(RCNN_HEAD_WEIGHTS)

    def extra_repr(self) -> str:
        """The settings and their cost, shown by ``print(model)``."""
        S, cfg = self.cfg.image_size, self.cfg
        count = sum(window_count(round(S * s), round(S * s), cfg.window, self.stride) for s in cfg.scales)
        return (f"window={cfg.window}, stride={self.stride}, scales={cfg.scales}, merge={cfg.merge}, "
                f"window positions per {S}x{S} image={count}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised ``(B, 3, H, W)`` -> class logits ``(B, K + 1, h, w)`` and box deltas ``(B, 4, h, w)``,
        ``h = H / S - k + 1`` positions (``k = window / S``)."""
        trunk = self.classifier.trunk(x.contiguous(memory_format=torch.channels_last))
        return self.classifier.cls(trunk), self.box(trunk)

    def scaled_batch(self, images: list[Tensor], scale: float) -> tuple[Tensor, list[tuple[int, int]]]:
        """``(3, h_i, w_i)`` images in [0, 1] -> resized into the working frame times ``scale``,
        normalised, zero-padded (= the mean colour) to one batch whose sides are multiples of ``S``;
        and each image's scaled ``(h, w)``."""
        resized = []
        for im in images:
            work = working_size(tuple(im.shape[-2:]), self.cfg.image_size)  # sliding_window's working frame
            resized.append(normalize(resize(im, scaled_size(work, scale)), self.mean, self.std))
        batch = pad_batch(resized, self.stride, min_size=self.cfg.window)
        return batch, [tuple(im.shape[-2:]) for im in resized]

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        """``{"cls", "box"}``: dense window classification and box regression at one scale of the pyramid."""
        cfg = self.cfg
        scale = cfg.scales[int(torch.randint(len(cfg.scales), ()))]
        x, scaled = self.scaled_batch(unpad(images, [t.size for t in targets]), scale)
        logits, deltas = self(x)  # (B, K + 1, h, w), (B, 4, h, w)
        windows = position_windows(logits.shape[-2:], self.stride, cfg.window, x.device)  # (h w, 4)
        logits = logits.flatten(2).transpose(1, 2).float()  # (B, h w, K + 1)
        deltas = deltas.flatten(2).transpose(1, 2).float()  # (B, h w, 4)
        cls_logits, cls_labels, box_pred, box_target = [], [], [], []
        for n, (t, work) in enumerate(zip(targets, scaled)):
            gt = ground_truth(t, work)
            inside = (windows[:, 2] <= work[1]) & (windows[:, 3] <= work[0])
            matched = label_windows(gt, windows, cfg.fg_iou, cfg.bg_iou)
            matched[~inside] = BETWEEN  # only whole windows are evaluated (as by sliding_window)
            pos, neg = balanced_sample(matched, cfg.batch_size_per_image, cfg.positive_fraction)
            cls_logits.append(logits[n, torch.cat([pos, neg])])
            cls_labels.append(torch.cat([gt.labels[matched[pos]] + 1, matched.new_zeros(len(neg))]))
            box_pred.append(deltas[n, pos])
            box_target.append(self.coder.encode(gt.boxes[matched[pos]], windows[pos]))
        return overfeat_loss(torch.cat(cls_logits), torch.cat(cls_labels), torch.cat(box_pred),
                             torch.cat(box_target))

    @torch.no_grad()
    def predict(self, images: Tensor | list[Tensor]) -> list[DetectionPrediction]:
        """Detections in each input image's own pixels, best first."""
        images = image_list(images)
        return [self._predict_one(im) for im in images]

    def _predict_one(self, image: Tensor) -> DetectionPrediction:
        cfg = self.cfg
        size = tuple(image.shape[-2:])
        boxes, scores, labels = [image.new_zeros((0, 4))], [image.new_zeros(0)], []
        for s in cfg.scales:
            x, (work,) = self.scaled_batch([image], s)
            if work[0] < cfg.window or work[1] < cfg.window:
                continue  # the window does not fit at this scale
            logits, deltas = self(x)
            windows = position_windows(logits.shape[-2:], self.stride, cfg.window, x.device)
            inside = (windows[:, 2] <= work[1]) & (windows[:, 3] <= work[0])
            prob = logits[0].flatten(1).T.float().softmax(dim=1)[inside, 1:]  # (P, K)
            decoded = clip(self.coder.decode(deltas[0].flatten(1).T.float()[inside], windows[inside]), work)
            sc, idx = prob.flatten().topk(min(cfg.pre_nms_top_n, prob.numel()))
            keep = sc > cfg.score_thresh
            sc, idx = sc[keep], idx[keep]
            K = prob.shape[1]
            boxes.append(boxes_to_input(decoded[idx // K], work, size))
            scores.append(sc)
            labels.append(idx % K)
        labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64, device=image.device)
        boxes, scores, labels = postprocess(torch.cat(boxes), torch.cat(scores), labels, cfg.merge, cfg.nms_iou,
                                            cfg.detections_per_img)
        return DetectionPrediction(boxes=clip(boxes, size).float(), scores=scores.float(), labels=labels)


def position_windows(grid: tuple[int, int], stride: int, window: int, device: torch.device | str = "cpu") -> Tensor:
    """The window of every output position of an ``(h, w)`` map, row-major: ``(h w, 4)`` XYXY pixels of
    the scaled image, ``[x S, y S, x S + window, y S + window]`` (the classifier's input region)."""
    h, w = grid
    return sliding_windows((h - 1) * stride + window, (w - 1) * stride + window, window, stride, device)


# --------------------------------------------------------------------------------------------------
# Loss


def label_windows(gt: GroundTruth, windows: Tensor, fg_iou: float, bg_iou: float) -> Tensor:
    """Match windows ``(P, 4)`` to the ground truth: index of the object, ``BELOW_LOW`` (background) or
    ``BETWEEN`` (ignored), as ``zir.ops.matching.match``.

    IoUs below ``bg_iou`` are zeroed before the low-quality matches, so an object whose best window
    reaches only ``[bg_iou, fg_iou)`` gets that window, but a small object is never forced onto a much
    larger window at a coarse scale (it is learnt at the scale that fits it). Windows mostly inside a
    crowd region are ignored, not background.
    """
    quality = iou(gt.boxes, windows)
    matched = match(quality.where(quality >= bg_iou, 0.0), fg_iou, bg_iou, allow_low_quality_matches=True)
    return ignore_crowd(matched, gt, windows)


def overfeat_loss(class_logits: Tensor, labels: Tensor, box_deltas: Tensor, box_targets: Tensor) -> dict[str, Tensor]:
    """Cross-entropy of sampled windows ``(N, K + 1)`` against ``labels (N,)`` (0 = background), and
    smooth-L1 of the positives' deltas ``(P, 4)`` against their targets, both divided by N."""
    if len(labels) == 0:  # nothing sampled (no window fits): a zero that keeps the graph
        zero = class_logits.sum() * 0 + box_deltas.sum() * 0
        return {"cls": zero, "box": zero}
    cls = F.cross_entropy(class_logits, labels)
    box = F.smooth_l1_loss(box_deltas, box_targets, beta=1 / 9, reduction="sum") / len(labels)
    return {"cls": cls, "box": box}


# --------------------------------------------------------------------------------------------------
# Postprocess


def postprocess(boxes: Tensor, scores: Tensor, labels: Tensor, merge: str, nms_iou: float,
                detections_per_img: int) -> tuple[Tensor, Tensor, Tensor]:
    """Detections of all scales ``(N, 4)``, ``(N,)``, ``(N,)`` -> the best ``detections_per_img`` after
    per-class NMS (``merge="nms"``) or OverFeat's merge (``"overfeat"``: the kept boxes are the score-
    weighted means of the boxes each suppresses, paper section 4.3)."""
    if merge == "overfeat":
        boxes, keep = weighted_merge(boxes, scores, nms_iou, labels)
    else:
        keep = batched_nms(boxes, scores, labels, nms_iou)
        boxes = boxes[keep]
    keep, boxes = keep[:detections_per_img], boxes[:detections_per_img]
    return boxes, scores[keep], labels[keep]


def build(cfg: OverFeatConfig) -> OverFeat:
    cfg.scales = tuple(float(s) for s in cfg.scales)
    if cfg.merge not in MERGES:
        raise ConfigError(f"merge must be one of {', '.join(MERGES)}, got {cfg.merge!r}")
    if not cfg.scales:
        raise ConfigError("overfeat needs at least one scale")
    return OverFeat(cfg)
