"""YOLO v1 (Redmon et al. 2015, "You Only Look Once: Unified, Real-Time Object Detection"), as in the lecture.

Detection as one regression: the image is split into an ``S x S`` grid; each cell predicts ``B`` boxes
``(x, y, w, h, confidence)`` (``x, y`` the centre's offset within the cell, ``w, h`` fractions of the
image) and ``C`` class probabilities ``Pr(class | object)``: an ``S x S x (5B + C)`` tensor (30 per cell
for ``S = 7, B = 2, C = 20``).

    image (N, 3, H, W), any size
      -> letterbox to image_size x image_size (aspect kept, grey 114 padding, as zir.augment's Letterbox)
      -> backbone (pretrained EfficientNet-Lite0, or a small ConvNet), last feature map (N, C_b, s, s)
      -> conv 3x3 -> BN -> Leaky ReLU (the paper adds conv layers on top of its ImageNet-pretrained ones)
      -> adaptive average pool to (S, S): the FC input has one size whatever the backbone's stride
      -> flatten -> FC (hidden) -> Leaky ReLU(0.1) -> dropout -> FC (S * S * (5B + C))
      -> reshape (N, S, S, 5B + C)     the fully connected layers see the whole image, the output keeps
                                       the grid's 2-D structure (each cell's 5B + C numbers)

``head="conv"`` swaps the two FC layers for YOLO v2's fully convolutional head (Redmon and Farhadi 2016,
section "Convolutional With Anchor Boxes", without the anchors): a second 3x3 conv, then a 1x1 conv that
gives each cell its ``5B + C`` numbers from its own features, with the same weights at every cell. The
output, loss and inference below are unchanged. The FC head has separate weights for each cell's outputs,
so each cell learns only from the objects centred in it (a few per cell in a few hundred images), and it
needs the paper's data (VOC, 16k images, 135 epochs) to generalise; the shared conv head learns from
every object at once.

Output layout per cell: ``[x, y, w, h, c] * B`` then ``C`` class probabilities. The final layer is
linear, as in the paper (section 2.2), except that the head regresses ``sqrt(w)`` and ``sqrt(h)``
("we predict the square root of the bounding box width and height") and the output holds their
squares, so ``w, h >= 0`` and the loss's square roots are always defined.

Loss (the lecture's formula; paper equation 3), summed over the grid and normalised by the batch size
(the paper sums over a batch; dividing by it keeps the gradient's scale independent of ``batch_size``)::

    lambda_coord sum_ij 1_ij^obj [(x - x^)^2 + (y - y^)^2 + (sqrt w - sqrt w^)^2 + (sqrt h - sqrt h^)^2]
  + sum_ij 1_ij^obj (c_ij - c^_ij)^2              c_ij = IoU(predicted box, ground truth), no gradient
  + lambda_noobj sum_ij (1 - 1_ij^obj) c^_ij^2    every predictor that is not responsible
  + sum_i 1_i^obj sum_c (p_ic - p^_ic)^2

where the responsible predictor ``1_ij^obj`` of a cell with an object is the one of its ``B`` boxes with
the highest IoU with the ground truth. Inference (section 2): class-specific scores
``Pr(class | object) * confidence``, a score threshold, per-class NMS, boxes mapped back to the input
image's pixels.

Training details (lecture): ImageNet-pretrained backbone (its BatchNorm frozen: detection batches are
small), Leaky ReLU, dropout after the first FC layer, box parameters normalised to [0, 1], square
roots of w and h, lambda_noobj for empty cells; scale/translation and HSV augmentation come from the
data pipeline (``data.augment=light|standard``, ``zir.augment``), warm-up from the engine. Multi-scale
training does not apply: v1's fully connected head is built for one input size (multi-scale training
arrived with YOLO v2's fully convolutional head), so every image is letterboxed to ``image_size``.

Where this file departs from the lecture's text (Lecture 7, the YOLO slides), and why:

* ``w, h`` are fractions of the *image*, as in the paper (section 2.2: "we normalize the bounding box
  width and height by the image width and height"); the lecture says all four coordinates are relative
  to the cell. Only ``x, y`` are offsets within the cell here.
* The lecture's loss has four weights (lambda_coord, lambda_obj, lambda_noobj, lambda_classes); the
  paper, and this file, fix lambda_obj = lambda_classes = 1 and expose only ``lambda_coord`` (5) and
  ``lambda_noobj`` (0.5).
* Leaky ReLU only in the layers this file adds (the head): the pretrained backbone keeps its own
  activation (ReLU6 in EfficientNet-Lite0, ReLU in the small ConvNet), since its ImageNet weights were
  trained with it. The lecture says Leaky ReLU in all layers, as the paper's own network.
* Dropout after the first *fully connected* layer, as the paper (section 2.2: "a dropout layer with rate
  = .5 after the first connected layer"); the lecture says after the first convolutional layer.
* The HSV augmentation of the ``light``/``standard`` presets uses Ultralytics' magnitudes (hue 0.01-0.015,
  saturation 0.3-0.7, value 0.2-0.4 as fractions), not the paper's ("up to a factor of 1.5" in exposure
  and saturation, no hue); so do scale and translation (``standard``: scale 0.5, shift 0.1; ``light``:
  0.2, 0.05), where the paper uses "up to 20% of the original image size" for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn

from zir.data.contract import DetectionPrediction, Target
from zir.errors import ConfigError
from zir.models.backbones import build_backbone
from zir.models.base import ZirModel
from zir.models.classify.convnet import ConvBlock
from zir.models.detect.transform import image_list, letterbox_batch, unpad
from zir.models.inference import channels_last, inference_copy
from zir.ops.boxes import aligned_iou, batched_nms, clip, letterbox_boxes, unletterbox_boxes
from zir.ops.coder import decode_yolo_v1, encode_yolo_v1

PAD_VALUE = 114 / 255  # zir.augment's Letterbox pads with YOLO's grey, so training and inference match


@dataclass
class YoloV1Config:
    """Attributes:
    num_classes: C, object classes (filled from the data).
    image_size: side of the square input in pixels (448 in the paper); every image is letterboxed to it.
    S: the grid is S x S cells.
    B: boxes predicted per cell.
    backbone: ``efficientnet_lite0`` (or any timm name; last feature map) or ``convnet`` (a small
        ConvNet of conv-BN-ReLU-pool blocks, trained from scratch).
    pretrained: weights of a timm backbone: ``imagenet`` (offline), ``timm`` or ``none``.
    width: channels of the first ConvNet block (``backbone=convnet`` only).
    head: ``fc`` (the paper: two fully connected layers over the whole grid) or ``conv`` (YOLO v2's fully
        convolutional head: one 1x1 conv predicts every cell; far less data-hungry, see above).
    neck: channels of the conv layer(s) between the backbone and the prediction.
    hidden: units of the first FC layer (4096 in the paper; ``head=fc`` only).
    dropout: after the first FC layer (0.5 in the paper; ``head=fc`` only).
    lambda_coord, lambda_noobj: the loss weights of the box coordinates and of predictors without an
        object (5 and 0.5 in the paper).
    score_thresh: class-specific score below which detections are dropped (low for mAP evaluation).
    nms_iou: per-class NMS IoU threshold.
    max_detections: per image, after NMS.
    """

    num_classes: int = 20
    image_size: int = 448
    S: int = 7
    B: int = 2
    backbone: str = "efficientnet_lite0"
    pretrained: str = "imagenet"
    width: int = 32
    head: str = "fc"
    neck: int = 256
    hidden: int = 512
    dropout: float = 0.5
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5
    score_thresh: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100


# --------------------------------------------------------------------------------------------------
# Blocks


class ConvNetBackbone(nn.Module):
    """Five conv-BN-ReLU-pool blocks (``zir.models.classify.convnet.ConvBlock``): stride 32, like EfficientNet's
    last map. Channels ``width, 2 width, 4 width, 8 width, 8 width``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        chans = [3] + [width * min(2**i, 8) for i in range(5)]
        self.blocks = nn.Sequential(*[ConvBlock(a, b, "batch") for a, b in zip(chans, chans[1:])])
        self.channels = [chans[-1]]
        self.mean, self.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.blocks(x)]


