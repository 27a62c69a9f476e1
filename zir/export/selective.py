"""Deployment graphs of the detectors on selective search proposals: R-CNN and Fast R-CNN.

Selective search (OpenCV's contrib module, ``zir.models.detect.proposals``) is a graph segmentation and a
greedy merge over regions, not tensor operations: no ONNX runtime has it. So these graphs take the
proposals as a second input, in the format of torchvision's RoI operators, and hold everything after
them; the caller runs the search first (:func:`proposals_input`, which ``zir.export.runtime`` and
``zir predict --backend onnx`` use, with the run's settings from the sidecar)::

    images    uint8 (B, 3, H, W)
    proposals float32 (N, 5): [image index, x1, y1, x2, y2] in the input's pixels, any number per image

    R-CNN      every proposal grown by its context, warped to crop_size (RoI Align) from the normalised
               input, the CNN on all crops -> scaled features -> SVM margins, sigmoid -> (proposal, class)
               pairs above the threshold -> per-(image, class) NMS -> each image's best -> the kept
               boxes refined by their class's regressor, clipped
    Fast R-CNN resize into the working frame -> backbone (one map) -> the proposals scaled into the frame
               -> the RoI heads (RoI max pooling, fc6/fc7, softmax, per-class boxes, threshold, NMS) as
               Faster R-CNN's graph (``two_stage.detect_rois``) -> input pixels

Outputs are every detector's: ``boxes``, ``scores``, ``labels``, ``counts``.

R-CNN's graph classifies every crop of a call in one batch (``predict`` takes ``chunk`` crops at a time): its
memory grows with proposals x images (8 images of 2000 proposals went past 24 GB in
``benchmarks/export_speed.py``), so its ``max_batch`` is 1: the sidecar says so and ``OnnxPredictor`` sends
one image per call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms, roi_align

from zir.export.graphs import clip_to, to_unit, working_frame
from zir.export.two_stage import detect_rois, to_input, to_slots
from zir.export.windows import scale_xy
from zir.models.base import ZirModel


def proposals_input(search: Any, images: np.ndarray | Tensor) -> np.ndarray:
    """The graphs' ``proposals`` input for uint8 ``images (B, 3, H, W)``: ``search`` (a
    :class:`~zir.models.detect.proposals.SelectiveSearch`, as the model's ``predict`` runs it) on each
    image, the boxes prefixed with their image index -> float32 ``(N, 5)``."""
    rows = []
    for b, image in enumerate(torch.as_tensor(images)):
        boxes = search(image).float().reshape(-1, 4)
        rows.append(torch.cat([boxes.new_full((len(boxes), 1), float(b)), boxes], dim=1))
    return torch.cat(rows).numpy() if rows else np.zeros((0, 5), np.float32)


def split_proposals(proposals: Tensor) -> tuple[Tensor, Tensor]:
    """``(N, 5)`` -> ``(image index (N,) int64, boxes (N, 4))``."""
    return proposals[:, 0].long(), proposals[:, 1:]


class ProposalGraph(nn.Module):
    """A detector's graph on given proposals: inputs ``images`` and ``proposals``, every detector's outputs."""

    inputs = ("images", "proposals")
    outputs = ("boxes", "scores", "labels", "counts")
    max_batch: int | None = None  # images per call a runtime should send (None: any)

    def __init__(self, model: ZirModel) -> None:
        super().__init__()
        self.model = model


class RCNNGraph(ProposalGraph):
    """``RCNN.predict`` on given proposals, for a batch of one size (R-CNN has no working frame: crops
    come from the input itself)."""

    max_batch = 1  # every crop of a call goes through the CNN at once

    def forward(self, images: Tensor, proposals: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from zir.models.detect.transform import normalize

        m, cfg = self.model, self.model.cfg
        Bn = images.shape[0]
        H, W = images.shape[-2:]
        image, boxes = split_proposals(proposals)
        x = normalize(to_unit(images), m.mean, m.std)
        S, p = cfg.crop_size, cfg.context  # RCNN.cnn_features: each box grown by its context, warped to S
        grow = S / (S - 2 * p)
        centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2 * grow
        rois = torch.cat([proposals[:, :1], centre - half, centre + half], dim=1)
        crops = roi_align(x, rois, S, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        features = m.cnn(crops).float() * m.feature_scale  # (N, F): RCNN.embed
        scores = torch.sigmoid(m.scores(features).float())  # (N, K)
        K = scores.shape[1]
        flat = scores.reshape(-1)
        keep = (flat > cfg.score_thresh).nonzero().squeeze(1)  # (proposal, class) pairs, row-major
        n, label, score = keep // K, keep % K, flat[keep]
        group = (image[n] * K + label).to(boxes.dtype)  # groups max(H, W) + 1 apart never overlap
        kept = nms(boxes[n] + (group * (torch.sym_max(H, W) + 1))[:, None], score, cfg.nms_iou)
        n, label, score = n[kept], label[kept], score[kept]
        det = clip_to(m.regress(features[n], boxes[n], label), H, W)  # part 4 on the kept boxes
        return to_slots(det, score, label, image[n], Bn, cfg.detections_per_img)[:4]


class FastRCNNGraph(ProposalGraph):
    """``FastRCNN.predict`` on given proposals: the working frame, the backbone's one map, the RoI heads."""

    def forward(self, images: Tensor, proposals: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from zir.models.detect.transform import SIZE_DIVISIBLE

        m = self.model
        Bn = images.shape[0]
        H, W = images.shape[-2:]
        x, h, w = working_frame(images, m)
        x = F.pad(x, (0, (-w) % SIZE_DIVISIBLE, 0, (-h) % SIZE_DIVISIBLE))
        image, boxes = split_proposals(proposals)
        boxes = scale_xy(boxes, w / W, h / H)  # boxes_to_working
        det, score, label, image = detect_rois(m.roi_heads, m.backbone(x), boxes, image, h, w, m.cfg.image_size)
        return to_slots(to_input(det, H, W, h, w), score, label, image, Bn, m.roi_heads.detections_per_img)[:4]


def roi_pool_onnx(input: Any, rois: Any, spatial_scale: float, pooled_height: int, pooled_width: int) -> Any:
    """ONNX translation of ``torchvision::roi_pool`` (ONNX's ``MaxRoiPool``, Caffe's rounding as
    torchvision's): the exporter's own (onnxscript 0.7) takes the wrong arguments and fails. The op's second
    output (the arg-max, used only by the backward) is a cast of the first, never read."""
    from onnxscript import opset18 as op

    out = op.MaxRoiPool(input, rois, pooled_shape=[pooled_height, pooled_width], spatial_scale=spatial_scale)
    return out, op.Cast(out, to=7)  # int64, as the op's schema says
