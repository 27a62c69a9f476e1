"""The detection input path: images of any sizes in, one normalised batch in the working frame, and the
results back in each input image's pixels (torchvision's ``GeneralizedRCNNTransform``, as functions).

Every detection, instance and panoptic model (and the semantic models where they resize) goes through
these steps, so a box or a mask is mapped the same way by all of them::

    a padded batch (B, 3, H, W) + each image's (h, w)      -> unpad          -> [(3, h_i, w_i)]
    [(3, h_i, w_i)] in [0, 1]                               -> working_size   the longer side image_size
                                                            -> resize         bilinear, antialiased when shrinking
                                                            -> normalize      (x - mean) / std
                                                            -> pad_batch      (B, 3, H', W'), multiples of the stride
                                                               (batch_images does the four)
    annotations of the input image                          -> boxes_to_working, labels_to_working
    the model, in the working frame
    boxes, dense scores of the working frame                -> boxes_to_input / to_input_pixels, scores_to_input

The working frame of an ``(h, w)`` image is ``(round(h s), round(w s))`` with
``s = image_size / max(h, w)`` (or smaller with ``min_size``, torchvision's rule). Boxes scale by the
ratio of the integer sizes (``zir.ops.boxes.scale_boxes``), so box and pixel maps agree after rounding.

Only tensor operations and integer arithmetic on sizes, no data-dependent Python branches on tensor
values: the export issue puts these functions inside exported graphs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zir.data.contract import DetectionPrediction
from zir.ops.boxes import Size, clip, letterbox, scale_boxes

SIZE_DIVISIBLE = 32  # the coarsest backbone stride: every pyramid level then divides the padded batch exactly


# --------------------------------------------------------------------------------------------------
# Sizes


def resize_scale(size: Size, image_size: int, min_size: int = 0) -> float:
    """The factor that brings an ``(h, w)`` image into the working frame: ``image_size / max(h, w)``,
    or with ``min_size > 0`` also at most ``min_size / min(h, w)`` (torchvision's ``min_size``)."""
    h, w = size
    scale = image_size / max(h, w)
    return min(scale, min_size / min(h, w)) if min_size > 0 else scale


def scaled_size(size: Size, scale: float) -> Size:
    """``(h, w)`` times ``scale``, rounded, at least one pixel: ``(max(1, round(h s)), max(1, round(w s)))``."""
    h, w = size
    return max(1, round(h * scale)), max(1, round(w * scale))


def working_size(size: Size, image_size: int, min_size: int = 0) -> Size:
    """The ``(h', w')`` of an ``(h, w)`` image in the working frame (longer side ``image_size``)."""
    return scaled_size(size, resize_scale(size, image_size, min_size))


# --------------------------------------------------------------------------------------------------
# Pixels in


def image_list(images: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """What ``predict`` accepts as a list of ``(C, h_i, w_i)`` images: one ``(C, h, w)`` image, a
    ``(B, C, h, w)`` batch (its images, as views) or a list (as it is)."""
    if isinstance(images, Tensor):
        return [images] if images.ndim == 3 else list(images)
    return list(images)


def resize(images: Tensor, size: Size, antialias: bool | None = None) -> Tensor:
    """Bilinear resize of ``(C, h, w)`` or ``(B, C, h, w)`` to ``size = (h', w')``.

    Args:
        antialias: ``None`` (default): antialiased when a side shrinks, as a low-pass filter against
            aliasing, plain bilinear when enlarging; ``True`` / ``False`` force it (YOLO v1's letterbox
            and the data pipeline's ``v2.Resize`` always antialias).

    Returns:
        The input itself when it already has that size.
    """
    h, w = images.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if size == (h, w):
        return images
    if antialias is None:
        antialias = size[0] < h or size[1] < w
    x = images if images.ndim == 4 else images[None]
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return out if images.ndim == 4 else out[0]


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(images - mean) / std`` per channel: ``images (C, h, w)`` or ``(B, C, h, w)``, ``mean`` and
    ``std`` of ``C`` values (any shape, e.g. ``(1, C, 1, 1)`` buffers). Zero padding added afterwards
    is then the mean colour."""
    return (images - mean.reshape(-1, 1, 1)) / std.reshape(-1, 1, 1)


def pad_batch(images: Sequence[Tensor], size_divisible: int = SIZE_DIVISIBLE, min_size: int = 0) -> Tensor:
    """Zero-pad ``(C, h_i, w_i)`` images at the bottom and right into one ``(B, C, H, W)``.

    ``H`` and ``W`` are the largest sides rounded up to a multiple of ``size_divisible`` (1: no
    rounding) and at least ``min_size``.
    """
    H = max(min_size, math.ceil(max(im.shape[-2] for im in images) / size_divisible) * size_divisible)
    W = max(min_size, math.ceil(max(im.shape[-1] for im in images) / size_divisible) * size_divisible)
    batch = images[0].new_zeros((len(images), *images[0].shape[:-2], H, W))
    for b, im in zip(batch, images):
        b[..., : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch


def unpad(batch: Tensor | Sequence[Tensor], sizes: Sequence[Size]) -> list[Tensor]:
    """Each image's own ``(h_i, w_i)`` part of a padded ``(B, C, H, W)`` batch: ``[(C, h_i, w_i)]`` (views)."""
    return [im[..., :h, :w] for im, (h, w) in zip(batch, sizes)]


def batch_images(images: Sequence[Tensor], image_size: int, mean: Tensor, std: Tensor, min_size: int = 0,
                 size_divisible: int = SIZE_DIVISIBLE) -> tuple[Tensor, list[Size]]:
    """Resize each ``(3, h_i, w_i)`` image in [0, 1] into the working frame, normalise, pad into one batch.

    Returns:
        ``(batch (B, 3, H, W), each image's (h', w') in the working frame)``.
    """
    resized = [normalize(resize(im, working_size(tuple(im.shape[-2:]), image_size, min_size)), mean, std)
               for im in images]
    return pad_batch(resized, size_divisible), [tuple(im.shape[-2:]) for im in resized]


def letterbox_batch(images: Sequence[Tensor], size: int, fill: float) -> Tensor:
    """Each ``(3, h, w)`` image resized (aspect kept, always antialiased, as ``v2.Resize``) and centred on a
    ``size x size`` canvas of ``fill``: ``(B, 3, size, size)``; ``zir.ops.boxes.letterbox_boxes`` maps boxes
    the same way."""
    out = images[0].new_full((len(images), 3, size, size), fill, dtype=torch.float32)
    for n, im in enumerate(images):
        (h, w), (top, left) = letterbox(tuple(im.shape[-2:]), (size, size))
        out[n, :, top: top + h, left: left + w] = resize(im.float(), (h, w), antialias=True)
    return out


# --------------------------------------------------------------------------------------------------
# Annotations in, results out


def boxes_to_working(boxes: Tensor, size: Size, work_size: Size) -> Tensor:
    """``(N, 4)`` XYXY boxes of the ``(h, w)`` input image -> the same boxes in its ``work_size`` frame."""
    return scale_boxes(boxes, size, work_size)


def boxes_to_input(boxes: Tensor, work_size: Size, size: Size) -> Tensor:
    """``(N, 4)`` XYXY boxes of the working frame -> the ``(h, w)`` input image's pixels (not clipped)."""
    return scale_boxes(boxes, work_size, size)


def to_input_pixels(boxes: Tensor, scores: Tensor, labels: Tensor, work_size: Size, size: Size) -> DetectionPrediction:
    """Detections of the working frame (``boxes (N, 4)``, ``scores (N,)``, ``labels (N,)``) as a
    :class:`~zir.data.contract.DetectionPrediction` in the ``(h, w)`` input image, boxes clipped to it."""
    return DetectionPrediction(boxes=clip(boxes_to_input(boxes, work_size, size), size).float(),
                               scores=scores.float(), labels=labels)


def labels_to_working(labels: Tensor, work_size: Size) -> Tensor:
    """A class map ``(h, w)`` of the input image -> ``work_size``, each output pixel taking the class at
    its centre (``nearest-exact``: the sampling grid of the image's bilinear resize; ``nearest`` is half
    a pixel off)."""
    x = labels[None, None].float()
    return F.interpolate(x, size=tuple(work_size), mode="nearest-exact")[0, 0].long()


def scores_to_input(scores: Tensor, size: Size) -> Tensor:
    """Dense scores ``(B, C, h', w')`` of the working frame -> ``(B, C, h, w)`` of the input image
    (bilinear; probabilities stay in [0, 1] and logits keep their arg-max boundaries smooth)."""
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
