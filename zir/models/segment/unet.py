"""U-Net (Ronneberger, Fischer and Brox, MICCAI 2015): an encoder-decoder with concatenated skips.

The lecture ("UNet"): skip connections join the encoder and decoder layers of the same resolution, so
the decoder uses both the encoder's high-resolution features and the deep layers' low-resolution ones.

    image (B, 3, H, W), padded to a multiple of 2^depth
    encoder, level k = 0..depth at stride 2^k:
        scratch:  [max-pool 2x2 ->] double conv 3x3 (width 2^k channels)        (paper Fig. 1)
        efficientnet_lite0: a double conv at stride 1, then the pretrained network's stages at 2..2^depth
    decoder, level k = depth-1..0:
        up-convolution 2x2 (stride 2) -> concatenate the encoder's level-k features -> double conv 3x3
    head: 1x1 conv -> 1 logit (two classes: sigmoid + BCE) or C logits (softmax + cross-entropy)

Differences from the paper, and why: 3x3 convolutions are padded ("same") and followed by BatchNorm,
so every input size works (the output is cropped back to it) and training from scratch converges
quickly; the paper's unpadded convolutions shrink a 572 tile to 388. Its tools for small data are here:

* the loss (section 3): ``loss="border"`` weights every pixel by eq. 2,
  ``w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / (2 sigma^2))`` (:func:`zir.models.segment.losses.border_weight_map`);
  ``+dice`` adds the soft Dice loss;
* elastic deformation (section 3.1): ``zir.augment.ElasticDeform``, in the ``standard`` and ``heavy``
  augmentation presets of the segment task (``data.augment=standard``);
* overlap-tile prediction (section 2, Fig. 2): :meth:`UNet.predict_tiles` cuts a large image into tiles
  whose borders carry ``context`` pixels of mirrored or neighbouring image, so that every output pixel
  sees all of its receptive field, and stitches the tiles' centres.
"""

from __future__ import annotations

import math
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
from zir.models.segment.losses import (
    binary_cross_entropy,
    border_weight_map,
    cross_entropy,
    semantic_targets,
    soft_dice,
)
from zir.ops.tta import check_views, dihedral_mean

LOSSES = ("ce", "ce+dice", "border", "border+dice")


@dataclass
class UNetConfig:
    """Attributes:
    num_classes: classes per pixel; 2 means one foreground logit (sigmoid, BCE), more means softmax.
    image_size: longer side the data pipeline resizes to.
    encoder: ``scratch`` (the paper's double 3x3 conv blocks) or ``efficientnet_lite0`` (pretrained).
    pretrained: weights of a pretrained encoder: ``imagenet`` (offline), ``timm`` or ``none``.
    depth: number of 2x downsamplings (the paper: 4; at most 5 with efficientnet_lite0).
    width: channels at full resolution, doubled at every level (the paper: 64).
    loss: ``ce`` (cross-entropy / BCE), ``ce+dice``, ``border`` (BCE / CE weighted by eq. 2) or
        ``border+dice``.
    border_w0, border_sigma: ``w0`` and ``sigma`` (pixels) of eq. 2; the paper's 10 and 5.
    tile: how ``predict`` sees an image. 0: resized so its longer side is ``image_size`` (as the data
        pipeline trained it) and predicted whole. N > 0: kept at its own pixels (for models trained at
        the data's native resolution, like microscopy) and, when larger than N, predicted in N x N
        overlapping tiles (overlap-tile).
    tta: views averaged by ``predict`` (:func:`zir.ops.tta.dihedral_mean`), each a forward pass: 1 (none),
        2 (the image and its left-right mirror image), 4 (quarter turns) or 8 (turns and mirror images; the
        paper averages rotated versions for ISBI). 4 and 8 are for images without a preferred orientation.
    """

    num_classes: int = 2
    image_size: int = 256
    encoder: str = "scratch"
    pretrained: str = "imagenet"
    depth: int = 4
    width: int = 32
    loss: str = "ce+dice"
    border_w0: float = 10.0
    border_sigma: float = 5.0
    tile: int = 0
    tta: int = 1


# --------------------------------------------------------------------------------------------------
# Blocks


class DoubleConv(nn.Sequential):
    """(conv 3x3 -> BN -> ReLU) x 2: ``(B, C_in, H, W) -> (B, C_out, H, W)`` (paper Fig. 1, blue arrows)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )


class ScratchEncoder(nn.Module):
    """The paper's contracting path: level k is ``(B, width 2^k, H / 2^k, W / 2^k)``, k = 0..depth."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.channels = [width * 2**k for k in range(depth + 1)]
        self.levels = nn.ModuleList([DoubleConv(3, width)])
        self.levels.extend(DoubleConv(a, b) for a, b in zip(self.channels, self.channels[1:]))

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = [self.levels[0](x)]
        for level in self.levels[1:]:
            feats.append(level(F.max_pool2d(feats[-1], 2)))
        return feats


