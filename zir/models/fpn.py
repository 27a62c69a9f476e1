"""Feature Pyramid Network (Lin et al. 2017, "Feature Pyramid Networks for Object Detection").

A backbone's maps ``C_l`` (finest first, strides ``s_l``) become maps ``P_l`` of one width at the same
strides, each mixing the semantics of the coarsest level with the resolution of its own (section 3):

    lateral_l = conv1x1(C_l)                                   # bottom-up pathway, to d channels
    M_top     = lateral_top
    M_l       = lateral_l + upsample_nearest(M_{l+1})          # top-down pathway
    P_l       = conv3x3(M_l)                                   # reduces the aliasing of upsampling
    P_extra   = maxpool(P_top, kernel 1, stride 2)             # section 4.1: "P6 ... a stride two
                                                               # subsampling of P5", for large anchors

The extra level feeds the RPN only (large anchors); RoI pooling uses the levels ``P_l`` themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class FPN(nn.Module):
    """Lateral 1x1 + top-down + 3x3 output convolutions, plus a max-pooled extra level.

    Args:
        in_channels: channels of the backbone maps, finest first.
        in_strides: their strides in image pixels.
        out_channels: ``d``, the width of every pyramid level (256 in the paper).
        extra_level: add the stride-``2 * in_strides[-1]`` level ``P_extra``.

    Attributes:
        strides: strides of the returned levels, finest first.
    """

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], out_channels: int,
                 extra_level: bool = True) -> None:
        super().__init__()
        if len(in_channels) != len(in_strides):
            raise ValueError(f"{len(in_channels)} channel counts but {len(in_strides)} strides")
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.extra_level = extra_level
        self.out_channels = out_channels
        self.strides: list[int] = list(in_strides) + ([2 * in_strides[-1]] if extra_level else [])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # as the reference implementations: He-uniform, zero bias
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """``[(B, C_l, H_l, W_l)]`` finest first -> ``[(B, d, H_l, W_l)]`` (+ the extra level)."""
        merged = self.lateral[-1](features[-1])  # M_top
        outputs = [self.output[-1](merged)]
        for lateral, output, c in zip(self.lateral[-2::-1], self.output[-2::-1], features[-2::-1]):
            lat = lateral(c)
            # upsample to the lateral's exact size: odd sizes do not double exactly
            merged = lat + F.interpolate(merged, size=lat.shape[-2:], mode="nearest")
            outputs.insert(0, output(merged))
        if self.extra_level:
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return outputs
