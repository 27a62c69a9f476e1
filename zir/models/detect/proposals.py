"""Selective search region proposals (Uijlings et al. 2013), the first stage of R-CNN and Fast R-CNN.

Selective search over-segments the image with Felzenszwalb's graph method, then greedily merges the
two most similar neighbouring regions (colour, texture, size, fill) until one region is left; every
region met on the way is a proposal, its bounding box the output. zir uses OpenCV contrib's maintained
implementation (``cv2.ximgproc.segmentation``, the optional extra ``zir[rcnn]``) and adds:

* a working size: the search runs on a copy whose longer side is ``size`` pixels (it takes seconds at
  500 px), boxes are mapped back to the input's pixels. Up- or down-scaling both work: small objects are
  found more often on an upscaled copy (measured on synthetic shapes: recall at IoU 0.5 was 0.69 at
  256 px, 0.93 at 384 px), at about 3x the time.
* determinism: OpenCV ranks regions pseudo-randomly (the paper's ranking), so the order of its output
  differs between calls while the set of boxes does not; zir sorts the set, and when it must keep only
  ``max_proposals`` it draws them with a fixed seed.
* :class:`ProposalCache`: proposals of an image by the hash of its pixels, so an image seen again in
  training (every epoch without augmentation) costs no second search.

    boxes = selective_search(image)             # (N, 4) float32 XYXY in image's pixels
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zir.errors import ConfigError
from zir.models.detect.transform import boxes_to_input, resize, working_size

MODES = ("fast", "quality")


def _cv2() -> Any:
    """OpenCV with the contrib modules, imported only when proposals are needed."""
    try:
        import cv2
        segmentation = cv2.ximgproc.segmentation
    except (ImportError, AttributeError) as e:
        raise ConfigError('selective search needs OpenCV contrib (cv2.ximgproc): pip install "zir[rcnn]" '
                          "(opencv-contrib-python-headless)") from e
    return segmentation


def _to_uint8_hwc(image: Tensor | np.ndarray) -> np.ndarray:
    """``(3, H, W)`` tensor (float in [0, 1] or uint8) or ``(H, W, 3)`` uint8 array -> uint8 ``(H, W, 3)``."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
        return image
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got {tuple(image.shape)}")
    image = image.detach().cpu()
    if image.dtype != torch.uint8:
        image = (image.float() * 255).round().clamp(0, 255).to(torch.uint8)
    return image.permute(1, 2, 0).contiguous().numpy()


def selective_search(image: Tensor | np.ndarray, mode: str = "fast", size: int = 256,
                     max_proposals: int = 2000, min_size: float = 2.0) -> Tensor:
    """Selective search proposals of one image.

    Args:
        image: RGB ``(3, H, W)`` float in [0, 1] or uint8, or a uint8 ``(H, W, 3)`` array.
        mode: ``fast`` (2 colour spaces, 2 segmentation scales: the paper's "fast") or ``quality``
            (5 colour spaces, 4 scales; about 4x slower, more proposals).
        size: the longer side, in pixels, of the copy the search runs on (0 = the image as it is).
        max_proposals: keep at most this many (the paper's 2000); a seeded random subset when there
            are more.
        min_size: drop boxes narrower or lower than this many pixels of the input.

    Returns:
        float32 ``(N, 4)`` XYXY boxes in the input's pixels (exclusive ``x2, y2``), inside the image,
        unique, in a fixed order; ``N`` may be 0.
    """
    if mode not in MODES:
        raise ConfigError(f"selective search mode must be one of {', '.join(MODES)}, got {mode!r}")
    segmentation = _cv2()
    rgb = _to_uint8_hwc(image)
    H, W = rgb.shape[:2]
    if size > 0 and working_size((H, W), size) != (H, W):
        small = resize(torch.from_numpy(rgb).permute(2, 0, 1).float(), working_size((H, W), size))
        rgb = small.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    search = segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR
    search.switchToSelectiveSearchFast() if mode == "fast" else search.switchToSelectiveSearchQuality()
    xywh = np.asarray(search.process(), dtype=np.int64).reshape(-1, 4)
    xywh = np.unique(xywh, axis=0)  # sorted: OpenCV's order is random from call to call, its set is not
    boxes = torch.from_numpy(xywh).float()
    boxes[:, 2:] += boxes[:, :2]  # (x, y, w, h) -> XYXY, exclusive edges
    boxes = boxes_to_input(boxes, rgb.shape[:2], (H, W))
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    boxes = boxes[keep]
    if len(boxes) > max_proposals:
        pick = torch.randperm(len(boxes), generator=torch.Generator().manual_seed(0))[:max_proposals]
        boxes = boxes[pick.sort().values]
    return boxes.contiguous()


@dataclass
class SelectiveSearch:
    """Selective search settings as one callable (what the detectors hold): ``image -> (N, 4)`` boxes.

    See :func:`selective_search` for the attributes.
    """

    mode: str = "fast"
    size: int = 256
    max_proposals: int = 2000
    min_size: float = 2.0

    def __call__(self, image: Tensor | np.ndarray) -> Tensor:
        return selective_search(image, self.mode, self.size, self.max_proposals, self.min_size)


class ProposalCache:
    """Proposals by image content: ``cache(image)`` searches an image once and then remembers it.

    The key is a hash of the pixels (and shape), not a dataset id: an augmented view of an image is a
    different image with different boxes, and must get its own proposals. Without augmentation the
    training images are the same every epoch, and from the second epoch on their proposals are free.

    Args:
        search: the function computing proposals (``image -> (N, 4)``).
        max_items: when exceeded, the cache is emptied (a bound on memory for endless augmented views).
    """

    def __init__(self, search: SelectiveSearch, max_items: int = 100_000) -> None:
        self.search, self.max_items = search, max_items
        self._boxes: dict[bytes, Tensor] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._boxes)

    def __call__(self, image: Tensor) -> Tensor:
        """``(3, H, W)`` image -> its proposals ``(N, 4)`` float32, on the CPU."""
        pixels = image.detach().cpu()
        pixels = (pixels if pixels.dtype == torch.uint8 else pixels.float()).contiguous()
        digest = hashlib.blake2b(str(tuple(pixels.shape)).encode(), digest_size=16)
        digest.update(pixels.numpy().tobytes())
        key = digest.digest()
        boxes = self._boxes.get(key)
        if boxes is None:
            self.misses += 1
            boxes = self.search(pixels)
            if len(self._boxes) >= self.max_items:
                self._boxes.clear()
            self._boxes[key] = boxes
        else:
            self.hits += 1
        return boxes
