import pytest
import torch

from zir.ops.tta import DIHEDRAL, dihedral_mean


def test_dihedral_is_the_eight_symmetries_of_the_square():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    views = {tuple(torch.rot90(x.flip(-1) if f else x, k, dims=(-2, -1)).flatten().tolist()) for k, f in DIHEDRAL}
    assert len(views) == 8


def test_an_equivariant_map_is_unchanged():
    # a pointwise map commutes with every flip and turn: the mean of 8 turned-back outputs is the output
    x = torch.rand(2, 3, 5, 7)
    fn = lambda v: v.sum(1, keepdim=True).sigmoid()  # noqa: E731
    for views in (1, 2, 4, 8):
        assert torch.allclose(dihedral_mean(fn, x, views), fn(x), atol=1e-6)


def test_mean_of_turned_back_views_by_hand():
    # fn marks the top-left pixel of whatever it sees; turned back, the 8 views mark the 4 corners twice
    def fn(v):
        out = torch.zeros_like(v[:, :1])
        out[..., 0, 0] = 1
        return out

    x = torch.rand(1, 3, 4, 6)  # not square: the turned views are 6 x 4
    expected = torch.zeros(1, 1, 4, 6)
    expected[..., 0, 0] = expected[..., 0, -1] = expected[..., -1, 0] = expected[..., -1, -1] = 2 / 8
    assert torch.equal(dihedral_mean(fn, x, 8), expected)
    mirror = torch.zeros(1, 1, 4, 6)
    mirror[..., 0, 0] = mirror[..., 0, -1] = 0.5  # the image and its left-right mirror image
    assert torch.equal(dihedral_mean(fn, x, 2), mirror)


def test_bad_view_count():
    with pytest.raises(ValueError, match="1, 2, 4 or 8"):
        dihedral_mean(lambda v: v, torch.rand(1, 3, 4, 4), 3)
