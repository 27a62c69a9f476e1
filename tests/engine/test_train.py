"""The training engine: a run's files, exact resume after SIGKILL, DDP equivalence, bad settings."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zir
from zir.analysis.report import write_report
from zir.config import load_config
from zir.engine.trainer import cosine_with_warmup, train
from zir.errors import CheckpointError, ConfigError

# A tiny run: 64 synthetic 32x32 images, a 2-block ConvNet, one thread so results are bit-reproducible.
TINY = ["model=convnet", "data=synth:classify", "synth_n=64", "image_size=32", "batch_size=8",
        "model_args={width: 8, depth: 2, dropout: 0.0}", "epochs=3", "lr=0.01", "threads=1"]


def tiny(tmp_path: Path, name: str, *extra: str):
    return load_config(overrides=TINY + [f"project={tmp_path}", f"name={name}", *extra])


def weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "weights" / f"{which}.safetensors"))


def test_run_folder_has_everything(tmp_path):
    ended: list[Path] = []
    result = train(tiny(tmp_path, "a", "epochs=2"), progress=False,
                   on_end=[ended.append, partial(write_report, progress=False)])
    run = result.run_dir
    assert ended == [run]  # the end callbacks get the run folder, once
    for f in ["config.yaml", "weights/best.safetensors", "weights/last.safetensors", "weights/last_state.pt",
              "metrics.jsonl", "results.csv", "curves.png", "report.html", "val_metrics.json"]:
        assert (run / f).is_file(), f
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all("train/cls" in r and "val/accuracy" in r for r in rows)
    assert result.epochs_done == 2
    # A second run with the same name does not overwrite the first.
    assert train(tiny(tmp_path, "a", "epochs=1"), progress=False).run_dir.name == "a-2"


def test_the_engine_writes_no_report_itself_and_zir_train_does(tmp_path):
    """The report is the caller's end callback: the engine alone leaves it out; the API and CLI pass it."""
    run = train(tiny(tmp_path, "bare", "epochs=1"), progress=False).run_dir
    assert (run / "curves.png").is_file() and not (run / "report.html").exists()
    api_run = zir.train(tiny(tmp_path, "api", "epochs=1"), progress=False).run_dir
    assert (api_run / "report.html").is_file() and (api_run / "val_metrics.json").is_file()


def test_the_config_given_is_never_changed(tmp_path):
    """data=synth resolves to synth:TASK and panoptic thing_classes come from the data, in the run's own
    config (config.yaml and the checkpoints, so zir.load rebuilds the same model), not in the caller's."""
    cfg = tiny(tmp_path, "same", "epochs=1", "data=synth")
    before = copy.deepcopy(cfg)
    run = train(cfg, progress=False).run_dir
    assert cfg == before
    assert load_config(run / "config.yaml").data.path == "synth:classify"

    panoptic = load_config(overrides=[
        "model=panoptic_fpn", "task=panoptic", "data=synth", "synth_n=4", "image_size=64", "batch_size=2",
        "epochs=1", "threads=1", f"project={tmp_path}", "name=pan",
        "model_args={pretrained: none, fpn_channels: 16, box_hidden: 32, mask_channels: 16, semantic_channels: 16}"])
    before = copy.deepcopy(panoptic)
    run = train(panoptic, progress=False).run_dir
    assert panoptic == before and "thing_classes" not in panoptic.model_args
    saved = load_config(run / "config.yaml")
    assert saved.data.path == "synth:panoptic" and saved.model_args["thing_classes"] == [True] * 4 + [False] * 2
    assert zir.load(run).model.thing_classes == saved.model_args["thing_classes"]


def test_loss_falls(tmp_path):
    result = train(tiny(tmp_path, "fall", "epochs=4"), progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/cls"] < rows[0]["train/cls"]


@pytest.mark.parametrize("extra", [[], ["ema_decay=0.9"]], ids=["plain", "ema"])
def test_resume_after_sigkill_is_exact(tmp_path, extra):
    """Kill the process (SIGKILL) right after epoch 1's checkpoint; resuming must end bit-identical (with
    ema_decay: the average in last.safetensors and the raw weights in last_state.pt)."""
    reference = train(tiny(tmp_path, "ref", *extra), progress=False).run_dir

    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal
        from zir.analysis.report import write_report
        from zir.config import load_config
        from zir.engine.trainer import train

        def kill_after_first_epoch(state):
            if state["epoch"] == 0:
                os.kill(os.getpid(), signal.SIGKILL)

        cfg = load_config(overrides={TINY + extra!r} + ["project={tmp_path}", "name=killed"])
        train(cfg, callbacks=[kill_after_first_epoch], on_end=[write_report], progress=False)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr  # really killed, not a clean exit
    killed = tmp_path / "killed"
    assert not (killed / "report.html").exists()
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 1

    result = train(load_config(), resume=killed, progress=False)
    assert result.epochs_done == 3
    ref_w, res_w = weights(reference), weights(killed)
    assert ref_w.keys() == res_w.keys()
    for k in ref_w:
        assert torch.equal(ref_w[k], res_w[k]), k
    if extra:
        ref_raw, res_raw = (raw_weights(r) for r in (reference, killed))
        assert all(torch.equal(ref_raw[k], res_raw[k]) for k in ref_raw)
        assert any(not torch.equal(ref_raw[k], ref_w[k]) for k in ref_raw)  # the average is not the raw weights
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    ref_rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["val/accuracy"] for r in rows] == [r["val/accuracy"] for r in ref_rows]


