"""Transposed convolution: the lecture's worked examples, the output-size formula, bilinear upsampling."""

import pytest
import torch
import torch.nn.functional as F

from zir.ops.transposed import bilinear_upsampler, conv_transpose2d, output_size

X = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
K = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)  # (C_in, C_out, F, F)


def test_lecture_example_stride_1():
    expected = torch.tensor([[0.0, 0.0, 1.0], [0.0, 4.0, 6.0], [4.0, 12.0, 9.0]])
    assert torch.equal(conv_transpose2d(X, K, stride=1)[0, 0], expected)
    assert torch.equal(F.conv_transpose2d(X, K, stride=1)[0, 0], expected)


def test_lecture_example_stride_2_is_padding_0():
    # The slide labels this example "S = 2, P = 1", but its 4x4 output is the P = 0 result:
    # O = (2 - 1) 2 + 2 - 2P is 4 only for P = 0.
    expected = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 2.0, 3.0], [0.0, 2.0, 0.0, 3.0], [4.0, 6.0, 6.0, 9.0]])
    assert torch.equal(conv_transpose2d(X, K, stride=2, padding=0)[0, 0], expected)
    assert torch.equal(F.conv_transpose2d(X, K, stride=2, padding=0)[0, 0], expected)
    # P = 1 cuts one row and column from every side of it
    assert torch.equal(conv_transpose2d(X, K, stride=2, padding=1)[0, 0], expected[1:3, 1:3])
    assert output_size(2, 2, 2, 1) == 2


# Every grid (I, S, F, P) with a non-empty output (padding can cut a tiny output away entirely).
GRIDS = [(I, S, Fk, P) for I in (1, 2, 5) for S in (1, 2, 3) for Fk in (1, 2, 3, 4) for P in (0, 1)
         if output_size(I, S, Fk, P) >= 1]


@pytest.mark.parametrize("I, S, Fk, P", GRIDS)
def test_output_size_and_values_match_torch(I, S, Fk, P):
    g = torch.Generator().manual_seed(I * 100 + S * 10 + Fk + P)
    x = torch.randn(2, 3, I, I + 1, generator=g, dtype=torch.float64)
    w = torch.randn(3, 2, Fk, Fk, generator=g, dtype=torch.float64)
    ours = conv_transpose2d(x, w, stride=S, padding=P)
    theirs = F.conv_transpose2d(x, w, stride=S, padding=P)
    assert ours.shape == (2, 2, output_size(I, S, Fk, P), output_size(I + 1, S, Fk, P)) == theirs.shape
    torch.testing.assert_close(ours, theirs)


def test_output_size_formula_by_hand():
    assert output_size(2, 1, 2, 0) == 3
    assert output_size(2, 2, 2, 0) == 4
    assert output_size(7, 32, 64, 16) == 7 * 32  # FCN-32s: filter 2s, padding s/2 upsamples by s
    assert output_size(10, 2, 4, 1) == 20


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_bilinear_init_upsamples_constant_and_ramp_like_interpolate(factor):
    up = bilinear_upsampler(2, factor)
    n = 6
    ramp = torch.arange(n, dtype=torch.float32)
    x = torch.stack([torch.full((n, n), 3.0), ramp[None, :] * 2 + ramp[:, None]]).unsqueeze(0)  # (1, 2, n, n)
    with torch.no_grad():
        out = up(x)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert out.shape == ref.shape == (1, 2, n * factor, n * factor)
    # away from the border, where the transposed conv sees zeros beyond the input, it is exact
    inner = slice(factor, (n - 1) * factor)
    torch.testing.assert_close(out[..., inner, inner], ref[..., inner, inner])
    assert torch.allclose(out[0, 0, inner, inner], torch.tensor(3.0))
    # channels do not mix: zeroing channel 1 leaves channel 0's output unchanged
    x2 = x.clone()
    x2[:, 1] = 0
    with torch.no_grad():
        torch.testing.assert_close(up(x2)[:, 0], out[:, 0])
