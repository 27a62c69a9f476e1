"""Faster R-CNN: shapes of every stage, gradients, overfitting, RoI pooling, empty images, crowds, and the
mapping of predictions back to the input's pixels. Tiny configs (no pretrained weights, 128 px)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, roi_align

from zir.data.contract import Target
from zir.data.synth import SynthDataset
from zir.errors import ConfigError
from zir.models import build_model, model_config
from zir.models.detect.faster_rcnn import FasterRCNNConfig, build
from zir.models.detect.roi_heads import RoIHeadsConfig, RoIPooler
from zir.models.detect.rpn import RPNConfig
from zir.models.detect.structures import GroundTruth, ground_truth, match_to_ground_truth
from zir.models.fpn import FPN
from zir.models.inference import FOLDABLE_NORMS
from zir.ops.matching import BELOW_LOW, BETWEEN

SIZE = 128


def tiny_config(roi_op: str = "align", **kw) -> FasterRCNNConfig:
    args = dict(num_classes=4, image_size=SIZE, backbone="mobilenetv3_small_050", pretrained="none",
                fpn_channels=32,
                rpn=RPNConfig(anchor_sizes=((16,), (32,), (64,), (128,)), pre_nms_top_n=(300, 200),
                              post_nms_top_n=(150, 50)),
                roi_heads=RoIHeadsConfig(op=roi_op, hidden=64, batch_size=64))
    args.update(kw)
    return FasterRCNNConfig(**args)


def synth_batch(n: int = 2, seed: int = 3) -> tuple[torch.Tensor, list[Target]]:
    ds = SynthDataset(task="detect", n=n, seed=seed, image_size=SIZE, max_objects=3, min_scale=0.25, max_scale=0.5)
    samples = [ds[i] for i in range(n)]
    images = torch.stack([s["image"].float() / 255 for s in samples])
    targets = [Target(size=(SIZE, SIZE), boxes=s["boxes"].as_subclass(torch.Tensor), labels=s["labels"],
                      iscrowd=s["iscrowd"]) for s in samples]
    return images, targets




@pytest.fixture(scope="module")
def trained():
    """A tiny model overfitted on two synthetic images, with its loss history."""
    torch.manual_seed(0)
    model = build(tiny_config())
    images, targets = synth_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(80):
        losses = model.loss(images, targets)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    return model.eval(), images, targets, history


def test_fpn_levels_have_input_strides_and_one_pooled_level():
    fpn = FPN([8, 16, 24], [8, 16, 32], out_channels=12)
    feats = [torch.randn(2, 8, 13, 17), torch.randn(2, 16, 7, 9), torch.randn(2, 24, 4, 5)]  # odd sizes
    out = fpn(feats)
    assert fpn.strides == [8, 16, 32, 64]
    assert [tuple(o.shape) for o in out] == [(2, 12, 13, 17), (2, 12, 7, 9), (2, 12, 4, 5), (2, 12, 2, 3)]


def test_shapes_of_every_stage():
    cfg = tiny_config(backbone="efficientnet_lite0")  # the default backbone
    model = build(cfg).eval()
    images = [torch.rand(3, 96, 128), torch.rand(3, 128, 80)]
    x, sizes = model.prepare(images)
    assert tuple(x.shape) == (2, 3, 128, 128) and sizes == [(96, 128), (128, 80)]
    big, big_sizes = model.prepare([torch.rand(3, 300, 417)])  # longer side -> 128, padded to 32s
    assert big_sizes == [(92, 128)] and tuple(big.shape) == (1, 3, 96, 128) and (big[..., 92:, :] == 0).all()
    features = model.features(x)
    assert model.fpn.strides == [8, 16, 32, 64]
    assert [tuple(f.shape) for f in features] == [(2, 32, 128 // s, 128 // s) for s in (8, 16, 32)] + [(2, 32, 2, 2)]
    A = len(cfg.rpn.aspect_ratios) * len(cfg.rpn.anchor_sizes[0])
    anchors = model.rpn.anchors([f.shape[-2:] for f in features], x.device)
    assert [len(a) for a in anchors] == [f.shape[-2] * f.shape[-1] * A for f in features]
    out = model.rpn(features, sizes)
    N = sum(len(a) for a in anchors)
    assert out.objectness.shape == (2, N) and out.deltas.shape == (2, N, 4) and out.anchors.shape == (N, 4)
    assert all(len(p) <= cfg.rpn.post_nms_top_n[1] for p in out.proposals)
    for p, (h, w) in zip(out.proposals, sizes):  # clipped to each image's own size
        assert (p[:, 2] <= w).all() and (p[:, 3] <= h).all() and (p >= 0).all()
    logits, deltas = model.roi_heads(features, out.proposals)
    R = sum(len(p) for p in out.proposals)
    assert logits.shape == (R, cfg.num_classes + 1) and deltas.shape == (R, 4 * cfg.num_classes)
    model.train()
    assert all(len(p) <= cfg.rpn.post_nms_top_n[0] for p in model.rpn(features, sizes).proposals)


def test_every_parameter_gets_a_gradient_from_the_four_losses():
    torch.manual_seed(0)
    model = build(tiny_config())
    images, targets = synth_batch()
    losses = model.loss(images, targets)
    assert set(losses) == {"rpn_objectness", "rpn_box", "roi_cls", "roi_box"}
    assert all(v.dtype == torch.float32 and v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


def test_overfitting_two_images_lowers_the_loss_and_finds_the_objects(trained):
    model, images, targets, history = trained
    assert history[-1] < 0.4 * history[0], history
    predictions = model.predict(list(images))
    for pred, target in zip(predictions, targets):
        assert len(pred.boxes) > 0
        boxes = target.boxes
        same_class = target.labels[:, None] == pred.labels[None, :]
        best = (box_iou(boxes, pred.boxes) * same_class).max()
        assert best > 0.5


def test_predict_maps_boxes_back_to_the_input_pixels(trained):
    model, images, targets, _ = trained
    # the same picture at 2.5x the resolution; the model brings it to its 128 px working frame itself
    big = F.interpolate(images[:1], size=(320, 320), mode="bilinear", align_corners=False)
    small = F.interpolate(big, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    small_pred, big_pred = model.predict([small[0], big[0]])
    assert len(small_pred.boxes) > 0
    torch.testing.assert_close(big_pred.boxes, small_pred.boxes * 2.5, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(big_pred.scores, small_pred.scores)
    # and at that resolution it still finds a training object, in the big image's pixels
    gt = targets[0].boxes * 2.5
    same_class = targets[0].labels[:, None] == big_pred.labels[None, :]
    assert (box_iou(gt, big_pred.boxes) * same_class).max() > 0.5
    # an image of another size and shape: every box lies inside it
    odd = F.interpolate(images[:1], size=(300, 417), mode="bilinear", align_corners=False)[0]
    pred = model.predict(odd)[0]
    assert pred.boxes.shape[1] == 4 and len(pred.boxes) > 0
    assert (pred.boxes >= 0).all() and (pred.boxes[:, 2] <= 417).all() and (pred.boxes[:, 3] <= 300).all()
    assert (pred.scores[:-1] >= pred.scores[1:]).all()


def test_predict_runs_a_folded_copy_of_backbone_and_fpn_that_finds_the_same_boxes(trained):
    """predict's backbone and FPN are a copy with BatchNorm folded into the convolutions, channels-last
    (``zir.models.inference``): the same detections as the model's own layers, kept out of ``state_dict``,
    built again after a weight changes."""
    model, images, _, _ = trained
    net = model.inference_net()
    assert not any(isinstance(m, FOLDABLE_NORMS) for m in net.modules())
    assert any(isinstance(m, FOLDABLE_NORMS) for m in model.backbone.modules())  # the trained norms are still there
    assert model.inference_net() is net
    assert not any(k.startswith("_inference") for k in model.state_dict())
    plain = copy.deepcopy(model)
    plain.inference_net = lambda: None  # the model's own layers
    fast, slow = model.predict(list(images)), plain.predict(list(images))
    for a, b in zip(fast, slow):
        assert len(a.boxes) > 0 and a.labels.tolist() == b.labels.tolist()
        torch.testing.assert_close(a.boxes, b.boxes, rtol=1e-4, atol=1e-2)
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        model.fpn.output[0].bias.add_(0.0)  # an in-place update, as an optimizer step makes
    assert model.inference_net() is not net


def test_roi_pool_runs_and_trains():
    torch.manual_seed(0)
    model = build(tiny_config(roi_op="pool"))
    images, targets = synth_batch(n=1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = last = None
    for _ in range(8):
        total = sum(model.loss(images, targets).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        first = total.item() if first is None else first
        last = total.item()
    assert last < first
    assert isinstance(model.eval().predict(images)[0].boxes, torch.Tensor)


def test_empty_images_give_finite_losses_and_train():
    torch.manual_seed(0)
    model = build(tiny_config())
    images, targets = synth_batch()
    targets[1] = Target(size=(SIZE, SIZE))  # no boxes, labels or crowds
    losses = model.loss(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    empty = [targets[1]]
    losses = model.loss(images[1:], empty)  # a batch without any object
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["rpn_box"] == 0 and losses["roi_box"] == 0
    sum(losses.values()).backward()


def test_crowd_and_degenerate_boxes_are_never_positives():
    target = Target(size=(128, 128), boxes=torch.tensor([[10.0, 10, 50, 50], [60, 60, 120, 120], [5, 5, 5, 30]]),
                    labels=torch.tensor([1, 2, 3]), iscrowd=torch.tensor([False, True, False]))
    gt = ground_truth(target, (64, 64))  # also resized to a 64 px working frame
    assert torch.equal(gt.boxes, torch.tensor([[5.0, 5, 25, 25]])) and gt.labels.tolist() == [1]
    assert torch.equal(gt.crowd, torch.tensor([[30.0, 30, 60, 60]])) and gt.index.tolist() == [0]
    candidates = torch.tensor([[5.0, 5, 25, 25],    # the object
                               [30, 30, 60, 60],    # exactly the crowd region
                               [35, 35, 50, 50],    # inside the crowd region
                               [0, 40, 20, 60]])    # plain background
    matched = match_to_ground_truth(gt, candidates, 0.5, 0.5)
    assert matched.tolist() == [0, BETWEEN, BETWEEN, BELOW_LOW]
    # the RoI heads' sampling: the crowd box itself is not added to the proposals nor drawn as a positive
    model = build(tiny_config(num_classes=4))
    sampled = model.roi_heads.sample([candidates], [gt])
    fg = sampled.labels[0] > 0
    assert box_iou(sampled.proposals[0][fg], gt.crowd).max() < 0.5
    assert sampled.labels[0][fg].tolist() == [2, 2]  # the candidate and the added ground truth: class 1 + 1


def test_roi_pooler_picks_the_fpn_level_of_equation_1():
    torch.manual_seed(0)
    feats = [torch.randn(1, 4, 64 // s, 64 // s) for s in (1, 2, 4)]  # strides 8, 16, 32 of 512 px
    pooler = RoIPooler([8, 16, 32], "align", output_size=3)
    # sqrt(area) 112 -> k = floor(4 + log2(112 / 224)) = 3; 224 -> 4; 448 -> 5; 20 -> 0, clamped to 3
    boxes = torch.tensor([[10.0, 20, 122, 132], [0, 0, 224, 224], [30, 40, 478, 488], [5, 5, 25, 25]])
    out = pooler(feats, [boxes])
    for i, level in enumerate([0, 1, 2, 0]):
        rois = torch.cat([torch.zeros(1), boxes[i]])[None]
        expected = roi_align(feats[level], rois, 3, 1 / [8, 16, 32][level], 2, aligned=True)
        torch.testing.assert_close(out[i:i + 1], expected)


def test_registered_and_built_from_the_registry():
    model = build_model("faster_rcnn", 3, 96, {"pretrained": "none", "fpn_channels": 16, "box_hidden": 32})
    assert model.task == "detect" and model.cfg.image_size == 96 and model.roi_heads.predictor.cls_score.out_features == 4


def test_rpn_matches_torchvision_on_a_fixed_case():
    """Same anchors (offset 0), head weights and thresholds: the same proposals and the same losses."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.rpn import RegionProposalNetwork
    from torchvision.models.detection.rpn import RPNHead as TVHead

    from zir.models.detect.rpn import RPN

    torch.manual_seed(0)
    sizes, ratios = ((16, 24), (32, 48)), ((0.5, 1.0, 2.0),) * 2
    ours = RPN(8, [8, 16], sizes, ratios, pre_nms_top_n=(50, 40), post_nms_top_n=(30, 20),
               batch_size_per_image=10**6, anchor_offset=0.0)
    for p in ours.head.parameters():  # a head that is not all zeros, so scores differ
        torch.nn.init.normal_(p, std=0.3)
    head = TVHead(8, 6)
    head.conv[0][0].load_state_dict(ours.head.conv.state_dict())
    head.cls_logits.load_state_dict(ours.head.cls_logits.state_dict())
    head.bbox_pred.load_state_dict(ours.head.bbox_pred.state_dict())
    theirs = RegionProposalNetwork(AnchorGenerator(sizes, ratios), head, 0.7, 0.3, 10**6, 0.5,
                                   dict(training=50, testing=40), dict(training=30, testing=20), 0.7)
    features = [torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)]
    image_sizes = [(64, 64), (60, 50)]
    images = ImageList(torch.zeros(2, 3, 64, 64), image_sizes)
    boxes = [torch.tensor([[4.0, 6, 30, 40], [20, 20, 60, 50]]), torch.tensor([[10.0, 5, 40, 30]])]
    for mode in (False, True):
        ours.train(mode), theirs.train(mode)
        targets = [{"boxes": b} for b in boxes] if mode else None
        tv_props, tv_losses = theirs(images, dict(zip("ab", features)), targets)
        out = ours(features, image_sizes)
        for p, q in zip(out.proposals, tv_props):
            torch.testing.assert_close(p, q)
    gts = [GroundTruth(b, torch.zeros(len(b), dtype=torch.int64), torch.zeros(0, 4), torch.arange(len(b)))
           for b in boxes]
    losses = ours.loss(out, gts)
    torch.testing.assert_close(losses["rpn_objectness"], tv_losses["loss_objectness"])
    torch.testing.assert_close(losses["rpn_box"], tv_losses["loss_rpn_box_reg"])
    assert math.isfinite(losses["rpn_box"].item()) and losses["rpn_box"] > 0


