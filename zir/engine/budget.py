"""Training to a time budget: ``time=MINUTES`` fits the epoch count, ``time_limit=MINUTES`` is a hard stop.

``time`` (the name Ultralytics uses) plans the run: the epoch count is fitted from timed optimizer steps
so that warm-up and the cosine decay end when the budget does, instead of a fixed schedule being cut
short. The fit is made twice: after :data:`PROBE_STEPS` steps of the first epoch (the run's setup,
feature caches included, already counted), and again at the same point of the second epoch, because the
first epoch pays for caches (decoding, selective search, the first evaluation) that later epochs do not.
The second fit also knows what an evaluation costs.

The hard stop is checked before every step (:meth:`Budget.out_of_time`), so a run stops within one step
and one evaluation of its budget: at ``time_limit`` always, and at ``time`` from the second epoch on (a
budget too short for one epoch runs one epoch, and says so).

The clock is :data:`clock`, a module attribute so that tests replace it with a fake one; nothing here
sleeps or measures anything else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: Seconds, monotonic. Tests replace it (``monkeypatch.setattr(budget, "clock", fake)``).
clock: Callable[[], float] = time.monotonic

#: Optimizer steps of an epoch timed before the epoch count is fitted; the first step of an epoch is
#: not counted (it starts the data loader).
PROBE_STEPS = 4


@dataclass
class Budget:
    """A run's clock: ``minutes`` to plan for (0: epochs as configured) and ``limit`` minutes to stop at
    (0: none). Times are seconds since :attr:`start`."""

    minutes: float = 0.0
    limit: float = 0.0
    start: float = field(default_factory=lambda: clock())
    eval_s: float | None = None  # seconds of one evaluation, once one was timed
    notes: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        return clock() - self.start

    def out_of_time(self, epoch: int) -> bool:
        """The hard stop, checked before each step of epoch ``epoch`` (0-based) and after each epoch:
        ``limit`` passed, or ``minutes`` passed from the second epoch on."""
        s = self.elapsed()
        return (self.limit > 0 and s >= self.limit * 60) or (self.minutes > 0 and epoch > 0 and s >= self.minutes * 60)

    def fit_epochs(self, epoch: int, steps_done: int, steps_per_epoch: int, step_s: float, eval_every: int,
                   val_fraction: float) -> int:
        """Epochs (at least ``epoch + 1``) whose steps and evaluations end at ``minutes``.

        Args:
            epoch: the epoch now running (0-based), ``steps_done`` steps into it.
            steps_per_epoch: optimizer steps (micro-batches) per epoch.
            step_s: seconds per step, measured.
            eval_every: evaluations happen every this many epochs (and after the last).
            val_fraction: validation images / training images, for an evaluation not timed yet: it costs
                a third of a training step per image (a forward pass, no backward).
        """
        eval_s = self.eval_s if self.eval_s is not None else val_fraction * steps_per_epoch * step_s / 3
        left = self.minutes * 60 - self.elapsed() - (steps_per_epoch - steps_done) * step_s
        per_epoch = steps_per_epoch * step_s + eval_s / eval_every
        more = math.floor((left - eval_s) / per_epoch) if per_epoch > 0 else 0
        epochs = epoch + 1 + max(0, more)
        if epoch == 0 and left < eval_s and not self.notes:
            need = (self.elapsed() + (steps_per_epoch - steps_done) * step_s + eval_s) / 60
            self.notes.append(f"time={self.minutes:g} min is shorter than one epoch (about {need:.1f} min "
                              "here): running one epoch")
        return epochs


@dataclass
class Schedule:
    """LR factor per optimizer step: linear 0.01 -> 1 over ``warmup_steps``, then cosine 1 -> ``final`` at
    ``total_steps``. An object rather than a closure because a time budget changes ``total_steps`` while
    the run goes on, and ``LambdaLR`` saves an object's attributes with its state, so ``--resume`` gets
    the fitted length back."""

    warmup_steps: int
    total_steps: int
    final: float
    warmup_asked: int = -1  # the configured warm-up; a fitted run shorter than it gets a quarter of the run

    def __post_init__(self) -> None:
        if self.warmup_asked < 0:
            self.warmup_asked = self.warmup_steps

    def refit(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self.warmup_steps = min(self.warmup_asked, total_steps // 4)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return 0.01 + 0.99 * step / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