def conv_bn_leaky(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv -> BatchNorm -> Leaky ReLU(0.1), the paper's layer."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.1, inplace=True))


class YoloHead(nn.Module):
    """Feature map ``(N, C_in, h, w)`` -> ``(N, S, S, 5B + C)``: conv, pool to the grid, two FC layers."""

    def __init__(self, c_in: int, cfg: YoloV1Config) -> None:
        super().__init__()
        self.S, self.per_cell = cfg.S, 5 * cfg.B + cfg.num_classes
        self.conv = conv_bn_leaky(c_in, cfg.neck)
        self.fc1 = nn.Linear(cfg.neck * cfg.S * cfg.S, cfg.hidden)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(cfg.hidden, cfg.S * cfg.S * self.per_cell)
        # Start near zero: empty cells (most of them) then begin with a small no-object loss.
        nn.init.normal_(self.fc2.weight, std=0.01)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, feature: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.conv(feature), self.S)  # (N, neck, S, S)
        x = self.dropout(self.act(self.fc1(x.flatten(1))))  # (N, hidden)
        return self.fc2(x).view(-1, self.S, self.S, self.per_cell)  # (N, S, S, 5B + C)


class YoloConvHead(nn.Module):
    """Feature map ``(N, C_in, h, w)`` -> ``(N, S, S, 5B + C)``: two convs, pool to the grid, a 1x1 conv
    shared by every cell (YOLO v2's fully convolutional head)."""

    def __init__(self, c_in: int, cfg: YoloV1Config) -> None:
        super().__init__()
        self.S = cfg.S
        self.conv = nn.Sequential(conv_bn_leaky(c_in, cfg.neck), conv_bn_leaky(cfg.neck, cfg.neck))
        self.out = nn.Conv2d(cfg.neck, 5 * cfg.B + cfg.num_classes, 1)
        nn.init.normal_(self.out.weight, std=0.01)  # near zero at the start, as the FC head
        nn.init.zeros_(self.out.bias)

    def forward(self, feature: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.conv(feature), self.S)  # (N, neck, S, S)
        return self.out(x).permute(0, 2, 3, 1)  # (N, S, S, 5B + C)


