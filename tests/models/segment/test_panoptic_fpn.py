"""Panoptic FPN: the merge rules on hand-made cases, thing/stuff class bookkeeping, the semantic branch,
overfitting one synthetic image, predictions at the input's size, and a run through the engine that writes
COCO panoptic files a reader loads back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zir.api import predict_to_folder
from zir.config import load_config
from zir.data.contract import DetectionPrediction, PanopticPrediction
from zir.data.formats.panoptic import read_coco_panoptic
from zir.data.image_io import read_panoptic_png, save_png
from zir.data.synth import PANOPTIC_CLASSES, SynthDataset
from zir.engine.data import collate, eval_transform
from zir.engine.trainer import train
from zir.errors import ConfigError
from zir.models.detect.faster_rcnn import thing_targets
from zir.models.detect.roi_heads import RoIHeadsConfig
from zir.models.segment.mask_rcnn import MaskHeadConfig
from zir.models.segment.panoptic_fpn import (
    MergeConfig,
    PanopticFPNConfig,
    SemanticHead,
    SemanticHeadConfig,
    build,
    merge_panoptic,
)

SIZE = 64
THINGS = (True,) * 4 + (False,) * 2  # zir's synthetic panoptic classes: four shapes, then sky and ground


def tiny(**kw) -> PanopticFPNConfig:
    args = dict(num_classes=6, thing_classes=THINGS, image_size=SIZE, pretrained="none", fpn_channels=16,
                roi_heads=RoIHeadsConfig(hidden=32, batch_size=64), mask_head=MaskHeadConfig(channels=16),
                semantic_head=SemanticHeadConfig(channels=16))
    return PanopticFPNConfig(**{**args, **kw})


def synth_batch(n: int = 1, seed: int = 3):
    ds = SynthDataset(task="panoptic", n=n, seed=seed, image_size=SIZE, transform=eval_transform("panoptic", SIZE))
    return collate([ds[i] for i in range(n)])


# --------------------------------------------------------------------------------------------------
# Merge


def _instances(masks, scores, labels):
    masks = torch.stack(masks)
    return DetectionPrediction(boxes=torch.zeros(len(scores), 4), scores=torch.tensor(scores),
                               labels=torch.tensor(labels), masks=masks)


def test_merge_follows_score_order_overlap_and_stuff_rules():
    H = W = 10
    a = torch.zeros(H, W, dtype=torch.bool)
    a[0:4, 0:4] = True  # 16 px, best score
    b = torch.zeros(H, W, dtype=torch.bool)
    b[2:6, 2:6] = True  # 16 px, 4 of them under a: 25% taken -> kept with its 12 free pixels
    c = torch.zeros(H, W, dtype=torch.bool)
    c[0:4, 1:5] = True  # 16 px, 12 under a: 75% taken > 0.5 -> dropped
    d = torch.zeros(H, W, dtype=torch.bool)
    d[8:10, 8:10] = True  # below the score threshold -> dropped
    inst = _instances([c, a, d, b], [0.8, 0.9, 0.3, 0.7], [1, 0, 2, 3])
    # semantic branch classes: 0 -> stuff id 4 (sky), 1 -> stuff id 5 (ground), 2 -> "thing"
    semantic = torch.full((H, W), 2)
    semantic[:, 6:] = 0  # 40 px of sky, 4 of them... none under things
    semantic[9, 0] = 1  # one pixel of ground: under the 0.05 x 100 = 5 px minimum -> dropped
    cfg = MergeConfig(instance_score_thresh=0.5, overlap_thresh=0.5, stuff_min_area=0.05)
    out = merge_panoptic(inst, semantic, torch.tensor([4, 5]), cfg)
    assert isinstance(out, PanopticPrediction) and out.ids.shape == (H, W)
    assert [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in out.segments] == [
        (1, 0, True, 16), (2, 3, True, 12), (3, 4, False, 40)]
    expected = torch.zeros(H, W, dtype=torch.long)
    expected[b] = 2
    expected[a] = 1
    expected[:, 6:] = 3
    torch.testing.assert_close(out.ids, expected)
    assert out.segments[0]["score"] == pytest.approx(0.9)


def test_merge_of_nothing_is_all_unlabelled():
    inst = DetectionPrediction(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                               torch.zeros(0, 5, 7, dtype=torch.bool))
    out = merge_panoptic(inst, torch.full((5, 7), 2), torch.tensor([4, 5]), MergeConfig())
    assert out.segments == [] and not out.ids.any()


# --------------------------------------------------------------------------------------------------
# Classes and branches


def test_thing_and_stuff_bookkeeping():
    model = build(tiny())
    assert model.task == "panoptic" and list(model.heads) == ["mask", "semantic"]
    assert model.thing_ids.tolist() == [0, 1, 2, 3] and model.heads.semantic.stuff_ids.tolist() == [4, 5]
    # the instance branch knows only the things: 4 + background box classes, 4 masks
    assert model.roi_heads.predictor.cls_score.out_features == 5 and model.heads.mask.logits.out_channels == 4
    assert model.heads.semantic.to_semantic[[0, 3, 4, 5, 255]].tolist() == [2, 2, 0, 1, 255]
    sample = {"labels": torch.tensor([5, 1, 4, 3]), "boxes": torch.arange(16.0).view(4, 4),
              "iscrowd": torch.tensor([False, False, False, True]), "masks": torch.zeros(4, 3, 3), "size": (3, 3),
              "semantic": torch.zeros(3, 3, dtype=torch.int64)}
    things = thing_targets(sample, model.to_thing)
    assert things["labels"].tolist() == [1, 3] and things["boxes"][:, 0].tolist() == [4.0, 12.0]
    assert things["iscrowd"].tolist() == [False, True] and things["masks"].shape == (2, 3, 3)
    assert things["semantic"] is sample["semantic"] and things["size"] == (3, 3)  # for the semantic head


def test_stuff_classes_may_come_in_any_order():
    model = build(tiny(num_classes=4, thing_classes=(False, True, False, True)))
    assert model.thing_ids.tolist() == [1, 3] and model.heads.semantic.stuff_ids.tolist() == [0, 2]
    assert model.heads.semantic.to_semantic[:4].tolist() == [0, 2, 1, 2]


def test_build_needs_thing_flags_for_every_class():
    with pytest.raises(ConfigError, match="thing_classes"):
        build(tiny(thing_classes=()))
    with pytest.raises(ConfigError, match="no thing class"):
        build(tiny(num_classes=2, thing_classes=(False, False)))


def test_semantic_head_sums_levels_at_the_finest_stride():
    head = SemanticHead(16, [8, 16, 32], SemanticHeadConfig(channels=8), (True, False, False), MergeConfig())
    feats = [torch.rand(2, 16, 12, 10), torch.rand(2, 16, 6, 5), torch.rand(2, 16, 3, 3)]  # odd sizes too
    assert head(feats).shape == (2, 3, 12, 10)  # 2 stuff classes + "thing"
    assert head(feats + [torch.rand(2, 16, 2, 2)]).shape == (2, 3, 12, 10)  # the RPN's pooled level is not read
    assert len(head.levels[0]) == 3 and len(head.levels[2]) == 8  # 1 stage; 2 stages with upsampling


# --------------------------------------------------------------------------------------------------
# Training and prediction


@pytest.fixture(scope="module")
def overfitted():
    """A tiny model trained on one synthetic panoptic image; the loss terms at every step."""
    torch.manual_seed(0)
    model = build(tiny())
    batch = synth_batch(1, seed=5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    model.train()
    for _ in range(30):
        losses = model.loss(batch.images, batch.targets)
        history.append({k: v.item() for k, v in losses.items()})
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    return model, batch, history


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = build(tiny())
    batch = synth_batch(2)
    losses = model.loss(batch.images, batch.targets)
    assert set(losses) == {"rpn_objectness", "rpn_box", "roi_cls", "roi_box", "roi_mask", "semantic"}
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_overfitting_one_image_lowers_the_semantic_and_total_loss(overfitted):
    _, _, history = overfitted
    sem = [h["semantic"] for h in history]
    total = [sum(h.values()) for h in history]
    assert sum(sem[-3:]) < 0.5 * sum(sem[:3]), sem
    assert sum(total[-3:]) < 0.6 * sum(total[1:4]), total


def test_predict_gives_segments_at_the_input_size(overfitted):
    model, batch, _ = overfitted
    model.eval()
    big = F.interpolate(batch.images[:1], size=(96, 120), mode="bilinear", align_corners=False)[0]
    preds = model.predict([big, torch.rand(3, 50, 70)])
    for p, shape in zip(preds, [(96, 120), (50, 70)]):
        assert isinstance(p, PanopticPrediction) and p.ids.shape == shape
        ids = set(p.ids.unique().tolist()) - {0}
        assert ids == {s["id"] for s in p.segments}  # every segment has pixels, every id a segment
        for s in p.segments:
            assert s["area"] == int((p.ids == s["id"]).sum())
            assert s["isthing"] == THINGS[s["category_id"]]
    # the overfitted image: sky and ground are found
    assert {4, 5} <= {s["category_id"] for s in preds[0].segments}


def test_training_run_evaluates_pq_and_writes_coco_panoptic_predictions(tmp_path):
    cfg = load_config(overrides=[
        "model=panoptic_fpn", "data=synth:panoptic", "synth_n=6", "image_size=64", "batch_size=3", "epochs=1",
        "threads=1", f"project={tmp_path}", "name=pan",
        "model_args={pretrained: none, fpn_channels: 16, box_hidden: 32, mask_channels: 16, "
        "semantic_channels: 16, roi_batch_size: 64}"])
    run = train(cfg, progress=False).run_dir
    metrics = json.loads((run / "val_metrics.json").read_text())
    assert {"PQ", "SQ", "RQ", "PQ_th", "PQ_st", "PQ/sky"} <= set(metrics)
    assert (run / "report.html").is_file() and (run / "predictions" / "000.png").is_file()
    assert load_config(run / "config.yaml").model_args["thing_classes"] == list(THINGS)

    images = tmp_path / "photos"
    images.mkdir()
    ds = SynthDataset(task="panoptic", n=2, seed=1, image_size=80)
    for i in range(2):
        save_png(ds[i]["image"].permute(1, 2, 0).numpy(), images / f"p{i}.png")
    out = predict_to_folder(run, [images], tmp_path / "out")
    index = read_coco_panoptic(out / "panoptic.json", png_root=out, image_root=images)
    assert index.classes == PANOPTIC_CLASSES and index.thing_classes == list(THINGS)
    assert [r.path.name for r in index.records] == ["p0.png", "p1.png"]
    for rec in index.records:
        assert rec.mask_path.is_file()
        ids = read_panoptic_png(rec.mask_path)
        assert ids.shape == (80, 80)
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in rec.segments}
