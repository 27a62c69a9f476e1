"""Deployment graphs of the window detectors: ``sliding_window`` (a classifier on every window of an image
pyramid) and ``overfeat`` (the same classifier as one convolution per scale, with a box head).

Their ``predict`` loops over images and scales in Python; here the scales stay a Python loop (a fixed
list, unrolled at export) and the images become the batch: every image of a batch has one size, so one
set of windows serves them all. Sizes are symbolic (:func:`scaled_side` rounds as ``round``), a window
that does not fit gives no position instead of a branch, and the post-processing is one threshold and
one NMS over the whole batch, with each (image, class) moved apart, as the other detectors' graphs.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import nms

from zir.errors import ConfigError
from zir.export.graphs import clip_to, resize_to, to_unit, working_frame, working_hw
from zir.export.two_stage import to_input, to_slots
from zir.models.base import ZirModel


def scaled_side(n: Any, scale: float) -> Any:
    """``max(1, round(n * scale))`` for a symbolic side ``n`` (``transform.scaled_size``) in integer
    arithmetic, ONNX having no rounding of a size: ``scale`` as a fraction ``p / q`` (denominator at most
    1000: 1.41 is 141/100), halves rounded to even as Python's ``round``. Python rounds the float product,
    which can fall on the other side of a half: 90 * 0.35 is 31.499999999999996 there, 31.5 here (40 of
    the 63 000 sides 1..9000 at scales 2, 1.41, 0.71, 0.5, 0.35, 0.25, 0.75 differ, by one pixel)."""
    if scale == 1.0:
        return n
    f = Fraction(scale).limit_denominator(1000)
    a, d = n * f.numerator, f.denominator
    up = (2 * a + d) // (2 * d)  # halves rounded up
    tie = 1 - torch.sym_min(1, (2 * a + d) % (2 * d))  # 1 when n p / q is exactly k + 1/2
    return torch.sym_max(1, up - tie * (up % 2))


def grid_windows(H: Any, W: Any, wh: int, ww: int, stride: int, device: torch.device) -> Tensor:
    """``sliding_window.sliding_windows`` with symbolic ``H, W``: every ``wh x ww`` window at ``stride``,
    row-major, ``(N, 4)`` XYXY; none (``N = 0``) when it does not fit, without a branch."""
    ys = torch.arange(0, torch.sym_max(H - wh + 1, 0), stride, device=device, dtype=torch.float32)
    xs = torch.arange(0, torch.sym_max(W - ww + 1, 0), stride, device=device, dtype=torch.float32)
    y = ys[:, None].expand(-1, xs.shape[0])
    x = xs[None, :].expand(ys.shape[0], -1)
    return torch.stack([x, y, x + ww, y + wh], dim=-1).reshape(-1, 4)


def scale_xy(boxes: Tensor, sx: Any, sy: Any) -> Tensor:
    """``(..., 4)`` XYXY boxes with x scaled by ``sx`` and y by ``sy`` (``zir.ops.boxes.scale_boxes``)."""
    return torch.stack([boxes[..., 0] * sx, boxes[..., 1] * sy, boxes[..., 2] * sx, boxes[..., 3] * sy], dim=-1)


def detections_to_slots(boxes: Tensor, scores: Tensor, labels: Tensor, image: Tensor, B: Any, nms_iou: float,
                        span: Any, C: int, K: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Candidates above the threshold (flat, each with its ``image``) -> per-(image, class) NMS, each
    image's best ``K``, the padded detector outputs. ``span``: more than any box coordinate."""
    group = (image * C + labels).to(boxes.dtype)
    kept = nms(boxes + (group * span)[:, None], scores, nms_iou)  # groups span apart never overlap
    boxes, scores, labels, image = boxes[kept], scores[kept], labels[kept], image[kept]
    return to_slots(boxes, scores, labels, image, B, K)[:4]


