"""Plots of ``zir analyze``: metric per bin, against the zoom factor, and against the NMS IoU threshold.

Drawn on a ``matplotlib.figure.Figure`` with the Agg canvas, without pyplot (as :mod:`zir.metrics.plots`).
Bins without objects are left out of a plot (their number is "n/a" in the tables).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(figsize: tuple[float, float] = (6.0, 3.6)) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: Path) -> Path:
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def plot_bins(bins: Sequence[dict[str, Any]], xlabel: str, out: Path) -> Path:
    """Grouped bars: every metric of every non-empty bin, with the bootstrap interval where there is one."""
    fig = _figure((7.0, 3.6))
    ax = fig.add_subplot()
    keys = sorted({k for b in bins for k in b["metrics"]})
    width = 0.8 / max(len(keys), 1)
    for j, key in enumerate(keys):
        xs, ys, errs = [], [], [[], []]
        for i, b in enumerate(bins):
            v = b["metrics"].get(key)
            if not _ok(v):
                continue
            lo, hi = (b.get("ci") or {}).get(key, (math.nan, math.nan))
            xs.append(i + (j - (len(keys) - 1) / 2) * width)
            ys.append(v)
            errs[0].append(v - lo if _ok(lo) else 0.0)
            errs[1].append(hi - v if _ok(hi) else 0.0)
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=key)
    ax.set_xticks(range(len(bins)), [f"{b['name']}\n({b['objects']})" for b in bins], fontsize=8)
    ax.set_xlabel(f"{xlabel} (objects)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_zoom(zoom: Sequence[dict[str, Any]], key: str, out: Path) -> Path:
    """The metric ``key`` against the zoom factor, with its bootstrap interval as a band."""
    fig = _figure()
    ax = fig.add_subplot()
    pts = [(z["factor"], z["metrics"][key], *z["ci"].get(key, (math.nan, math.nan))) for z in zoom
           if _ok(z["metrics"].get(key))]
    if pts:
        f, v, lo, hi = zip(*pts)
        ax.plot(f, v, "o-", label=key)
        if all(map(_ok, lo + hi)):
            ax.fill_between(f, lo, hi, alpha=0.2)
    ax.set_xlabel("zoom factor (1 = as taken; smaller = farther away)")
    ax.set_ylabel(key)
    ax.set_ylim(0, 1)
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_nms(sweep: Sequence[dict[str, Any]], key: str, out: Path) -> Path:
    """Recall per crowding bin against the NMS IoU threshold: what NMS does to crowded and isolated objects."""
    fig = _figure()
    ax = fig.add_subplot()
    names = [b["name"] for b in sweep[0]["bins"]]
    for k, name in enumerate(names):
        pts = [(s["nms_iou"], s["bins"][k]["metrics"].get(key)) for s in sweep]
        pts = [p for p in pts if _ok(p[1])]
        if pts:
            ax.plot(*zip(*pts), "o-", label=name)
    ax.set_xlabel("NMS IoU threshold")
    ax.set_ylabel(key)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, title="largest IoU with another object")
    return _save(fig, out)


def plot_heatmap(table: dict[str, dict[Any, float]], severities: Sequence[int], metric: str, out: Path) -> Path:
    """The metric by corruption (rows) and severity (columns) as a heat map, numbers written in the cells."""
    import numpy as np

    names = list(table)
    grid = np.array([[_get(table[n], s) for s in severities] for n in names], dtype=np.float64)
    fig = _figure((1.2 + 0.9 * len(severities), 0.8 + 0.32 * len(names)))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=max(1e-9, np.nanmax(grid)) if
                   np.isfinite(grid).any() else 1, aspect="auto")
    for i in range(len(names)):
        for j in range(len(severities)):
            v = grid[i, j]
            ax.text(j, i, "n/a" if not math.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white")
    ax.set_xticks(range(len(severities)), [str(s) for s in severities])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("severity")
    fig.colorbar(im, ax=ax, label=metric)
    return _save(fig, out)


def _get(row: dict[Any, float], severity: int) -> float:
    v = row.get(severity, row.get(str(severity)))
    return float(v) if _ok(v) else math.nan


def plot_sweep(rows: Sequence[dict[str, Any]], key: str, xlabel: str, out: Path) -> Path:
    """The metric ``key`` against a sweep's ``amount`` (rotation in degrees, translation as a fraction)."""
    fig = _figure()
    ax = fig.add_subplot()
    pts = [(r["amount"], r["metrics"][key]) for r in rows if _ok(r["metrics"].get(key))]
    if pts:
        ax.plot(*zip(*pts), "o-", label=key)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(key)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return _save(fig, out)
