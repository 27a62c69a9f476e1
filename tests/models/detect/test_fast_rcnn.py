"""Fast R-CNN: shapes, the multi-task loss falling on one image, proposals cached in training, boxes
mapped back to the input's pixels, no proposals -> no detections."""

from __future__ import annotations

import pytest
import torch

from zir.data.contract import DetectionPrediction
from zir.data.synth import SynthDataset
from zir.engine.data import collate, eval_transform
from zir.models import model_config
from zir.models.detect.fast_rcnn import build

pytest.importorskip("cv2.ximgproc")

SIZE = 64


def tiny(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    args = dict(pretrained="none", ss_size=SIZE, roi_heads={"hidden": 32, "batch_size": 32})
    return build(model_config("fast_rcnn", 4, SIZE, args | kw))


def batch(n: int = 2, seed: int = 3):
    ds = SynthDataset(task="detect", n=n, seed=seed, image_size=SIZE, max_objects=3, min_scale=0.2,
                      transform=eval_transform("detect", SIZE))
    return collate([ds[i] for i in range(n)])


def test_one_feature_map_at_stride_16_and_roi_pool():
    model = tiny()
    assert model.stages == 2 and model.backbone.strides == [16]
    assert model.roi_heads.pooler.op == "pool" and model.roi_heads.pooler.output_size == 7
    x = torch.zeros(1, 3, SIZE, SIZE)
    (features,) = model.backbone(x)
    assert features.shape == (1, model.backbone.channels[0], SIZE // 16, SIZE // 16)


def test_loss_terms_and_every_trainable_parameter_gets_a_gradient():
    model, b = tiny(), batch()
    model.train()
    losses = model.loss(b.images, b.targets)
    assert set(losses) == {"roi_cls", "roi_box"} and all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_training_proposals_are_searched_once_per_image():
    model, b = tiny(), batch()
    model.train()
    model.loss(b.images, b.targets)
    model.loss(b.images, b.targets)
    assert (model.train_proposals.misses, model.train_proposals.hits) == (2, 2)


def test_loss_falls_overfitting_one_image():
    model, b = tiny(), batch(1)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(30):
        losses = model.loss(b.images, b.targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5


def test_image_without_objects_trains():
    model, b = tiny(), batch(1)
    t = dict(b.targets[0], boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
             iscrowd=torch.zeros(0, dtype=torch.bool))
    losses = model.loss(b.images, [t])
    assert torch.isfinite(sum(losses.values()))
    sum(losses.values()).backward()


def test_predict_maps_proposals_back_to_input_pixels():
    """With the box deltas zeroed, a detection is its proposal: it must come back where it was given."""
    model = tiny()
    model.eval()
    given = torch.tensor([[10.0, 20.0, 60.0, 40.0], [100.0, 5.0, 140.0, 90.0]])
    model.search = lambda image: given.clone()
    with torch.no_grad():
        model.roi_heads.predictor.bbox_pred.weight.zero_()
        model.roi_heads.predictor.bbox_pred.bias.zero_()
        model.roi_heads.predictor.cls_score.weight.zero_()
        model.roi_heads.predictor.cls_score.bias.copy_(torch.tensor([0.0, 0, 0, 5.0, 0]))  # class 2 wins
    (pred,) = model.predict([torch.rand(3, 100, 150)])  # 100 x 150 -> a 43 x 64 working frame
    assert isinstance(pred, DetectionPrediction)
    assert pred.labels.tolist() == [2, 2]
    order = pred.boxes[:, 0].argsort()
    torch.testing.assert_close(pred.boxes[order], given, atol=1e-3, rtol=0)


def test_no_proposals_gives_an_empty_prediction():
    model = tiny()
    model.eval()
    model.search = lambda image: torch.zeros(0, 4)
    preds = model.predict(torch.rand(2, 3, 40, 50))
    assert len(preds) == 2
    for p in preds:
        assert p.boxes.shape == (0, 4) and p.scores.shape == (0,) and p.labels.shape == (0,)


def test_an_image_where_selective_search_finds_nothing_gives_no_detections():
    model = tiny()
    model.eval()
    (pred,) = model.predict([torch.rand(3, 1, 1)])  # a one-pixel image: no region of 2 pixels or more
    assert pred.boxes.shape == (0, 4) and pred.scores.shape == (0,)
