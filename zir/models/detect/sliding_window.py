"""Sliding-window detection: the lecture's first detector, a classifier applied to every window.

Detection as classification (lecture, "sliding window"): train a classifier on object crops and on
background crops, then slide a window over the image at several positions and scales and classify
each one; windows whose class score passes a threshold are detections, and non-maximum suppression
keeps one box per object::

    training:  image -> crops: ground-truth boxes (jittered) and background windows (IoU < 0.3 with
               every object, some of them near misses) -> resize to input_size x input_size
               -> classifier -> softmax over K + 1 classes (0 = background) -> cross-entropy
    predict:   image -> resize (longer side image_size) -> for every scale s and window (h, w):
               every window of the image resized by s, at `stride` pixels  (window_count of them)
               -> resize each to input_size -> classifier (batched) -> score threshold
               -> per-class NMS -> boxes mapped back to the input image's pixels

Scales are an image pyramid: a fixed ``h x w`` window slid over the image resized by ``s`` covers
``h / s x w / s`` pixels of the working image, so small ``s`` finds large objects. Every window of
every scale is cropped out and classified on its own: the cost grows with the number of windows,
``sum over scales and windows of window_count(H s, W s, (h, w), stride)`` (see :func:`window_count`),
and a finer stride or more scales find more objects at a higher price (:meth:`SlidingWindow.windows_per_image`
gives the count for an image). OverFeat (``zir.models.detect.overfeat``) runs the same classifier as one
convolution over the whole image instead.

The classifier (:class:`WindowClassifier`) is a small ConvNet of ``zir.models.classify.convnet`` blocks (or a
timm backbone's feature map), whose fully connected layers are written as convolutions: a ``k x k``
convolution over the ``k x k`` feature map of a window is a fully connected layer, and applied to a
larger image it slides. Here every window is a separate input, so it returns one output each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn
from torchvision.ops import roi_align

from zir.data.contract import DetectionPrediction, Target
from zir.errors import ConfigError
from zir.models.backbones import build_backbone
from zir.models.base import ZirModel
from zir.models.classify.convnet import ConvBlock
from zir.models.detect.structures import ground_truth
from zir.models.detect.transform import image_list, normalize, resize, to_input_pixels, unpad, working_size
from zir.ops.boxes import batched_nms, iou, scale_boxes


@dataclass
class SlidingWindowConfig:
    """Attributes:
    num_classes: object classes K (background is added internally as class 0).
    image_size: the working frame's longer side in pixels; ``predict`` resizes any image to it and maps
        boxes back.
    windows: window shapes ``(h, w)`` in pixels of the scaled image; each window is resized to
        ``input_size x input_size`` for the classifier.
    stride: step between windows in pixels of the scaled image.
    scales: the image pyramid: the working image is resized by each factor and every window slides
        over each; a window covers ``h / s`` working pixels.
    input_size: side of the classifier's square input; a multiple of the feature stride ``2**level``.
    backbone: ``convnet`` (``level`` blocks of ``zir.models.classify.convnet``) or a timm name (its feature
        map of stride ``2**level``); ``pretrained``: weights of a timm backbone (``imagenet``, ``timm``,
        ``none``).
    width: channels of the first ConvNet block (doubling per block).
    level: the feature map has stride ``2**level``.
    hidden: channels of the convolutional "fully connected" layers.
    crops_per_image: training crops per image; ``positive_fraction`` of them are objects.
    chunk: windows per classifier batch in ``predict`` (bounds memory, not the result).
    score_thresh, nms_iou, detections_per_img: post-processing.
    """

    num_classes: int = 4
    image_size: int = 256
    windows: tuple[tuple[int, int], ...] = ((32, 32),)
    stride: int = 8
    scales: tuple[float, ...] = (2.0, 1.41, 1.0, 0.71, 0.5, 0.35, 0.25)
    input_size: int = 32
    backbone: str = "convnet"
    pretrained: str = "imagenet"
    width: int = 16
    level: int = 3
    hidden: int = 128
    crops_per_image: int = 64
    positive_fraction: float = 0.25
    chunk: int = 2048
    score_thresh: float = 0.05
    nms_iou: float = 0.5
    detections_per_img: int = 100


# --------------------------------------------------------------------------------------------------
# Windows


def window_count(H: int, W: int, window: int | tuple[int, int], stride: int) -> int:
    """Number of ``window`` positions in an ``H x W`` image at ``stride``:
    ``(floor((H - h) / s) + 1) * (floor((W - w) / s) + 1)``, or 0 when the window does not fit."""
    h, w = (window, window) if isinstance(window, int) else window
    if h > H or w > W:
        return 0
    return ((H - h) // stride + 1) * ((W - w) // stride + 1)


def sliding_windows(H: int, W: int, window: int | tuple[int, int], stride: int,
                    device: torch.device | str = "cpu") -> Tensor:
    """Every window position, row-major: float32 ``(window_count(H, W, window, stride), 4)`` XYXY."""
    h, w = (window, window) if isinstance(window, int) else window
    if h > H or w > W:
        return torch.zeros((0, 4), device=device)
    ys = torch.arange(0, H - h + 1, stride, device=device, dtype=torch.float32)
    xs = torch.arange(0, W - w + 1, stride, device=device, dtype=torch.float32)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y, x + w, y + h], dim=-1).reshape(-1, 4)


def pyramid_windows(size: tuple[int, int], windows: tuple[tuple[int, int], ...], stride: int,
                    scales: tuple[float, ...], device: torch.device | str = "cpu") -> Tensor:
    """The windows of every scale and shape, in the pixels of the unscaled ``size = (H, W)`` image:
    ``(N, 4)``, N the sum of :func:`window_count` over scales and windows."""
    H, W = size
    out = [torch.zeros((0, 4), device=device)]
    for s in scales:
        scaled = (max(1, round(H * s)), max(1, round(W * s)))
        for window in windows:
            out.append(scale_boxes(sliding_windows(*scaled, window, stride, device), scaled, size))
    return torch.cat(out)


def crop_windows(images: Tensor, boxes: Tensor, batch_index: Tensor, size: int) -> Tensor:
    """Windows cut out and resized: ``images (B, 3, H, W)``, ``boxes (N, 4)`` XYXY pixels of image
    ``batch_index (N,)`` -> ``(N, 3, size, size)``.

    ``roi_align`` with ``aligned=True`` samples at pixel centres (exclusive ``x2``, ``y2``); with an
    adaptive sampling ratio a window larger than ``size`` averages several samples per output pixel
    (an area-like downscale), so training crops and ``predict``'s windows are resampled the same way.
    """
    rois = torch.cat([batch_index[:, None].to(boxes), boxes], dim=1)
    return roi_align(images, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


# --------------------------------------------------------------------------------------------------
# The classifier, fully connected layers as convolutions


class ConvNetFeatures(nn.Sequential):
    """``level`` conv-BN-ReLU-pool blocks (``zir.models.classify.convnet.ConvBlock``): stride ``2**level``."""

    def __init__(self, width: int, level: int) -> None:
        chans = [3] + [width * min(2**i, 8) for i in range(level)]
        super().__init__(*[ConvBlock(a, b, "batch") for a, b in zip(chans, chans[1:])])
        self.channels = chans[-1]


class WindowClassifier(nn.Module):
    """Features of stride ``S`` -> conv ``k x k`` (the first FC layer over a ``k S``-pixel window,
    ``k = input_size / S``) -> ReLU -> conv 1x1 (second FC) -> ReLU: ``trunk``; then a 1x1 conv to
    ``K + 1`` class logits.

    On an ``input_size`` crop the output is ``1 x 1`` (one window); on a larger image it is one output
    per window position, ``stride S`` apart: OverFeat's view of the same network.
    """

    def __init__(self, num_outputs: int, window: int, backbone: str = "convnet", pretrained: str = "imagenet",
                 width: int = 16, level: int = 3, hidden: int = 128) -> None:
        super().__init__()
        if backbone == "convnet":
            self.features: nn.Module = ConvNetFeatures(width, level)
            channels = self.features.channels
            self.mean, self.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        else:
            body = build_backbone(backbone, pretrained, out_indices=(level - 1,), keep_unused_blocks=True)
            if body.strides[-1] != 2**level:
                raise ConfigError(f"backbone {backbone!r} level {level}: stride {body.strides[-1]}, "
                                  f"expected {2**level}; choose another level")
            if pretrained != "none":  # keep ImageNet's BatchNorm statistics (timm's freeze keeps BN + act)
                body.body = freeze_batch_norm_2d(body.body)
            self.features, channels = body, body.channels[-1]
            self.mean, self.std = body.mean, body.std
        self.stride = 2**level
        if window % self.stride:
            raise ConfigError(f"window / input_size {window} must be a multiple of the feature stride {self.stride}")
        self.window = window
        self.k = window // self.stride
        self.fc = nn.Sequential(nn.Conv2d(channels, hidden, self.k), nn.ReLU(inplace=True),
                                nn.Conv2d(hidden, hidden, 1), nn.ReLU(inplace=True))
        self.cls = nn.Conv2d(hidden, num_outputs, 1)

    def trunk(self, x: Tensor) -> Tensor:
        """Normalised ``(B, 3, H, W)`` -> ``(B, hidden, H / S - k + 1, W / S - k + 1)``."""
        f = self.features(x)
        return self.fc(f[-1] if isinstance(f, list) else f)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised ``(B, 3, H, W)`` -> class logits ``(B, K + 1, H / S - k + 1, W / S - k + 1)``."""
        return self.cls(self.trunk(x))


