"""Instance-mask geometry: pasting box-relative masks into the image, boxes of masks, mask IoU, polygons.

Masks are ``(N, H, W)``, one per object, binary (bool / uint8) unless said otherwise. Boxes follow the
zir convention (XYXY pixels, exclusive ``x2, y2``): mask pixel ``(y, x)`` covers ``[x, x + 1) x [y, y + 1)``
and its centre is ``(x + 0.5, y + 0.5)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from faster_coco_eval.core import mask as mask_codec
from torch import Tensor
from torchvision.ops import masks_to_boxes as _tv_masks_to_boxes

__all__ = ["mask_iou", "masks_to_boxes", "paste_masks_in_image", "polygons_to_mask"]


def paste_masks_in_image(masks: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Place Mask R-CNN's ``M x M`` box-relative masks into the image (He et al. 2017, section 3).

    Args:
        masks: float ``(N, M, M)`` probabilities (any ``M x M'``), mask ``n`` spanning box ``n``.
        boxes: ``(N, 4)`` XYXY pixels in the image.
        image_size: ``(H, W)``.

    Returns:
        float ``(N, H, W)`` probabilities, 0 outside each box; threshold at 0.5 for binary masks.

    Each image pixel takes the bilinear sample of the mask at its centre, with the mask stretched over
    the box's exact (fractional) extent, as Detectron2 does. torchvision's ``paste_masks_in_image``
    rounds boxes to whole pixels, treats ``x2`` as inclusive and pads the mask by one cell, so a full
    mask over ``[10, 20)`` covers pixels 9..20 there; here it covers 10..19.
    """
    H, W = image_size
    out = masks.new_zeros((len(masks), H, W), dtype=torch.float32)
    for n, (mask, box) in enumerate(zip(masks, boxes.tolist())):
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            continue
        # Only the pixels the box touches can be non-zero.
        c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), W)
        r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), H)
        if c1 <= c0 or r1 <= r0:
            continue
        # Pixel centres in grid_sample's [-1, 1] coordinates of the box (align_corners=False).
        gx = (torch.arange(c0, c1, device=masks.device, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = (torch.arange(r0, r1, device=masks.device, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)  # (h, w, 2) as (x, y)
        sampled = F.grid_sample(mask[None, None].float(), grid[None], mode="bilinear",
                                padding_mode="zeros", align_corners=False)
        out[n, r0:r1, c0:c1] = sampled[0, 0]
    return out


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight boxes around ``(N, H, W)`` masks -> float ``(N, 4)`` XYXY with exclusive ``x2, y2``.

    torchvision's ``masks_to_boxes`` returns the last pixel's index (inclusive); zir adds 1 so a mask
    over columns 10..19 gives ``x1=10, x2=20``. Empty masks give ``(0, 0, 0, 0)``.
    """
    if masks.numel() == 0:
        return torch.zeros((len(masks), 4), dtype=torch.float32, device=masks.device)
    boxes = _tv_masks_to_boxes(masks)
    nonempty = masks.flatten(1).any(dim=1)
    return boxes + nonempty[:, None].to(boxes) * boxes.new_tensor([0, 0, 1, 1])


def mask_iou(masks1: Tensor, masks2: Tensor) -> Tensor:
    """IoU of every pair of binary masks: ``(N, H, W), (M, H, W) -> (N, M)`` (one matrix product).

    Two empty masks have IoU 0. Counts are exact in float32 up to 2**24 pixels per mask.
    """
    a = (masks1 != 0).flatten(1).float()  # (N, HW)
    b = (masks2 != 0).flatten(1).float()  # (M, HW)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return inter / union.clamp(min=1)


def polygons_to_mask(polygons: Sequence[Sequence[float]], image_size: tuple[int, int]) -> Tensor:
    """Rasterise one object's polygons (COCO's flat ``[x1, y1, x2, y2, ...]`` pixels) -> bool ``(H, W)``.

    Uses the COCO mask codec (faster-coco-eval, the same pixels as pycocotools), so a square polygon
    with corners at 10 and 20 covers pixels 10..19. Polygons with fewer than 3 points are skipped.
    """
    H, W = image_size
    polys = [[float(v) for v in p] for p in polygons if len(p) >= 6]
    if not polys:
        return torch.zeros((H, W), dtype=torch.bool)
    rle = mask_codec.merge(mask_codec.frPyObjects(polys, H, W))
    return torch.from_numpy(np.asarray(mask_codec.decode(rle), dtype=bool))