class BackboneEncoder(nn.Module):
    """A pretrained backbone's stages at strides 2..2^depth, plus a double conv at stride 1 (the
    backbones start at stride 2, and U-Net concatenates a skip at every resolution)."""

    def __init__(self, name: str, pretrained: str, width: int, depth: int) -> None:
        super().__init__()
        self.full_res = DoubleConv(3, width)
        self.backbone = build_backbone(name, pretrained, tuple(range(depth)))
        if pretrained != "none":  # keep the pretrained statistics (small batches); see fcn.py on timm's freeze
            freeze_batch_norm_2d(self.backbone)
        if self.backbone.strides != [2**k for k in range(1, depth + 1)]:
            raise ConfigError(f"encoder {name} gives strides {self.backbone.strides}; unet with depth={depth} "
                              f"needs {[2**k for k in range(1, depth + 1)]}")
        self.channels = [width, *self.backbone.channels]

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.full_res(x), *self.backbone(x)]


class Up(nn.Module):
    """Up-convolution 2x2 (stride 2), concatenation with the skip, double conv (paper Fig. 1, green and
    grey arrows): ``(B, C_in, H, W), (B, C_skip, 2H, 2W) -> (B, C_out, 2H, 2W)``."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)  # O = (I - 1) 2 + 2 - 0 = 2I
        self.conv = DoubleConv(c_out + c_skip, c_out)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


# --------------------------------------------------------------------------------------------------
# Model


class UNet(ZirModel):
    task = "segment"

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        if cfg.loss not in LOSSES:
            raise ConfigError(f"unet loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
        if cfg.num_classes < 2:
            raise ConfigError(f"unet needs at least 2 classes (background and one more), got {cfg.num_classes}")
        if not 1 <= cfg.depth <= (8 if cfg.encoder == "scratch" else 5):
            raise ConfigError(f"unet depth must be 1..{8 if cfg.encoder == 'scratch' else 5}, got {cfg.depth}")
        self.cfg = cfg
        self.stride = 2**cfg.depth
        if cfg.encoder == "scratch":
            self.encoder: nn.Module = ScratchEncoder(cfg.width, cfg.depth)
            self.context = _scratch_context(cfg.depth)
        else:
            self.encoder = BackboneEncoder(cfg.encoder, cfg.pretrained, cfg.width, cfg.depth)
            # EfficientNet's theoretical receptive field spans hundreds of pixels, but its effective one
            # is far smaller: 3 cells of the coarsest grid kept 64 px tiles within 1e-5 of a whole-image
            # pass (ImageNet encoder, 200 x 260 image).
            self.context = 3 * self.stride
        chans = self.encoder.channels  # finest first
        dec = [cfg.width * 2**k for k in range(cfg.depth)]
        self.ups = nn.ModuleList(Up(dec[k + 1] if k + 1 < cfg.depth else chans[-1], chans[k], dec[k])
                                 for k in reversed(range(cfg.depth)))
        self.binary = cfg.num_classes == 2
        self.head = nn.Conv2d(cfg.width, 1 if self.binary else cfg.num_classes, 1)
        check_views(cfg.tta, "unet")
        if cfg.tile and cfg.tile <= 2 * self.context:
            raise ConfigError(f"unet tile={cfg.tile} leaves nothing after {self.context} px of context on each "
                              f"side; use tile > {2 * self.context} (or tile=0)")

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1], any size -> logits ``(B, 1 or C, H, W)``."""
        H, W = images.shape[-2:]
        x = self.normalize(images)
        x = F.pad(x, (0, -W % self.stride, 0, -H % self.stride))
        # channels-last activations: oneDNN's CPU convolutions are faster so (the ISBI benchmark's step probe,
        # width 16, 4 x 256 px, 1 thread: 0.81 s instead of 1.03 s); every layer follows the input's format
        x = x.contiguous(memory_format=torch.channels_last)
        feats = self.encoder(x)  # level k: (B, C_k, H / 2^k, W / 2^k)
        y = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            y = up(y, skip)
        return self.head(y)[:, :, :H, :W]

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        logits = self(images)
        target = semantic_targets(targets, tuple(images.shape[-2:]), images.device)  # (B, H, W), 255 = ignore
        weight = None
        if self.cfg.loss.startswith("border"):
            weight = torch.stack([border_weight_map(t, self.cfg.border_w0, self.cfg.border_sigma) for t in target])
        if self.binary:
            out = {"bce": binary_cross_entropy(logits, target, weight)}
        else:
            out = {"ce": cross_entropy(logits, target, weight)}
        if self.cfg.loss.endswith("dice"):
            out["dice"] = soft_dice(self._probs(logits), target)
        return out

    def _probs(self, logits: Tensor) -> Tensor:
        """``(B, 1 or C, H, W)`` logits -> ``(B, C, H, W)`` class probabilities."""
        if self.binary:
            p = logits.float().sigmoid()
            return torch.cat([1 - p, p], dim=1)
        return logits.float().softmax(1)

    # ----------------------------------------------------------------------------------------------
    # Postprocess

    @torch.no_grad()
    def predict(self, images: Tensor | list[Tensor]) -> list[SemanticPrediction]:
        """Class map and probabilities of each image, at the image's own size (see ``tile``)."""
        out = []
        for image in images:
            h, w = image.shape[-2:]
            x = image.unsqueeze(0)
            if not self.cfg.tile:
                x = resize(x, working_size((h, w), self.cfg.image_size))
            probs = dihedral_mean(lambda v: self._probs(self.predict_tiles(v, self.cfg.tile)), x, self.cfg.tta)
            probs = scores_to_input(probs, (h, w))[0]  # (C, h, w)
            out.append(SemanticPrediction(semantic=probs.argmax(0), scores=probs))
        return out

    @torch.no_grad()
    def predict_tiles(self, image: Tensor, tile: int = 0) -> Tensor:
        """Overlap-tile prediction (paper section 2, Fig. 2): logits ``(1, 1 or C, H, W)`` of ``image``
        ``(1, 3, H, W)``.

        The image is extended by ``self.context`` pixels of mirror image on every side; each tile is a
        ``tile`` x ``tile`` window of it, of which the central ``tile - 2 context`` square is kept. Tiles
        start on multiples of ``2^depth``, so every tile pools on the same grid as a whole-image pass.
        ``tile=0`` makes one tile of the whole image (with the same mirrored border).
        """
        H, W = image.shape[-2:]
        m, s = self.context, self.stride
        core_h, core_w = math.ceil(H / s) * s, math.ceil(W / s) * s  # the whole image in one tile
        if tile:
            core = (tile - 2 * m) // s * s
            if core < s:
                raise ConfigError(f"tile={tile} is too small for {m} px of context; use tile > {2 * m + s}")
            core_h, core_w = min(core, core_h), min(core, core_w)
        ny, nx = math.ceil(H / core_h), math.ceil(W / core_w)
        padded = mirror_pad(image, m, m + ny * core_h - H, m, m + nx * core_w - W)
        out = None
        for i in range(ny):
            for j in range(nx):
                y0, x0 = i * core_h, j * core_w
                window = padded[..., y0: y0 + core_h + 2 * m, x0: x0 + core_w + 2 * m]
                logits = self(window).float()[..., m: m + core_h, m: m + core_w]
                if out is None:
                    out = logits.new_empty(1, logits.shape[1], ny * core_h, nx * core_w)
                out[..., y0: y0 + core_h, x0: x0 + core_w] = logits
        return out[..., :H, :W]  # type: ignore[index]


def mirror_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Extend ``(B, C, H, W)`` by mirroring at the borders (the paper's "missing context is
    extrapolated by mirroring"), any amount: reflections repeat for pads longer than the image."""
    while top or bottom or left or right:
        H, W = x.shape[-2:]
        if H < 2 or W < 2:
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        t, b, l, r = min(top, H - 1), min(bottom, H - 1), min(left, W - 1), min(right, W - 1)
        x = F.pad(x, (l, r, t, b), mode="reflect")
        top, bottom, left, right = top - t, bottom - b, left - l, right - r
    return x


def _scratch_context(depth: int) -> int:
    """Pixels of input each side of an output pixel that can reach it (the receptive field's radius)
    in the scratch U-Net, rounded up to a multiple of ``2^depth``: two 3x3 convs per encoder level
    (``2 * 2^k`` px at level k), a 2x2 pool per level (``2^k``), two 3x3 convs per decoder level."""
    radius = sum(2 * 2**k for k in range(depth + 1)) + sum(2**k for k in range(depth)) \
        + sum(2 * 2**k for k in range(depth))
    s = 2**depth
    return math.ceil(radius / s) * s


def build(cfg: UNetConfig) -> UNet:
    return UNet(cfg)
