"""Transposed convolution as the lecture teaches it, and the bilinear initialisation of FCN's upsampling.

The lecture ("Транспонована згортка"): every input value scales a copy of the filter; the copy is
placed in the output at the input position times the stride ``S``; overlapping copies add up; then
``P`` rows and columns are cut from every side. The output side is

    O = (I - 1) S + F - 2P                          (I input side, F filter side)

Its worked example, input ``[[0, 1], [2, 3]]`` and filter ``[[0, 1], [2, 3]]``:

    S = 1:  [[0, 0, 1],          S = 2, P = 0:  [[0, 0, 0, 1],
             [0, 4, 6],                          [0, 0, 2, 3],
             [4, 12, 9]]                         [0, 2, 0, 3],
                                                 [4, 6, 6, 9]]

(the slide labels the second one ``P = 1``, but its 4 x 4 output is the ``P = 0`` result: ``P = 1``
would crop it to the 2 x 2 ``[[0, 2], [2, 0]]``). :func:`conv_transpose2d` writes this out with loops,
for reading and testing; models use ``nn.ConvTranspose2d``, which computes the same thing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def output_size(I: int, S: int, F: int, P: int = 0) -> int:  # noqa: E741 - the lecture's letters
    """Side of a transposed convolution's output: ``O = (I - 1) S + F - 2P``."""
    return (I - 1) * S + F - 2 * P


def conv_transpose2d(x: Tensor, weight: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    """The lecture's transposed convolution, written out: scatter a scaled filter per input pixel.

    Args:
        x: ``(B, C_in, H, W)`` input.
        weight: ``(C_in, C_out, F, F)`` filters (the layout of ``nn.ConvTranspose2d.weight``).
        stride: ``S``, the step between the filter copies in the output.
        padding: ``P``, rows and columns cut from every side of the summed copies.

    Returns:
        ``(B, C_out, O_h, O_w)`` with ``O = (I - 1) S + F - 2P``; equals ``F.conv_transpose2d``.
    """
    B, _, H, W = x.shape
    _, C_out, Fh, Fw = weight.shape
    full = x.new_zeros(B, C_out, (H - 1) * stride + Fh, (W - 1) * stride + Fw)
    for i in range(H):
        for j in range(W):
            # input pixel (i, j) of every channel scales the filter; the copies of all input channels add up
            copy = torch.einsum("bc,cokl->bokl", x[:, :, i, j], weight)  # (B, C_out, F, F)
            full[:, :, i * stride: i * stride + Fh, j * stride: j * stride + Fw] += copy
    P = padding
    return full[:, :, P: full.shape[2] - P, P: full.shape[3] - P]


def bilinear_kernel(size: int) -> Tensor:
    """``(size, size)`` filter of bilinear interpolation for upsampling by ``(size + 1) // 2``.

    Long et al. 2015 (FCN, section 3.3) initialise the upsampling deconvolutions with it: a transposed
    convolution with stride ``s``, filter ``2s`` and padding ``s / 2`` then upsamples by ``s`` exactly as
    bilinear interpolation (``align_corners=False``) does, away from the image border.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    t = torch.arange(size, dtype=torch.float32)
    ramp = 1 - (t - center).abs() / factor  # (size,) the 1-D "tent"
    return ramp[:, None] * ramp[None, :]


@torch.no_grad()
def init_bilinear_(deconv: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Set a ``ConvTranspose2d`` to channel-wise bilinear upsampling (channel c -> c; bias 0).

    Requires as many input as output channels and a square filter.
    """
    C_in, C_out_g, Fh, Fw = deconv.weight.shape
    C_out = C_out_g * deconv.groups
    if C_in != C_out or Fh != Fw:
        raise ValueError(f"bilinear init needs C_in == C_out and a square filter, got {tuple(deconv.weight.shape)}")
    deconv.weight.zero_()
    kernel = bilinear_kernel(Fh)
    for c in range(C_in):
        deconv.weight[c, c % C_out_g] = kernel
    if deconv.bias is not None:
        deconv.bias.zero_()
    return deconv


def bilinear_upsampler(channels: int, factor: int, bias: bool = False) -> nn.ConvTranspose2d:
    """A learnable ``channels -> channels`` transposed convolution that starts as bilinear upsampling by
    ``factor`` (filter ``2 factor``, stride ``factor``, padding ``factor / 2``): ``O = I * factor``."""
    if factor < 2 or factor % 2:
        raise ValueError(f"upsampling factor must be even, got {factor}")
    deconv = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=bias)
    return init_bilinear_(deconv)
