"""Pictures of metrics for run reports: confusion matrices, precision-recall curves, reliability diagrams.

Everything is drawn on a ``matplotlib.figure.Figure`` with the Agg canvas, without pyplot: no display
is needed, no global backend is switched (a notebook importing zir keeps its own), and no figure stays
alive in pyplot's registry. Each function returns the path it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from zir.metrics.classification import Reliability


def _figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # attaches the Agg canvas to the figure
    return fig


def _save(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out


def plot_confusion(matrix: torch.Tensor | np.ndarray, class_names: Sequence[str], out_png: str | Path,
                   normalize: bool = True, title: str = "Confusion matrix") -> Path:
    """Draw a confusion matrix (rows true, columns predicted) as a heat map.

    Args:
        matrix: ``(K, K)`` counts, e.g. :meth:`ClassificationMetrics.confusion_matrix` or the detection
            matrix with its "background" row and column (pass ``classes + ["background"]`` as names).
        class_names: ``K`` names, in matrix order.
        out_png: the file to write.
        normalize: colour and label each row as fractions of its true class (rows with no example stay 0).
        title: the figure title.
    """
    counts = np.asarray(matrix, dtype=np.float64)
    K = len(class_names)
    if counts.shape != (K, K):
        raise ValueError(f"matrix of shape {counts.shape} for {K} class names")
    values = counts / np.maximum(counts.sum(1, keepdims=True), 1) if normalize else counts
    side = min(max(4.0, 0.5 * K + 2), 20)
    fig = _figure((side, side * 0.9))
    ax = fig.subplots()
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set(xticks=range(K), yticks=range(K), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    if K <= 30:  # beyond that the numbers are unreadable anyway
        peak = values.max() if values.size else 0
        for i in range(K):
            for j in range(K):
                if counts[i, j] == 0:
                    continue
                text = f"{values[i, j]:.2f}" if normalize else f"{int(counts[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if values[i, j] > 0.5 * peak else "black")
    return _save(fig, out_png)


def plot_pr_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], out_png: str | Path,
                   title: str = "Precision-recall (IoU 0.5)") -> Path:
    """Draw one precision-recall curve per class, with its area (AP) in the legend.

    Args:
        curves: ``{class: (recall, precision)}``, e.g. :meth:`CocoEvaluator.pr_curves`.
        out_png: the file to write.
    """
    fig = _figure((6, 5))
    ax = fig.subplots()
    for name, (recall, precision) in curves.items():
        recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
        # COCO's 101-point AP is the mean precision over its equally spaced recall points.
        ax.plot(recall, precision, label=f"{name} (AP {precision.mean():.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower left", fontsize=8)
    return _save(fig, out_png)


def plot_calibration(reliability: Reliability, out_png: str | Path,
                     title: str = "Reliability diagram") -> Path:
    """Draw a reliability diagram: per confidence bin, accuracy against the diagonal of perfect calibration.

    Args:
        reliability: from :meth:`ClassificationMetrics.reliability` (bin edges, per-bin accuracy,
            confidence and count, ECE).
        out_png: the file to write.
    """
    edges = np.asarray(reliability.bin_edges, np.float64)
    acc = np.nan_to_num(np.asarray(reliability.accuracy, np.float64))
    conf = np.asarray(reliability.confidence, np.float64)
    count = np.asarray(reliability.count, np.float64)
    width, left = np.diff(edges), edges[:-1]
    filled = count > 0
    fig = _figure((5, 6))
    ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(left, acc, width=width, align="edge", edgecolor="black", label="accuracy")
    # The gap between a bin's accuracy and its mean confidence is what the ECE sums up.
    ax.bar(left[filled], (conf - acc)[filled], bottom=acc[filled], width=width[filled], align="edge",
           color="red", alpha=0.3, edgecolor="red", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{title} (ECE {reliability.ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    ax_count.bar(left, count, width=width, align="edge", edgecolor="black", color="grey")
    ax_count.set(xlabel="confidence", ylabel="images")
    return _save(fig, out_png)
