"""The anchor-free one-stage detector: bad input (empty images, sub-pixel boxes), overfitting one image, the
plain ``forward`` graph agreeing with ``predict``, predict's BatchNorm-folded copy, config checks."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers import freeze_batch_norm_2d

from zir.data.contract import Target
from zir.errors import ConfigError
from zir.models import build_model
from zir.models.base import ZirModel
from zir.models.detect.anchor_free import AnchorFree, AnchorFreeConfig, postprocess, refine_samples
from zir.models.inference import FOLDABLE_NORMS, verified
from zir.ops.boxes import iou

TINY = {"pretrained": "none", "neck_channels": 16, "head_convs": 1, "reg_max": 7}


def tiny(num_classes: int = 2, **kw) -> AnchorFree:
    torch.manual_seed(0)
    return build_model("anchor_free", num_classes, 64, {**TINY, **kw})  # type: ignore[return-value]


def target(boxes: list[list[float]], labels: list[int], size: tuple[int, int] = (64, 64)) -> Target:
    return Target(size=size, boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  labels=torch.tensor(labels, dtype=torch.int64))


def test_images_without_objects_train_as_negatives_only():
    model = tiny()
    images = torch.rand(2, 3, 64, 64)
    losses = model.loss(images, [target([], []), target([], [])])
    assert losses["cls"] > 0 and losses["box"] == 0 and losses["dfl"] == 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # a few steps on empty images push every score down until nothing is predicted (BatchNorm fixed, as the
    # pretrained backbone's, so training and prediction normalise alike)
    model.eval()
    model.cfg.score_thresh = 0.01
    assert sum(len(p.boxes) for p in model.predict(images)) > 0  # at random initialisation
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        sum(model.loss(images, [target([], []), target([], [])]).values()).backward()
        opt.step()
    assert all(len(p.boxes) == 0 for p in model.predict(images))


def test_boxes_under_a_pixel_are_dropped_with_a_count():
    model = tiny()
    # in a 640 x 640 image resized to 64, a 5-pixel box becomes half a pixel wide
    t = target([[100, 100, 105, 300], [10, 10, 400, 400], [0, 0, 3, 3]], [0, 1, 1], size=(640, 640))
    with pytest.warns(UserWarning, match="dropped 2 boxes smaller than a pixel"):
        losses = model.loss(torch.rand(1, 3, 640, 640), [t])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["box"] > 0
    assert model.dropped_boxes == 2


def test_it_overfits_one_image():
    model = tiny(num_classes=2, reg_max=7)
    image = torch.full((1, 3, 64, 64), 0.5)
    image[0, :, 8:40, 12:36] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]  # a red object of class 1
    t = [target([[12, 8, 36, 40]], [1])]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        losses = model.loss(image, t)
        sum(losses.values()).backward()
        opt.step()
    model.eval()
    pred = model.predict(image)[0]
    assert len(pred.boxes) and pred.labels[0] == 1
    assert iou(pred.boxes[:1], t[0].boxes)[0, 0] > 0.7


def test_forward_is_the_graph_predict_post_processes():
    """``forward`` (what export traces) gives the scores and boxes that ``predict`` thresholds and suppresses,
    for an image already in the working frame."""
    model = tiny().eval()
    image = torch.rand(1, 3, 64, 64)
    scores, boxes = model(image)
    A = (8 * 8) + (4 * 4) + (2 * 2)  # strides 8, 16, 32 at 64 px
    assert scores.shape == (1, A, 2) and boxes.shape == (1, A, 4)
    model.cfg.score_thresh = 0.0
    expected = postprocess(scores[0], boxes[0].clamp(0, 64), 0.0, model.cfg.nms_iou, 1000, 100)
    pred = model.predict(image)[0]
    # predict runs the BatchNorm-folded copy: the same function up to float rounding
    torch.testing.assert_close(pred.boxes, expected[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pred.scores, expected[1], rtol=1e-4, atol=1e-4)


def test_a_backbone_cut_at_stride_16_gets_its_stride_32_level_from_the_neck():
    """``backbone_levels=(2, 3)``: the backbone's stride-32 blocks are cut off, and ``extra_levels=1`` makes
    the stride-32 level from the stride-16 one (a stride-2 and a 3x3 convolution); every parameter left
    trains."""
    model = tiny(backbone_levels=(2, 3), extra_levels=1)
    assert len(model.backbone.body.blocks) == 5 and model.neck.strides == [8, 16, 32]
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        levels = model.neck(model.backbone(model.normalize(image)))
        by_hand = model.neck.merge[1](model.neck.down[1](levels[1]))
    assert [tuple(f.shape[-2:]) for f in levels] == [(8, 8), (4, 4), (2, 2)]
    torch.testing.assert_close(levels[2], by_hand, rtol=0, atol=0)
    scores, _ = model.eval()(image)
    assert scores.shape == (1, 8 * 8 + 4 * 4 + 2 * 2, 2)
    model.train()
    sum(model.loss(image, [target([[8, 8, 40, 56]], [1])]).values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="extra_levels"):
        AnchorFree(AnchorFreeConfig(num_classes=2, pretrained="none", extra_levels=-1))


def randomise_norms(model: torch.nn.Module) -> None:
    """Statistics and affine terms away from (0, 1), so that folding them is not the identity."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, FOLDABLE_NORMS):
            for name, lo, hi in (("running_mean", -0.5, 0.5), ("running_var", 0.5, 2.0), ("weight", 0.5, 1.5),
                                 ("bias", -0.5, 0.5)):
                t = getattr(m, name)
                with torch.no_grad():
                    t.copy_(torch.empty(t.shape).uniform_(lo, hi, generator=g))


