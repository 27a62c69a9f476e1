"""A small ConvNet classifier, as in the lecture: conv-BN-ReLU-pool blocks, a linear head, softmax.

The lecture (Lecture 7, "Classification"): the output activation is softmax,
``y_hat_i = exp(z_i) / sum_j exp(z_j)``, and the loss is cross-entropy, ``L = -sum_i y_i log y_hat_i``.
``loss`` computes exactly that from the logits (``F.cross_entropy`` fuses log-softmax and NLL for
numerical stability); ``predict`` returns the softmax probabilities.

    image (B, 3, S, S)
      -> depth x [conv 3x3 -> norm -> ReLU -> max-pool 2x2]    channels: width, 2 width, 4 width, ...
      -> global average pool (B, C) -> dropout -> linear (B, num_classes) -> softmax
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zir.data.contract import ClassPrediction, Target
from zir.models.base import ZirModel, stack_images
from zir.models.detect.transform import resize


@dataclass
class ConvNetConfig:
    """Attributes:
    num_classes: outputs of the softmax.
    image_size: input side in pixels; ``predict`` resizes other sizes to it.
    width: channels of the first block; each further block doubles them (capped at 8 x width).
    depth: number of conv blocks (each halves the resolution).
    norm: ``batch`` (BatchNorm, the lecture's conv-BN-ReLU) or ``group`` (GroupNorm: no dependence on
        the batch, so multi-process training on CPUs, which cannot sync BatchNorm, matches one process).
    dropout: before the linear head.
    """

    num_classes: int = 4
    image_size: int = 64
    width: int = 32
    depth: int = 4
    norm: str = "batch"
    dropout: float = 0.1


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


class ConvBlock(nn.Sequential):
    """conv 3x3 -> norm -> ReLU -> max-pool 2x2: ``(B, C_in, H, W) -> (B, C_out, H/2, W/2)``."""

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), _norm(norm, c_out),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class ConvNet(ZirModel):
    task = "classify"

    def __init__(self, cfg: ConvNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        chans = [3] + [min(cfg.width * 2**i, cfg.width * 8) for i in range(cfg.depth)]
        self.features = nn.Sequential(*[ConvBlock(a, b, cfg.norm) for a, b in zip(chans, chans[1:])])
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(chans[-1], cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> logits ``(B, num_classes)``."""
        x = self.features(self.normalize(images))  # (B, C, H/2^d, W/2^d)
        x = x.mean(dim=(2, 3))  # (B, C)
        return self.head(self.dropout(x))

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        labels = torch.as_tensor([t.label for t in targets], device=images.device)
        return {"cls": F.cross_entropy(self(images).float(), labels)}

    @torch.no_grad()
    def predict(self, images: Tensor | list[Tensor]) -> list[ClassPrediction]:
        S = self.cfg.image_size
        if isinstance(images, list):
            images = [resize(im, (S, S), antialias=True) for im in images]
        x = resize(stack_images(images), (S, S), antialias=True)  # as the data pipeline's v2.Resize
        probs = self(x).float().softmax(dim=1)  # (B, C)
        return [ClassPrediction(scores=p, label=int(p.argmax())) for p in probs]


def build(cfg: ConvNetConfig) -> ConvNet:
    return ConvNet(cfg)
