"""What a bench writes: ``table.md``, ``results.json`` and ``chart.png`` (mAP against ms per image)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from zir.analysis.bench.data import BenchData
from zir.analysis.bench.scoring import BenchRow

STAGE_NAMES = {1: "one-stage", 2: "two-stage"}
BASELINE_NAME = "mean training box (no learning)"


def machine() -> str:
    """The CPU model and core count (and the GPU's name where there is one), for table headers."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} CPUs"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def write_outputs(rows: Sequence[BenchRow], data: BenchData, out: str | Path, command: str = "",
                  threads: int = 0, device: str = "cpu", minutes: float = math.nan,
                  baseline: Mapping[str, float] | None = None,
                  failed: Mapping[str, str] | None = None) -> tuple[Path, Path, Path]:
    """Write ``table.md``, ``results.json`` and ``chart.png`` into ``out``; their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "machine": machine(),
              "torch": torch.__version__, "threads": threads or torch.get_num_threads(), "device": device,
              "command": command, "minutes": minutes}
    results = {**header, "data": data.summary(), "baseline": dict(baseline or {}),
               "rows": [dataclasses.asdict(r) for r in rows], "failed": dict(failed or {})}
    (out / "results.json").write_text(json.dumps(_no_nan(results), indent=1, allow_nan=False))
    (out / "table.md").write_text(format_table(rows, data, header, baseline, failed))
    fig = build_chart(rows, f"{data.name}: accuracy against speed (threads={header['threads']}, {device})", baseline)
    fig.savefig(out / "chart.png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out / "table.md", out / "results.json", out / "chart.png"


def _no_nan(obj: Any) -> Any:
    """NaN -> None, so the JSON is standard (``null``)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def _fmt(v: float, digits: int) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def format_table(rows: Sequence[BenchRow], data: BenchData, header: Mapping[str, Any],
                 baseline: Mapping[str, float] | None = None, failed: Mapping[str, str] | None = None) -> str:
    """The markdown table, with date, machine and command in its header."""
    info = data.summary()
    lines = [f"### Detectors on {data.name}: accuracy against speed", "",
             f"{header['date']}, {header['machine']}, torch {header['torch']}, {header['threads']} threads, "
             f"device {header['device']}.", ""]
    if header.get("command"):
        lines += [f"`{header['command']}`", ""]
    budget = "" if math.isnan(header["minutes"]) else f"; training budget {header['minutes']:g} min per model"
    lines += [f"{info['n_train']} training images, {info['n_test']} test images ({len(data.classes)} classes)"
              f"{budget}. Each test image is scored alone at its own size (batch 1; median ms per image, first "
              "image left out) by zir's COCO evaluator; trained models with their last weights.", "",
              "| detector | stages | mAP50 | mAP50-95 | ms / image | train min | epochs | settings |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    if baseline:
        lines.append(f"| {BASELINE_NAME} | - | {_fmt(baseline['mAP50'], 3)} | {_fmt(baseline['mAP50-95'], 3)} "
                     "| - | 0 | 0 | |")
    for r in rows:
        label = r.name if r.source != "run" else f"{r.name} (run {r.run})"
        settings = " ".join(f"{k}={v}" for k, v in r.settings.items())
        lines.append(f"| {label} | {STAGE_NAMES.get(r.stages, '?')} | {_fmt(r.mAP50, 3)} | {_fmt(r.mAP50_95, 3)} "
                     f"| {_fmt(r.ms, 1)} | {_fmt(r.train_min, 1)} | {r.epochs} | {settings} |")
    for name, error in (failed or {}).items():
        lines.append(f"| {name} | | failed: {error.splitlines()[0][:200]} | | | | | |")
    return "\n".join(lines) + "\n"


def build_chart(rows: Sequence[BenchRow], title: str = "", baseline: Mapping[str, float] | None = None) -> Any:
    """mAP50 (left) and mAP50-95 (right) against ms per image (log scale): one labelled point per detector,
    circles for one-stage and squares for two-stage detectors, hollow for a peer (not zir's).

    Returns:
        the matplotlib Figure (the caller saves and closes it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    styles = {1: ("o", "tab:blue"), 2: ("s", "tab:red"), 0: ("D", "tab:gray")}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True)
    placed = [r for r in rows if not math.isnan(r.ms) and r.ms > 0]
    for ax, key, attr in zip(axes, ("mAP50", "mAP50-95"), ("mAP50", "mAP50_95")):
        for stages, (marker, colour) in styles.items():
            for peer in (False, True):
                group = [r for r in placed if r.stages == stages and (r.source == "peer") == peer]
                if not group:
                    continue
                label = STAGE_NAMES.get(stages, "stages unknown") + (" (peer)" if peer else "")
                ax.scatter([r.ms for r in group], [getattr(r, attr) for r in group], marker=marker, s=70,
                           label=label, edgecolors=colour, facecolors="none" if peer else colour, linewidths=1.5)
                for r in group:
                    ax.annotate(r.name, (r.ms, getattr(r, attr)), textcoords="offset points", xytext=(6, 5),
                                fontsize=8)
        if baseline and not math.isnan(baseline.get(key, math.nan)):
            ax.axhline(baseline[key], color="gray", linestyle="--", linewidth=1, label=BASELINE_NAME)
        values = [getattr(r, attr) for r in placed if not math.isnan(getattr(r, attr))]
        values.append((baseline or {}).get(key, 0.0))
        top = min(1.0, max(values + [0.05]) * 1.2 + 0.02)
        ax.set_ylim(-0.03 * top, top)  # a little below 0, so points at 0 show whole
        ax.set_xscale("log")
        if placed:
            ms = [r.ms for r in placed]
            ax.set_xlim(min(ms) / 1.5, max(ms) * 2.0)  # room for the labels right of the points
        # Plain numbers (5, 20, 100 ms), not 5x10^0; minor ticks labelled at 2 and 5 only.
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(
            lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
        ax.set_xlabel("inference ms per image (batch 1, log scale)")
        ax.set_ylabel(key)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