@pytest.mark.parametrize("frozen", [False, True])
def test_predict_folds_the_norms_and_rebuilds_after_a_weight_changes(frozen: bool):
    """Trainable BatchNorms in eval mode and the pretrained backbone's frozen ones (timm's
    ``FrozenBatchNormAct2d``) are folded into their convolutions; the folded copy computes what the model
    does, stays out of ``state_dict`` and is rebuilt after an in-place weight update (an optimizer step)."""
    model = tiny()
    if frozen:
        model.backbone.body = freeze_batch_norm_2d(model.backbone.body)
    randomise_norms(model)
    model.eval()
    keys = set(model.state_dict())
    x = torch.rand(1, 3, 64, 96)
    net = model.inference_net()
    assert not any(isinstance(m, FOLDABLE_NORMS) for m in net.modules())
    assert model.inference_net() is net  # nothing changed: the cached copy
    with torch.no_grad():
        for want, got in zip(model.raw(x)[:2], model.raw(x, net)[:2]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        model.head.cls[0][-1].bias.add_(1.0)  # an in-place update, as an optimizer step makes
    assert model.inference_net() is not net
    with torch.no_grad():
        want = model.raw(x)[0]
    torch.testing.assert_close(model.raw(x, model.inference_net())[0], want, rtol=1e-4, atol=1e-4)


def test_a_wrong_fold_falls_back_to_the_model_with_a_warning():
    model = tiny().eval()
    net = model.inference_net()
    with torch.no_grad():
        net.head.cls[0][-1].bias.add_(1.0)  # as a norm that did not follow its convolution would leave it
    x = torch.rand(1, 3, 64, 64)
    with pytest.warns(UserWarning, match="without folding"):
        assert verified(model, net, lambda n: model.raw(x, n)[:2], "anchor_free") is model


def test_postprocess_keeps_the_best_box_per_class_and_threshold():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.02, 0.03]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 10, 10], [50.0, 50, 60, 60]])
    b, s, labels = postprocess(scores, boxes, 0.05, 0.5, 1000, 100)
    # class 0: box 0 (0.9) suppresses box 1 (0.8, IoU 81 / 100); class 1: box 1 (0.7) suppresses box 0 (0.1);
    # box 2 is below 0.05 in both classes
    torch.testing.assert_close(s, torch.tensor([0.9, 0.7]))
    assert labels.tolist() == [0, 1]
    torch.testing.assert_close(b, boxes[:2])
    # a looser NMS keeps the overlapping pairs
    assert postprocess(scores, boxes, 0.05, 0.9, 1000, 100)[1].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.1])


