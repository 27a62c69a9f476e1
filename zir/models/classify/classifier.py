"""An image classifier on a pretrained backbone: transfer learning from ImageNet, as in the lecture.

    image (B, 3, S, S) -> normalise -> timm backbone -> global average pool (B, F)
      -> dropout -> linear (B, num_classes) -> softmax

The lecture's three ways to use a network trained on a big dataset for a small one (``transfer``):

* ``scratch``: the same architecture from random weights: the baseline that needs the most data.
* ``features``: the pretrained backbone is a frozen feature extractor; only the new linear head (a
  multinomial logistic regression on the pooled features) is trained. The engine runs the backbone once
  over the data (``views`` > 1: also ``views - 1`` augmented views of each training image) and the head
  is solved to convergence on the cached features (:func:`fit_logistic`, L-BFGS on the convex L2-penalised
  cross-entropy), its L2 strength chosen by k-fold cross-validation on the training set
  (:func:`cross_validate`, like scikit-learn's ``LogisticRegressionCV``): seconds.
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

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zir.data.contract import ClassPrediction, Target
from zir.errors import ConfigError
from zir.models.backbones import create_timm
from zir.models.base import Fitting, ZirModel, lr_groups
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
    views: ``features``: feature rows cached per training image, the plain image and ``views - 1``
        augmented views of it (the ``data.augment`` preset, ``standard`` when that is ``none``).
    folds: ``features``: k of the k-fold cross-validation that picks the head's L2 strength (fewer when
        there are fewer training images; views of one image stay in one fold).
    tta: test-time augmentation of ``predict`` (and so of evaluation on images and of the exported graph):
        1 = none, 2 = the mean of the softmax of the image and of its left-right mirror (photographs are
        upright, so only the flip that keeps them natural). Unset: 2 for ``features`` (measured: README
        "Defaults of the transfer modes"), 1 for the other modes.
    label_smoothing: gradient training (``scratch``, ``finetune``): the target puts ``1 - e`` on the
        label and spreads ``e`` evenly over all classes (Szegedy et al. 2016, "Rethinking the Inception
        architecture", section 7), which keeps the logits of a small training set from growing without
        bound. The cached-features head is a convex solve with its own L2 and ignores it.
    """

    num_classes: int = 2
    image_size: int = 224
    backbone: str = "efficientnet_lite0"
    pretrained: str = "imagenet"
    transfer: str = "finetune"
    backbone_lr: float = 0.1
    freeze_epochs: int = 0
    dropout: float = 0.2
    views: int = 1
    folds: int = 5
    tta: int | None = None
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        """Checked when the config is built, so ``zir train`` stops before reading any data."""
        if self.transfer not in TRANSFER_MODES:
            raise ConfigError(f"transfer must be one of {', '.join(TRANSFER_MODES)}, got {self.transfer!r}")
        if self.views < 1 or self.folds < 2:
            raise ConfigError(f"views must be >= 1 and folds >= 2, got views={self.views}, folds={self.folds}")
        if self.views > 1 and self.transfer != "features":
            raise ConfigError(f"views={self.views} belongs to transfer=features (augmented views of each image "
                              f"cached once); transfer={self.transfer} sees new augmented images every epoch: "
                              "remove views and set augment=standard")
        if self.tta is None:  # the mode's default
            self.tta = 2 if self.transfer == "features" else 1
        if self.tta not in (1, 2):
            raise ConfigError(f"tta must be 1 (none) or 2 (the image and its left-right mirror), got {self.tta}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing is the target mass spread over the classes, in [0, 1), "
                              f"got {self.label_smoothing}")
        if not 0 < self.backbone_lr <= 1:
            raise ConfigError(f"backbone_lr is a fraction of the head's learning rate in (0, 1], got {self.backbone_lr}")