def test_multi_scale_training_varies_the_frame_and_prediction_does_not():
    cfg = FasterRCNNConfig(num_classes=2, image_size=128, backbone="mobilenetv3_small_050", pretrained="none",
                           fpn_channels=16, roi_heads=RoIHeadsConfig(hidden=32), train_scales=(0.5, 1.0))
    model = build(cfg)
    image = [torch.rand(3, 100, 80)]
    torch.manual_seed(0)
    model.train()
    frames = {model.prepare(image)[1][0] for _ in range(12)}
    assert frames == {(64, 51), (128, 102)}
    model.eval()
    assert {model.prepare(image)[1][0] for _ in range(5)} == {(128, 102)}


# --------------------------------------------------------------------------------------------------
# The config: sections, their old flat names, dotted keys


def test_flat_names_nested_sections_and_dotted_keys_build_the_same_config():
    flat = model_config("faster_rcnn", 3, 96, {"rpn_nms_iou": 0.6, "box_hidden": 32, "roi_op": "pool",
                                               "anchor_sizes": [[16], [32], [64], [128]]})
    nested = model_config("faster_rcnn", 3, 96, {"rpn": {"nms_iou": 0.6, "anchor_sizes": [[16], [32], [64], [128]]},
                                                 "roi_heads": {"hidden": 32, "op": "pool"}})
    dotted = model_config("faster_rcnn", 3, 96, {"rpn.nms_iou": 0.6, "roi_heads.hidden": 32, "roi_heads.op": "pool",
                                                 "rpn.anchor_sizes": [[16], [32], [64], [128]]})
    assert flat == nested == dotted
    assert isinstance(flat.rpn, RPNConfig) and flat.rpn.nms_iou == 0.6 and flat.roi_heads.op == "pool"
    assert flat.rpn.batch_size == RPNConfig().batch_size  # what is not given keeps its default
    assert flat.num_classes == 3 and flat.image_size == 96


