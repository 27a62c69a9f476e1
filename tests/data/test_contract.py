"""Prediction types: the score filter people use for pictures keeps every field aligned."""

import torch

from zir.data.contract import DetectionPrediction


def test_above_keeps_boxes_scores_labels_and_masks_together():
    p = DetectionPrediction(torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [2, 2, 4, 4]]), torch.tensor([0.75, 0.25, 0.5]),
                            torch.tensor([1, 0, 2]), torch.stack([torch.full((4, 4), i > 0) for i in range(3)]))
    q = p.above(0.5)
    assert q.scores.tolist() == [0.75, 0.5] and q.labels.tolist() == [1, 2]
    assert q.boxes.tolist() == [[0, 0, 2, 2], [2, 2, 4, 4]] and q.masks[:, 0, 0].tolist() == [False, True]
    assert DetectionPrediction(p.boxes, p.scores, p.labels).above(0.95).masks is None
