"""Sliced inference geometry: the tile grid over a large image, tile predictions moved back into the
image's pixels, and the merge of detections found twice where tiles overlap.

Small objects vanish when a 2000 px image is resized to a detector's 320-640 px input; cutting the
image into overlapping tiles at the detector's own scale keeps them (Akyon et al., "Slicing Aided Hyper
Inference", ICIP 2022). The grid and the merge here follow the ``sahi`` package's
``get_slice_bboxes`` and ``GreedyNMMPostprocess`` so the two can be compared on the same model
(``benchmarks/sliced.py``).

Boxes are float ``(N, 4)`` XYXY in absolute pixels (``zir/data/contract.py``); tiles are int64
``(T, 4)`` XYXY with exclusive ends, so a tile ``[x1, y1, x2, y2]`` is ``image[:, y1:y2, x1:x2]``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import box_area

__all__ = ["Merge", "Metric", "tile_grid", "tile_starts", "shift_boxes", "paste_tile_masks", "ios",
           "pairwise_row", "merge_detections"]

Merge = Literal["nmm", "nms"]
"""``nmm``: greedy non-maximum *merging* (sahi's default): a kept box absorbs the boxes that match it
(box union, mask union, highest score). ``nms``: the matched boxes are dropped."""
Metric = Literal["ios", "iou"]
"""``ios``: intersection over the smaller box (a half object cut by a tile edge still matches the
whole one); ``iou``: intersection over union."""


def tile_starts(length: int, size: int, step: int) -> list[int]:
    """Start offsets of tiles of ``size`` every ``step`` pixels along ``length``, the last one moved back
    to end on the border (so no tile is padded and the border is covered once more, as sahi does).

    ``length <= size`` gives one tile ``[0]`` (the tile is then only ``length`` long).
    """
    if size <= 0 or step <= 0:
        raise ValueError(f"tile size and step must be positive, got size={size}, step={step}")
    starts = list(range(0, length - size + 1, step))
    if not starts or starts[-1] + size < length:
        starts.append(max(0, length - size))
    return starts


def tile_grid(image_size: tuple[int, int], size: int | tuple[int, int], overlap: float = 0.2) -> Tensor:
    """Overlapping tiles covering an image, row by row.

    Args:
        image_size: ``(H, W)``.
        size: tile side, or ``(tile_h, tile_w)``.
        overlap: fraction of the tile shared with its neighbour, in ``[0, 1)``; the step between tiles is
            ``size - int(overlap * size)`` pixels (sahi's rounding).

    Returns:
        int64 ``(T, 4)`` XYXY tiles, ``x2 - x1 = min(tile_w, W)`` (likewise in ``y``), row-major order.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    th, tw = (size, size) if isinstance(size, int) else size
    H, W = image_size
    ys = tile_starts(H, th, th - int(overlap * th))
    xs = tile_starts(W, tw, tw - int(overlap * tw))
    tiles = [[x, y, min(x + tw, W), min(y + th, H)] for y in ys for x in xs]
    return torch.tensor(tiles, dtype=torch.int64).reshape(-1, 4)


def shift_boxes(boxes: Tensor, tile: Tensor) -> Tensor:
    """Boxes in a tile's pixels ``(N, 4)`` -> the same boxes in the whole image's pixels."""
    offset = tile[:2].to(boxes.dtype).repeat(2)  # (x1, y1, x1, y1)
    return boxes + offset


def paste_tile_masks(masks: Tensor, tile: Tensor, image_size: tuple[int, int]) -> Tensor:
    """bool ``(N, h, w)`` masks of a tile -> bool ``(N, H, W)`` masks of the whole image (0 outside it)."""
    x1, y1, x2, y2 = tile.tolist()
    out = torch.zeros((masks.shape[0], *image_size), dtype=torch.bool, device=masks.device)
    out[:, y1:y2, x1:x2] = masks
    return out


def ios(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over the smaller of the two areas, every pair: ``(N, 4), (M, 4) -> (N, M)``.

    1 when one box lies inside the other; pairs where both are empty give 0.
    """
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    smaller = torch.minimum(box_area(boxes1)[:, None], box_area(boxes2)[None, :])
    return torch.where(smaller > 0, inter / smaller.clamp(min=torch.finfo(inter.dtype).tiny), 0.0)


def pairwise_row(box: Tensor, boxes: Tensor, metric: Metric) -> Tensor:
    """IoS or IoU of one box ``(4,)`` with each of ``boxes (M, 4)`` -> ``(M,)``."""
    if metric == "ios":
        return ios(box[None].float(), boxes.float())[0]
    if metric == "iou":
        from torchvision.ops import box_iou

        return box_iou(box[None].float(), boxes.float())[0]
    raise ValueError(f"metric must be 'ios' or 'iou', got {metric!r}")


def merge_detections(boxes: Tensor, scores: Tensor, labels: Tensor, masks: Tensor | None = None,
                     method: Merge = "nmm", metric: Metric = "ios", threshold: float = 0.5,
                     class_agnostic: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Detections from overlapping tiles (and the whole-image pass) -> one detection per object.

    Greedy, in descending score: the best box not yet taken keeps the boxes whose ``metric`` with it is
    ``>= threshold`` (same class unless ``class_agnostic``). ``nms`` drops them; ``nmm`` merges them into
    it one at a time, each only if it still matches the merged box (sahi's ``GreedyNMMPostprocess``):
    the box becomes the union, the mask the union, the score the highest and the label the kept one's.

    Args:
        boxes: float ``(N, 4)`` XYXY image pixels. scores: ``(N,)``. labels: int64 ``(N,)``.
        masks: bool ``(N, H, W)`` or ``None``.

    Returns:
        ``(boxes (K, 4), scores (K,), labels (K,), masks (K, H, W) | None)``, sorted by descending score.
    """
    if method not in ("nmm", "nms"):
        raise ValueError(f"merge must be 'nmm' or 'nms', got {method!r}")
    if len(boxes) == 0:
        return boxes, scores, labels, masks
    order = torch.sort(scores, descending=True, stable=True).indices
    taken = torch.zeros(len(boxes), dtype=torch.bool)
    out_boxes, out_scores, out_labels, out_masks = [], [], [], []
    for rank, i in enumerate(order.tolist()):
        if taken[i]:
            continue
        # One row of the metric at a time: thousands of tile boxes would make the (N, N) matrix large.
        later = order[rank + 1:][~taken[order[rank + 1:]]]
        match = pairwise_row(boxes[i], boxes[later], metric) >= threshold
        if not class_agnostic:
            match &= labels[later] == labels[i]
        absorbed = later[match]
        taken[absorbed] = True
        box, score, mask = boxes[i], scores[i], None if masks is None else masks[i]
        if method == "nmm":
            for j in absorbed.tolist():
                if pairwise_row(box, boxes[j:j + 1], metric)[0] < threshold:
                    continue  # the merged box has moved away from this one
                box = torch.cat([torch.minimum(box[:2], boxes[j, :2]), torch.maximum(box[2:], boxes[j, 2:])])
                score = torch.maximum(score, scores[j])
                mask = None if mask is None else mask | masks[j]  # type: ignore[index]
        out_boxes.append(box)
        out_scores.append(score)
        out_labels.append(labels[i])
        out_masks.append(mask)
    merged_scores = torch.stack(out_scores)
    keep = torch.sort(merged_scores, descending=True, stable=True).indices
    return (torch.stack(out_boxes)[keep], merged_scores[keep], torch.stack(out_labels)[keep],
            None if masks is None else torch.stack(out_masks)[keep])  # type: ignore[arg-type]
