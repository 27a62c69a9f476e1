"""Predictions drawn on images, for people: boxes with class names and scores, masks, class labels."""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from zir.data.contract import (
    ClassPrediction,
    DetectionPrediction,
    PanopticPrediction,
    Prediction,
    SemanticPrediction,
)


def class_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct, saturated colours (golden-ratio hue steps), the same for the same class id."""
    return [tuple(int(c * 255) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95))  # type: ignore[misc]
            for i in range(max(n, 1))]


def draw_prediction(image: torch.Tensor, prediction: Prediction, classes: list[str],
                    truth: int | None = None) -> torch.Tensor:
    """Draw ``prediction`` on a uint8 ``(3, H, W)`` image; returns a new uint8 ``(3, H, W)`` image.

    Classification writes the top class and its probability (green if it matches ``truth``, red if
    not); detection draws boxes labelled ``name score`` in per-class colours, and masks if present
    (filled in the class colour, each instance outlined in white, so touching instances stay apart);
    semantic segmentation overlays the class map; panoptic overlays stuff and things in class colours and
    outlines every thing instance.
    """
    colors = class_colors(len(classes))
    if isinstance(prediction, DetectionPrediction):
        # Small images are enlarged (nearest) first, so that the labels stay readable.
        k = max(1, 384 // max(1, max(image.shape[-2:])))
        out = image.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1) if k > 1 else image
        labels = prediction.labels.tolist()
        if prediction.masks is not None and len(labels):
            masks = prediction.masks.bool()
            if k > 1:
                masks = masks.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
            out = draw_segmentation_masks(out, masks, alpha=0.45, colors=[colors[i] for i in labels])
            out = draw_segmentation_masks(out, outlines(masks), alpha=1.0, colors="white")
        if len(labels):
            text = [f"{classes[c]} {s:.2f}" for c, s in zip(labels, prediction.scores.tolist())]
            out = draw_bounding_boxes(out, prediction.boxes * k, labels=text, colors=[colors[i] for i in labels],
                                      width=2)
        return out
    if isinstance(prediction, SemanticPrediction):
        ids = prediction.semantic
        present = [int(i) for i in ids.unique() if 0 < int(i) < len(classes)]
        if not present:
            return image
        masks = torch.stack([ids == i for i in present])
        return draw_segmentation_masks(image, masks, alpha=0.5, colors=[colors[i] for i in present])
    if isinstance(prediction, PanopticPrediction):
        if not prediction.segments:
            return image
        masks = torch.stack([prediction.ids == s["id"] for s in prediction.segments])
        out = draw_segmentation_masks(image, masks, alpha=0.5,
                                      colors=[colors[s["category_id"]] for s in prediction.segments])
        things = [i for i, s in enumerate(prediction.segments) if s["isthing"]]
        if things:
            out = draw_segmentation_masks(out, outlines(masks[things]), alpha=1.0, colors="white")
        return out
    if isinstance(prediction, ClassPrediction):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        scale = max(1, 128 // max(1, min(pil.size)))
        if scale > 1:
            pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
        d = ImageDraw.Draw(pil)
        ok = truth is None or truth == prediction.label
        text = f"{classes[prediction.label]} {float(prediction.scores[prediction.label]):.2f}"
        d.rectangle([0, 0, pil.width, 14], fill=(0, 140, 0) if ok else (200, 0, 0))
        d.text((3, 2), text, fill=(255, 255, 255))
        return torch.from_numpy(np.array(pil)).permute(2, 0, 1)
    raise TypeError(f"cannot draw {type(prediction).__name__}")


def outlines(masks: torch.Tensor) -> torch.Tensor:
    """bool ``(N, H, W)`` masks -> their one-pixel inner borders (a pixel of the mask with an 8-neighbour
    outside it), as one bool ``(H, W)`` map."""
    m = masks.bool()
    if len(m) == 0:
        return torch.zeros(masks.shape[-2:], dtype=torch.bool)
    inside = (-torch.nn.functional.max_pool2d(-m[:, None].float(), 3, stride=1, padding=1))[:, 0] > 0  # erosion
    return (m & ~inside).any(0)