HEADS = {"fc": YoloHead, "conv": YoloConvHead}


# --------------------------------------------------------------------------------------------------
# Model


class YoloV1(ZirModel):
    task = "detect"

    def __init__(self, cfg: YoloV1Config) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.backbone == "convnet":
            self.backbone: nn.Module = ConvNetBackbone(cfg.width)
        else:
            self.backbone = build_backbone(cfg.backbone, cfg.pretrained, out_indices=(4,))
            if cfg.pretrained != "none":
                # timm's EfficientNet fuses BN and activation in BatchNormAct2d; a plain
                # FrozenBatchNorm2d would drop the activation. timm's own freeze keeps it
                # (FrozenBatchNormAct2d) with the same state-dict keys.
                self.backbone.body = freeze_batch_norm_2d(self.backbone.body)
        self.set_normalization(self.backbone.mean, self.backbone.std)
        if cfg.head not in HEADS:
            raise ConfigError(f"yolo_v1 head must be one of {', '.join(HEADS)}, got {cfg.head!r}")
        self.head = HEADS[cfg.head](self.backbone.channels[-1], cfg)

    def forward(self, images: Tensor) -> Tensor:
        """``(N, 3, image_size, image_size)`` in [0, 1] -> ``(N, S, S, 5B + C)``, ``w, h`` already squared."""
        return self.raw(images)

    def raw(self, images: Tensor, net: nn.Module | None = None) -> Tensor:
        """:meth:`forward` through ``net``: a module with this model's ``backbone`` and ``head`` (default: this
        model; ``predict`` passes its folded copy, :meth:`inference_net`)."""
        x = self.normalize(images)
        net = self if net is None else net
        if net is not self:
            x = channels_last(x)
        out = net.head(net.backbone(x)[-1])
        B = self.cfg.B
        boxes = out[..., : 5 * B].unflatten(-1, (B, 5))  # (N, S, S, B, 5)
        # The head regresses sqrt(w), sqrt(h) (paper section 2.2); the output holds w and h.
        boxes = torch.cat([boxes[..., :2], boxes[..., 2:4].square(), boxes[..., 4:]], dim=-1)
        return torch.cat([boxes.flatten(-2), out[..., 5 * B:]], dim=-1)

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        """Images ``(N, 3, H, W)`` zero-padded and their targets (``size``, ``boxes``, ``labels``;
        ``iscrowd`` objects are left out) -> the four terms of the loss, each averaged over images."""
        s, cfg = self.cfg.image_size, self.cfg
        crops = unpad(images, [t.size for t in targets])
        grids = []
        for t in targets:
            boxes = clip(t.boxes.float(), t.size)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # degenerate boxes: no centre
            keep &= ~t.iscrowd.bool()
            boxes = letterbox_boxes(boxes[keep], t.size, (s, s))
            grids.append(encode_yolo_v1(boxes, t.labels[keep], (s, s), cfg.S, cfg.num_classes))
        pred = self(letterbox_batch(crops, s, PAD_VALUE)).float()  # (N, S, S, 5B + C)
        return loss_yolo_v1(pred, torch.stack(grids), cfg.B, cfg.lambda_coord, cfg.lambda_noobj)

    @torch.no_grad()
    def predict(self, images: Tensor | list[Tensor]) -> list[DetectionPrediction]:
        """Images of any sizes (``(N, 3, H, W)`` or a list of ``(3, h, w)`` in [0, 1]) -> detections in
        each input image's pixels."""
        images = image_list(images)
        net = None if self.training else self.inference_net()
        pred = self.raw(letterbox_batch(images, self.cfg.image_size, PAD_VALUE), net).float()
        s = self.cfg.image_size
        dets = postprocess_yolo_v1(pred, (s, s), self.cfg.B, self.cfg.score_thresh, self.cfg.nms_iou,
                                   self.cfg.max_detections)
        for det, im in zip(dets, images):
            size = tuple(im.shape[-2:])
            det.boxes = clip(unletterbox_boxes(det.boxes, size, (s, s)), size)
        return dets

    def inference_net(self) -> nn.Module:
        """The backbone and head as ``predict`` runs them: BatchNorm folded, channels-last
        (``zir.models.inference``; checked against the model when built, rebuilt when a weight changed)."""
        return inference_copy(self, {"backbone": self.backbone, "head": self.head},
                              lambda x, net: (self.raw(x, net),), "yolo_v1", size=self.cfg.image_size)