class Classifier(ZirModel):
    task = "classify"

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        cfg.__post_init__()  # the checks, also for a config changed after it was built
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

    @property
    def trains_channels_last(self) -> bool:
        """Fine-tuning trains with NHWC weights unless ``train.channels_last`` says otherwise: oneDNN's NHWC
        kernels fit two epochs of clothing_small into 5 CPU minutes instead of one (validation 0.6862 ->
        0.8035, README "Side by side with a plain timm reference")."""
        return self.cfg.transfer == "finetune"

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
        return lr_groups(parts, weight_decay)

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

    def solve_head(self, features: Tensor, labels: Tensor, groups: Tensor, seed: int = 0) -> dict[str, float]:
        """``transfer=features``: the head set to the L2-penalised logistic regression on cached features,
        its L2 strength chosen by :func:`cross_validate` (``folds`` folds, rows of one image in one fold).

        Args:
            features: ``(N, F)`` pooled backbone features (``views`` rows per training image).
            labels: ``(N,)`` class indices.
            groups: ``(N,)`` the training image each row comes from.

        Returns:
            ``{"l2", "cv_loss", "cv_accuracy", "folds", "iterations", "grad_norm"}`` of the chosen fit.
        """
        X = features.double()
        mean, std = X.mean(0), X.std(0, unbiased=False).clamp_min(1e-6)
        Xs = (X - mean) / std  # standardised: L-BFGS converges in fewer steps, one L2 for every feature
        l2, cv = cross_validate(Xs, labels, groups, self.cfg.num_classes, L2_GRID, self.cfg.folds, seed)
        W, b, info = fit_logistic(Xs, labels, self.cfg.num_classes, l2)
        with torch.no_grad():  # the head on unstandardised features: W x' + b with x' = (x - mean) / std
            self.head.weight.copy_((W / std).to(self.head.weight.dtype))
            self.head.bias.copy_((b - (W / std) @ mean).to(self.head.bias.dtype))
        return {"l2": l2, **cv, **info}

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> logits ``(B, num_classes)``."""
        return self.classify(self.features(images))

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        return {"cls": cross_entropy(self(images), targets, self.cfg.label_smoothing)}

    @torch.no_grad()
    def predict(self, images: Tensor | list[Tensor]) -> list[ClassPrediction]:
        """Images of any size (a batch or a list) -> one :class:`ClassPrediction` each."""
        S = self.cfg.image_size
        batch = images.unsqueeze(0) if isinstance(images, Tensor) and images.ndim == 3 else images
        if isinstance(batch, Tensor):  # antialiased both ways, as the data pipeline's v2.Resize
            batch = resize(batch, (S, S), antialias=True)
        else:
            batch = torch.cat([resize(im.unsqueeze(0), (S, S), antialias=True) for im in batch])
        if self.cfg.tta == 2:  # mean of the two views' probabilities, (B, C)
            return from_probabilities((self(batch).float().softmax(1) + self(batch.flip(-1)).float().softmax(1)) / 2)
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
        """Features ``(B, F)``, or ``(B, 2, F)`` of each image and its mirror (``tta=2``: the mean of the two
        softmaxes, as :meth:`Classifier.predict`)."""
        if features.ndim == 3:
            probs = self.model.classify(features.flatten(0, 1)).float().softmax(1).unflatten(0, features.shape[:2])
            return from_probabilities(probs.mean(1))
        return to_predictions(self.model.classify(features))


# ---- transfer=features: logistic regression solved to convergence --------------------------------
#: L2 strengths (lambda of ``mean CE + lambda / 2 * ||W||^2`` on standardised features) tried by
#: cross-validation: scikit-learn's ``Cs=10`` range, ``C = 1 / (lambda N)``, for N in the hundreds to thousands.
L2_GRID = tuple(10.0 ** e for e in (-5, -4, -3, -2.5, -2, -1.5, -1, -0.5, 0))


def fit_logistic(X: Tensor, y: Tensor, num_classes: int, l2: float, init: tuple[Tensor, Tensor] | None = None,
                 max_iter: int = 1000, tol: float = 1e-6) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Multinomial logistic regression: minimise ``mean_i CE(W x_i + b, y_i) + l2 / 2 * ||W||^2`` (the
    bias is not penalised) with L-BFGS and a strong-Wolfe line search, to a gradient norm under ``tol``.

    Args:
        X: ``(N, F)`` float64 features; y: ``(N,)`` class indices; ``init``: ``(W, b)`` to start from
            (a warm start along the L2 path).

    Returns:
        ``W (C, F)``, ``b (C,)`` and ``{"iterations", "grad_norm"}`` (the objective's gradient at the end).
    """
    W = torch.zeros(num_classes, X.shape[1], dtype=X.dtype) if init is None else init[0].clone()
    b = torch.zeros(num_classes, dtype=X.dtype) if init is None else init[1].clone()
    W.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(X @ W.T + b, y) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(objective)
        objective()
    grad = torch.cat([W.grad.flatten(), b.grad.flatten()])  # type: ignore[union-attr]
    iterations = opt.state[opt._params[0]].get("n_iter", 0)
    return W.detach(), b.detach(), {"iterations": float(iterations), "grad_norm": float(grad.abs().max())}


