"""The bad-input catalogue: every way a user's input was found to go wrong, through the real CLI.

Each case asserts the exit status, that the message names the file (or setting) at fault, that no
traceback is printed (the CLI is called in-process: any exception that is not zir's own fails the test
with its traceback), and that every input file is byte-for-byte unchanged. The README's "Data checks"
table lists these cases.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zir.cli import main

TRAIN = ["model=convnet", "image_size=32", "batch_size=16", "epochs=1", "threads=1", "warmup_epochs=0",
         "model_args={width: 8, depth: 2}"]


def checksums(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out.update({str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    return out


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A classification set, a detection set and a trained classifier run, shared by the cases."""
    root = tmp_path_factory.mktemp("bad")
    cls, det = root / "shapes", root / "det"
    assert main(["data", "synth", "--task", "classify", "--n", "32", "--size", "32", "--out", str(cls)]) == 0
    assert main(["data", "synth", "--task", "detect", "--n", "8", "--size", "64", "--out", str(det)]) == 0
    assert main(["train", f"data={cls}", f"project={root}", "name=run", *TRAIN]) == 0
    return root, cls, det, root / "run"


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def bomb(path: Path) -> Path:
    """A 20000 x 20000 PNG of a few hundred KB: decoding it would take 400 MB."""
    Image.new("L", (20000, 20000)).save(path, optimize=True)
    return path


def truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


# --------------------------------------------------------------------------------------------------
# 1. predict never replaces a user's file


def test_predict_refuses_to_overwrite_a_users_file(world, tmp_path, capsys):
    _, cls, _, run_dir = world
    image = sorted((cls / "star").glob("*.png"))[0]
    out = tmp_path / "mine"
    out.mkdir()
    mine = out / f"{image.stem}.json"
    mine.write_text('{"my": "notes"}')
    before = checksums(cls, out)
    code, _, err = cli(["predict", run_dir, image, "--out", out], capsys)
    assert code == 2 and str(mine) in err and "--exist-ok" in err
    assert checksums(cls, out) == before
    # zir writes over what it wrote itself, and over the user's file only when told to
    assert cli(["predict", run_dir, image, "--out", out, "--exist-ok"], capsys)[0] == 0
    assert "class" in json.loads(mine.read_text())
    assert cli(["predict", run_dir, image, "--out", out], capsys)[0] == 0


# --------------------------------------------------------------------------------------------------
# 3. numeric settings out of range


@pytest.mark.parametrize("setting, key", [("epochs=-1", "train.epochs"), ("image_size=0", "data.image_size"),
                                          ("batch_size=0", "data.batch_size"), ("lr=nan", "train.lr"),
                                          ("val_split=1.5", "data.val_split"), ("accumulate=0", "train.accumulate")])
def test_out_of_range_settings_stop_before_anything_runs(world, tmp_path, capsys, setting, key):
    _, cls, _, _ = world
    before = checksums(cls)
    code, _, err = cli(["train", f"data={cls}", f"project={tmp_path}", *TRAIN, setting], capsys)
    assert code == 2 and key in err and "valid:" in err
    assert not any(tmp_path.iterdir())  # no run folder
    assert checksums(cls) == before


# --------------------------------------------------------------------------------------------------
# 4. decompression bomb, 8. truncated JPEG: named data errors, skippable


def test_decompression_bomb_is_a_named_data_error_everywhere(world, tmp_path, capsys, monkeypatch):
    root, cls, _, run_dir = world
    data = copy_tree(cls, tmp_path / "data")
    evil = bomb(data / "star" / "evil.png")
    before = checksums(data)
    for args in (["data", "check", data], ["data", "check", data, "--no-images"]):
        code, out, _ = cli(args, capsys)
        assert code == 1 and str(evil) in out and "ZIR_MAX_IMAGE_PIXELS" in out
    # stats describe the readable images (unreadable ones are left out by design, as `data check` lists them)
    assert cli(["data", "stats", data, "--out", tmp_path / "s.png"], capsys)[0] == 0
    code, _, err = cli(["train", f"data={data}", f"project={tmp_path / 'runs'}", *TRAIN], capsys)
    assert code == 2 and str(evil) in err and "skip_bad" in err
    code, _, err = cli(["train", f"data={data}", f"project={tmp_path / 'runs'}", *TRAIN, "--skip-bad"], capsys)
    assert code == 0
    code, _, err = cli(["predict", run_dir, evil, "--out", tmp_path / "p"], capsys)
    assert code == 2 and str(evil) in err and "--skip-bad" in err
    # the limit is configurable: with a higher one the header check passes
    monkeypatch.setenv("ZIR_MAX_IMAGE_PIXELS", str(20000 * 20000))
    code, out, _ = cli(["data", "check", data, "--no-images"], capsys)
    assert code == 0
    assert checksums(data) == before


