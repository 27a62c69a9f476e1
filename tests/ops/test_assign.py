"""TOOD's task-aligned assigner and the anchor points, on cases worked out by hand."""

from __future__ import annotations

import torch

from zir.ops.assign import anchor_points, task_aligned_assign


def test_anchor_points_are_cell_centres_level_after_level():
    points, strides = anchor_points([(2, 3), (1, 1)], [8, 16])
    expected = [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12], [8, 8]]
    torch.testing.assert_close(points, torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(strides, torch.tensor([8.0] * 6 + [16.0]))


def _one_object_case():
    # one object [0, 0, 20, 10] of class 1; points at x = 5, 15 (inside) and 25 (outside)
    points = torch.tensor([[5.0, 5.0], [15.0, 5.0], [25.0, 5.0]])
    pred = torch.tensor([[0.0, 0, 20, 10], [0.0, 0, 10, 10], [0.0, 0, 20, 10]])  # IoU 1, 0.5, 1 (but outside)
    scores = torch.tensor([[0.1, 0.5], [0.2, 0.8], [0.9, 0.9]])
    return scores, pred, points, torch.tensor([[0.0, 0, 20, 10]]), torch.tensor([1])


def test_the_best_aligned_point_inside_the_box_is_the_positive():
    # t = s * u^2 (alpha 1, beta 2): point 0: 0.5 * 1 = 0.5, point 1: 0.8 * 0.25 = 0.2, point 2: outside
    a = task_aligned_assign(*_one_object_case(), topk=1, alpha=1.0, beta=2.0)
    assert a.positive.tolist() == [True, False, False]
    # t^ = t / max t * max u = 0.5 / 0.5 * 1 at the object's class
    torch.testing.assert_close(a.scores, torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(a.boxes[0], torch.tensor([0.0, 0, 20, 10]))


def test_top_k_positives_get_their_normalised_alignment_as_target():
    a = task_aligned_assign(*_one_object_case(), topk=2, alpha=1.0, beta=2.0)
    assert a.positive.tolist() == [True, True, False]
    # point 1: t^ = 0.2 / 0.5 * 1 = 0.4; the point outside the box never counts, however good its score
    torch.testing.assert_close(a.scores, torch.tensor([[0.0, 1.0], [0.0, 0.4], [0.0, 0.0]]))
    # alpha 0.5, beta 6 (YOLOv8): t0 = sqrt(0.5) * 1, t1 = sqrt(0.8) * 0.5^6; t^1 = t1 / t0 * 1
    a = task_aligned_assign(*_one_object_case(), topk=2, alpha=0.5, beta=6.0)
    torch.testing.assert_close(a.scores[1, 1], torch.tensor((0.8 ** 0.5 * 0.5 ** 6) / 0.5 ** 0.5))


def test_a_point_claimed_by_two_objects_keeps_the_one_its_box_overlaps_most():
    points = torch.tensor([[15.0, 5.0]])
    pred = torch.tensor([[10.0, 0, 30, 10]])  # IoU 1 with object B, 100 / 300 = 1/3 with object A
    gt = torch.tensor([[0.0, 0, 20, 10], [10.0, 0, 30, 10]])
    a = task_aligned_assign(torch.tensor([[0.5, 0.5]]), pred, points, gt, torch.tensor([0, 1]), topk=1,
                            alpha=1.0, beta=6.0)
    assert a.positive.tolist() == [True] and a.gt_index.tolist() == [1]
    torch.testing.assert_close(a.boxes, gt[1:])
    # object B's only positive: t^ = t / t * 1 = 1, at class 1; object A loses its positive
    torch.testing.assert_close(a.scores, torch.tensor([[0.0, 1.0]]))


def test_no_objects_means_no_positives_and_zero_targets():
    scores, pred, points, _, _ = _one_object_case()
    a = task_aligned_assign(scores, pred, points, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert not a.positive.any() and a.scores.abs().sum() == 0 and a.scores.shape == (3, 2)


def test_a_candidate_whose_predicted_box_misses_the_object_is_not_a_positive():
    # both points inside the object, topk 2, but point 1's box does not overlap it: t = 0
    points = torch.tensor([[5.0, 5.0], [15.0, 5.0]])
    pred = torch.tensor([[0.0, 0, 20, 10], [40.0, 40, 50, 50]])
    a = task_aligned_assign(torch.full((2, 1), 0.5), pred, points, torch.tensor([[0.0, 0, 20, 10]]),
                            torch.tensor([0]), topk=2)
    assert a.positive.tolist() == [True, False]