# --------------------------------------------------------------------------------------------------
# Loss


def loss_yolo_v1(pred: Tensor, target: Tensor, B: int, lambda_coord: float = 5.0,
                 lambda_noobj: float = 0.5) -> dict[str, Tensor]:
    """YOLO v1's sum-squared loss (lecture; Redmon et al. 2015, equation 3), divided by the batch size.

    Args:
        pred: ``(N, S, S, 5B + C)``: per cell ``[x, y, w, h, c] * B`` (``x, y`` in the cell, ``w, h``
            fractions of the image, ``w, h >= 0``) then ``C`` class probabilities.
        target: ``(N, S, S, 5 + C)`` from :func:`zir.ops.coder.encode_yolo_v1`: ``[x, y, w, h, 1_i^obj,
            one-hot class]``.
        B: boxes per cell.

    Returns:
        ``{"coord", "obj", "noobj", "cls"}``, the four terms (weights applied), each a scalar.
    """
    N = pred.shape[0]
    boxes = pred[..., : 5 * B].unflatten(-1, (B, 5))  # (N, S, S, B, 5)
    probs = pred[..., 5 * B:]  # (N, S, S, C)
    gt = target[..., None, :4]  # (N, S, S, 1, 4)
    has_obj = target[..., 4]  # 1_i^obj, (N, S, S)

    # Responsible predictor: the highest IoU with the cell's ground truth. IoUs are computed in units
    # of the image (decode with size (1, 1)); they choose and they are targets, never differentiated.
    with torch.no_grad():
        # decode_yolo_v1 wants the grid in the last dims: (N, S, S, B, 4) -> (N, B, S, S, 4).
        ious = aligned_iou(decode_yolo_v1(boxes[..., :4].movedim(3, 1), (1, 1)),
                           decode_yolo_v1(gt.movedim(3, 1), (1, 1))).movedim(1, 3)  # (N, S, S, B)
        best = ious.argmax(-1)  # ties (e.g. all zero) go to the first predictor
    resp = F.one_hot(best, B).to(pred.dtype) * has_obj[..., None]  # 1_ij^obj, (N, S, S, B)

    sq = lambda a, b: (a - b).square()  # noqa: E731
    eps = 1e-9  # sqrt'(0) is infinite; w = h = 0 happens for a fresh predictor
    xy = sq(boxes[..., 0], gt[..., 0]) + sq(boxes[..., 1], gt[..., 1])
    wh = (sq((boxes[..., 2] + eps).sqrt(), gt[..., 2].sqrt()) + sq((boxes[..., 3] + eps).sqrt(), gt[..., 3].sqrt()))
    conf = boxes[..., 4]
    return {
        "coord": lambda_coord * (resp * (xy + wh)).sum() / N,
        "obj": (resp * sq(ious, conf)).sum() / N,
        "noobj": lambda_noobj * ((1 - resp) * conf.square()).sum() / N,
        "cls": (has_obj[..., None] * sq(target[..., 5:], probs)).sum() / N,
    }


