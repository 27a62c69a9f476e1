"""Mask R-CNN: mask head shapes, mask targets against hand-made masks, the class-decoupled loss, gradients,
overfitting one synthetic image, masks at the input's size, empty images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zir.data.contract import DetectionPrediction
from zir.data.synth import SynthDataset
from zir.engine.data import collate, eval_transform
from zir.models.detect.faster_rcnn import FasterRCNN
from zir.models.detect.roi_heads import RoIHeadsConfig
from zir.models.segment.mask_rcnn import (
    MaskHead,
    MaskHeadConfig,
    MaskRCNNConfig,
    build,
    mask_loss,
    project_masks_on_boxes,
)

SIZE = 64


def tiny(**kw) -> MaskRCNNConfig:
    args = dict(num_classes=4, image_size=SIZE, pretrained="none", fpn_channels=16,
                roi_heads=RoIHeadsConfig(hidden=32, batch_size=64), mask_head=MaskHeadConfig(channels=16))
    return MaskRCNNConfig(**{**args, **kw})


def synth_batch(n: int = 1, seed: int = 3):
    ds = SynthDataset(task="instance", n=n, seed=seed, image_size=SIZE, transform=eval_transform("instance", SIZE))
    return collate([ds[i] for i in range(n)])


def test_mask_head_shapes():
    head = MaskHead(in_channels=16, strides=[8, 16, 32], cfg=MaskHeadConfig(channels=8), num_classes=3)
    assert head(torch.rand(5, 16, 14, 14)).shape == (5, 3, 28, 28)
    assert head(torch.rand(0, 16, 14, 14)).shape == (0, 3, 28, 28)


def test_mask_rcnn_is_the_two_stage_detector_with_a_mask_head():
    model = build(tiny())
    assert type(model) is FasterRCNN and model.task == "instance" and list(model.heads) == ["mask"]
    assert model.roi_heads.predictor.cls_score.out_features == 5 and model.heads.mask.logits.out_channels == 4
    # the parameter names old runs are mapped onto (zir.models.MODELS["mask_rcnn"].renames)
    names = {n.split(".")[0] + "." + n.split(".")[1] for n, _ in model.named_parameters()}
    assert {"heads.mask", "roi_heads.box_head", "rpn.head"} <= names


def test_mask_targets_reproduce_the_gt_mask():
    # a 56-pixel RoI over a 28-cell grid: each cell is the mean of a 2x2 block of mask pixels
    masks = torch.zeros(2, 80, 90, dtype=torch.uint8)
    masks[0, 4:60, 10:38] = 1  # the left half of the box below
    masks[1] = torch.rand(80, 90) > 0.5
    box = torch.tensor([[10.0, 4.0, 66.0, 60.0]])
    target = project_masks_on_boxes(masks, box.repeat(2, 1), torch.tensor([0, 1]), 28)
    assert target.shape == (2, 28, 28) and target.dtype == torch.float32
    expected = torch.zeros(28, 28)
    expected[:, :14] = 1
    torch.testing.assert_close(target[0], expected)
    torch.testing.assert_close(target[1], F.avg_pool2d(masks[1, None, 4:60, 10:66].float(), 2)[0])
    # a box equal to a rectangle's own box: the whole grid is covered at 28 x 28 as at any resolution
    full = project_masks_on_boxes(masks[:1], torch.tensor([[10.0, 4.0, 38.0, 60.0]]), torch.tensor([0]), 28)
    torch.testing.assert_close(full[0, 1:-1, 1:-1], torch.ones(26, 26))
    assert full.min() > 0.5  # the edge cells mix in some background but stay foreground


def test_mask_loss_uses_only_the_gt_class():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 28, 28)
    labels = torch.tensor([2, 0, 3])
    targets = torch.rand(3, 28, 28).round()
    loss = mask_loss(logits, labels, targets)
    # hand formula: -[t log s(x) + (1 - t) log(1 - s(x))], averaged over pixels and RoIs
    x = logits[torch.arange(3), labels]
    expected = -(targets * torch.log(torch.sigmoid(x)) + (1 - targets) * torch.log(1 - torch.sigmoid(x))).mean()
    torch.testing.assert_close(loss, expected)
    other = logits.clone()
    other[torch.arange(3)[:, None], torch.tensor([[0, 1, 3], [1, 2, 3], [0, 1, 2]])] = 100.0
    torch.testing.assert_close(mask_loss(other, labels, targets), loss)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = build(tiny())
    batch = synth_batch(2)
    losses = model.loss(batch.images, batch.targets)
    assert set(losses) == {"rpn_objectness", "rpn_box", "roi_cls", "roi_box", "roi_mask"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_empty_image_gives_finite_losses():
    torch.manual_seed(0)
    model = build(tiny())
    batch = synth_batch(1)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "iscrowd": torch.zeros(0, dtype=torch.bool), "masks": torch.zeros(0, SIZE, SIZE, dtype=torch.uint8),
             "size": (SIZE, SIZE)}
    for images, targets in [(torch.rand(1, 3, SIZE, SIZE), [empty]),
                            (torch.cat([batch.images, torch.rand(1, 3, SIZE, SIZE)]), [batch.targets[0], empty])]:
        losses = model.loss(images, targets)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        sum(losses.values()).backward()
        assert model.heads.mask.logits.weight.grad is not None


@pytest.fixture(scope="module")
def overfitted():
    """A tiny model trained on one synthetic image; the roi_mask loss at its first and last steps."""
    torch.manual_seed(0)
    model = build(tiny())
    batch = synth_batch(1, seed=5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    model.train()
    for _ in range(30):
        losses = model.loss(batch.images, batch.targets)
        history.append(losses["roi_mask"].item())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    return model, batch, history


def test_overfitting_one_image_lowers_the_mask_loss(overfitted):
    _, _, history = overfitted
    # compare with steps 1-3, not step 0: the first step alone removes most of the initial logits' scale
    early, last = sum(history[1:4]) / 3, sum(history[-3:]) / 3
    assert last < 0.75 * early, history


def test_predict_returns_masks_at_the_input_size(overfitted):
    model, batch, _ = overfitted
    model.eval()
    image = batch.images[0]
    big = F.interpolate(image[None], size=(96, 120), mode="bilinear", align_corners=False)[0]
    preds = model.predict([big, torch.rand(3, 50, 70)])
    for p, (H, W) in zip(preds, [(96, 120), (50, 70)]):
        assert isinstance(p, DetectionPrediction)
        assert p.masks is not None and p.masks.dtype == torch.bool and p.masks.shape == (len(p.boxes), H, W)
    # every mask lies inside its box (pasting maps the 28 x 28 grid onto the box in the input's pixels)
    p = preds[0]
    assert len(p.boxes) > 0
    cols, rows = torch.arange(120) + 0.5, torch.arange(96) + 0.5
    inside = ((cols[None, None, :] > p.boxes[:, None, None, 0]) & (cols[None, None, :] < p.boxes[:, None, None, 2])
              & (rows[None, :, None] > p.boxes[:, None, None, 1]) & (rows[None, :, None] < p.boxes[:, None, None, 3]))
    assert not (p.masks & ~inside).any()
