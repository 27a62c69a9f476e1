"""Sliced inference (SAHI): a detector run on overlapping tiles of a large image, and optionally on the
whole image too, the detections moved back into the image's pixels and merged.

    model = zir.load("runs/small-objects")
    pred = model.predict_sliced("aerial.jpg", size=320, overlap=0.2)     # one DetectionPrediction

``zir predict RUN big.jpg --slice 320 --overlap 0.2`` does the same from the command line. Any
:class:`~zir.engine.predictor.Predictor` works, the onnxruntime one included: tiles are plain images.
The geometry (tile grid, shifts, the merge) is :mod:`zir.ops.slicing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from zir.data.contract import DetectionPrediction
from zir.errors import ConfigError
from zir.ops.slicing import Merge, Metric, merge_detections, paste_tile_masks, shift_boxes, tile_grid

if TYPE_CHECKING:
    from zir.engine.predictor import Predictor


@dataclass(frozen=True)
class Slicing:
    """How to slice.

    Attributes:
        size: tile side in pixels (pick the detector's training input size).
        overlap: fraction of a tile shared with its neighbour, in ``[0, 1)``.
        full: also run the whole image and merge its detections (sahi's ``perform_standard_pred``):
            large objects cut by every tile are still found whole.
        merge: ``nmm`` (merge matched boxes, sahi's default) or ``nms`` (drop them).
        metric: ``ios`` (intersection over the smaller box, sahi's default) or ``iou``.
        threshold: the metric at or above which two same-class boxes are one object.
        conf: score below which tile detections are dropped before the merge (masks of low-score
            detections would otherwise be pasted at full image size by the thousand).
        batch_size: tiles per forward pass.
    """

    size: int
    overlap: float = 0.2
    full: bool = True
    merge: Merge = "nmm"
    metric: Metric = "ios"
    threshold: float = 0.5
    conf: float = 0.05
    batch_size: int = 8

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the bad setting."""
        if self.size < 16:
            raise ConfigError(f"slice size {self.size} is too small; use the detector's input size (e.g. 320)")
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"slice overlap {self.overlap} must be in [0, 1), e.g. 0.2")
        if self.merge not in ("nmm", "nms"):
            raise ConfigError(f"slice merge {self.merge!r}: use 'nmm' or 'nms'")
        if self.metric not in ("ios", "iou"):
            raise ConfigError(f"slice metric {self.metric!r}: use 'ios' or 'iou'")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"slice threshold {self.threshold} must be in (0, 1]")


def predict_sliced(predictor: Predictor, image: torch.Tensor, slicing: Slicing) -> DetectionPrediction:
    """One image ``(3, H, W)`` (uint8, or float in [0, 1]) -> its detections, in its own pixels.

    Raises:
        ConfigError: the model is not a detector or instance segmenter.
    """
    if predictor.task not in ("detect", "instance"):
        raise ConfigError(f"sliced prediction needs a detection or instance segmentation model; this one is a "
                          f"{predictor.task} model: predict without --slice")
    slicing.check()
    H, W = image.shape[-2:]
    tiles = tile_grid((H, W), slicing.size, slicing.overlap)
    crops = [image[:, y1:y2, x1:x2] for x1, y1, x2, y2 in tiles.tolist()]
    preds = predictor.predict(crops, batch_size=slicing.batch_size)
    parts: list[DetectionPrediction] = []
    for tile, pred in zip(tiles, preds):
        pred = pred.above(slicing.conf)
        masks = None if pred.masks is None else paste_tile_masks(pred.masks.cpu(), tile, (H, W))
        parts.append(DetectionPrediction(shift_boxes(pred.boxes.cpu(), tile), pred.scores.cpu(),
                                         pred.labels.cpu(), masks))
    if slicing.full:
        whole = predictor.predict(image)[0].above(slicing.conf)
        parts.append(DetectionPrediction(whole.boxes.cpu(), whole.scores.cpu(), whole.labels.cpu(),
                                         None if whole.masks is None else whole.masks.cpu()))
    has_masks = any(p.masks is not None for p in parts)
    boxes, scores, labels, masks = merge_detections(
        torch.cat([p.boxes.float() for p in parts]), torch.cat([p.scores.float() for p in parts]),
        torch.cat([p.labels for p in parts]),
        torch.cat([p.masks.bool() for p in parts]) if has_masks else None,  # type: ignore[union-attr]
        method=slicing.merge, metric=slicing.metric, threshold=slicing.threshold)
    return DetectionPrediction(boxes, scores, labels, masks)
