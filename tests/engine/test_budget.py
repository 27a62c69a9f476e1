"""Training to a time budget (``time=``, ``time_limit=``) with a fake clock: one second per training step
and two per evaluation, so every assertion is about arithmetic, none about how fast this machine is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zir.config import load_config
from zir.engine import budget, trainer
from zir.engine.trainer import train

TINY = ["model=convnet", "data=synth:classify", "synth_n=64", "image_size=32", "batch_size=8",
        "model_args={width: 8, depth: 2, dropout: 0.0}", "lr=0.01", "threads=1", "final_lr=0.01"]
STEP_S, EVAL_S = 1.0, 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.steps: list[float] = []  # the clock when each training step started

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(budget, "clock", fake)
    forward, evaluate = trainer.LossOf.forward, trainer.evaluate

    def timed_forward(self, images, targets):
        fake.steps.append(fake.now)
        fake.now += STEP_S
        return forward(self, images, targets)

    def timed_evaluate(*args, **kwargs):
        fake.now += EVAL_S
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer.LossOf, "forward", timed_forward)
    monkeypatch.setattr(trainer, "evaluate", timed_evaluate)
    return fake


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_time_fits_the_epochs_so_the_schedule_ends_on_time(tmp_path, clock):
    minutes = 1.0
    result = train(load_config(overrides=TINY + ["epochs=50", f"time={minutes}", f"project={tmp_path}"]),
                   progress=False)
    steps_per_epoch = len(clock.steps) // result.epochs_done
    epoch_s = steps_per_epoch * STEP_S + EVAL_S
    assert not result.stopped_early  # it ended because its fitted epochs were done, not by the hard stop
    assert result.epochs_done < 50  # epochs=50 was replaced by the fit
    assert clock.now <= minutes * 60  # within the budget ...
    assert clock.now + epoch_s > minutes * 60  # ... with less than one more epoch left over
    log = rows(result.run_dir)
    assert log[-1]["lr"] == pytest.approx(0.01 * 0.01)  # the cosine decay reached final_lr at the last step
    assert log[-2]["lr"] > 0.01 * 0.01 * 1.5  # and not before


def test_time_limit_stops_within_one_step(tmp_path, clock):
    limit_s = 13.0  # 8 steps + an evaluation in epoch 1, then 3 steps of epoch 2
    result = train(load_config(overrides=TINY + ["epochs=3", f"time_limit={limit_s / 60}", f"project={tmp_path}"]),
                   progress=False)
    assert result.stopped_early and result.epochs_done == 2  # the second epoch was cut, not finished
    assert clock.steps[-1] < limit_s <= clock.steps[-1] + STEP_S  # the last step started before the limit
    assert clock.now <= limit_s + STEP_S + EVAL_S  # overshoot: at most one step and one evaluation
    assert len(rows(result.run_dir)) == 2 and "val/accuracy" in rows(result.run_dir)[-1]  # evaluated, logged


def test_time_too_short_for_one_epoch_runs_one_and_says_so(tmp_path, clock, capsys):
    result = train(load_config(overrides=TINY + ["epochs=5", "time=0.05", f"project={tmp_path}"]), progress=False)
    assert result.epochs_done == 1
    assert len(clock.steps) == len(rows(result.run_dir)) * len(clock.steps)  # the whole epoch, not cut
    assert "shorter than one epoch" in capsys.readouterr().out


def test_fit_counts_setup_and_a_measured_evaluation(clock):
    b = budget.Budget(minutes=10)
    clock.now = 60.0  # a minute of setup (e.g. a feature cache) is part of the budget
    # 100 steps of 1 s per epoch, 5 done; evaluation measured at 20 s: (600 - 60 - 95 - 20) / 120 -> 3 more
    b.eval_s = 20.0
    assert b.fit_epochs(0, 5, 100, 1.0, eval_every=1, val_fraction=0.25) == 1 + 3
    b.eval_s = None  # not timed yet: a third of a step per validation image, 25 images per 100 steps
    assert b.fit_epochs(0, 5, 100, 1.0, eval_every=1, val_fraction=0.25) == 1 + 4
    assert not b.out_of_time(0)
    clock.now = 600.0
    assert not b.out_of_time(0) and b.out_of_time(1)  # the first epoch always finishes under `time`
    hard = budget.Budget(limit=10)
    clock.now += 600.0
    assert hard.out_of_time(0)  # time_limit cuts any epoch, the first too


def test_schedule_refit_keeps_the_shape():
    s = budget.Schedule(warmup_steps=10, total_steps=100, final=0.01)
    assert s(0) == pytest.approx(0.01) and s(10) == pytest.approx(1.0) and s(100) == pytest.approx(0.01)
    s.refit(20)  # a run shorter than its warm-up: warm-up is a quarter of it, the decay still ends at 20
    assert s.warmup_steps == 5 and s(5) == pytest.approx(1.0) and s(20) == pytest.approx(0.01)
    s.refit(400)
    assert s.warmup_steps == 10 and s(400) == pytest.approx(0.01)


def test_a_timed_run_resumes_with_its_fitted_epochs_and_ends_the_same(tmp_path, clock):
    """The fitted epoch count travels with the schedule's state, so a timed run killed after epoch 3 and
    resumed ends with the weights of one never interrupted."""
    from safetensors.torch import load_file

    settings = TINY + ["epochs=50", "time=1", f"project={tmp_path}"]
    reference = train(load_config(overrides=settings + ["name=ref"]), progress=False)
    clock.now = 0.0

    def interrupt(info):
        if info["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_config(overrides=settings + ["name=cut"]), callbacks=[interrupt], progress=False)
    resumed = train(load_config(), resume=tmp_path / "cut", progress=False)
    assert resumed.epochs_done == reference.epochs_done
    a, b = (load_file(str(r.run_dir / "weights" / "last.safetensors")) for r in (reference, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


TASKS = {  # one tiny model per task and fitting kind; the fake clock makes their real speed irrelevant
    "detect": ["model=yolo_v1", "data=synth:detect",
               "model_args={backbone: convnet, width: 8, S: 4, hidden: 32, neck: 32}"],
    "segment": ["model=unet", "data=synth:segment", "model_args={depth: 2, width: 8}"],
    "instance": ["model=mask_rcnn", "data=synth:instance",
                 "model_args={pretrained: none, fpn_channels: 16, box_hidden: 32, mask_channels: 16}"],
    "features": ["model=efficientnet_lite0", "data=synth:classify",
                 "model_args={pretrained: none, transfer: features}"],
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_time_fits_every_task(tmp_path, clock, task):
    """The same budget arithmetic for every task and fitting kind: a gradient-trained detector, segmenter
    and instance segmenter end within their minute with the schedule decayed to ``final_lr``; the cached
    features solve is one step, so it runs its one epoch and is done well inside the budget."""
    settings = TASKS[task] + ["synth_n=16", "image_size=64", "batch_size=4", "threads=1", "final_lr=0.01",
                              "lr=0.001", "val_split=0.25", "epochs=50", "time=0.5", f"project={tmp_path}"]
    result = train(load_config(overrides=settings), progress=False)
    assert clock.now <= 0.5 * 60
    if task == "features":
        assert result.epochs_done == 1
        return
    steps_per_epoch = len(clock.steps) // result.epochs_done
    assert 1 < result.epochs_done < 50 and not result.stopped_early
    assert clock.now + steps_per_epoch * STEP_S + EVAL_S > 0.5 * 60  # less than an epoch left unused
    assert rows(result.run_dir)[-1]["lr"] == pytest.approx(0.001 * 0.01)
