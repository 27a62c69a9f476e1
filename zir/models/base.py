"""What every zir model is: an ``nn.Module`` with the same two methods and fixed return types.

* ``loss(images, targets) -> dict[str, Tensor]``: the terms of the training loss (the engine sums them).
* ``predict(images) -> list[Prediction]``: one prediction per image, in the input image's pixels.

Neither depends on train/eval mode for its return type. Images are float32 in ``[0, 1]``, RGB,
``(B, 3, H, W)`` or a list of ``(3, H, W)`` of different sizes; the model normalises them itself
(so exported models and ``zir.load(...).predict`` need no outside preprocessing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from zir.data.contract import Prediction

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ZirModel(nn.Module):
    """Base class: the shared interface, input normalisation and optimizer parameter groups."""

    #: ``classify``, ``detect``, ``instance``, ``segment`` or ``panoptic``; a composed model that serves several
    #: tasks (``zir.models.detect.faster_rcnn.FasterRCNN``) sets it per instance.
    task: str = ""
    #: detectors: 1 for one-stage (one dense pass decides boxes and classes), 2 for two-stage (proposals,
    #: then a classifier per region), as in the lecture's speed/accuracy comparison; 0 for other tasks.
    stages: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise with these per-channel statistics (those the backbone's weights were trained with)."""
        self.mean.copy_(torch.tensor(list(mean), dtype=self.mean.dtype).view(1, 3, 1, 1))
        self.std.copy_(torch.tensor(list(std), dtype=self.std.dtype).view(1, 3, 1, 1))

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> standardised with ImageNet statistics."""
        return (images - self.mean) / self.std

    def loss(self, images: Tensor, targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        raise NotImplementedError

    def predict(self, images: Tensor | list[Tensor]) -> list[Prediction]:
        raise NotImplementedError

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW/SGD groups: no weight decay on norms and biases (1-D parameters)."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        return [{"params": decay, "lr": lr, "weight_decay": weight_decay},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0}]


def stack_images(images: Tensor | list[Tensor]) -> Tensor:
    """A batch as one ``(B, 3, H, W)`` tensor; a list must hold images of one size."""
    if isinstance(images, Tensor):
        return images if images.ndim == 4 else images.unsqueeze(0)
    return torch.stack(list(images))
