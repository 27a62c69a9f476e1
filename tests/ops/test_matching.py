"""Matching and sampling against torchvision's Matcher and BalancedPositiveNegativeSampler."""

import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher

from zir.ops.matching import BELOW_LOW, BETWEEN, balanced_sample, match


def quality_matrix(G: int, P: int, seed: int, levels: int | None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(G, P, generator=g) * (0.2 + 0.8 * torch.rand(G, 1, generator=g))  # some gt poorly covered
    if levels:  # coarse values: many ties, for the "ties included" rule
        q = (q * levels).ceil() / levels
    q[torch.rand(G, P, generator=g) < 0.3] = 0.0  # sparse, like real IoU; rows keep a positive max
    q[torch.arange(G), torch.randint(P, (G,), generator=g)] = 0.05 + 0.9 * torch.rand(G, generator=g)
    return q


@pytest.mark.parametrize("allow_low", [False, True])
@pytest.mark.parametrize("high,low", [(0.7, 0.3), (0.5, 0.5), (0.5, 0.0)])
def test_equals_torchvision_matcher(allow_low, high, low):
    matcher = Matcher(high, low, allow_low_quality_matches=allow_low)
    changed = 0
    for seed, (G, P, levels) in enumerate([(1, 50, None), (5, 300, None), (8, 200, 10), (20, 40, 4)]):
        q = quality_matrix(G, P, seed, levels)
        ours = match(q, high, low, allow_low)
        assert torch.equal(ours, matcher(q.clone())), (seed, G, P)
        changed += not torch.equal(ours, match(q, high, low, not allow_low))
    assert changed  # the matrices do exercise low-quality matches


def test_by_hand():
    q = torch.tensor([[0.9, 0.5, 0.1, 0.0],
                      [0.0, 0.6, 0.2, 0.25]])
    assert match(q, 0.7, 0.3).tolist() == [0, BETWEEN, BELOW_LOW, BELOW_LOW]
    # Ground truth 1's best prediction (index 1, IoU 0.6) becomes a match even below 0.7.
    assert match(q, 0.7, 0.3, allow_low_quality_matches=True).tolist() == [0, 1, BELOW_LOW, BELOW_LOW]
    ties = torch.tensor([[0.2, 0.2, 0.1]])
    assert match(ties, 0.7, 0.3, allow_low_quality_matches=True).tolist() == [0, 0, BELOW_LOW]


def test_ground_truth_overlapping_nothing_adds_no_matches():
    q = torch.tensor([[0.8, 0.0, 0.0],
                      [0.0, 0.0, 0.0]])  # gt 1: a degenerate box
    assert match(q, 0.7, 0.3, allow_low_quality_matches=True).tolist() == [0, BELOW_LOW, BELOW_LOW]
    # torchvision would call predictions 1 and 2 matches of gt 0, with IoU 0.
    assert Matcher(0.7, 0.3, True)(q).tolist() == [0, 0, 0]


def test_empty_inputs():
    assert match(torch.zeros(0, 5), 0.7, 0.3, True).tolist() == [BELOW_LOW] * 5  # image without objects
    assert match(torch.zeros(3, 0), 0.7, 0.3, True).shape == (0,)
    with pytest.raises(ValueError):
        match(torch.zeros(2, 2), 0.3, 0.7)


def make_matched(num_pos: int, num_neg: int, num_ignored: int, seed: int = 0) -> torch.Tensor:
    values = torch.cat([torch.randint(0, 4, (num_pos,)), torch.full((num_neg,), BELOW_LOW),
                        torch.full((num_ignored,), BETWEEN)])
    return values[torch.randperm(len(values), generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("counts", [(10, 1000, 50), (500, 1000, 50), (500, 20, 50), (0, 30, 5), (0, 0, 4)])
def test_balanced_sample_counts_like_torchvision(counts):
    matched = make_matched(*counts)
    pos, neg = balanced_sample(matched, 256, 0.25, torch.Generator().manual_seed(1))
    # torchvision's sampler takes labels: >= 1 positive, 0 negative, -1 ignored.
    labels = torch.where(matched >= 0, 1, torch.where(matched == BELOW_LOW, 0, -1))
    tv_pos, tv_neg = BalancedPositiveNegativeSampler(256, 0.25)([labels])
    assert len(pos) == int(tv_pos[0].sum()) and len(neg) == int(tv_neg[0].sum())
    assert (matched[pos] >= 0).all() and (matched[neg] == BELOW_LOW).all()
    assert len(pos.unique()) == len(pos) and len(neg.unique()) == len(neg)
    assert len(pos) <= 64 and len(pos) + len(neg) <= 256


def test_balanced_sample_fills_with_negatives_and_is_reproducible():
    matched = make_matched(10, 1000, 50)
    pos, neg = balanced_sample(matched, 256, 0.5, torch.Generator().manual_seed(3))
    assert (len(pos), len(neg)) == (10, 246)
    again = balanced_sample(matched, 256, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(pos, again[0]) and torch.equal(neg, again[1])
    other = balanced_sample(matched, 256, 0.5, torch.Generator().manual_seed(4))
    assert not torch.equal(neg, other[1])  # really random: 246 of 1000