def test_truncated_jpeg_is_found_before_training(world, tmp_path, capsys, monkeypatch):
    _, cls, _, _ = world
    data = copy_tree(cls, tmp_path / "data")
    bad = truncated_jpeg(data / "circle" / "broken.jpg")
    before = checksums(data)
    from zir.engine import trainer

    def no_epoch(*args, **kwargs):  # refused up front: no epoch of any kind may start
        raise AssertionError("an epoch started before the truncated JPEG was reported")

    for name in ("gradient_epoch", "features_epoch", "closed_form_epoch"):
        monkeypatch.setattr(trainer, name, no_epoch)
    code, _, err = cli(["train", f"data={data}", f"project={tmp_path / 'runs'}", *TRAIN], capsys)
    assert code == 2 and str(bad) in err and "skip_bad" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert checksums(data) == before


# --------------------------------------------------------------------------------------------------
# 5. damaged checkpoints


def test_damaged_resume_state_says_what_to_do(world, tmp_path, capsys):
    _, _, _, run_dir = world
    run = copy_tree(run_dir, tmp_path / "run")
    state = run / "weights" / "last_state.pt"
    for damage in (state.read_bytes()[:100], os.urandom(2000)):
        state.write_bytes(damage)
        before = checksums(run)
        code, _, err = cli(["train", "--resume", run], capsys)
        assert code == 2 and str(state) in err and "damaged" in err and "last.safetensors" in err
        assert checksums(run) == before


def test_truncated_best_weights_point_to_the_intact_last(world, tmp_path, capsys):
    _, cls, _, run_dir = world
    run = copy_tree(run_dir, tmp_path / "run")
    best = run / "weights" / "best.safetensors"
    best.write_bytes(best.read_bytes()[:300])
    before = checksums(run)
    code, _, err = cli(["eval", run, f"data={cls}"], capsys)
    assert code == 2 and str(best) in err and "damaged" in err
    assert f"{run / 'weights' / 'last.safetensors'} is intact" in err
    assert cli(["eval", run / "weights" / "last.safetensors", f"data={cls}"], capsys)[0] == 0
    assert checksums(run) == before


# --------------------------------------------------------------------------------------------------
# 6. task mismatch in eval


def test_eval_names_a_task_mismatch(world, capsys):
    _, _, det, run_dir = world
    before = checksums(det)
    code, _, err = cli(["eval", run_dir, f"data={det}"], capsys)
    assert code == 2 and "detect dataset" in err and "classify model" in err and str(det) in err
    assert checksums(det) == before


# --------------------------------------------------------------------------------------------------
# 7. impossible output paths, checked before the work


def _impossible(tmp_path: Path) -> list[Path]:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return [a_file / "out", Path("/proc/zir-out")]


def test_impossible_output_paths_are_refused_up_front(world, tmp_path, capsys):
    root, cls, det, run_dir = world
    image = sorted((cls / "star").glob("*.png"))[0]
    before = checksums(cls, det)
    for bad in _impossible(tmp_path):
        for argv in (["predict", run_dir, image, "--out", bad],
                     ["train", f"data={cls}", f"project={bad}", *TRAIN],
                     ["data", "synth", "--task", "classify", "--n", "4", "--size", "32", "--out", bad],
                     ["data", "convert", det, bad, "--to", "yolo"],
                     ["export", run_dir, "--out", bad / "m.pt2"],
                     ["data", "stats", det, "--out", bad / "s.png"]):
            code, _, err = cli(argv, capsys)
            assert code == 2 and str(bad) in err, (argv, err)
    assert checksums(cls, det) == before


def test_immutable_or_read_only_folder_is_refused(world, tmp_path, capsys):
    """chattr +i where the file system allows it (root), else a read-only folder (a normal user)."""
    _, cls, _, run_dir = world
    image = sorted((cls / "star").glob("*.png"))[0]
    locked = tmp_path / "locked"
    locked.mkdir()
    immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode == 0
    if not immutable:
        locked.chmod(0o500)
    try:
        code, _, err = cli(["predict", run_dir, image, "--out", locked / "out"], capsys)
        if os.geteuid() == 0 and not immutable:
            assert code == 0  # root writes into a read-only folder: nothing to refuse
        else:
            assert code == 2 and str(locked) in err and "cannot write" in err
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        locked.chmod(0o700)


# --------------------------------------------------------------------------------------------------
# 8. a run folder that never trained is removed


def test_a_run_that_never_trained_leaves_no_folder(world, tmp_path, capsys, monkeypatch):
    _, cls, _, _ = world
    import zir.engine.trainer as trainer

    def broken_loss(self, images, targets):
        raise KeyboardInterrupt  # Ctrl-C during the first batch

    monkeypatch.setattr(trainer.LossOf, "forward", broken_loss)
    code, _, err = cli(["train", f"data={cls}", f"project={tmp_path}", *TRAIN], capsys)
    assert code == 130 and "before the first checkpoint" in err
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------
# 9. predict over a folder with an unreadable image


