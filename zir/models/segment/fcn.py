"""FCN: fully convolutional network for semantic segmentation (Long, Shelhamer and Darrell, CVPR 2015).

As the lecture puts it ("Повністю згорткові мережі"): a pretrained convolutional network reduces the
resolution and extracts features, a 1 x 1 convolution turns channels into class scores, and transposed
convolutions bring the scores back to the input's size. The skip variants (paper section 4.2, Fig. 3)
fuse the coarse scores with scores from earlier, finer stages:

    image (B, 3, H, W), padded to a multiple of 32
      -> backbone (EfficientNet-Lite0 by default): features at strides 8, 16, 32
      -> score_s = 1x1 conv (features_s -> num_classes) for each stride s used
    32s: up x32 (score_32)
    16s: up x16 (up x2 (score_32) + score_16)
     8s: up  x8 (up x2 (up x2 (score_32) + score_16) + score_8)
      -> crop to (H, W): logits (B, num_classes, H, W)

Every "up" is a learned ``ConvTranspose2d`` (filter 2s, stride s, padding s/2, so ``O = I s`` by
``O = (I - 1) S + F - 2P``) initialised to bilinear interpolation (paper section 3.3); the scores of
the finer stages start at zero, so training starts from the coarser net's output (paper section 4.2).
The loss is per-pixel softmax cross-entropy, ignoring 255 and the batch padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn

from zir.data.contract import SemanticPrediction, Target
from zir.errors import ConfigError
from zir.models.backbones import build_backbone
from zir.models.base import ZirModel
from zir.models.detect.transform import resize, scores_to_input, working_size
from zir.models.segment.losses import cross_entropy, semantic_targets
from zir.ops.transposed import bilinear_upsampler
from zir.ops.tta import check_views, dihedral_mean

VARIANTS = {"32s": (32,), "16s": (32, 16), "8s": (32, 16, 8)}  # strides whose scores are fused


@dataclass
class FCNConfig:
    """Attributes:
    num_classes: classes per pixel (background included).
    image_size: longer side the data pipeline resizes to; ``predict`` resizes other images to it and
        maps the result back to the image's own pixels.
    variant: ``32s``, ``16s`` or ``8s``: the finest stride fused (paper section 4.2).
    backbone: a timm model name for :func:`zir.models.backbones.build_backbone`; it must give features
        at strides 8, 16 and 32.
    pretrained: backbone weights: ``imagenet`` (offline EfficientNet-Lite), ``timm`` or ``none``.
    freeze_bn: replace the backbone's BatchNorm by frozen statistics (small segmentation batches).
    tta: views averaged by ``predict`` (:func:`zir.ops.tta.dihedral_mean`): 1 (none), 2 (left-right mirror
        image), 4 (quarter turns) or 8 (both; 4 and 8 for images without a preferred orientation).
    """

    num_classes: int = 21
    image_size: int = 512
    variant: str = "8s"
    backbone: str = "efficientnet_lite0"
    pretrained: str = "imagenet"
    freeze_bn: bool = True
    tta: int = 1


class FCN(ZirModel):
    task = "segment"

    def __init__(self, cfg: FCNConfig) -> None:
        super().__init__()
        if cfg.variant not in VARIANTS:
            raise ConfigError(f"fcn variant must be one of {', '.join(VARIANTS)}, got {cfg.variant!r}")
        check_views(cfg.tta, "fcn")
        self.cfg = cfg
        self.strides = VARIANTS[cfg.variant]  # coarsest first
        C = cfg.num_classes
        # timm feature indices count from stride 2: index i has stride 2^(i+1)
        out_indices = tuple(s.bit_length() - 2 for s in sorted(self.strides))
        self.backbone = build_backbone(cfg.backbone, cfg.pretrained, out_indices)
        if self.backbone.strides != sorted(self.strides):
            raise ConfigError(f"backbone {cfg.backbone} gives strides {self.backbone.strides}, "
                              f"fcn-{cfg.variant} needs {sorted(self.strides)}")
        if cfg.freeze_bn:
            # timm's freeze keeps the activation fused into EfficientNet's BatchNormAct2d (ReLU6);
            # a plain FrozenBatchNorm2d would drop it, and the features then blow up.
            freeze_batch_norm_2d(self.backbone)
        channels = dict(zip(self.backbone.strides, self.backbone.channels))
        # the classifier as 1x1 convolutions, one per fused stride (score_fr, score_pool4, score_pool3)
        self.score = nn.ModuleDict({str(s): nn.Conv2d(channels[s], C, 1) for s in self.strides})
        for s in self.strides[1:]:
            nn.init.zeros_(self.score[str(s)].weight)
            nn.init.zeros_(self.score[str(s)].bias)
        # x2 upsamplers between fused strides, then the final upsampling to the input size
        self.up2 = nn.ModuleList([bilinear_upsampler(C, 2) for _ in self.strides[1:]])
        self.up_final = bilinear_upsampler(C, self.strides[-1])

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1], any size -> logits ``(B, num_classes, H, W)``."""
        H, W = images.shape[-2:]
        x = self.normalize(images)
        x = F.pad(x, (0, -W % 32, 0, -H % 32))  # zeros = the mean colour after normalisation
        feats = dict(zip(sorted(self.strides), self.backbone(x)))  # stride -> (B, C_s, H/s, W/s)
        score = self.score[str(self.strides[0])](feats[self.strides[0]])  # (B, K, H/32, W/32)
        for up, s in zip(self.up2, self.strides[1:]):
            score = up(score) + self.score[str(s)](feats[s])  # (B, K, H/s, W/s)
        return self.up_final(score)[:, :, :H, :W]

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        logits = self(images)
        target = semantic_targets(targets, tuple(images.shape[-2:]), images.device)
        return {"ce": cross_entropy(logits, target)}

    @torch.no_grad()
    def predict(self, images: Tensor | list[Tensor]) -> list[SemanticPrediction]:
        """Per image: resize so the longer side is ``image_size``, segment, resize the class scores
        back (bilinear) to the image's own size, take the arg-max."""
        out = []
        for image in images:
            h, w = image.shape[-2:]
            x = resize(image.unsqueeze(0), working_size((h, w), self.cfg.image_size))
            probs = dihedral_mean(lambda v: self(v).float().softmax(1), x, self.cfg.tta)
            probs = scores_to_input(probs, (h, w))[0]  # (K, h, w)
            out.append(SemanticPrediction(semantic=probs.argmax(0), scores=probs))
        return out


def build(cfg: FCNConfig) -> FCN:
    return FCN(cfg)
