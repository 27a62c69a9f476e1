"""Geometric augmentations: the image, its boxes and its masks move together.

Mostly torchvision v2's own transforms (their kernels move ``BoundingBoxes`` and ``Mask`` exactly as
the image), given a probability ``p`` and the fill rule of :mod:`zir.augment._base` (images 114,
instance masks 0, semantic maps 255). Two are zir's own:

* :class:`RandomScaleTranslate`: YOLO's scale + translate jitter done as a uint8 resize of only the
  visible part plus a paste, about 3x faster than a general affine warp (``grid_sample`` in float);
* :class:`ElasticDeform`: U-Net's elastic deformation (Ronneberger et al. 2015, section 3.1): random
  displacements on a coarse grid, interpolated bicubically, instead of torchvision's blur of a
  full-resolution random field (100 ms per 640x480 image).

Masks always use nearest-neighbour sampling, so they stay binary / integer. Where a mask is resized,
it is sampled at pixel centres (``NEAREST_EXACT``), the grid the image's bilinear resize uses:
torchvision's default ``NEAREST`` for masks takes ``floor(i * scale)`` and moves a mask's far edges by
up to one pixel against the image, which on thin structures (cell membranes) teaches the wrong edge.
End every pipeline with boxes in it with :class:`SanitizeBoxes`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as TF
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from zir.augment._base import (
    _SKIP,
    GeometricMixin,
    ProbabilityMixin,
    SemanticMap,
    check_p,
    coin,
    default_fill,
    is_semantic,
    uniform,
)

BILINEAR = v2.InterpolationMode.BILINEAR
NEAREST_EXACT = v2.InterpolationMode.NEAREST_EXACT

# Flips need no fill and torchvision's have ``p`` already.
RandomHorizontalFlip = v2.RandomHorizontalFlip
RandomVerticalFlip = v2.RandomVerticalFlip


def resized_crop_mask(mask: tv_tensors.Mask, top: int, left: int, height: int, width: int,
                      size: list[int]) -> tv_tensors.Mask:
    """Crop ``mask`` (``(H, W)`` or ``(N, H, W)``) and resize it to ``size`` sampling pixel centres
    (``NEAREST_EXACT``), aligned with the image's bilinear resize; torchvision's mask kernel for
    ``resized_crop`` ignores ``interpolation`` and always uses ``NEAREST``."""
    x = F.crop(mask.as_subclass(torch.Tensor), top, left, height, width)
    return tv_tensors.wrap(F.resize_mask(x, size, interpolation=NEAREST_EXACT), like=mask)


class RandomRotation(GeometricMixin, v2.RandomRotation):
    """Rotate by an angle drawn from ``[-degrees, degrees]`` (or a ``(lo, hi)`` range) about the centre,
    counter-clockwise for positive angles; same canvas size."""

    def __init__(self, degrees: float | tuple[float, float] = 10.0, p: float = 1.0, fill: float | dict | None = None) -> None:
        super().__init__(degrees, interpolation=BILINEAR, fill=default_fill(fill))
        self.p = check_p(p)


class RandomAffine(GeometricMixin, v2.RandomAffine):
    """Rotation ``degrees``, translation (fraction of the size), scale range and shear in one warp."""

    def __init__(self, degrees: float = 0.0, translate: float = 0.1, scale: tuple[float, float] = (0.75, 1.25),
                 shear: float = 0.0, p: float = 1.0, fill: float | dict | None = None) -> None:
        super().__init__(degrees, translate=(translate, translate) if translate else None, scale=scale,
                         shear=shear or None, interpolation=BILINEAR, fill=default_fill(fill))
        self.p = check_p(p)


class RandomPerspective(GeometricMixin, v2.RandomPerspective):
    """Move the four corners inwards by up to ``distortion`` of half the size (torchvision's rule)."""

    _torchvision_tosses = True  # torchvision's _RandomApplyTransform already draws p

    def __init__(self, distortion: float = 0.2, p: float = 0.5, fill: float | dict | None = None) -> None:
        super().__init__(distortion_scale=distortion, p=check_p(p), interpolation=BILINEAR,
                         fill=default_fill(fill))


class RandomResizedCrop(GeometricMixin, v2.RandomResizedCrop):
    """Crop a random area fraction ``scale`` and aspect ratio ``ratio``, resize to ``size``.

    With probability ``1 - p`` the whole image is resized to ``size`` instead, so that the output size
    never depends on the coin.
    """

    def __init__(self, size: int | tuple[int, int], scale: tuple[float, float] = (0.25, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), p: float = 1.0) -> None:
        super().__init__(size, scale=scale, ratio=ratio, interpolation=BILINEAR, antialias=True)
        self.p = check_p(p)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if coin(self.p):
            return v2.RandomResizedCrop.make_params(self, flat_inputs)
        H, W = v2.query_size(flat_inputs)
        return dict(top=0, left=0, height=H, width=W)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return resized_crop_mask(inpt, **params, size=list(self.size))
        return super().transform(inpt, params)


class ElasticDeform(GeometricMixin, v2.ElasticTransform):
    """U-Net's elastic deformation: displacements ~ N(0, ``sigma`` pixels) on a ``grid`` x ``grid``
    lattice over the image, interpolated bicubically to every pixel.

    Boxes follow through torchvision's approximate inverse of the displacement at their corners (loose
    for large ``sigma``); prefer it for segmentation, where the masks are the truth.
    """

    def __init__(self, sigma: float = 10.0, grid: int = 3, p: float = 1.0, fill: float | dict | None = None) -> None:
        super().__init__(interpolation=BILINEAR, fill=default_fill(fill))
        self.sigma_px, self.grid, self.p = float(sigma), int(grid), check_p(p)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if not coin(self.p):
            return {_SKIP: True}
        H, W = v2.query_size(flat_inputs)
        coarse = torch.randn(1, 2, self.grid, self.grid) * self.sigma_px  # (1, 2, g, g) pixels (dx, dy)
        d = TF.interpolate(coarse, size=(H, W), mode="bicubic", align_corners=True)  # (1, 2, H, W)
        # grid_sample's normalised coordinates span 2 over the width (height): pixels -> x 2/W (2/H)
        d = d * torch.tensor([2.0 / W, 2.0 / H]).view(1, 2, 1, 1)
        return dict(displacement=d.permute(0, 2, 3, 1).contiguous())  # (1, H, W, 2)


class RandomScaleTranslate(v2.Transform):
    """Zoom by a factor in ``[1 - scale, 1 + scale]`` about the centre and shift by up to ``translate``
    of the width / height; the canvas keeps its size (YOLO's ``scale`` and ``translate``).

    Only the visible part of the source is resized (uint8, antialiased), then pasted onto a canvas of
    ``fill``; boxes go through torchvision's ``resized_crop`` and ``crop`` kernels with the same integers,
    so they match the pixels exactly.
    """

    def __init__(self, scale: float = 0.5, translate: float = 0.1, p: float = 1.0,
                 fill: float | dict | None = None) -> None:
        super().__init__()
        if not 0 <= scale < 1 or not 0 <= translate <= 0.5:
            raise ValueError(f"scale must be in [0, 1) and translate in [0, 0.5], got {scale}, {translate}")
        self.scale, self.translate, self.p = scale, translate, check_p(p)
        self._fill = default_fill(fill)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if not coin(self.p):
            return {_SKIP: True}
        H, W = v2.query_size(flat_inputs)
        s = uniform(1 - self.scale, 1 + self.scale)
        tx = uniform(-self.translate, self.translate) * W
        ty = uniform(-self.translate, self.translate) * H
        # source pixel (x, y) lands at s * (x - W/2) + W/2 + tx
        return _zoom_params(H, W, H, W, s, W / 2 * (1 - s) + tx, H / 2 * (1 - s) + ty)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if _SKIP in params:
            return inpt
        return _zoom(inpt, params, self._fill)


class _QuarterTurn(v2.Transform):
    """``k`` quarter turns, ``k`` uniform in 1..3; see :class:`RandomQuarterTurn`."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return dict(k=int(torch.randint(1, 4, ())))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        k = params["k"]
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return _turn_boxes(inpt, k)
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):  # masks and semantic maps too
            return tv_tensors.wrap(torch.rot90(inpt.as_subclass(torch.Tensor), k, dims=(-2, -1)), like=inpt)
        if type(inpt) is torch.Tensor and inpt.ndim >= 2:  # a plain image tensor
            return torch.rot90(inpt, k, dims=(-2, -1))
        return inpt  # labels, flags and other leaves have no geometry


class RandomQuarterTurn(ProbabilityMixin, _QuarterTurn):
    """With probability ``p`` turn by ``k`` quarter turns, ``k`` uniform in 1..3 (``torch.rot90``,
    counter-clockwise on screen). The default ``p = 0.75`` makes the number of turns uniform in 0..3.

    With a horizontal flip before it, every one of the eight symmetries of the square is equally likely:
    the augmentation for images without a preferred orientation (microscopy, aerial photos; the U-Net
    paper's rotations). Pixels move exactly (no resampling); a ``H x W`` image becomes ``W x H`` after an
    odd number of turns, and boxes follow: one turn maps ``(x1, y1, x2, y2)`` to ``(y1, W - x2, y2, W - x1)``.
    """

    def __init__(self, p: float = 0.75) -> None:
        super().__init__()
        self.p = check_p(p)


def _turn_boxes(boxes: tv_tensors.BoundingBoxes, k: int) -> tv_tensors.BoundingBoxes:
    """``k`` quarter turns of boxes on their canvas, as ``torch.rot90(image, k, dims=(-2, -1))``."""
    fmt = boxes.format
    xyxy = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
    b = xyxy.as_subclass(torch.Tensor)
    H, W = boxes.canvas_size
    for _ in range(k):  # pixel (y, x) goes to (W - 1 - x, y): edges x -> W - x, the axes swap
        b = torch.stack([b[..., 1], W - b[..., 2], b[..., 3], W - b[..., 0]], dim=-1)
        H, W = W, H
    out = tv_tensors.BoundingBoxes(b, format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(H, W))
    return F.convert_bounding_box_format(out, new_format=fmt) if fmt != out.format else out


class Letterbox(v2.Transform):
    """Resize so the longer side is ``size`` and pad to ``size`` x ``size``, centred (YOLO's letterbox)."""

    def __init__(self, size: int, fill: float | dict | None = None) -> None:
        super().__init__()
        self.size = int(size)
        self._fill = default_fill(fill)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        H, W = v2.query_size(flat_inputs)
        S = self.size
        s = S / max(H, W)
        return _zoom_params(H, W, S, S, s, (S - W * s) / 2, (S - H * s) / 2)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return _zoom(inpt, params, self._fill)


def _zoom_params(H: int, W: int, H2: int, W2: int, s: float, offx: float, offy: float) -> dict[str, Any]:
    """Integer crop of the source and its place on the ``(H2, W2)`` canvas for ``out = s * in + off``."""

    def axis(n: int, n2: int, off: float) -> tuple[int, int, int, int]:
        a0 = min(max(0, math.floor(-off / s)), n - 1)  # first visible source pixel
        a1 = max(min(n, math.ceil((n2 - off) / s)), a0 + 1)  # one past the last
        o0 = min(max(0, round(off + a0 * s)), n2 - 1)  # where it lands
        o1 = min(n2, max(o0 + 1, round(off + a1 * s)))
        return a0, a1 - a0, o0, o1 - o0

    left, width, ox, ow = axis(W, W2, offx)
    top, height, oy, oh = axis(H, H2, offy)
    return dict(top=top, left=left, height=height, width=width, oy=oy, ox=ox, oh=oh, ow=ow, canvas=(H2, W2))


def _zoom(inpt: Any, params: dict[str, Any], fill: dict) -> Any:
    """Crop ``params``' source window, resize it to ``(oh, ow)`` and paste it at ``(oy, ox)``."""
    crop = dict(top=params["top"], left=params["left"], height=params["height"], width=params["width"])
    oy, ox, oh, ow = params["oy"], params["ox"], params["oh"], params["ow"]
    H2, W2 = params["canvas"]
    if isinstance(inpt, tv_tensors.BoundingBoxes):
        boxes = F.resized_crop(inpt, **crop, size=[oh, ow])
        return F.crop(boxes, -oy, -ox, H2, W2)  # shift onto the canvas, clamp to it
    if isinstance(inpt, tv_tensors.KeyPoints) or not isinstance(inpt, torch.Tensor):
        return inpt
    if is_semantic(inpt):
        value = fill[SemanticMap]
    else:
        value = fill.get(type(inpt), fill["others"])
    if isinstance(inpt, tv_tensors.Mask):
        patch = resized_crop_mask(inpt, **crop, size=[oh, ow])
    else:
        patch = F.resized_crop(inpt, **crop, size=[oh, ow], interpolation=BILINEAR, antialias=True)
    x = patch.as_subclass(torch.Tensor)
    if (oh, ow) != (H2, W2):
        canvas = x.new_empty((*x.shape[:-2], H2, W2))
        if isinstance(value, (tuple, list)):  # one value per channel
            canvas.copy_(torch.tensor(value, dtype=x.dtype).view(-1, 1, 1).expand_as(canvas))
        else:
            canvas.fill_(value)
        canvas[..., oy:oy + oh, ox:ox + ow] = x
        x = canvas
    return tv_tensors.wrap(x, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else x


class SanitizeBoxes(v2.SanitizeBoundingBoxes):
    """Drop boxes that left the image (or shrank below ``min_size`` pixels), with their ``labels``,
    ``iscrowd``, ``difficult`` and instance ``masks``. Semantic maps are kept whole.

    Clamps boxes to the canvas first, so a box half outside the image is cut, not dropped.
    """

    def __init__(self, min_size: float = 1.0) -> None:
        super().__init__(min_size=min_size, labels_getter=_labels_and_flags)

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        if isinstance(sample, dict) and "boxes" not in sample:
            return sample  # nothing to sanitise (classification or semantic segmentation)
        if isinstance(sample, dict):
            sample = {**sample, "boxes": F.clamp_bounding_boxes(sample["boxes"])}
        return super().forward(sample)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if is_semantic(inpt):
            return inpt  # (H, W): indexing rows by a box mask would be wrong when N happens to equal H
        return super().transform(inpt, params)


def _labels_and_flags(sample: Any) -> tuple[torch.Tensor, ...] | None:
    """Per-object tensors of a zir sample that must be filtered with the boxes (masks are by type)."""
    if not isinstance(sample, dict):
        return None
    return tuple(sample[k] for k in ("labels", "iscrowd", "difficult") if isinstance(sample.get(k), torch.Tensor))
