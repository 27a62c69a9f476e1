"""Prediction types: the score filter people use for pictures keeps every field aligned. Targets: a
sample's annotations as plain tensors, XYXY, with the image's size."""

import torch
from torchvision import tv_tensors

from zir.data.contract import DetectionPrediction, Target, as_target


def test_above_keeps_boxes_scores_labels_and_masks_together():
    p = DetectionPrediction(torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [2, 2, 4, 4]]), torch.tensor([0.75, 0.25, 0.5]),
                            torch.tensor([1, 0, 2]), torch.stack([torch.full((4, 4), i > 0) for i in range(3)]))
    q = p.above(0.5)
    assert q.scores.tolist() == [0.75, 0.5] and q.labels.tolist() == [1, 2]
    assert q.boxes.tolist() == [[0, 0, 2, 2], [2, 2, 4, 4]] and q.masks[:, 0, 0].tolist() == [False, True]
    assert DetectionPrediction(p.boxes, p.scores, p.labels).above(0.95).masks is None


def test_target_from_a_sample_is_plain_xyxy_with_the_image_size():
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 20, 30, 40]]), format="XYWH", canvas_size=(60, 80))
    sample = {"image": tv_tensors.Image(torch.zeros(3, 60, 80, dtype=torch.uint8)), "boxes": boxes,
              "labels": torch.tensor([2]), "masks": tv_tensors.Mask(torch.ones(1, 60, 80, dtype=torch.uint8)),
              "image_id": 7, "path": "a.png"}
    t = Target.from_sample(sample)
    assert t.size == (60, 80) and t.boxes.tolist() == [[10.0, 20.0, 40.0, 60.0]]  # XYWH -> XYXY
    assert type(t.boxes) is torch.Tensor and type(t.masks) is torch.Tensor  # no tv_tensors wrapper left
    assert t.iscrowd.tolist() == [False] and t.label is None and t.semantic is None
    assert t.image_id == 7 and t.path == "a.png"
    assert Target.from_sample(sample, size=(30, 40)).size == (30, 40)  # collate's own size wins


def test_target_size_from_what_a_dict_has():
    assert Target.from_sample({"semantic": torch.zeros(5, 6)}).size == (5, 6)
    assert Target.from_sample({"size": [7, 8], "semantic": torch.zeros(5, 6)}).size == (7, 8)
    canvas = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(9, 10))
    assert Target.from_sample({"boxes": canvas}).size == (9, 10)
    t = as_target({"label": 3})
    assert t.size is None and t.label == 3 and t.boxes.shape == (0, 4) and t.labels.shape == (0,)
    assert as_target(t) is t


def test_target_moves_every_tensor():
    t = Target(size=(2, 2), boxes=torch.zeros(1, 4), labels=torch.zeros(1, dtype=torch.int64),
               semantic=torch.zeros(2, 2, dtype=torch.int64))
    moved = t.to("meta")
    assert all(v.device.type == "meta" for v in (moved.boxes, moved.labels, moved.iscrowd, moved.semantic))
    assert moved.size == (2, 2) and moved.masks is None and t.boxes.device.type == "cpu"