def stratified_folds(labels: Tensor, groups: Tensor, k: int, seed: int = 0) -> tuple[Tensor, int]:
    """A fold index per row: images (``groups``) shuffled within each class and dealt to the folds in turn,
    so every fold has each class's share and all rows of an image are in one fold.

    Returns:
        ``(fold (N,) int64, k)``, ``k`` lowered to the number of images when there are fewer.
    """
    images, first = torch.unique(groups, return_inverse=True)
    image_label = torch.zeros(len(images), dtype=torch.int64)
    image_label[first] = labels.long()
    k = min(k, len(images))
    g = torch.Generator().manual_seed(seed)
    image_fold = torch.zeros(len(images), dtype=torch.int64)
    offset = 0
    for c in torch.unique(image_label).tolist():
        members = torch.nonzero(image_label == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        image_fold[members] = (torch.arange(len(members)) + offset) % k
        offset += len(members)  # the next class starts where this one ended: folds stay even in size
    return image_fold[first], k


def cross_validate(X: Tensor, y: Tensor, groups: Tensor, num_classes: int, grid: tuple[float, ...] = L2_GRID,
                   folds: int = 5, seed: int = 0) -> tuple[float, dict[str, float]]:
    """The L2 strength from ``grid`` with the lowest held-out cross-entropy over ``folds`` folds (ties: the
    stronger penalty); each fold's fits go from the strongest penalty to the weakest, warm-started.

    Fewer than two training images: no cross-validation, the middle of the grid, with a warning; a class
    with fewer images than folds is in some training folds only, with a warning.

    Returns:
        ``(l2, {"cv_loss", "cv_accuracy", "folds"})``.
    """
    fold, k = stratified_folds(y, groups, folds, seed)
    per_image = {int(c): len(torch.unique(groups[y == c])) for c in torch.unique(y).tolist()}
    if k < 2:
        warnings.warn(f"only {len(torch.unique(groups))} training image: the head's L2 strength is not "
                      f"cross-validated (l2={grid[len(grid) // 2]:g})", stacklevel=2)
        return grid[len(grid) // 2], {"cv_loss": math.nan, "cv_accuracy": math.nan, "folds": 0.0}
    few = {c: n for c, n in per_image.items() if n < k}
    if few:
        warnings.warn(f"classes {sorted(few)} have fewer training images ({', '.join(map(str, few.values()))}) "
                      f"than the {k} cross-validation folds: some folds train without them; add images of "
                      "those classes for a reliable choice of the L2 strength", stacklevel=2)
    order = sorted(grid, reverse=True)  # strongest first: each fit starts from the smoother solution
    loss_sum = torch.zeros(len(order), dtype=torch.float64)
    correct = torch.zeros(len(order), dtype=torch.float64)
    for f in range(k):
        train, held = fold != f, fold == f
        if not held.any():
            continue
        init = None
        for j, l2 in enumerate(order):
            W, b, _ = fit_logistic(X[train], y[train], num_classes, l2, init=init)
            init = (W, b)
            logits = X[held] @ W.T + b
            loss_sum[j] += F.cross_entropy(logits, y[held], reduction="sum")
            correct[j] += (logits.argmax(1) == y[held]).sum()
    mean_loss = loss_sum / len(y)
    best = int(torch.argmin(mean_loss))  # argmin returns the first: the strongest of tied penalties
    return order[best], {"cv_loss": float(mean_loss[best]), "cv_accuracy": float(correct[best] / len(y)),
                         "folds": float(k)}


# ---- loss and postprocess (shared with the head trained on cached features) ---------------------
def cross_entropy(logits: Tensor, targets: list[Target], label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy of logits ``(B, C)`` against ``targets[i].label`` (smoothed by
    ``label_smoothing``); float32 under autocast."""
    labels = torch.as_tensor([t.label for t in targets], device=logits.device)
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def to_predictions(logits: Tensor) -> list[ClassPrediction]:
    """Logits ``(B, C)`` -> one prediction each (softmax scores)."""
    return from_probabilities(logits.float().softmax(dim=1))


def from_probabilities(probs: Tensor) -> list[ClassPrediction]:
    """Class probabilities ``(B, C)`` (e.g. a mean over test-time views) -> one prediction each."""
    return [ClassPrediction(scores=p, label=int(p.argmax())) for p in probs]


def fitting(cfg: ClassifierConfig) -> Fitting:
    """How the engine fits this classifier: ``transfer=features`` trains the head on cached backbone
    features (the backbone is frozen, so its features are computed once); the other modes by gradient
    steps on images."""
    return "features" if cfg.transfer == "features" else "gradient"


def build(cfg: ClassifierConfig) -> Classifier:
    return Classifier(cfg)