def test_a_section_given_in_part_keeps_the_models_own_defaults_for_the_rest():
    cfg = model_config("fast_rcnn", 3, 96, {"box_hidden": 32})  # Fast R-CNN: RoI pooling, 64 RoIs, NMS 0.3
    assert (cfg.roi_heads.hidden, cfg.roi_heads.op, cfg.roi_heads.batch_size, cfg.roi_heads.nms_iou) == (32, "pool", 64, 0.3)
    assert model_config("faster_rcnn", 3, 96, {"box_hidden": 32}).roi_heads.op == "align"


@pytest.mark.parametrize("args, message", [
    ({"rpn_nms_id": 0.6}, r"no settings \['rpn_nms_id'\].*'rpn'.*old flat names.*'rpn_nms_iou'"),
    ({"rpn": {"nms_id": 0.6}}, r"no settings \['rpn.nms_id'\]; 'rpn' has .*'nms_iou'"),
    ({"rpn.nms_id": 0.6}, r"no settings \['rpn.nms_id'\]"),
    ({"rpn_nms_iou": 0.6, "rpn": {"nms_iou": 0.5}}, "given twice"),
    ({"rpn": 0.6}, "rpn is a section"),
    ({"fpn_channels": {"x": 1}}, "single setting"),
])
def test_config_errors_name_the_key_and_list_the_known_ones(args, message):
    with pytest.raises(ConfigError, match=message):
        model_config("faster_rcnn", 3, 96, args)


def test_bad_section_values_raise_config_errors_before_training():
    with pytest.raises(ConfigError, match="roi_op"):
        build(tiny_config(roi_op="max"))
    with pytest.raises(ConfigError, match="anchor_sizes"):
        build(tiny_config(rpn=RPNConfig(anchor_sizes=((16,), (32,)))))
