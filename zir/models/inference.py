"""Fast copies of a model's convolutional parts for ``predict`` (never for training, ``forward`` or export).

A trained network at inference is the same function with less work per layer: in eval mode a BatchNorm is
an affine map per channel, so ``bn(conv(x))`` is one convolution with rescaled weights and a bias
(:func:`fold_batch_norms`); the pretrained backbone's frozen norms are otherwise three elementwise passes
each. The copy is also kept in channels-last memory, where oneDNN's convolutions need no layout change
between layers. onnxruntime does the same to an exported graph by itself, so with these copies PyTorch's
``predict`` and the exported graph do comparable work. ``predict`` of ``anchor_free``, ``yolo_v1`` and the
Faster R-CNN family (Mask R-CNN, Panoptic FPN) runs through one: on the raccoon photos, 1 thread, about a
fifth less time for anchor_free and a quarter less for Faster R-CNN and yolo_v1 (README, "Session 13").

:func:`inference_copy` builds the copy once, checks it against the model on a small input, and builds it
again whenever a weight or buffer changed (an optimizer step, ``load_state_dict``, ``.to()``); if the check
fails the model predicts with its own layers, with a warning.

Fusing the activations into oneDNN's convolutions as well (``torch.ops.mkldnn._convolution_pointwise``)
was tried in session 13 with a scratch script and left out: on the raccoon photos at 320 px, 1 thread, it
changed neither model's ``predict`` time beyond the noise (the numbers are in that session's closing note).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence

import torch
from timm.layers import FrozenBatchNormAct2d
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

from zir.models.base import ZirModel

FOLDABLE_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d, FrozenBatchNormAct2d)  # timm's BatchNormAct2d is a BatchNorm2d


def fold_batch_norms(net: nn.Module) -> nn.Module:
    """Fold every inference-mode BatchNorm registered right after a ``Conv2d`` in the same parent (timm's and
    zir's layout: ``conv, bn``) into that convolution (``torch.nn.utils.fusion.fuse_conv_bn_weights``), in
    place; the norm's activation (timm's ``BatchNormAct2d``) stays. Returns ``net``."""
    for parent in list(net.modules()):
        children = list(parent.named_children())
        for (_, conv), (name, norm) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(norm, FOLDABLE_NORMS):
                conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean,
                                                              norm.running_var, norm.eps, norm.weight, norm.bias)
                setattr(parent, name, nn.Sequential(norm.drop, norm.act) if hasattr(norm, "act") else nn.Identity())
    return net


def verified(model: nn.Module, net: nn.Module, outputs: Callable[[nn.Module | None], Sequence[Tensor]],
             what: str) -> nn.Module:
    """``net`` if ``outputs(net)`` equals ``outputs(None)`` (the model's own layers) to 1e-3, else ``model``
    with a warning (a network whose norms do not follow their convolutions would fail)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        want, got = outputs(None), outputs(net)
    model.train(was_training)
    if all(torch.allclose(w.float(), g.float(), rtol=1e-3, atol=1e-3) for w, g in zip(want, got)):
        return net
    warnings.warn(f"{what}: folding BatchNorm into the convolutions changed the outputs; predicting without "
                  "folding (slower)", stacklevel=3)
    return model


def inference_copy(model: ZirModel, parts: dict[str, nn.Module | None],
                   outputs: Callable[[Tensor, nn.Module | None], Sequence[Tensor]], what: str,
                   size: int = 64) -> nn.Module:
    """``parts`` of ``model`` (e.g. ``{"backbone": ..., "neck": ...}``, None entries left out) copied into one
    ``ModuleDict`` in eval mode, BatchNorm folded, channels-last, checked by :func:`verified` with
    ``outputs(x, net)`` on a random ``(1, 3, size, size)`` image ``x`` (``net=None``: the model's own layers);
    cached in ``model.__dict__`` (not a submodule: it stays out of ``state_dict``) and built again when any
    parameter or buffer of ``model`` changed."""
    # every tensor's storage, in-place version and type; read from each module's own dicts, which is about half
    # of ``parameters()`` and ``buffers()``'s time (their name bookkeeping is 1 ms of a 30 ms predict)
    key = tuple((t.data_ptr(), t._version, t.dtype) for m in model.modules()
                for d in (m._parameters, m._buffers) for t in d.values() if t is not None)
    net, built_for = model.__dict__.get("_inference", (None, None))
    if net is None or built_for != key:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(model.mean)
        net = copy.deepcopy(nn.ModuleDict({k: v for k, v in parts.items() if v is not None})).eval()
        net = verified(model, fold_batch_norms(net).to(memory_format=torch.channels_last),
                       lambda n: outputs(x, n), what)
        model.__dict__["_inference"] = (net, key)
    return net


def channels_last(x: Tensor) -> Tensor:
    """A 4-D tensor in channels-last memory (what the copies' convolutions take without reordering)."""
    return x.contiguous(memory_format=torch.channels_last)
