"""Run logs: one JSON line and one CSV row per epoch, and a curves plot, written by rank 0."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class RunLogger:
    """Append-only epoch logs in ``run_dir``: ``metrics.jsonl``, ``results.csv``, ``curves.png``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "results.csv"
        self.rows: list[dict[str, Any]] = []
        self._last_plot = -math.inf

    def resume(self, last_epoch: int) -> None:
        """Keep the rows of epochs up to ``last_epoch`` (a killed run may have logged one more)."""
        if self.jsonl.is_file():
            rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r["epoch"] <= last_epoch]
            self._rewrite()

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()
        # Redraw the curves at most every 30 s: matplotlib costs ~0.3 s, which dominates short epochs.
        if time.monotonic() - self._last_plot > 30:
            self.plot()

    def plot(self) -> None:
        """Draw ``curves.png`` now (the trainer calls it once more when training ends)."""
        if self.rows:
            plot_curves(self.rows, self.run_dir / "curves.png")
        self._last_plot = time.monotonic()

    def _rewrite(self) -> None:
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self._write_csv()

    def _write_csv(self) -> None:
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        with self.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)


def plot_curves(rows: list[dict[str, Any]], out_png: Path) -> Path:
    """Training losses (left) and validation metrics (right) per epoch."""
    epochs = [r["epoch"] for r in rows]
    loss_keys = [k for k in rows[-1] if k.startswith("train/")] if rows else []
    metric_keys = [k for k in rows[-1] if k.startswith("val/")] if rows else []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k in loss_keys:
        ax1.plot(epochs, [r.get(k) for r in rows], marker="o", ms=3, label=k.removeprefix("train/"))
    ax1.set(title="training loss", xlabel="epoch")
    for k in metric_keys[:8]:
        ax2.plot(epochs, [r.get(k) for r in rows], marker="o", ms=3, label=k.removeprefix("val/"))
    ax2.set(title="validation", xlabel="epoch")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
