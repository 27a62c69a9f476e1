"""Classification metrics: accuracy, top-5, per-class precision / recall / F1, confusion matrix, calibration.

Everything is accumulated in constant memory (a ``(C, C)`` confusion matrix, a top-k hit count and the
calibration bins), so evaluating a large set never keeps the scores of every image.

Definitions
-----------
* Confusion matrix: rows are the true class, columns the predicted class (the arg-max of the scores).
* Per class, with ``TP``, ``FP``, ``FN`` read off the matrix: precision ``TP / (TP + FP)`` (NaN when the
  class is never predicted), recall ``TP / (TP + FN)`` (NaN when the class has no example), and
  ``F1 = 2 TP / (2 TP + FP + FN)``, which is the harmonic mean of the two where both exist, 0 where one is
  0 or missing, and NaN only for a class that appears neither in the targets nor in the predictions.
  ``macro_f1`` averages F1 over the classes where it is defined (torchmetrics' convention).
* Expected calibration error (Guo et al. 2017): the confidence of an image is its highest probability;
  ``n_bins`` equal-width bins ``(m-1)/M < conf <= m/M`` (the first bin also holds 0);
  ``ECE = sum_m |acc(B_m) - conf(B_m)| * |B_m| / n``.
* Error reduction (the lecture): ``(E_old - E_new) / E_old * 100`` percent, see :func:`error_reduction`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from zir.data.contract import ClassPrediction


@dataclass
class Reliability:
    """Data of a reliability diagram (what :func:`zir.metrics.plots.plot_calibration` draws).

    Attributes:
        bin_edges: ``n_bins + 1`` confidence edges from 0 to 1.
        accuracy: per bin, the fraction of images whose prediction is right (NaN for an empty bin).
        confidence: per bin, the mean confidence (NaN for an empty bin).
        count: per bin, the number of images.
        ece: the expected calibration error over all bins.
    """

    bin_edges: list[float]
    accuracy: list[float]
    confidence: list[float]
    count: list[int]
    ece: float


def error_reduction(e_old: float, e_new: float) -> float:
    """Relative error reduction in percent: ``(E_old - E_new) / E_old * 100``.

    The lecture's example: an error of 0.143 brought down to 0.058 is a 59.4% reduction. Negative when the
    new error is larger.

    Raises:
        ValueError: when ``e_old`` is 0 (there is no error left to reduce).
    """
    if e_old == 0:
        raise ValueError("error_reduction: the old error is 0, so a relative reduction is undefined")
    return (e_old - e_new) / e_old * 100.0


class ClassificationMetrics:
    """Accumulates classification results and computes accuracy, top-5, macro F1 and ECE.

    Args:
        num_classes: number of classes ``C``.
        classes: class names (length ``C``), used by :meth:`per_class` and :meth:`format_confusion`.
        n_bins: number of equal-width confidence bins of the calibration error.

    Usage::

        m = ClassificationMetrics(3, ["cat", "dog", "fox"])
        m.update(predictions, [0, 2, 1])      # list[ClassPrediction], true labels
        m.update_probs(probs, labels)          # or a (B, C) probability tensor directly
        m.compute()                            # {"accuracy": ..., "macro_f1": ..., "ece": ...}
    """

    def __init__(self, num_classes: int, classes: list[str] | None = None, n_bins: int = 15) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"{len(classes)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        self.n_bins = n_bins
        # Top-5 is only informative when there are more than 5 classes (with C <= 5 it is always 1).
        self.topk = 5 if num_classes > 5 else None
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        C, M = self.num_classes, self.n_bins
        self._confusion = torch.zeros(C, C, dtype=torch.int64)
        self._topk_hits = 0
        self._bin_count = torch.zeros(M, dtype=torch.int64)
        self._bin_conf = torch.zeros(M, dtype=torch.float64)  # sum of confidences per bin
        self._bin_correct = torch.zeros(M, dtype=torch.int64)

    # ---------------------------------------------------------------------------------------------
    # Accumulation

    def update(self, predictions: Sequence[ClassPrediction], targets: Sequence[int] | torch.Tensor) -> None:
        """Add a batch of predictions and their true labels.

        Args:
            predictions: one :class:`ClassPrediction` per image; its ``scores`` (softmax, ``(C,)``) are used,
                the predicted class being their arg-max (which is ``label`` by construction).
            targets: the true class id of each image (list of ints, or an int64 ``(B,)`` tensor).
        """
        if len(predictions) == 0:
            return
        probs = torch.stack([torch.as_tensor(p.scores) for p in predictions])
        self.update_probs(probs, torch.as_tensor(targets))

    @torch.no_grad()
    def update_probs(self, probs: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> None:
        """Add a batch given as probabilities: the fast path for an evaluation loop.

        Args:
            probs: float ``(B, C)`` softmax probabilities (rows sum to 1), any device.
            labels: int ``(B,)`` true class ids.

        Raises:
            ValueError: on a shape mismatch, a label outside ``[0, C)`` or scores that are not
                probabilities (apply ``softmax`` to logits first).
        """
        C = self.num_classes
        probs = torch.as_tensor(probs).detach().float().cpu()
        labels = torch.as_tensor(labels).detach().cpu().long().reshape(-1)
        if probs.ndim != 2 or probs.shape[1] != C:
            raise ValueError(f"expected probabilities of shape (B, {C}), got {tuple(probs.shape)}")
        if probs.shape[0] != labels.shape[0]:
            raise ValueError(f"{probs.shape[0]} predictions but {labels.shape[0]} labels")
        if len(labels) == 0:
            return
        bad = labels[(labels < 0) | (labels >= C)]
        if len(bad):
            raise ValueError(f"label {int(bad[0])} is outside the {C} classes of these metrics: "
                             "do the data and the model have the same classes?")
        # The calibration error is meaningless on logits, so refuse them instead of reporting nonsense
        # (the tolerance lets through softmax computed in half precision).
        if probs.min() < -1e-3 or not torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-2):
            raise ValueError("scores are not probabilities (rows must be >= 0 and sum to 1): apply softmax first")

        conf, pred = probs.max(dim=1)  # (B,), (B,)
        self._confusion += torch.bincount(labels * C + pred, minlength=C * C).reshape(C, C)
        if self.topk is not None:
            top = probs.topk(self.topk, dim=1).indices  # (B, k)
            self._topk_hits += int((top == labels[:, None]).any(dim=1).sum())
        # Bin m holds (m/M, (m+1)/M]; ceil(conf * M) - 1 gives that index, and conf = 0 goes to bin 0.
        bins = (torch.ceil(conf.double() * self.n_bins).long() - 1).clamp(0, self.n_bins - 1)
        correct = (pred == labels).long()
        self._bin_count += torch.bincount(bins, minlength=self.n_bins)
        self._bin_conf += torch.bincount(bins, weights=conf.double(), minlength=self.n_bins)
        self._bin_correct += torch.bincount(bins, weights=correct.double(), minlength=self.n_bins).long()

    # ---------------------------------------------------------------------------------------------
    # Results

    @property
    def num_samples(self) -> int:
        return int(self._confusion.sum())

    def compute(self) -> dict[str, float]:
        """The summary numbers.

        Returns:
            ``{"accuracy", "top5" (only when C > 5), "macro_f1", "ece"}``, all in [0, 1]; NaN before any
            update.
        """
        n = self.num_samples
        if n == 0:
            out = {"accuracy": math.nan, "macro_f1": math.nan, "ece": math.nan}
            if self.topk is not None:
                out["top5"] = math.nan
            return out
        out = {"accuracy": float(self._confusion.trace()) / n}
        if self.topk is not None:
            out["top5"] = self._topk_hits / n
        f1 = torch.tensor([c["f1"] for c in self.per_class()], dtype=torch.float64)
        out["macro_f1"] = float(f1.nanmean())
        out["ece"] = self.reliability().ece
        return out

    def confusion_matrix(self) -> torch.Tensor:
        """int64 ``(C, C)``: rows are the true class, columns the predicted class."""
        return self._confusion.clone()

    def per_class(self) -> list[dict[str, float | int | str]]:
        """Per class: ``{"class", "precision", "recall", "f1", "support"}`` (see the module docstring)."""
        cm = self._confusion.double()
        tp = cm.diag()
        predicted = cm.sum(0)  # TP + FP
        support = cm.sum(1)  # TP + FN
        nan = torch.tensor(math.nan, dtype=torch.float64)
        precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), nan)
        recall = torch.where(support > 0, tp / support.clamp(min=1), nan)
        denom = predicted + support  # 2 TP + FP + FN
        f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), nan)
        return [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(self.classes, precision, recall, f1, support)
        ]

    def reliability(self) -> Reliability:
        """Per-bin accuracy and confidence for a reliability diagram, and the ECE they give."""
        count = self._bin_count.double()
        nan = torch.tensor(math.nan, dtype=torch.float64)
        acc = torch.where(count > 0, self._bin_correct.double() / count.clamp(min=1), nan)
        conf = torch.where(count > 0, self._bin_conf / count.clamp(min=1), nan)
        n = count.sum()
        gaps = torch.where(count > 0, (acc - conf).abs() * count, torch.zeros_like(count))
        ece = float(gaps.sum() / n) if n > 0 else math.nan
        edges = torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64)
        return Reliability(edges.tolist(), acc.tolist(), conf.tolist(), self._bin_count.tolist(), ece)

    def format_confusion(self, normalize: bool = False, max_name: int = 12) -> str:
        """The confusion matrix as a text table (rows true, columns predicted), for printing.

        Args:
            normalize: show each row as fractions of its true class instead of counts.
            max_name: class names are cut to this many characters.
        """
        cm = self._confusion
        names = [n[:max_name] for n in self.classes]
        if normalize:
            rows = cm.double() / cm.sum(1, keepdim=True).clamp(min=1)
            cells = [[f"{v:.2f}" for v in row.tolist()] for row in rows]
        else:
            cells = [[str(v) for v in row.tolist()] for row in cm]
        width = max([len(n) for n in names] + [len(c) for row in cells for c in row] + [4])
        head_w = max(len(n) for n in names + ["true \\ pred"])
        lines = ["true \\ pred".ljust(head_w) + " " + " ".join(n.rjust(width) for n in names)]
        for name, row in zip(names, cells):
            lines.append(name.ljust(head_w) + " " + " ".join(c.rjust(width) for c in row))
        return "\n".join(lines)
