"""What every zir augmentation shares: a probability ``p``, uint8 images, and the fill of semantic maps.

Two kinds of transform exist, both torchvision transforms v2:

* **photometric** (:class:`PhotometricTransform`): change the pixels of the image only. Boxes, masks,
  semantic maps and labels are not touched, by construction (they are not among the transformed types).
* **geometric** (:class:`GeometricMixin` on top of a torchvision geometric transform): move the image,
  its boxes and its masks with the same parameters. Where they introduce new pixels (corners of a
  rotation, borders of a zoom-out), images get ``fill`` (114, YOLO's grey), instance masks 0 and
  semantic maps ``IGNORE_INDEX`` (255): padding is "no label", not "background".

A sample is a :class:`zir.data.contract.Sample` dict; a bare image tensor works too.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from zir.data.contract import IGNORE_INDEX
from zir.errors import ConfigError

IMAGE_FILL = 114
"""Grey that geometric transforms put where no source pixel exists (YOLO's choice: less salient than black)."""

_SKIP = "_skip"  # key of params when the coin toss (probability p) says: leave this sample as it is


def _is_plain_tensor(x: Any) -> bool:
    return type(x) is torch.Tensor


def check_p(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"augmentation probability p={p} is outside [0, 1]")
    return float(p)


def coin(p: float) -> bool:
    """True with probability ``p`` (torch's global generator, so ``torch.manual_seed`` and DataLoader
    worker seeding make augmentation reproducible)."""
    return p >= 1.0 or (p > 0.0 and float(torch.rand(())) < p)


def uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


class SemanticMap(tv_tensors.Mask):
    """A ``(H, W)`` class map while it passes through a geometric transform.

    torchvision picks a fill value by the *type* of an input, and both instance masks and semantic maps
    are ``tv_tensors.Mask``; this subclass lets the fill dict give semantic maps ``IGNORE_INDEX``.
    """


def is_semantic(x: Any) -> bool:
    """The data contract tells the two kinds of mask apart by rank: semantic ``(H, W)``, instance ``(N, H, W)``."""
    return isinstance(x, tv_tensors.Mask) and x.ndim == 2


def default_fill(fill: float | dict | None) -> dict:
    """Fill dict for torchvision geometric transforms: images ``fill``, masks 0, semantic maps 255."""
    if isinstance(fill, dict):
        out = dict(fill)
    else:
        out = {tv_tensors.Image: IMAGE_FILL if fill is None else fill, "others": 0}
    out.setdefault(SemanticMap, IGNORE_INDEX)
    out.setdefault("others", 0)
    return out


class ProbabilityMixin:
    """Adds a probability ``p`` to a torchvision v2 transform that has none.

    Put it first among the bases (``class ColorJitter(ProbabilityMixin, v2.ColorJitter)``); the
    subclass sets ``self.p`` in its ``__init__``. Skipped samples come back untouched.
    """

    p: float = 1.0
    _torchvision_tosses = False  # True where the torchvision base draws ``p`` itself (_RandomApplyTransform)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if not self._torchvision_tosses and not coin(self.p):
            return {_SKIP: True}
        return super().make_params(flat_inputs)  # type: ignore[misc]

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if _SKIP in params:
            return inpt
        return super().transform(inpt, params)  # type: ignore[misc]


class GeometricMixin(ProbabilityMixin):
    """:class:`ProbabilityMixin` plus the semantic-map fill (``IGNORE_INDEX``) for geometric transforms
    built on torchvision's (``class RandomAffine(GeometricMixin, v2.RandomAffine)``)."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if _SKIP not in params and is_semantic(inpt):
            out = super().transform(inpt.as_subclass(SemanticMap), params)
            return out.as_subclass(tv_tensors.Mask)
        return super().transform(inpt, params)


class PhotometricTransform(v2.Transform):
    """Base of transforms that change image pixels only; boxes, masks and labels pass through.

    Subclasses implement ``sample(H, W) -> dict`` (random parameters, drawn once per sample) and
    ``apply(image, **params) -> image`` on a plain uint8 ``(3, H, W)`` tensor.

    Args:
        p: probability of applying the transform to a sample.
    """

    _transformed_types = (tv_tensors.Image, _is_plain_tensor)

    def __init__(self, p: float = 1.0) -> None:
        super().__init__()
        self.p = check_p(p)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if not coin(self.p):
            return {_SKIP: True}
        H, W = v2.query_size(flat_inputs)
        return self.sample(H, W)

    def sample(self, H: int, W: int) -> dict[str, Any]:
        return {}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if _SKIP in params:
            return inpt
        image = inpt.as_subclass(torch.Tensor)
        if image.dtype != torch.uint8:
            raise ConfigError(f"{type(self).__name__} works on uint8 images (zir's data contract), "
                              f"got {image.dtype}; put ToDtype after the augmentations")
        out = self.apply(image, **params)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out

    def apply(self, image: torch.Tensor, **params: Any) -> torch.Tensor:
        raise NotImplementedError


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Round, clamp to [0, 255] and convert a float image (in place on ``x``)."""
    return trunc_to_uint8(x.add_(0.5))


def trunc_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 255] and truncate a float image whose rounding offset (+0.5) is already added.

    Goes through int16: torch's float -> uint8 cast is about 3x slower than float -> int16 -> uint8.
    """
    return x.clamp_(0, 255.4).to(torch.int16).to(torch.uint8)


def as_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 ``(3, H, W)`` -> float32, contiguous ``(3, H, W)`` in one pass.

    Images read by zir are views of ``(H, W, 3)`` arrays; elementwise ops that broadcast an ``(H, W)``
    map over such a layout run with an inner loop of 3 and are 5-10x slower, so convert layout and
    dtype together here, once.
    """
    return image.to(torch.float32, memory_format=torch.contiguous_format)


def channel_max(image: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` max over the 3 channels of a ``(3, H, W)`` image, elementwise (fast for any memory layout)."""
    return torch.maximum(torch.maximum(image[0], image[1]), image[2])


def channel_min(image: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` min over the 3 channels of a ``(3, H, W)`` image."""
    return torch.minimum(torch.minimum(image[0], image[1]), image[2])
