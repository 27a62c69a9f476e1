"""CLI smoke run: zir data synth -> zir train (a few steps) -> zir eval -> zir predict -> export, compare."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zir
from zir.cli import main

TRAIN = ["model=convnet", "image_size=32", "batch_size=16", "epochs=2", "threads=1",
         "model_args={width: 8, depth: 2}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = root / "shapes"
    assert main(["data", "synth", "--task", "classify", "--n", "48", "--size", "32", "--out", str(data)]) == 0
    assert sorted(p.name for p in data.iterdir()) == ["circle", "square", "star", "triangle"]
    assert main(["train", f"data={data}", f"project={root}", "name=run", *TRAIN]) == 0
    return root, data, root / "run"


def test_train_writes_a_complete_run(trained):
    _, _, run = trained
    assert (run / "report.html").is_file()
    html = (run / "report.html").read_text()
    assert "accuracy" in html and "predictions/000.png" in html
    assert list((run / "predictions").glob("*.png"))


def test_eval(trained, capsys, tmp_path):
    root, data, run = trained
    assert main(["eval", str(run), f"data={data}", "--json", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1
    assert "accuracy" in capsys.readouterr().out


def test_predict_draws_and_writes_json(trained, tmp_path):
    _, data, run = trained
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(data / "star"), "--out", str(out)]) == 0
    jsons = sorted(out.rglob("*.json"))
    assert len(jsons) == len(list((data / "star").glob("*.png")))
    record = json.loads(jsons[0].read_text())
    assert record["class"] in ["circle", "square", "star", "triangle"] and len(record["top5"]) == 4
    assert Image.open(jsons[0].with_suffix(".png")).size[0] >= 32


def test_predict_and_load_take_tta(trained, tmp_path, capsys):
    """``--tta N`` (and ``zir.load(..., tta=N)``) score the same weights with other test-time views; a model
    without the setting, a bad view count and the onnx backend say so."""
    _, data, run = trained
    images = sorted((data / "star").glob("*.png"))[:2]
    flip = zir.load("efficientnet_lite0", tta=2)
    plain = zir.load("efficientnet_lite0")
    assert flip.model.cfg.tta == 2 and plain.model.cfg.tta == 1
    x = torch.rand(3, 40, 56)
    expected = (plain.model.predict(x)[0].scores + plain.model.predict(x.flip(-1))[0].scores) / 2
    torch.testing.assert_close(flip.predict(x)[0].scores, expected, atol=1e-5, rtol=0)
    assert main(["predict", "efficientnet_lite0", *map(str, images), "--tta", "2", "--out", str(tmp_path / "p")]) == 0
    assert len(list((tmp_path / "p").rglob("*.json"))) == 2
    assert main(["predict", "efficientnet_lite0", str(images[0]), "--tta", "3", "--out", str(tmp_path / "q")]) == 2
    assert "tta must be 1" in capsys.readouterr().err
    assert main(["predict", str(run), str(images[0]), "--tta", "2", "--out", str(tmp_path / "r")]) == 2
    assert "convnet has no tta setting" in capsys.readouterr().err
    assert main(["predict", str(run), str(images[0]), "--tta", "2", "--backend", "onnx", "--out",
                 str(tmp_path / "s")]) == 2
    assert "--tta applies to the torch backend" in capsys.readouterr().err


def test_python_api_load_predicts_paths_pil_arrays_tensors(trained):
    _, data, run = trained
    model = zir.load(run)
    path = sorted((data / "circle").glob("*.png"))[0]
    pil = Image.open(path)
    arr = np.asarray(pil.convert("RGB"))
    tensor = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    preds = model.predict([path, pil, arr, tensor, tensor.float() / 255])
    assert len(preds) == 5
    assert len({p.label for p in preds}) == 1  # the same image in five forms: the same answer
    for p in preds[1:]:
        torch.testing.assert_close(p.scores, preds[0].scores, atol=1e-5, rtol=0)
    assert len(model.predict(path)) == 1  # a single image still gives a list
    big = Image.fromarray(np.kron(arr, np.ones((5, 3, 1), np.uint8)))  # any size: resized inside
    assert model.predict(big)[0].scores.shape == (4,)


def test_export_pt2_matches_model(trained, tmp_path):
    _, _, run = trained
    out = tmp_path / "m.pt2"
    assert main(["export", str(run), "--out", str(out)]) == 0
    exported = torch.export.load(str(out)).module()
    model = zir.load(run)
    for batch, size in ((1, 32), (3, 45)):  # batch and image size are dynamic; uint8 in, resized inside
        x = torch.randint(0, 256, (batch, 3, size, size + 7), dtype=torch.uint8)
        scores, labels = exported(x)
        for s, lab, p in zip(scores, labels, model.predict(list(x))):
            torch.testing.assert_close(s, p.scores, atol=1e-5, rtol=0)
            assert int(lab) == p.label
    assert json.loads(Path(f"{out}.json").read_text())["classes"][0] == "circle"


def test_compare_prints_error_reduction(trained, capsys):
    _, _, run = trained
    assert main(["compare", str(run), str(run)]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    assert "convnet" in capsys.readouterr().out


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zir: error:") and "Traceback" not in err
    assert main(["train", "data=" + str(tmp_path / "missing"), f"project={tmp_path}"]) == 2
    assert "missing" in capsys.readouterr().err


def test_console_script_help():
    exe = Path(sys.executable).with_name("zir")
    out = subprocess.run([str(exe), "train", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "data.image_size" in out.stdout


def test_eval_on_data_with_other_classes_names_both_counts(trained, tmp_path, capsys):
    import shutil

    _, data, run = trained
    other = tmp_path / "two"
    for name in ("circle", "star"):
        shutil.copytree(data / name, other / name)
    assert main(["eval", str(run), f"data={other}"]) == 2
    err = capsys.readouterr().err
    assert "2 classes" in err and "model 4" in err


def test_settings_errors_name_the_key_and_the_fix(trained, tmp_path, capsys):
    _, data, run = trained
    assert main(["train", f"data={data}", f"project={tmp_path}", "epochz=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown setting 'epochz'" in err and "Did you mean epochs" in err
    assert main(["train", f"data={data}", f"project={tmp_path}", "model_args.image_size=48"]) == 2
    assert "data.image_size" in capsys.readouterr().err
    assert main(["eval", str(run), "epochs=3"]) == 2  # eval changes the data, never the model or training
    assert "evaluate takes data settings" in capsys.readouterr().err
    assert main(["eval", str(run), "tta=2"]) == 2  # the one model setting eval takes, where the model has it
    assert "convnet has no tta setting" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was started


def test_eval_takes_bare_and_dotted_data_settings(trained, tmp_path):
    _, data, run = trained
    assert main(["eval", str(run), f"data.path={data}", "batch_size=4", "--json", str(tmp_path / "a.json")]) == 0
    assert main(["eval", str(run), f"data={data}", "--json", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