@pytest.mark.parametrize("power", [1.0, 3.0])
def test_box_voting_averages_what_each_kept_box_suppresses(power: float):
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.02, 0.03]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 10, 10], [50.0, 50, 60, 60]])
    b, s, labels = postprocess(scores, boxes, 0.05, 0.5, 1000, 100, box_voting=power)
    # the same detections as plain NMS, each box now the mean of its class's pair, weighted by score^power:
    # class 0 (0.9, 0.8), class 1 (0.7, 0.1); box 2 is under the threshold and votes for nothing
    torch.testing.assert_close(s, torch.tensor([0.9, 0.7]))
    assert labels.tolist() == [0, 1]
    for row, (w0, w1) in enumerate([(0.9, 0.8), (0.1, 0.7)]):
        w0, w1 = w0**power, w1**power
        torch.testing.assert_close(b[row], (w0 * boxes[0] + w1 * boxes[1]) / (w0 + w1))
    # boxes that do not overlap enough are not averaged
    torch.testing.assert_close(postprocess(scores, boxes, 0.05, 0.9, 1000, 100, box_voting=power)[0],
                               boxes[[0, 1, 1, 0]])


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="cls_loss"):
        AnchorFree(AnchorFreeConfig(num_classes=2, pretrained="none", cls_loss="focal"))
    with pytest.raises(ConfigError, match="head must be one of dense, light, depthwise"):
        AnchorFree(AnchorFreeConfig(num_classes=2, pretrained="none", head="separable"))
    for head, kernel in (("dense", 5), ("depthwise", 7)):
        with pytest.raises(ConfigError, match="head_kernel must be 3 or 5"):
            AnchorFree(AnchorFreeConfig(num_classes=2, pretrained="none", head=head, head_kernel=kernel))
    with pytest.raises(ConfigError, match="backbone_lr is a fraction"):
        AnchorFree(AnchorFreeConfig(num_classes=2, pretrained="none", backbone_lr=0.0))
    with pytest.raises(ConfigError, match="box_voting must be 0"):
        AnchorFree(AnchorFreeConfig(num_classes=2, pretrained="none", box_voting=-1.0))
    with pytest.raises(ConfigError, match="iou_power must be at least 1"):
        AnchorFree(AnchorFreeConfig(num_classes=2, pretrained="none", iou_power=0.5))