# --------------------------------------------------------------------------------------------------
# The model


class SlidingWindow(ZirModel):
    """A window classifier run over every window of an image pyramid."""

    task = "detect"

    def __init__(self, cfg: SlidingWindowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.classifier = WindowClassifier(cfg.num_classes + 1, cfg.input_size, cfg.backbone, cfg.pretrained,
                                           cfg.width, cfg.level, cfg.hidden)
        self.set_normalization(self.classifier.mean, self.classifier.std)

    def working_image(self, image: Tensor) -> Tensor:
        """``(3, h, w)`` in [0, 1] -> normalised, resized so that its longer side is ``image_size``."""
        work = working_size(tuple(image.shape[-2:]), self.cfg.image_size)
        return normalize(resize(image, work), self.mean, self.std)

    def classify(self, crops: Tensor) -> Tensor:
        """``(N, 3, input_size, input_size)`` normalised -> logits ``(N, K + 1)``."""
        # channels-last: oneDNN's convolutions on many small images run about twice as fast on a CPU
        return self.classifier(crops.contiguous(memory_format=torch.channels_last)).flatten(1)

    def windows_per_image(self, size: tuple[int, int]) -> int:
        """Windows ``predict`` classifies for an image of working size ``(H, W)`` (the lecture's cost)."""
        return sum(window_count(max(1, round(size[0] * s)), max(1, round(size[1] * s)), w, self.cfg.stride)
                   for s in self.cfg.scales for w in self.cfg.windows)

    def extra_repr(self) -> str:
        """The settings and their cost, shown by ``print(model)``."""
        S = self.cfg.image_size
        return (f"windows={self.cfg.windows}, stride={self.cfg.stride}, scales={self.cfg.scales}, "
                f"input_size={self.cfg.input_size}, windows per {S}x{S} image={self.windows_per_image((S, S))}")

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        """``{"cls"}``: cross-entropy of the classifier on sampled object and background crops."""
        crops, labels = [], []
        for im, t in zip(unpad(images, [t.size for t in targets]), targets):
            work = self.working_image(im)
            gt = ground_truth(t, tuple(work.shape[-2:]))
            boxes, box_labels = sample_crops(gt.boxes, gt.labels, tuple(work.shape[-2:]), self.cfg.crops_per_image,
                                             self.cfg.positive_fraction, self.cfg.windows, self.cfg.scales)
            crops.append(crop_windows(work[None], boxes, torch.zeros(len(boxes), device=boxes.device),
                                      self.cfg.input_size))
            labels.append(box_labels)
        logits = self.classify(torch.cat(crops))
        return {"cls": F.cross_entropy(logits.float(), torch.cat(labels))}

    @torch.no_grad()
    def predict(self, images: Tensor | list[Tensor]) -> list[DetectionPrediction]:
        """Detections in each input image's own pixels, best first."""
        images = image_list(images)
        return [self._predict_one(im) for im in images]

    def _predict_one(self, image: Tensor) -> DetectionPrediction:
        cfg = self.cfg
        work = self.working_image(image)
        work_size = tuple(work.shape[-2:])
        windows = pyramid_windows(work_size, cfg.windows, cfg.stride, cfg.scales, work.device)  # (N, 4)
        scores = torch.cat([work.new_zeros((0, cfg.num_classes))] + [
            self.classify(crop_windows(work[None], chunk, work.new_zeros(len(chunk)), cfg.input_size))
            .float().softmax(dim=1)[:, 1:]  # (n, K): drop the background column
            for chunk in windows.split(cfg.chunk)])
        boxes, scores, labels = postprocess(windows, scores, cfg.score_thresh, cfg.nms_iou, cfg.detections_per_img)
        return to_input_pixels(boxes, scores, labels, work_size, tuple(image.shape[-2:]))


# --------------------------------------------------------------------------------------------------
# Training crops


def sample_crops(gt_boxes: Tensor, gt_labels: Tensor, size: tuple[int, int], n: int, positive_fraction: float,
                 windows: tuple[tuple[int, int], ...], scales: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """Object and background crops of one image (the training set of the window classifier).

    * positives: ground-truth boxes with a small jitter (centre +-10 % of the side, sides x 0.85..1.18),
      kept when IoU >= 0.6 with their box (the box itself otherwise), labelled ``class + 1``;
    * negatives, labelled 0, half of them near misses (ground truth shifted and rescaled strongly, IoU
      0.1..0.3 with it: windows that cut an object or hold it among background) and the rest random
      windows of the detector's shapes and sizes anywhere in the image; every negative has IoU < 0.3
      with every object.

    Returns:
        ``(boxes (n', 4) XYXY, labels (n',) int64)`` with ``n' <= n`` (all inside the image).
    """
    H, W = size
    device = gt_boxes.device
    num_pos = min(round(n * positive_fraction), n) if len(gt_boxes) else 0
    pos, pos_labels = gt_boxes[:0], gt_labels[:0]
    if num_pos:
        idx = torch.randint(len(gt_boxes), (num_pos,), device=device)
        pos, pos_labels = gt_boxes[idx], gt_labels[idx]
        jittered = _clip(_jitter(pos, 0.1, 0.17), size)
        ok = iou(jittered, pos).diagonal() >= 0.6
        pos = torch.where(ok[:, None], jittered, pos)

    # candidate negatives: 4x what is needed, filtered by IoU, then the first ones taken
    num_neg = n - num_pos
    near = gt_boxes[torch.randint(len(gt_boxes), (2 * num_neg,), device=device)] if len(gt_boxes) else gt_boxes[:0]
    near = _clip(_jitter(near, 0.6, 0.9), size)
    sides = torch.tensor([[wh[0] / s, wh[1] / s] for s in scales for wh in windows], device=device)  # (M, 2) h, w
    pick = sides[torch.randint(len(sides), (2 * num_neg,), device=device)]
    pick = torch.minimum(pick, torch.tensor([H, W], device=device, dtype=pick.dtype))
    x1 = torch.rand(len(pick), device=device) * (W - pick[:, 1])
    y1 = torch.rand(len(pick), device=device) * (H - pick[:, 0])
    rand = torch.stack([x1, y1, x1 + pick[:, 1], y1 + pick[:, 0]], dim=1)
    overlap = iou(near, gt_boxes).max(dim=1).values if len(gt_boxes) else near.new_zeros(len(near))
    near = near[(overlap < 0.3) & (overlap >= 0.1)][: num_neg // 2]
    overlap = iou(rand, gt_boxes).max(dim=1).values if len(gt_boxes) else rand.new_zeros(len(rand))
    rand = rand[overlap < 0.3][: num_neg - len(near)]
    boxes = torch.cat([pos, near, rand])
    labels = torch.cat([pos_labels.long() + 1, gt_labels.new_zeros(len(near) + len(rand), dtype=torch.long)])
    return boxes, labels


def _jitter(boxes: Tensor, shift: float, log_scale: float) -> Tensor:
    """Move each box's centre by up to ``shift`` of its side and scale each side by ``exp(+-log_scale)``."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    u = torch.rand(len(boxes), 4, device=boxes.device) * 2 - 1  # (N, 4) in [-1, 1)
    cx, cy = cx + u[:, 0] * shift * w, cy + u[:, 1] * shift * h
    w, h = w * torch.exp(u[:, 2] * log_scale), h * torch.exp(u[:, 3] * log_scale)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


def _clip(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip to the image and keep at least one pixel of width and height."""
    H, W = size
    x1, y1 = boxes[:, 0].clamp(0, W - 1), boxes[:, 1].clamp(0, H - 1)
    x2 = torch.maximum(boxes[:, 2].clamp(max=W), x1 + 1)
    y2 = torch.maximum(boxes[:, 3].clamp(max=H), y1 + 1)
    return torch.stack([x1, y1, x2, y2], dim=1)


# --------------------------------------------------------------------------------------------------
# Postprocess


def postprocess(boxes: Tensor, scores: Tensor, score_thresh: float, nms_iou: float,
                detections_per_img: int) -> tuple[Tensor, Tensor, Tensor]:
    """Windows ``(N, 4)`` with class scores ``(N, K)`` -> ``(boxes, scores, labels)`` of the detections:
    every (window, class) above ``score_thresh``, per-class NMS, the best ``detections_per_img``."""
    keep = (scores > score_thresh).nonzero()  # (M, 2): window, class
    boxes, labels = boxes[keep[:, 0]], keep[:, 1]
    scores = scores[keep[:, 0], keep[:, 1]]
    kept = batched_nms(boxes, scores, labels, nms_iou)[:detections_per_img]
    return boxes[kept], scores[kept], labels[kept]


def build(cfg: SlidingWindowConfig) -> SlidingWindow:
    cfg.windows = tuple(tuple(int(v) for v in w) for w in cfg.windows)
    cfg.scales = tuple(float(s) for s in cfg.scales)
    if not cfg.windows or not cfg.scales or cfg.stride < 1:
        raise ConfigError("sliding_window needs at least one window (h, w), one scale and stride >= 1")
    return SlidingWindow(cfg)
