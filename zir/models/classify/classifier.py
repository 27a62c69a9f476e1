"""An image classifier on a pretrained backbone: transfer learning from ImageNet, as in the lecture.

    image (B, 3, S, S) -> normalise -> timm backbone -> global average pool (B, F)
      -> dropout -> linear (B, num_classes) -> softmax

The lecture's three ways to use a network trained on a big dataset for a small one (``transfer``):

* ``scratch``: the same architecture from random weights: the baseline that needs the most data.
* ``features``: the pretrained backbone is a frozen feature extractor; only the new linear head (a
  multinomial logistic regression on the pooled features) is trained. The engine runs the backbone once
  over the data and trains the head on the cached features (:mod:`zir.engine.features`): seconds.
* ``finetune``: every layer trains; the backbone with a lower learning rate (``backbone_lr`` x the
  head's) so the pretrained features are adjusted rather than overwritten by the random head's first,
  large gradients. Optionally the backbone stays frozen for the first ``freeze_epochs`` epochs, so the
  head is sensible before the backbone starts to move.

Loss (Lecture 7): softmax ``y_hat_i = exp(z_i) / sum_j exp(z_j)`` with cross-entropy
``L = -sum_i y_i log y_hat_i``, computed from the logits by ``F.cross_entropy`` (fused log-softmax).

The default backbone, ``efficientnet_lite0``, loads real ImageNet weights offline
(:func:`zir.models.backbones.create_timm`); any timm model name works with ``pretrained=none`` or
``pretrained=timm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zir.data.contract import ClassPrediction, Target
from zir.errors import ConfigError
from zir.models.backbones import create_timm
from zir.models.base import Fitting, ZirModel
from zir.models.detect.transform import resize

TRANSFER_MODES = ("scratch", "features", "finetune")


@dataclass
class ClassifierConfig:
    """Attributes:
    num_classes: outputs of the softmax.
    image_size: input side in pixels; ``predict`` resizes other sizes to it.
    backbone: a timm model name (``timm.list_models()``).
    pretrained: backbone weights: ``imagenet`` (shipped with zir, no network: efficientnet_lite0, and
        lite1/lite2 when their weight packages are installed), ``timm`` (timm's hub, needs a network)
        or ``none``. Ignored by ``transfer=scratch``.
    transfer: ``scratch`` (random init), ``features`` (frozen backbone, head only) or ``finetune``.
    backbone_lr: ``finetune``: the backbone's learning rate as a fraction of the head's.
    freeze_epochs: ``finetune``: epochs at the start with the backbone frozen (head only). Not with
        multi-process training (DDP needs the same trainable parameters in every step).
    dropout: before the linear head.
    """

    num_classes: int = 2
    image_size: int = 224
    backbone: str = "efficientnet_lite0"
    pretrained: str = "imagenet"
    transfer: str = "finetune"
    backbone_lr: float = 0.1
    freeze_epochs: int = 0
    dropout: float = 0.2


class Classifier(ZirModel):
    task = "classify"

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        if cfg.transfer not in TRANSFER_MODES:
            raise ConfigError(f"transfer must be one of {', '.join(TRANSFER_MODES)}, got {cfg.transfer!r}")
        if not 0 < cfg.backbone_lr <= 1:
            raise ConfigError(f"backbone_lr is a fraction of the head's learning rate in (0, 1], got {cfg.backbone_lr}")
        self.cfg = cfg
        # num_classes=0: timm's network ends at the global pool and returns (B, F) features.
        self.backbone = create_timm(cfg.backbone, "none" if cfg.transfer == "scratch" else cfg.pretrained,
                                    num_classes=0)
        # The input statistics the backbone's weights expect (ImageNet's for efficientnet_lite*).
        data_cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        self.set_normalization(data_cfg.get("mean", self.mean.flatten().tolist()),
                               data_cfg.get("std", self.std.flatten().tolist()))
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(self.backbone.num_features, cfg.num_classes)
        self.backbone_frozen = False
        self.set_epoch(0)

    # ---- transfer modes -------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Freeze or unfreeze the backbone for ``epoch`` (0-based); derived from the epoch alone, so a
        resumed run is in the same state as one that was never interrupted."""
        frozen = self.cfg.transfer == "features" or (self.cfg.transfer == "finetune" and epoch < self.cfg.freeze_epochs)
        self.backbone_frozen = frozen
        self.backbone.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> Classifier:
        """A frozen backbone stays in eval mode: BatchNorm keeps its pretrained statistics, no dropout."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Head groups first (the trainer logs group 0's lr), then the backbone's at ``lr * backbone_lr``
        (finetune) or ``lr`` (scratch); ``features`` has no backbone groups. No decay on 1-D parameters.

        Frozen-for-now backbone parameters (``freeze_epochs``) are included: they get no gradient, so
        the optimizer leaves them alone until they are unfrozen.
        """
        parts = [(list(self.head.parameters()), lr)]
        if self.cfg.transfer != "features":
            parts.append((list(self.backbone.parameters()), lr * self.cfg.backbone_lr
                          if self.cfg.transfer == "finetune" else lr))
        groups = []
        for params, group_lr in parts:
            groups.append({"params": [p for p in params if p.ndim > 1], "lr": group_lr, "weight_decay": weight_decay})
            groups.append({"params": [p for p in params if p.ndim <= 1], "lr": group_lr, "weight_decay": 0.0})
        return [g for g in groups if g["params"]]

    # ---- model ----------------------------------------------------------------------------------
    def features(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> pooled backbone features ``(B, F)``."""
        return self.backbone(self.normalize(images))

    def classify(self, features: Tensor) -> Tensor:
        """Pooled features ``(B, F)`` -> logits ``(B, num_classes)``: the (logistic-regression) head."""
        return self.head(self.dropout(features))

    def head_on_features(self) -> HeadOnFeatures:
        """``transfer=features``: the head as a model on cached features (see :func:`fitting`)."""
        return HeadOnFeatures(self)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> logits ``(B, num_classes)``."""
        return self.classify(self.features(images))

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        return {"cls": cross_entropy(self(images), targets)}

    @torch.no_grad()
    def predict(self, images: Tensor | list[Tensor]) -> list[ClassPrediction]:
        """Images of any size (a batch or a list) -> one :class:`ClassPrediction` each."""
        S = self.cfg.image_size
        batch = images.unsqueeze(0) if isinstance(images, Tensor) and images.ndim == 3 else images
        if isinstance(batch, Tensor):  # antialiased both ways, as the data pipeline's v2.Resize
            batch = resize(batch, (S, S), antialias=True)
        else:
            batch = torch.cat([resize(im.unsqueeze(0), (S, S), antialias=True) for im in batch])
        return to_predictions(self(batch))


class HeadOnFeatures(ZirModel):
    """What the engine trains with ``transfer=features``: ``model``'s head, fed cached features ``(B, F)``
    instead of images; the backbone is not called. It holds ``model``, so the head's parameters are
    shared: training this trains the classifier.
    """

    task = "classify"

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def loss(self, features: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        return {"cls": cross_entropy(self.model.classify(features), targets)}

    @torch.no_grad()
    def predict(self, features: Tensor) -> list[ClassPrediction]:  # type: ignore[override]
        return to_predictions(self.model.classify(features))


# ---- loss and postprocess (shared with the head trained on cached features) ---------------------
def cross_entropy(logits: Tensor, targets: list[Target]) -> Tensor:
    """Softmax cross-entropy of logits ``(B, C)`` against ``targets[i].label``; float32 under autocast."""
    labels = torch.as_tensor([t.label for t in targets], device=logits.device)
    return F.cross_entropy(logits.float(), labels)


def to_predictions(logits: Tensor) -> list[ClassPrediction]:
    probs = logits.float().softmax(dim=1)  # (B, C)
    return [ClassPrediction(scores=p, label=int(p.argmax())) for p in probs]


def fitting(cfg: ClassifierConfig) -> Fitting:
    """How the engine fits this classifier: ``transfer=features`` trains the head on cached backbone
    features (the backbone is frozen, so its features are computed once); the other modes by gradient
    steps on images."""
    return "features" if cfg.transfer == "features" else "gradient"


def build(cfg: ClassifierConfig) -> Classifier:
    return Classifier(cfg)
