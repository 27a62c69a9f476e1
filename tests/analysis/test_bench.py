"""``zir bench detectors``: its recipes (run config files through the config loader), a tiny bench of two
registered detectors (one-stage yolo_v1, two-stage faster_rcnn; no pretrained weights, 64 px, one epoch),
its outputs, its scores against pycocotools and ``zir.evaluate``, ``--runs``, the errors a user can cause,
and the CLI."""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import zir
from zir.analysis import bench
from zir.analysis.bench import BenchRow
from zir.cli import main
from zir.config import load_config
from zir.data.formats import open_dataset
from zir.data.synth import SynthConfig, write_synth
from zir.errors import CheckpointError, ConfigError, DataError
from zir.models import get_spec, model_config

COMMON = dict(epochs=1, image_size=64, batch_size=8, amp="none", augment="none", pretrained="none")
TINY = {
    "yolo_v1": dict(COMMON, backbone="convnet", width=8, neck=8, hidden=16, S=2),
    "faster_rcnn": dict(COMMON, backbone="mobilenetv3_small_050", fpn_channels=32, box_hidden=64,
                        anchor_sizes=[[16], [32], [64], [128]], rpn_pre_nms_top_n=[300, 200],
                        rpn_post_nms_top_n=[150, 50], roi_batch_size=64),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> bench.BenchData:
    return bench.prepare_synth(tmp_path_factory.mktemp("synth"), n_train=16, n_test=6, image_size=64)


@pytest.fixture(scope="module")
def benched(data, tmp_path_factory) -> bench.BenchResult:
    out = tmp_path_factory.mktemp("bench")
    return bench.bench_detectors(data, out, models=["yolo_v1", "faster_rcnn"], minutes=0.1, overrides=TINY,
                                 threads=1, progress=False, command="zir bench detectors synth (test)")


def coco_oracle(gt_json: Path, results_json: Path) -> tuple[float, float]:
    """(AP50, AP) of pycocotools itself; 0 for no detections (pycocotools cannot load an empty list)."""
    results = json.loads(results_json.read_text())
    if not results:
        return 0.0, 0.0
    gt = COCO(str(gt_json))
    ev = COCOeval(gt, gt.loadRes(results), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[1]), float(ev.stats[0])


# --------------------------------------------------------------------------------------------------
# Recipes


def shipped_recipes() -> list[Path]:
    return sorted(bench.RECIPES.glob("*/*.yaml"))


def test_every_shipped_recipe_names_a_detector_and_loads_through_the_config_loader():
    assert sorted(p.name for p in bench.RECIPES.iterdir() if p.is_dir()) == sorted(bench.KINDS)
    files = shipped_recipes()
    assert {p.parent.name for p in files} == set(bench.KINDS) and len(files) > 2 * len(bench.KINDS)
    for path in files:
        raw = yaml.safe_load(path.read_text())
        models = bench.detectors() if path.stem == "default" else [path.stem]
        assert path.stem == "default" or raw["model"] == path.stem  # the file says which detector it trains
        assert path.read_text().startswith("#")  # the reasons behind it, as comments
        for model in models:
            cfg = load_config(path, overrides={"model": model})  # unknown settings raise here
            assert get_spec(cfg.model).task == "detect"
            model_config(cfg.model, 3, cfg.data.image_size, cfg.model_args)  # values the model's config takes
            chosen = bench.recipe_for(model, path.parent.name)
            assert chosen.path != path or chosen.config() == cfg
    assert all(bench.recipe_for(m, kind).path.stem == m for m in bench.detectors() for kind in bench.KINDS)


def test_recipe_is_the_file_then_the_overrides():
    recipe = bench.recipe_for("yolo_v1", "synth", {"lr": 1e-3, "data.val_split": 0.1})
    assert recipe.path == bench.RECIPES / "synth" / "yolo_v1.yaml"
    cfg = recipe.config(data="somewhere.json")
    assert (cfg.train.lr, cfg.data.val_split, cfg.data.path, cfg.model) == (1e-3, 0.1, "somewhere.json", "yolo_v1")
    assert (cfg.data.image_size, cfg.model_args["head"], cfg.train.amp) == (256, "conv", "none")  # from the file
    settings = recipe.settings()  # the table's column: the file's keys as the command line spells them
    assert settings["lr"] == 1e-3 and settings["S"] == 8 and settings["image_size"] == 256
    assert "model" not in settings and not recipe.fixed_epochs()
    assert bench.recipe_for("rcnn", "photo").fixed_epochs()  # R-CNN's one pass is fixed by its recipe
    assert bench.recipe_for("yolo_v1", "synth", {"epochs": 3}).fixed_epochs()
    with pytest.raises(ConfigError, match=r"synth/yolo_v1.yaml.*unknown setting"):
        bench.recipe_for("yolo_v1", "synth", {"no_such_key": 1}).config()
    with pytest.raises(ConfigError, match="data kind"):
        bench.recipe_for("yolo_v1", "video")


def test_a_detector_without_its_own_recipe_gets_the_default(monkeypatch, tmp_path):
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "default.yaml").write_text("data: {image_size: 96}\n")
    monkeypatch.setattr(bench.recipes, "RECIPES", tmp_path)
    recipe = bench.recipe_for("overfeat", "synth")
    assert recipe.path == tmp_path / "synth" / "default.yaml"
    assert recipe.config().model == "overfeat" and recipe.config().data.image_size == 96


