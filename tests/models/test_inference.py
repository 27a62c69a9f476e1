"""predict's fast copies (``zir.models.inference``): folding BatchNorm into the convolution before it
computes what the two layers did (zir's and timm's layouts, trainable and frozen norms), keeps the norm's
activation, and leaves alone a norm that does not follow a convolution."""

from __future__ import annotations

import pytest
import torch
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d, freeze_batch_norm_2d
from torch import nn

from zir.models.inference import FOLDABLE_NORMS, fold_batch_norms


def randomise(net: nn.Module) -> nn.Module:
    """Norm statistics and affine terms away from (0, 1), so that folding them is not the identity."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, FOLDABLE_NORMS):
            for name, lo, hi in (("running_mean", -0.5, 0.5), ("running_var", 0.5, 2.0), ("weight", 0.5, 1.5),
                                 ("bias", -0.5, 0.5)):
                with torch.no_grad():
                    getattr(m, name).copy_(torch.empty(getattr(m, name).shape).uniform_(lo, hi, generator=g))
    return net.eval()


@pytest.mark.parametrize("groups,kernel,stride,bias", [(1, 3, 1, False), (8, 5, 2, False), (1, 1, 1, True)])
def test_a_folded_norm_computes_what_conv_and_norm_did(groups, kernel, stride, bias):
    torch.manual_seed(0)
    net = randomise(nn.Sequential(nn.Conv2d(8, 8, kernel, stride, kernel // 2, groups=groups, bias=bias),
                                  nn.BatchNorm2d(8), nn.ReLU6()))
    x = torch.randn(2, 8, 13, 17)
    with torch.no_grad():
        want = net(x)
        folded = fold_batch_norms(net)
        got = folded(x)
    assert isinstance(folded[1], nn.Identity) and folded[0].bias is not None
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frozen", [False, True])
def test_timms_norm_with_activation_folds_and_keeps_its_activation(frozen):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BatchNormAct2d(8, act_layer=nn.ReLU6))
    if frozen:
        net = freeze_batch_norm_2d(net)
        assert isinstance(net[1], FrozenBatchNormAct2d)
    net = randomise(net)
    x = torch.randn(1, 3, 16, 16) * 10
    with torch.no_grad():
        want = net(x)
        got = fold_batch_norms(net)(x)
    assert not any(isinstance(m, FOLDABLE_NORMS) for m in net.modules())
    assert got.max() == 6 and got.min() == 0  # the activation is still applied
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_norm_that_does_not_follow_a_convolution_is_left_alone():
    net = randomise(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8)))
    fold_batch_norms(net)
    assert isinstance(net[2], nn.BatchNorm2d)