class SlidingWindowGraph(nn.Module):
    """``SlidingWindow.predict``: working frame, every window of the pyramid cropped (RoI Align, as
    ``crop_windows``) from every image and classified at once, (window, class) pairs above the threshold,
    per-class NMS, the best ``detections_per_img``, boxes back to the input's pixels."""

    outputs = ("boxes", "scores", "labels", "counts")

    def __init__(self, model: ZirModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from zir.models.detect.sliding_window import crop_windows

        m, cfg = self.model, self.model.cfg
        S = cfg.image_size
        Bn = images.shape[0]
        H, W = images.shape[-2:]
        work, h, w = working_frame(images, m)
        windows = []  # pyramid_windows: each scale's windows in the working frame's pixels
        for s in cfg.scales:
            hs, ws = scaled_side(h, s), scaled_side(w, s)
            for wh, ww in cfg.windows:
                win = grid_windows(hs, ws, wh, ww, cfg.stride, images.device)
                windows.append(scale_xy(win, w / ws, h / hs))
        windows = torch.cat(windows)  # (N, 4)
        N = windows.shape[0]
        image = torch.arange(Bn, device=images.device)[:, None].expand(-1, N).reshape(-1)  # (B N,)
        every = windows[None].expand(Bn, -1, -1).reshape(-1, 4)  # (B N, 4): each image's windows
        scores = m.classify(crop_windows(work, every, image, cfg.input_size)).float().softmax(dim=1)[:, 1:]
        C = scores.shape[1]  # (B N, C): the background column dropped
        keep = (scores.reshape(-1) > cfg.score_thresh).nonzero().squeeze(1)
        row = keep // C
        boxes, sc, labels, counts = detections_to_slots(
            every[row], scores.reshape(-1)[keep], keep % C, image[row], Bn, cfg.nms_iou, S + 1, C,
            cfg.detections_per_img)
        # working frame -> input pixels, clipped; rows past the counts stay zeros
        filled = torch.arange(boxes.shape[1], device=boxes.device) < counts[:, None]  # (B, K)
        boxes = to_input(boxes.reshape(-1, 4), H, W, h, w).reshape(Bn, -1, 4) * filled[..., None]
        return boxes, sc, labels, counts


class OverFeatGraph(nn.Module):
    """``OverFeat.predict``: for each scale of the pyramid the input resized to the working frame times the
    scale, normalised, padded to the stride (at least one window), one convolutional pass; each
    position's window decoded with its box deltas, positions whose window is not inside the scaled image
    left out, each image's best ``pre_nms_top_n`` (position, class) pairs per scale; then over every
    scale the threshold, per-class NMS and the best ``detections_per_img``, in the input's pixels."""

    outputs = ("boxes", "scores", "labels", "counts")

    def __init__(self, model: ZirModel) -> None:
        super().__init__()
        if model.cfg.merge != "nms":
            raise ConfigError(f"overfeat with merge={model.cfg.merge!r} cannot be exported yet (its weighted box "
                              "merge has no graph); export a run with model_args.merge=nms (set it in "
                              "RUN/config.yaml: prediction only, no retraining needed)")
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        import torch.nn.functional as F

        from zir.models.detect.transform import normalize

        m, cfg = self.model, self.model.cfg
        St, win = m.stride, cfg.window
        Bn = images.shape[0]
        H, W = images.shape[-2:]
        h, w = working_hw(H, W, cfg.image_size)
        unit = to_unit(images)
        all_boxes, all_scores, all_labels, all_images = [], [], [], []
        for s in cfg.scales:
            hs, ws = scaled_side(h, s), scaled_side(w, s)
            x = normalize(resize_to(unit, hs, ws, (hs < H) | (ws < W)), m.mean, m.std)
            Hp = torch.sym_max(win, (hs + St - 1) // St * St)
            Wp = torch.sym_max(win, (ws + St - 1) // St * St)
            logits, deltas = m(F.pad(x, (0, Wp - ws, 0, Hp - hs)))  # (B, K + 1, gh, gw), (B, 4, gh, gw)
            gh, gw = logits.shape[-2:]
            windows = grid_windows((gh - 1) * St + win, (gw - 1) * St + win, win, win, St, x.device)  # (P, 4)
            P = windows.shape[0]
            inside = (windows[:, 2] <= ws) & (windows[:, 3] <= hs)  # whole windows only
            prob = logits.flatten(2).transpose(1, 2).float().softmax(dim=2)[..., 1:]  # (B, P, K)
            C = prob.shape[2]
            prob = torch.where(inside[None, :, None], prob, -1.0)  # never above a threshold >= 0
            decoded = m.coder.decode(deltas.flatten(2).transpose(1, 2).float().reshape(-1, 4),
                                     windows[None].expand(Bn, -1, -1).reshape(-1, 4))
            decoded = clip_to(decoded, hs, ws).reshape(Bn, P, 4)
            top = prob.reshape(Bn, -1).topk(torch.sym_min(cfg.pre_nms_top_n, P * C), dim=1)  # (B, k)
            k = top.indices.shape[1]
            box = torch.gather(decoded, 1, (top.indices // C)[..., None].expand(-1, -1, 4))  # (B, k, 4)
            box = scale_xy(box, W / ws, H / hs)  # boxes_to_input
            all_boxes.append(box.reshape(-1, 4))
            all_scores.append(top.values.reshape(-1))
            all_labels.append((top.indices % C).reshape(-1))
            all_images.append(torch.arange(Bn, device=x.device)[:, None].expand(-1, k).reshape(-1))
        scores = torch.cat(all_scores)
        keep = (scores > cfg.score_thresh).nonzero().squeeze(1)
        boxes, scores = torch.cat(all_boxes)[keep], scores[keep]
        labels, image = torch.cat(all_labels)[keep], torch.cat(all_images)[keep]
        boxes, scores, labels, counts = detections_to_slots(
            boxes, scores, labels, image, Bn, cfg.nms_iou, torch.sym_max(H, W) + 1, C, cfg.detections_per_img)
        filled = torch.arange(boxes.shape[1], device=boxes.device) < counts[:, None]  # (B, K)
        return clip_to(boxes, H, W) * filled[..., None], scores, labels, counts