@pytest.mark.parametrize("kind, k", [("light", 3), ("depthwise", 3), ("depthwise", 5)])
def test_light_heads_are_depthwise_separable_and_fold(kind: str, k: int):
    """``light`` makes the classification branch's 3x3 layers depthwise-separable (YOLOv10), ``depthwise`` both
    branches' (PP-PicoDet); each layer's multiply-adds drop to ``k^2 d + d^2`` from ``9 d^2`` per point
    (``k``: ``head_kernel``), the outputs keep their shapes, the model trains, and predict's folded copy still
    computes the model."""
    d = 16
    dense = tiny(neck_channels=d, head_convs=2)
    light = tiny(neck_channels=d, head_convs=2, head=kind, head_kernel=k)

    def per_point(branch: torch.nn.Module) -> int:  # multiply-adds per point of a branch's conv layers
        return sum(m.weight.numel() for m in branch.modules() if isinstance(m, torch.nn.Conv2d))

    for name in ("cls", "box"):
        separable = kind == "depthwise" or name == "cls"
        want = 2 * (k * k * d + d * d) if separable else 2 * 9 * d * d
        got = per_point(getattr(light.head, name)[0][:-1])
        assert got == want and (got < per_point(getattr(dense.head, name)[0][:-1])) == separable
    x = torch.rand(2, 3, 64, 64)
    for a, b in zip(dense.eval()(x), light.eval()(x)):
        assert a.shape == b.shape
    light.train()
    losses = light.loss(x, [target([[8, 8, 40, 40]], [0]), target([], [])])
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in light.parameters() if p.grad is not None)
    randomise_norms(light)
    light.eval()
    with torch.no_grad():
        for want, got in zip(light.raw(x)[:2], light.raw(x, light.inference_net())[:2]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_varifocal_trains_too():
    model = tiny(cls_loss="varifocal")
    losses = model.loss(torch.rand(1, 3, 64, 64), [target([[8, 8, 40, 40]], [0])])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["cls"] > 0


def test_backbone_lr_puts_the_backbone_in_its_own_groups():
    model = tiny(backbone_lr=0.1)
    groups = model.param_groups(1e-3, 5e-4)
    backbone = {id(p) for p in model.backbone.parameters()}
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters() if p.requires_grad)  # each once
    for g in groups:
        inside = {id(p) in backbone for p in g["params"]}
        assert len(inside) == 1  # a group is all backbone or all neck and head
        assert g["lr"] == pytest.approx(1e-4 if inside == {True} else 1e-3)
        assert g["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in g["params"]) else 5e-4)
    assert not any(id(p) in backbone for p in groups[0]["params"])  # the logged group 0 is the head's
    # at 1 the base model's two groups: runs saved before the setting resume
    assert [len(g["params"]) for g in tiny().param_groups(1e-3, 5e-4)] == \
        [len(g["params"]) for g in ZirModel.param_groups(tiny(), 1e-3, 5e-4)]


def test_power_iou_loss_changes_only_the_box_term():
    images, targets = torch.rand(1, 3, 64, 64), [target([[8, 8, 40, 40]], [0])]
    ciou, power = tiny().loss(images, targets), tiny(iou_power=3.0).loss(images, targets)
    assert torch.isfinite(power["box"]) and power["box"].item() != pytest.approx(ciou["box"].item(), rel=1e-3)
    torch.testing.assert_close(power["cls"], ciou["cls"])
    torch.testing.assert_close(power["dfl"], ciou["dfl"])


def test_forward_exports_as_a_plain_graph():
    """``torch.export`` of ``forward`` gives the same outputs; DFL's expectation is a softmax and a matmul."""
    model = tiny().eval()
    x = torch.rand(1, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    ops = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert {"aten.softmax.int", "aten.matmul.default"} <= ops and not any("gather" in op for op in ops)
    for got, want in zip(exported.module()(x), model(x)):
        torch.testing.assert_close(got, want)


def test_refine_samples_keep_good_boxes_and_jitter_the_objects():
    gt = torch.tensor([[10.0, 10, 50, 30]])
    pred = torch.tensor([[10.0, 10, 50, 31], [30.0, 10, 70, 30]])  # IoU 40/41 and 20/60 with the object
    torch.manual_seed(0)
    boxes, targets = refine_samples(pred, gt.expand(2, 4), gt, copies=3, jitter=0.0, min_iou=0.4)
    torch.testing.assert_close(boxes, torch.cat([pred[:1], gt.repeat(3, 1)]))  # the IoU 1/3 box is left out
    torch.testing.assert_close(targets, gt.repeat(4, 1))
    boxes, _ = refine_samples(pred[:0], gt[:0], gt, copies=200, jitter=0.1)
    # centres move by 0.1 of the side on average (standard deviation), sides scale by exp(N(0, 0.1))
    assert (boxes[:, 0] + boxes[:, 2] - 60).div(2 * 40).std().item() == pytest.approx(0.1, rel=0.2)
    assert (boxes[:, 3] - boxes[:, 1]).div(20).log().std().item() == pytest.approx(0.1, rel=0.2)


def test_refiner_moves_the_best_boxes_by_its_deltas():
    """An untrained refiner leaves predict's boxes as they were; one whose last layer says ``dx = 0.1`` of
    the width (Cascade's weight 20: a delta of 2) moves each image's best ``refine`` boxes by that, and no
    other; the loss trains it and reaches the neck."""
    model = tiny(refine=2).eval()
    model.cfg.score_thresh = 0.01
    images = torch.rand(2, 3, 64, 64)
    plain = copy.deepcopy(model)
    plain.refiner = None
    before, after = plain.predict(images), model.predict(images)
    assert all(len(p.boxes) > 2 for p in before)
    for b, a in zip(before, after):
        torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=1e-4)
    with torch.no_grad():
        model.refiner.mlp[-1].bias.copy_(torch.tensor([2.0, 0, 0, 0, 0]))
    for b, a in zip(before, model.predict(images)):
        w = b.boxes[:2, 2] - b.boxes[:2, 0]
        want = b.boxes[:2] + torch.stack([w, 0 * w, w, 0 * w], 1) * 0.1
        torch.testing.assert_close(a.boxes[:2], want.clamp(max=64), rtol=0, atol=1e-3)  # clipped to the image
        torch.testing.assert_close(a.boxes[2:], b.boxes[2:])
        torch.testing.assert_close(a.scores, b.scores)
    # refine_score: the predicted IoU (0.5 here: a zero logit) into the refined detections' scores, sorted again
    model.cfg.refine_score = 0.5
    for b, a in zip(before, model.predict(images)):
        want = torch.cat([(b.scores[:2] * 0.5).sqrt(), b.scores[2:]])
        torch.testing.assert_close(a.scores, want.sort(descending=True).values)
        assert sorted(a.boxes[:, 0].tolist()) == pytest.approx(sorted((b.boxes[:2, 0] + 0.1 * (b.boxes[:2, 2] - b.boxes[:2, 0])).tolist() + b.boxes[2:, 0].tolist()), abs=1e-3)
    model.cfg.refine_score = 0.0
    model.train()
    losses = model.loss(images, [target([[8, 8, 40, 40]], [0]), target([[20, 4, 60, 50]], [1])])
    assert losses["refine"] > 0 and losses["refine_iou"] > 0
    losses["refine"].backward()  # the zero last layer passes no gradient on yet: one step, then it does
    assert model.refiner.mlp[-1].weight.grad.abs().sum() > 0
    torch.optim.SGD(model.refiner.parameters(), lr=0.1).step()
    model.zero_grad()
    model.loss(images, [target([[8, 8, 40, 40]], [0]), target([[20, 4, 60, 50]], [1])])["refine"].backward()
    assert model.refiner.mlp[1].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.neck.parameters())
    # an image without objects gives the refiner nothing to learn from, and no NaN
    empty = model.loss(images[:1], [target([], [])])
    assert empty["refine"] == 0 and empty["refine_iou"] == 0