# --------------------------------------------------------------------------------------------------
# Postprocess


def postprocess_yolo_v1(pred: Tensor, image_size: tuple[int, int], B: int, score_thresh: float,
                        nms_iou: float, max_detections: int) -> list[DetectionPrediction]:
    """``(N, S, S, 5B + C)`` -> per image detections in the pixels of the ``image_size`` input.

    Class-specific score = ``Pr(class | object) * confidence`` (paper section 2), both clipped to [0, 1]
    (the linear output layer can step outside); then the threshold, per-class NMS and the top
    ``max_detections``.
    """
    N, S, _, _ = pred.shape
    C = pred.shape[-1] - 5 * B
    boxes = pred[..., : 5 * B].unflatten(-1, (B, 5))  # (N, S, S, B, 5)
    xyxy = decode_yolo_v1(boxes[..., :4].movedim(3, 1), image_size).movedim(1, 3)  # (N, S, S, B, 4)
    scores = boxes[..., 4:5].clamp(0, 1) * pred[..., None, 5 * B:].clamp(0, 1)  # (N, S, S, B, C)
    out = []
    for n in range(N):
        sc = scores[n].reshape(-1)  # (S * S * B * C,)
        keep = (sc > score_thresh).nonzero().squeeze(1)
        box = xyxy[n].reshape(-1, 1, 4).expand(-1, C, 4).reshape(-1, 4)[keep]
        label, sc = keep % C, sc[keep]
        kept = batched_nms(box, sc, label, nms_iou)[:max_detections]
        out.append(DetectionPrediction(boxes=box[kept], scores=sc[kept], labels=label[kept]))
    return out


def build(cfg: YoloV1Config) -> YoloV1:
    return YoloV1(cfg)