def raw_weights(run: Path) -> dict[str, torch.Tensor]:
    """The raw (not averaged) weights that last_state.pt keeps beside the moving average."""
    return torch.load(run / "weights" / "last_state.pt", weights_only=True)["raw_weights"]


def test_ema_weights_are_the_hand_computed_average(tmp_path):
    """One optimizer step per epoch (the batch holds the whole training split): after step k the saved
    weights must be ema_k = d_k * ema_(k-1) + (1 - d_k) * raw_k with timm's warm-up d_k = min(decay,
    1 - k^(-2/3)) (d_1 = 0: the average starts at the first step's weights), computed here by hand from
    the raw weights that last_state.pt keeps."""
    decay, raws, saved = 0.6, [], []

    def record(state):
        raws.append(raw_weights(state["run_dir"]))
        saved.append(weights(state["run_dir"]))

    cfg = tiny(tmp_path, "ema", "batch_size=64", "epochs=4", f"ema_decay={decay}")
    run = train(cfg, callbacks=[record], progress=False).run_dir
    ema: dict[str, torch.Tensor] = {}
    for k, raw in enumerate(raws, start=1):
        d = min(decay, 1 - k ** (-2 / 3))
        ema = {n: d * ema[n] + (1 - d) * v if ema and v.is_floating_point() else v.clone() for n, v in raw.items()}
        for n, v in ema.items():
            torch.testing.assert_close(saved[k - 1][n], v, rtol=0, atol=1e-6, msg=f"step {k}, {n}")
    assert len(raws) == 4 and any(not torch.equal(raws[-1][n], ema[n]) for n in ema)
    loaded = zir.load(run).model.state_dict()  # what a user loads is an average the run saved
    assert any(all(torch.equal(loaded[n], s[n]) for n in s) for s in saved)


def test_ema_off_by_default_and_it_never_changes_the_raw_training(tmp_path):
    """ema_decay=0 (the default) saves the raw weights and no copy of them; a run with ema_decay>0 trains
    the very same raw weights (the average draws no random numbers and never feeds back)."""
    plain = train(tiny(tmp_path, "plain"), progress=False).run_dir
    assert load_config(plain / "config.yaml").train.ema_decay == 0
    assert "raw_weights" not in torch.load(plain / "weights" / "last_state.pt", weights_only=True)
    averaged = train(tiny(tmp_path, "avg", "ema_decay=0.5"), progress=False).run_dir
    plain_w, raw = weights(plain), raw_weights(averaged)
    assert plain_w.keys() == raw.keys() and all(torch.equal(plain_w[k], raw[k]) for k in raw)


def moments(run: Path) -> list[torch.Tensor]:
    """The optimizer's first moments of the 4-D parameters, from last_state.pt: they have their parameters'
    memory format, so they say whether the run trained NHWC."""
    state = torch.load(run / "weights" / "last_state.pt", weights_only=True)["optimizer"]["state"]
    return [s["exp_avg"] for s in state.values() if s["exp_avg"].dim() == 4]


def test_channels_last_trains_in_nhwc_and_learns_the_same_weights(tmp_path):
    """train.channels_last=true keeps the 4-D weights NHWC while training (the optimizer's moments, saved in
    last_state.pt, have their parameters' memory format) and learns what the NCHW run learns, to float
    rounding; the saved weights are ordinary contiguous tensors."""
    plain = train(tiny(tmp_path, "nchw"), progress=False).run_dir
    nhwc = train(tiny(tmp_path, "nhwc", "channels_last=true"), progress=False).run_dir
    assert moments(plain) and all(m.is_contiguous() for m in moments(plain))
    assert all(m.is_contiguous(memory_format=torch.channels_last) for m in moments(nhwc))
    assert not all(m.is_contiguous() for m in moments(nhwc))
    a, b = weights(plain), weights(nhwc)
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].is_contiguous()
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)
    with pytest.raises(ConfigError, match="channels_last must be true, false or null"):
        tiny(tmp_path, "bad", "channels_last=maybe")


