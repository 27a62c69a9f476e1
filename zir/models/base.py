"""What every zir model is: an ``nn.Module`` with the same two methods and fixed return types.

* ``loss(images, targets) -> dict[str, Tensor]``: the terms of the training loss (the engine sums them);
  ``images`` is a padded batch and ``targets`` one :class:`~zir.data.contract.Target` per image.
* ``predict(images) -> list[Prediction]``: one prediction per image, in the input image's pixels.

Neither depends on train/eval mode for its return type. Images are float32 in ``[0, 1]``, RGB,
``(B, 3, H, W)`` or a list of ``(3, H, W)`` of different sizes; the model normalises them itself
(so exported models and ``zir.load(...).predict`` need no outside preprocessing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from zir.data.contract import Prediction, Target
from zir.models.detect.transform import normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: How the engine fits a model; the registry entry (``ModelSpec.fitting``) says which, from the model's
#: config, so the engine decides once and never asks the model:
#:   ``gradient``     ``loss`` -> backward -> optimizer step, batch after batch (most models);
#:   ``features``     a frozen part runs once over the data, its features are cached and only a head is
#:                    solved on them, in one epoch (:class:`TrainsOnFeatures`, e.g. transfer=features);
#:   ``closed_form``  features of the training data are cached once and the model is solved from them
#:                    without gradient steps (:class:`FitsInClosedForm`, R-CNN's SVMs and ridge regressors).
Fitting = Literal["gradient", "features", "closed_form"]


class ZirModel(nn.Module):
    """Base class: the shared interface, input normalisation and optimizer parameter groups."""

    #: ``classify``, ``detect``, ``instance``, ``segment`` or ``panoptic``; a composed model that serves several
    #: tasks (``zir.models.detect.faster_rcnn.FasterRCNN``) sets it per instance.
    task: str = ""
    #: panoptic models: per class, True for a thing and False for stuff (the metric needs it); else None.
    thing_classes: list[bool] | None = None

    @property
    def trains_channels_last(self) -> bool:
        """The model's choice for ``train.channels_last`` when the run leaves it unset: train with NHWC weights.
        Off unless a model measured that it pays (the classifier when fine-tuning)."""
        return False

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise with these per-channel statistics (those the backbone's weights were trained with)."""
        self.mean.copy_(torch.tensor(list(mean), dtype=self.mean.dtype).view(1, 3, 1, 1))
        self.std.copy_(torch.tensor(list(std), dtype=self.std.dtype).view(1, 3, 1, 1))

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` or ``(3, H, W)`` in [0, 1] -> standardised with the model's ``mean`` and ``std``."""
        return normalize(images, self.mean, self.std)

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        raise NotImplementedError

    def predict(self, images: Tensor | list[Tensor]) -> list[Prediction]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called by the engine at the start of every training epoch (0-based), after ``train()``: state
        that follows the epoch number (e.g. the classifier's ``freeze_epochs``) is set here, from the
        number alone, so a resumed run is in the state of one that was never interrupted. No-op here."""

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW/SGD groups: no weight decay on norms and biases (1-D parameters)."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        return [{"params": decay, "lr": lr, "weight_decay": weight_decay},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0}]


def lr_groups(parts: Sequence[tuple[Sequence[nn.Parameter], float]], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW/SGD groups for parts of a model trained at their own learning rates (e.g. a head at ``lr`` and a
    pretrained backbone at a fraction of it): ``(parameters, lr)`` pairs -> per part, in order, a group of its
    weights (``weight_decay``) and one of its 1-D parameters (norms, biases: no decay); empty groups left out."""
    groups = []
    for params, lr in parts:
        groups.append({"params": [p for p in params if p.ndim > 1], "lr": lr, "weight_decay": weight_decay})
        groups.append({"params": [p for p in params if p.ndim <= 1], "lr": lr, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def stack_images(images: Tensor | list[Tensor]) -> Tensor:
    """A batch as one ``(B, 3, H, W)`` tensor; a list must hold images of one size."""
    if isinstance(images, Tensor):
        return images if images.ndim == 4 else images.unsqueeze(0)
    return torch.stack(list(images))


class TrainsOnFeatures(Protocol):
    """A model fitted with ``fitting="features"``: the engine runs ``features`` once over the training and
    validation images, caches the result, solves the head on it (``solve_head``) and evaluates
    ``head_on_features()`` on it. The checkpoints hold the whole model, so it predicts on images as any
    other."""

    def features(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, F)`` from the frozen part; the same every epoch."""
        ...

    def solve_head(self, features: Tensor, labels: Tensor, groups: Tensor, seed: int = 0) -> dict[str, float]:
        """Fit the head to convergence on cached features ``(N, F)``, labels ``(N,)`` and the image each row
        comes from ``(N,)``; returns statistics to log."""
        ...

    def head_on_features(self) -> ZirModel:
        """The trainable rest as a model whose ``loss`` and ``predict`` take features ``(B, F)``; it shares
        its parameters with this model."""
        ...


class FitsInClosedForm(Protocol):
    """A model fitted with ``fitting="closed_form"``: every epoch, the engine gathers
    ``training_features`` of each training sample once (cached on disk) and calls ``fit_features``."""

    def training_features(self, image: Tensor, target: Any, generator: torch.Generator) -> dict[str, Tensor]:
        """One training image ``(3, H, W)`` in [0, 1] and its target -> rows to cache (every value has the
        same first dimension, the rows of this image; CPU tensors). ``generator`` is seeded from the
        sample's index, so the rows do not depend on the order images are visited."""
        ...

    def fit_features(self, features: dict[str, Tensor]) -> dict[str, float]:
        """Solve the model from the rows of every training image concatenated (``{}`` when there are none);
        returns statistics to log."""
        ...
