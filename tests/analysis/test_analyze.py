"""``zir analyze`` end to end on tiny trained runs of every task it covers, mPC / rPC by hand, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

import zir
from zir.analysis.analyze import corrupted, fmt, mpc_rpc, nms_key, nms_sweep_predict, with_setting
from zir.cli import main
from zir.config import load_config
from zir.engine.predictor import load
from zir.engine.trainer import train
from zir.errors import DataError

COMMON = ["epochs=1", "threads=1", "batch_size=8", "val_split=0.5"]
RUNS = {
    "classify": ["model=convnet", "data=synth:classify", "synth_n=16", "image_size=32",
                 "model_args={width: 8, depth: 2}"],
    "detect": ["model=faster_rcnn", "data=synth:detect", "synth_n=8", "image_size=64",
               "model_args={pretrained: none, fpn_channels: 16, box_hidden: 32}"],
    "segment": ["model=unet", "data=synth:segment", "synth_n=8", "image_size=64", "model_args={depth: 2, width: 8}"],
    "instance": ["model=mask_rcnn", "data=synth:instance", "synth_n=4", "image_size=64",
                 "model_args={pretrained: none, fpn_channels: 16, box_hidden: 32, mask_channels: 16}"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    return {task: train(load_config(overrides=args + COMMON + [f"project={root}", f"name={task}"]), progress=False,
                        on_end=[]).run_dir for task, args in RUNS.items()}


def test_mpc_and_rpc_by_hand():
    table = {"fog": {1: 0.6, 2: 0.4}, "snow": {1: 0.3, 2: math.nan}}  # snow 2: no objects -> left out
    mpc, rpc = mpc_rpc(table, clean=0.8)
    assert mpc == pytest.approx(((0.6 + 0.4) / 2 + 0.3) / 2)  # 0.4: mean over corruptions of their means
    assert rpc == pytest.approx(0.4 / 0.8)
    assert all(math.isnan(v) for v in mpc_rpc({"fog": {1: math.nan}}, 0.8))
    assert math.isnan(mpc_rpc(table, clean=0.0)[1])
    assert fmt(math.nan) == "n/a" and fmt(None) == "n/a" and fmt(0.5, (0.4, 0.6)) == "0.5000 [0.400, 0.600]"


def test_corrupted_predict_seeds_images_by_position():
    seen = []
    predict = corrupted(lambda images: seen.extend(images) or [None] * len(images), "gaussian_noise", 2, seed=0)
    x = torch.full((3, 8, 8), 0.5)
    predict([x, x])
    predict([x])
    again = []
    corrupted(lambda images: again.extend(images) or [None] * len(images), "gaussian_noise", 2)([x, x, x])
    assert all(torch.equal(a, b) for a, b in zip(seen, again))  # batches of 2 + 1 == one batch of 3
    assert not torch.equal(seen[0], seen[1])  # each image its own draw


@pytest.mark.parametrize("task", list(RUNS))
def test_report_for_every_task(runs, task):
    report = zir.analyze(runs[task], quick=True, bootstrap=3, progress=False)
    assert report == runs[task] / "analysis" / "report.html" and report.is_file()
    numbers = json.loads((report.parent / "analysis.json").read_text())  # plain JSON: no NaN
    assert numbers["task"] == task and numbers["images"] > 0
    assert [z["factor"] for z in numbers["zoom"]] == [1.0, 0.5, 0.25]
    assert [r["amount"] for r in numbers["geometric"]["rotation"]] == [0.0, 15.0]
    assert [r["amount"] for r in numbers["geometric"]["translation"]] == [0.0, 0.1]
    corr = numbers["corruptions"]
    assert set(corr["table"]) == {"gaussian_noise", "defocus_blur", "motion_blur", "snow", "fog", "contrast",
                                  "jpeg_compression", "rain"} and corr["severities"] == [3]
    values = [v["3"] for v in corr["table"].values() if v["3"] is not None]
    if values and corr["clean"]:
        assert corr["all"]["mPC"] == pytest.approx(sum(values) / len(values))
        assert corr["all"]["rPC"] == pytest.approx(corr["all"]["mPC"] / corr["clean"])
    # intervals: every cell, and mPC / rPC from the same 3 draws
    assert corr["draws"] == 3 and set(corr["table_ci"]) == set(corr["table"])
    assert all(len(v["3"]) == 2 for v in corr["table_ci"].values())
    assert len(corr["all"]["mPC_ci"]) == 2 and len(corr["all"]["rPC_ci"]) == 2
    page = report.read_text()
    assert "zoom.png" in page and "corruptions.png" in page and (report.parent / "corruptions.png").is_file()
    if task in ("detect", "instance"):
        crowd = numbers["crowding"]
        assert [b["name"] for b in crowd["max_iou"]] == ["alone", "IoU (0, 0.1]", "IoU (0.1, 0.3]", "IoU > 0.3"]
        assert sum(b["objects"] for b in crowd["max_iou"]) == sum(crowd["overlap_count_histogram"])
        assert crowd["nms_key"] == "model_args.roi_heads.nms_iou"
        assert [s["nms_iou"] for s in crowd["nms_sweep"]] == [0.3, 0.7]
        assert numbers["size"]["relative_by"] == "recorded scale"  # synthetic data: its own scale
        assert "synth_overlap" in crowd
        td = numbers["tide"]
        assert td["AP"] == pytest.approx(numbers["clean_all"]["bbox/AP50"])  # the evaluator's own AP50
        assert set(td["dAP_ci"]) == set(td["dAP"]) and len(td["AP_ci"]) == 2
        for b in numbers["size"]["relative"] + crowd["max_iou"]:  # AP intervals on every bin with objects
            assert b["objects"] == 0 or {"bbox/AP", "bbox/AP50"} <= set(b["ci"])
        if task == "instance":  # TIDE on masks too, against the evaluator's mask AP50
            assert numbers["tide_segm"]["AP"] == pytest.approx(numbers["clean_all"]["segm/AP50"])
            assert numbers["tide_segm"]["metric"] == "segm/AP50" and "TIDE (masks)" in page
        assert set(td["counts"]) == {"cls", "loc", "both", "dupe", "bkg", "miss"}
        assert list(td["by_crowding"]) == [b["name"] for b in crowd["max_iou"]]
        drawn = [n for names in td["worst"].values() for n in names]
        assert drawn and all((report.parent / n).is_file() for n in drawn)
        for b in numbers["size"]["relative"] + crowd["max_iou"]:  # an empty bin: no numbers, "n/a" shown
            assert b["objects"] > 0 or b["metrics"] == {}
    else:
        assert "crowding" not in numbers and "tide" not in numbers
        assert any("crowding" in note and "skipped" in note for note in numbers["notes"])


def test_nms_key_and_rebuilt_model_keep_the_weights(runs):
    predictor = load(runs["detect"])
    assert nms_key(predictor.model) == "roi_heads.nms_iou"
    assert nms_key(load(runs["classify"]).model) is None


@pytest.mark.parametrize("task", ["detect", "instance"])
def test_nms_sweep_from_one_pass_equals_rebuilt_models(runs, task):
    # the sweep's predictions from the clean pass's features and boxes are those of a model rebuilt with
    # each threshold, and the clean prediction is the model's own; afterwards the model is as before
    predictor = load(runs[task])
    predictor.model.roi_heads.score_thresh = 0.0  # many boxes, so that NMS has something to do
    torch.manual_seed(1)
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    own = predictor.model.predict(images)
    out = nms_sweep_predict(predictor.model, (0.3, 0.7))(images)
    assert "features" not in vars(predictor.model) and predictor.model.roi_heads.nms_iou == 0.5
    for v in (0.3, 0.7):
        rebuilt = with_setting(predictor, "roi_heads.nms_iou", v)
        rebuilt.roi_heads.score_thresh = 0.0
        for o, p in zip(out, rebuilt.predict(images)):
            assert torch.equal(o[str(v)].boxes, p.boxes) and torch.equal(o[str(v)].scores, p.scores)
            assert task == "detect" or torch.equal(o[str(v)].masks, p.masks)
    for o, p in zip(out, own):
        assert torch.equal(o["clean"].boxes, p.boxes)
    assert len(out[0]["0.3"].boxes) < len(out[0]["0.7"].boxes)  # the thresholds differ: the test sees NMS


def test_missing_data_names_the_path_and_says_data(runs, tmp_path):
    with pytest.raises(DataError, match=r"nowhere.*pass data=PATH"):
        zir.analyze(runs["classify"], data=str(tmp_path / "nowhere"), progress=False)
    with pytest.raises(DataError, match="detect dataset.*classify model"):
        zir.analyze(runs["classify"], data="synth:detect", progress=False)


def test_cli(runs, capsys):
    assert main(["analyze", str(runs["classify"]), "--quick", "--bootstrap", "0"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main(["analyze", str(runs["classify"]), "data=/no/such/folder"]) == 2
    assert "pass data=" in capsys.readouterr().err


def test_panoptic_report_goes_beyond_pq(tmp_path):
    import shutil
    from pathlib import Path

    run = tmp_path / "panoptic"
    shutil.copytree(Path(__file__).parents[1] / "fixtures" / "runs" / "panoptic_fpn_v0", run)
    report = zir.analyze(run, bootstrap=3, progress=False)
    numbers = json.loads((report.parent / "analysis.json").read_text())
    pan = numbers["panoptic"]
    assert set(pan) == {"things", "stuff", "by_size"} and set(pan["things"]) == {"PQ", "SQ", "RQ"}
    assert [b["name"] for b in pan["by_size"]] == ["[0, 0.05)", "[0.05, 0.1)", "[0.1, 0.2)", "[0.2, 0.4)", ">= 0.4"]
    assert sum(b["objects"] for b in pan["by_size"]) > 0
    assert all(b["objects"] > 0 or b["metrics"] == {} for b in pan["by_size"])
    assert "Panoptic quality by thing / stuff" in report.read_text() and len(numbers["clean_ci"]["PQ"]) == 2


def test_cached_keeps_small_test_sets_and_streams_large_ones():
    from zir.analysis.analyze import cached

    class Loader:
        def __init__(self):
            self.passes = 0

        def __iter__(self):
            self.passes += 1
            return iter([{"images": torch.zeros(2, 3, 8, 8), "ids": [torch.tensor([1, 2])]}] * 3)

    small = cached(Loader(), limit=10_000)  # 3 x (1536 + 16) bytes
    assert isinstance(small, list) and len(small) == 3 and torch.equal(small[0]["ids"][0], torch.tensor([1, 2]))
    loader = Loader()
    assert cached(loader, limit=2_000) is loader  # over the limit: the loader itself, read again per pass