def test_user_recipe_replaces_the_shipped_one(tmp_path, data):
    mine = tmp_path / "mine.yaml"
    mine.write_text("model: yolo_v1\ndata: {image_size: 96}\nmodel_args: {S: 3}\n")
    files = bench.recipes.read_recipe_files([mine])
    assert files == {"yolo_v1": mine}
    recipe = bench.recipe_for("yolo_v1", "synth", {"S": 4}, files)
    assert recipe.path == mine and recipe.settings() == {"image_size": 96, "S": 4}
    assert bench.recipe_for("faster_rcnn", "synth", None, files).path.parent == bench.RECIPES / "synth"

    nameless = tmp_path / "nameless.yaml"
    nameless.write_text("data: {image_size: 96}\n")
    with pytest.raises(ConfigError, match=r"nameless.yaml: a recipe names the detector"):
        bench.bench_detectors(data, tmp_path / "out", models=["yolo_v1"], recipes=[nameless])
    with pytest.raises(ConfigError, match="'unet' is a segment model"):
        nameless.write_text("model: unet\n")
        bench.bench_detectors(data, tmp_path / "out", models=["unet"], recipes=[nameless])
    with pytest.raises(ConfigError, match="does not train"):
        bench.bench_detectors(data, tmp_path / "out", models=["faster_rcnn"], recipes=[mine])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: yolo_v1\ntrain: {no_such_key: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*unknown train keys"):  # before any training
        bench.bench_detectors(data, tmp_path / "out", models=["yolo_v1"], recipes=[bad])
    assert not (tmp_path / "out" / "runs").exists()


# --------------------------------------------------------------------------------------------------
# The bench's outputs


def test_results_json_has_one_row_per_model(benched, data):
    results = json.loads(benched.results.read_text())
    assert {"date", "machine", "command", "threads", "device", "minutes", "data", "baseline", "rows",
            "failed"} <= results.keys()
    assert results["failed"] == {} and results["threads"] == 1 and results["device"] == "cpu"
    assert results["data"]["n_train"] == 16 and results["data"]["n_test"] == 6
    rows = {r["name"]: r for r in results["rows"]}
    assert list(rows) == ["yolo_v1", "faster_rcnn"]
    assert rows["yolo_v1"]["stages"] == 1 and rows["faster_rcnn"]["stages"] == 2
    for r in rows.values():
        assert 0 <= r["mAP50_95"] <= r["mAP50"] <= 1  # AP averaged over IoU 0.5:0.95 never exceeds AP50
        assert r["ms"] > 0 and r["epochs"] == 1 and r["source"] == "trained"
        assert r["settings"]["pretrained"] == "none"
        assert Path(r["run"]).name == "last.safetensors"  # the best would be chosen on the test images


def test_table_has_header_and_one_row_per_model(benched):
    table = benched.table.read_text()
    assert re.search(r"\d{4}-\d\d-\d\d", table) and bench.machine() in table
    assert "`zir bench detectors synth (test)`" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| detector")]
    assert [r.split("|")[1].strip() for r in rows] == [bench.BASELINE_NAME, "yolo_v1", "faster_rcnn"]
    assert "| one-stage |" in rows[1] and "| two-stage |" in rows[2]


def test_chart_is_written(benched):
    with Image.open(benched.chart) as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 300


def test_scores_equal_pycocotools(benched, data):
    """mAP of every model (and of the no-learning baseline) against pycocotools on the same files."""
    for row in benched.rows:
        ap50, ap = coco_oracle(data.test, Path(row.run).parent.parent / "predictions.json")
        assert row.mAP50 == pytest.approx(ap50, abs=1e-9) and row.mAP50_95 == pytest.approx(ap, abs=1e-9)
    ap50, ap = coco_oracle(data.test, benched.table.parent / "mean_box" / "predictions.json")
    assert ap50 > 0  # one box per image at the mean training box: something is found
    assert benched.baseline["mAP50"] == pytest.approx(ap50, abs=1e-9)
    assert benched.baseline["mAP50-95"] == pytest.approx(ap, abs=1e-9)


def test_scores_equal_zir_evaluate(benched, data):
    """The bench scores through the engine's evaluation loop: on test images already at the run's
    image_size, its numbers are those of ``zir.evaluate`` on the same run and test file."""
    for row in benched.rows:
        metrics = zir.evaluate(row.run, data=str(data.test), batch_size=1, progress=False)
        assert (row.mAP50, row.mAP50_95) == (metrics["bbox/AP50"], metrics["bbox/AP"])


def test_clock_leaves_the_first_call_out():
    calls = []
    clock = bench.Clock(lambda images: calls.append(len(images)) or [], sync=lambda: calls.append("sync"))
    assert math.isnan(clock.ms())
    for _ in range(3):
        clock([torch.zeros(3, 4, 4)])
    assert calls == [1, "sync"] * 3 and len(clock.seconds) == 3
    assert clock.ms() == 1000 * statistics.median(clock.seconds[1:])  # the first call warms up


def test_chart_marks_stages_and_the_peer():
    rows = [BenchRow("fast", "yolo_v1", 1, 0.5, 0.2, 8.0), BenchRow("slow", "faster_rcnn", 2, 0.7, 0.4, 80.0),
            BenchRow("peer", "", 1, 0.6, 0.3, 20.0, source="peer")]
    fig = bench.build_chart(rows, "t", baseline={"mAP50": 0.3, "mAP50-95": 0.1})
    try:
        left, right = fig.axes
        groups = {c.get_label(): c for c in left.collections}
        assert set(groups) == {"one-stage", "two-stage", "one-stage (peer)"}
        assert groups["one-stage"].get_offsets().tolist() == [[8.0, 0.5]]
        assert groups["two-stage"].get_offsets().tolist() == [[80.0, 0.7]]
        hollow = groups["one-stage (peer)"].get_facecolors()
        assert len(hollow) == 0 or hollow[:, 3].max() == 0
        assert groups["one-stage"].get_facecolors()[:, 3].min() == 1  # filled
        assert groups["one-stage"].get_paths()[0] != groups["two-stage"].get_paths()[0]  # other markers
        legend = [t.get_text() for t in left.get_legend().get_texts()]
        assert {"one-stage", "two-stage", bench.BASELINE_NAME} <= set(legend)
        assert {c.get_label(): c.get_offsets().tolist() for c in right.collections}["two-stage"] == [[80.0, 0.4]]
        assert left.get_xscale() == "log" and [t.get_text() for t in left.texts] == ["fast", "peer", "slow"]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Trained runs, errors


def test_runs_are_scored_without_training(benched, data, tmp_path):
    yolo = next(r for r in benched.rows if r.name == "yolo_v1")
    run_dir = Path(yolo.run).parent.parent
    log_before = (run_dir / "metrics.jsonl").read_text()
    result = bench.bench_detectors(data, tmp_path, models=["yolo_v1"], runs={"yolo_v1": run_dir}, threads=1,
                                   progress=False)
    assert not (tmp_path / "runs").exists()  # nothing trained
    assert (run_dir / "metrics.jsonl").read_text() == log_before
    (row,) = result.rows
    assert row.source == "run" and row.stages == 1 and row.epochs == 1
    assert (row.mAP50, row.mAP50_95) == (yolo.mAP50, yolo.mAP50_95)  # same weights, same images
    assert "(run " in result.table.read_text()


def test_unknown_or_non_detector_model_is_a_clear_error(data, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown model 'yolo_v9'.*yolo_v1.*faster_rcnn"):
        bench.bench_detectors(data, tmp_path, models=["yolo_v9"])
    with pytest.raises(ConfigError, match="'unet' is a segment model, not a detector"):
        bench.bench_detectors(data, tmp_path, models=["unet"])
    with pytest.raises(ConfigError, match="does not train"):
        bench.bench_detectors(data, tmp_path, models=["yolo_v1"], overrides={"faster_rcnn": {"lr": 1.0}})
    with pytest.raises(ConfigError, match="unknown setting"):  # before any training starts
        bench.bench_detectors(data, tmp_path, models=["yolo_v1"], overrides={"yolo_v1": {"no_such_key": 1}})
    with pytest.raises(CheckpointError, match="no such run"):
        bench.bench_detectors(data, tmp_path, models=[], runs={"x": tmp_path / "missing"})
    assert not (tmp_path / "runs").exists()


def test_data_that_is_not_a_detection_set_is_a_clear_error(tmp_path):
    write_synth(SynthConfig(task="classify", n=8, image_size=32), tmp_path / "classes", progress=False)
    with pytest.raises(DataError, match="classify dataset.*needs boxes"):
        bench.bench_detectors(tmp_path / "classes", tmp_path / "out", models=["yolo_v1"])


def test_parse_sets_and_runs():
    assert bench.parse_sets(["yolo_v1.lr=0.001", "yolo_v1.S=4", "faster_rcnn.data.val_split=0.1"]) == \
        {"yolo_v1": {"lr": 1e-3, "S": 4}, "faster_rcnn": {"data.val_split": 0.1}}
    assert bench.parse_runs(["a=runs/x"]) == {"a": Path("runs/x")}
    for bad in ("lr=1", "yolo_v1.lr", ".lr=1"):
        with pytest.raises(ConfigError, match="MODEL.KEY=VALUE"):
            bench.parse_sets([bad])
    with pytest.raises(ConfigError, match="NAME=RUN_DIR"):
        bench.parse_runs(["runs/x"])


def test_prepare_data_splits_a_dataset_folder(tmp_path):
    """The test split is held out of the training images, and both keep the source's boxes."""
    src = write_synth(SynthConfig(task="detect", n=10, image_size=48), tmp_path / "shapes", progress=False)
    prepared = bench.prepare_data(src, tmp_path / "out", test_split=0.3)
    source = json.loads((src / "annotations.json").read_text())
    boxes = {im["file_name"]: sorted(a["bbox"] for a in source["annotations"] if a["image_id"] == im["id"])
             for im in source["images"]}
    seen = []
    for split in (prepared.train, prepared.test):
        coco = json.loads(split.read_text())
        for im in coco["images"]:
            name = Path(im["file_name"]).name
            assert np.allclose(sorted(a["bbox"] for a in coco["annotations"] if a["image_id"] == im["id"]),
                               boxes[name] or np.zeros((0, 4)))
            seen.append(name)
    assert sorted(seen) == sorted(boxes) and len(json.loads(prepared.test.read_text())["images"]) == 3
    test_images = [r.path for r in open_dataset(prepared.test).records]  # where zir's COCO reader finds them
    assert len(test_images) == 3 and all(p.is_file() for p in test_images)
    assert prepared.classes == [c["name"] for c in source["categories"]] and prepared.kind == "photo"


# --------------------------------------------------------------------------------------------------
# The command line


def test_cli_help_exits_zero():
    done = subprocess.run([sys.executable, "-m", "zir", "bench", "detectors", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "--runs NAME=RUN_DIR" in done.stdout


def test_cli_tiny_run(tmp_path, capsys):
    src = write_synth(SynthConfig(task="detect", n=16, image_size=64, max_objects=3, min_scale=0.2),
                      tmp_path / "shapes", progress=False)
    recipe = tmp_path / "tiny_yolo.yaml"  # a user's recipe: a run config naming its model
    recipe.write_text(yaml.safe_dump({
        "model": "yolo_v1", "data": {"image_size": 64, "batch_size": 8, "augment": "none"},
        "train": {"epochs": 1, "amp": "none"},
        "model_args": {"pretrained": "none", "backbone": "convnet", "width": 8, "neck": 8, "hidden": 16, "S": 3}}))
    out = tmp_path / "bench"
    rc = main(["bench", "detectors", str(src), "--models", "yolo_v1", "--minutes", "0.1", "--threads", "1",
               "--out", str(out), "--recipe", str(recipe), "--set", "yolo_v1.S=2"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == ["yolo_v1"]
    assert results["command"].startswith(f"zir bench detectors {src} --minutes 0.1 --models yolo_v1")
    assert f"--set yolo_v1.S=2 --recipe {recipe}" in results["command"]
    settings = results["rows"][0]["settings"]
    assert settings["S"] == 2 and settings["width"] == 8 and settings["image_size"] == 64 and settings["epochs"] == 1
    assert zir.load(out / "runs" / "yolo_v1").config.model_args["S"] == 2  # what it trained with
    assert (out / "chart.png").is_file() and "| yolo_v1 | one-stage |" in capsys.readouterr().out
    assert math.isfinite(results["rows"][0]["ms"])


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["bench", "detectors", "synth", "--models", "nope", "--out", str(tmp_path)]) == 2
    assert "zir: error: unknown model 'nope'" in capsys.readouterr().err
    write_synth(SynthConfig(task="classify", n=8, image_size=32), tmp_path / "classes", progress=False)
    assert main(["bench", "detectors", str(tmp_path / "classes"), "--out", str(tmp_path / "o")]) == 2
    assert "classify dataset" in capsys.readouterr().err