@pytest.mark.parametrize(("transfer", "setting", "nhwc"), [
    ("finetune", None, True), ("finetune", "false", False), ("scratch", None, False), ("scratch", "true", True)])
def test_channels_last_unset_is_the_models_choice(tmp_path, transfer, setting, nhwc):
    """Unset, train.channels_last is the model's ``trains_channels_last``: the classifier fine-tunes NHWC and
    trains from scratch NCHW; an explicit setting wins either way."""
    extra = [] if setting is None else [f"channels_last={setting}"]
    cfg = load_config(overrides=["model=classifier", "data=synth:classify", "synth_n=16", "image_size=32",
                                 "batch_size=8", "epochs=1", "threads=1", f"project={tmp_path}", "name=c",
                                 f"transfer={transfer}", "pretrained=none", "backbone=resnet10t", *extra])
    assert cfg.train.channels_last == (None if setting is None else setting == "true")
    convs = moments(train(cfg, progress=False).run_dir)
    assert convs and all(m.is_contiguous(memory_format=torch.channels_last) for m in convs) == nhwc


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(CheckpointError, match="not a zir run folder"):
        train(load_config(), resume=tmp_path)


def test_ddp_two_processes_equal_one_process(tmp_path):
    """torchrun, 2 CPU processes on gloo with batch 4 each == 1 process with batch 8.

    GroupNorm instead of BatchNorm: CPU processes cannot synchronise BatchNorm statistics (PyTorch's
    SyncBatchNorm is CUDA-only), so per-process batch statistics would legitimately differ.
    """
    common = TINY + ["epochs=2", "model_args={width: 8, depth: 2, dropout: 0.0, norm: group}",
                     f"project={tmp_path}"]
    single = train(load_config(overrides=common + ["name=single"]), progress=False).run_dir
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "zir", "train",
                           *[c for c in common if not c.startswith("batch_size")], "batch_size=4", "name=ddp"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(single), weights(tmp_path / "ddp")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    # The runs really trained (weights moved away from the shared initialisation).
    init = train(load_config(overrides=common + ["name=init", "epochs=1", "lr=0.0"]), progress=False).run_dir
    assert any(not torch.allclose(weights(init)[k], a[k]) for k in a)


def test_cosine_schedule_with_warmup():
    f = cosine_with_warmup(warmup_steps=10, total_steps=110, final=0.01)
    assert f(0) == pytest.approx(0.01)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.505)  # half-way through the cosine: (1 + 0.01) / 2
    assert f(110) == pytest.approx(0.01)


def test_gradient_accumulation_matches_bigger_batch(tmp_path):
    """4 micro-batches of 2 accumulated == one batch of 8 (GroupNorm: no batch statistics)."""
    common = TINY + ["epochs=1", "model_args={width: 8, depth: 2, dropout: 0.0, norm: group}", "clip_grad=0"]
    big = train(tiny(tmp_path, "big", *common[len(TINY):]), progress=False).run_dir
    acc = train(tiny(tmp_path, "acc", *common[len(TINY):], "batch_size=2", "accumulate=4"), progress=False).run_dir
    for k, v in weights(big).items():
        torch.testing.assert_close(v, weights(acc)[k], rtol=1e-4, atol=1e-5, msg=k)


def test_bf16_autocast_trains(tmp_path):
    result = train(tiny(tmp_path, "bf16", "epochs=2", "amp=bf16"), progress=False)
    assert 0.0 <= result.best_metrics["accuracy"] <= 1.0


def test_bad_settings_raise_our_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(overrides=["epochz=3"])
    with pytest.raises(ConfigError, match="optimizer"):
        train(tiny(tmp_path, "x", "optimizer=lion"), progress=False)
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        train(tiny(tmp_path, "y", "amp=fp16", "device=cpu"), progress=False)
    with pytest.raises(ConfigError, match=r"train.ema_decay=1.0 is out of range; valid: 0 <= ema_decay < 1"):
        load_config(overrides=["ema_decay=1"])
    with pytest.raises(ConfigError, match="wdth"):
        train(tiny(tmp_path, "z", "model_args={wdth: 3}"), progress=False)


def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoint(tmp_path):
    from zir.errors import TrainingError

    def poison(state):  # after epoch 1's checkpoint, make every later loss NaN
        for p in state["model"].parameters():
            p.data.fill_(float("nan"))

    cfg = tiny(tmp_path, "nan", "epochs=3")
    with pytest.raises(TrainingError, match=r"epoch 2, batch 0") as e:
        train(cfg, callbacks=[poison], progress=False)
    assert "last good checkpoint" in str(e.value)
    w = weights(tmp_path / "nan")
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())