def test_predict_over_a_folder_reports_and_skips_unreadable_images(world, tmp_path, capsys):
    _, cls, _, run_dir = world
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((cls / "star").glob("*.png"))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    bad = folder / "0_broken.png"
    bad.write_bytes(b"not an image")
    before = checksums(folder)
    code, _, err = cli(["predict", run_dir, folder, "--out", tmp_path / "p1"], capsys)
    assert code == 2 and str(bad) in err and "--skip-bad" in err
    code, _, err = cli(["predict", run_dir, folder, "--out", tmp_path / "p2", "--skip-bad"], capsys)
    assert code == 0 and "skipped 1 unreadable image(s) of 4" in err and str(bad) in err
    assert len(list((tmp_path / "p2").glob("*.json"))) == 3
    assert checksums(folder) == before


# --------------------------------------------------------------------------------------------------
# 10. smaller ones


def test_tiny_image_is_a_warning_and_imagefolder_errors_say_the_path_once(tmp_path, capsys):
    data = tmp_path / "cls"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(data / c / "ok.png")
    Image.new("RGB", (1, 1)).save(data / "a" / "dot.png")
    (data / "b" / "junk.png").write_bytes(b"junk")
    before = checksums(data)
    code, out, _ = cli(["data", "check", data], capsys)
    assert code == 1
    assert f"warning: {data / 'a' / 'dot.png'}: image is only 1x1 pixels" in out
    junk_line = next(line for line in out.splitlines() if "junk.png" in line)
    assert junk_line.count("junk.png") == 1, junk_line
    assert checksums(data) == before


def test_checkpoints_follow_the_umask(world):
    _, _, _, run_dir = world
    umask = os.umask(0)
    os.umask(umask)
    for f in (run_dir / "weights").iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f


# --------------------------------------------------------------------------------------------------
# Cases that already worked: they stay in the catalogue so they keep working


def test_cases_that_already_worked(world, tmp_path, capsys):
    root, cls, det, run_dir = world
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("hello")
    coco = copy_tree(det, tmp_path / "coco")
    (coco / "annotations.json").write_text('{"images": [')
    before = checksums(empty, text, coco, cls)
    for argv, code_expected, named in (
        (["predict", run_dir, empty, "--out", tmp_path / "p"], 2, empty),
        (["predict", run_dir, text, "--out", tmp_path / "p"], 2, text),
        (["data", "check", coco], 1, coco / "annotations.json"),
        (["train", f"data={cls}", f"project={tmp_path}", *TRAIN, "colour=red"], 2, "colour"),
        (["eval", tmp_path / "no-such-run"], 2, tmp_path / "no-such-run"),
        (["data", "synth", "--task", "classify", "--n", "4", "--out", cls], 2, cls),
    ):
        code, out, err = cli(argv, capsys)
        assert code == code_expected and str(named) in out + err, (argv, out, err)
    assert checksums(empty, text, coco, cls) == before


# --------------------------------------------------------------------------------------------------
# Killed while writing a checkpoint: the previous one still loads and resume works


KILL_SCRIPT = textwrap.dedent("""
    import signal, sys
    from pathlib import Path
    import zir.engine.checkpoint as ck

    marker = Path(sys.argv[1])
    real = ck.save_file
    calls = []

    def slow_save(state, tmp, metadata=None):
        calls.append(tmp)
        if len(calls) == 2:  # epoch 2's last.safetensors: write part of it, say so, then hang until killed
            Path(tmp).write_bytes(b"partial")
            marker.write_text(tmp)
            print("writing", flush=True)
            signal.pause()
        real(state, tmp, metadata=metadata)

    ck.save_file = slow_save
    from zir.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(world, tmp_path, capsys):
    _, cls, _, _ = world
    marker = tmp_path / "writing"
    args = ["train", f"data={cls}", f"project={tmp_path}", "name=k", *TRAIN, "epochs=3", "eval_every=5"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "child.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(marker), *args], env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        # the child prints "writing" once it hangs mid-write; its stdout ends if it exits first
        hung = any(line.strip() == "writing" for line in proc.stdout)
        assert hung and marker.exists(), log.read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run = tmp_path / "k"
    from zir.engine.checkpoint import read_meta

    assert read_meta(run / "weights" / "last.safetensors")["epoch"] == 0  # epoch 1's checkpoint is whole
    assert cli(["train", "--resume", run], capsys)[0] == 0
    assert read_meta(run / "weights" / "last.safetensors")["epoch"] == 2
