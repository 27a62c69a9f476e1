"""The ImageNet classifier itself: a backbone with its offline ImageNet weights *and* its 1000-class head.

``zir predict efficientnet_lite0 photo.jpg`` uses it to print the top-5 ImageNet labels, with no
training and no network. The class names are torchvision's (the standard ImageNet-1k order, which
the shipped weights use too: a cat photo gives 281-285, espresso 967).
"""

from __future__ import annotations

from functools import cache

import torch

from zir.errors import ConfigError
from zir.models.backbones import OFFLINE_WEIGHTS, offline_state_dict
from zir.models.classify.classifier import Classifier, ClassifierConfig

IMAGENET_SIZE = 224  # the resolution the weights were trained at


@cache
def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, index = class id (from torchvision's metadata, no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_classifier(name: str = "efficientnet_lite0") -> Classifier:
    """:class:`Classifier` with ``name``'s offline ImageNet weights in the backbone and in the head.

    Raises:
        ConfigError: ``name`` has no offline ImageNet weights (or their package is not installed).
    """
    if name not in OFFLINE_WEIGHTS:
        raise ConfigError(f"{name!r} is not a run folder, a weights file, nor a model with offline ImageNet "
                          f"weights ({', '.join(OFFLINE_WEIGHTS)}); train one with `zir train` first")
    state = offline_state_dict(name)  # timm's keys for the whole network, classifier included
    model = Classifier(ClassifierConfig(num_classes=len(imagenet_classes()), image_size=IMAGENET_SIZE,
                                        backbone=name, pretrained="none", transfer="finetune"))
    body = model.backbone.state_dict()
    head = {k: v for k, v in state.items() if k not in body}  # timm's classifier.weight, classifier.bias
    weight = next(v for v in head.values() if v.ndim == 2)
    bias = next(v for v in head.values() if v.ndim == 1)
    with torch.no_grad():
        model.backbone.load_state_dict({k: state[k] for k in body})
        model.head.weight.copy_(weight)
        model.head.bias.copy_(bias)
    return model.eval()