def test_refiner_joins_the_head_groups_and_is_refused_below_zero():
    model = tiny(refine=5, backbone_lr=0.1)
    head = [id(p) for p in model.param_groups(1e-3, 5e-4)[0]["params"] + model.param_groups(1e-3, 5e-4)[1]["params"]]
    assert {id(p) for p in model.refiner.parameters()} <= set(head)
    assert tiny().refiner is None and "refiner" not in str(tiny().state_dict().keys())
    with pytest.raises(ConfigError, match="refine is the number of boxes"):
        AnchorFree(AnchorFreeConfig(num_classes=2, pretrained="none", refine=-1))
    with pytest.raises(ConfigError, match="refine_score weighs"):
        AnchorFree(AnchorFreeConfig(num_classes=2, pretrained="none", refine=5, refine_score=1.5))


def test_refine_loss_by_hand():
    """One training box [0, 0, 20, 20] for the object [10, 0, 30, 20] (IoU 1/3): the target deltas are Cascade's
    ``(20 * 10 / 20, 0, 0, 0)``, so a refiner that says ``0`` pays smooth L1's ``10 - 0.5 / 9``; its IoU logit 1
    against the target 1/3 pays ``1/3 softplus(-1) + 2/3 softplus(1)``."""
    model = tiny(refine=1)
    with torch.no_grad():
        model.refiner.mlp[-1].bias.copy_(torch.tensor([0.0, 0, 0, 0, 1]))
    feature = torch.rand(1, 16, 8, 8)
    box_term, iou_term = model.refine_loss(feature, [(torch.tensor([[0.0, 0, 20, 20]]), torch.tensor([[10.0, 0, 30, 20]]))])
    assert box_term.item() == pytest.approx(10 - 0.5 / 9)
    softplus = torch.nn.functional.softplus
    assert iou_term.item() == pytest.approx((softplus(torch.tensor(-1.0)) / 3 + 2 * softplus(torch.tensor(1.0)) / 3).item())
