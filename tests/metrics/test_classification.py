"""Classification metrics against hand calculations and torchmetrics; the plots they feed."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassF1Score,
)

from zir.data.contract import ClassPrediction
from zir.metrics.classification import ClassificationMetrics, error_reduction
from zir.metrics.plots import plot_calibration, plot_confusion


def _random_batch(seed: int, n: int, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities that are right more often than chance, and their labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=g)
    logits = torch.randn(n, C, generator=g) * 2
    logits[torch.arange(n), labels] += 2.5
    return logits.softmax(1), labels


def test_error_reduction_lecture_example():
    assert error_reduction(0.143, 0.058) == pytest.approx(59.44, abs=0.01)
    assert round(error_reduction(0.143, 0.058), 1) == 59.4
    assert error_reduction(0.2, 0.3) == pytest.approx(-50.0)
    with pytest.raises(ValueError):
        error_reduction(0.0, 0.1)


def test_hand_computed_case():
    # 3 classes; true labels and arg-max predictions:
    #   true 0 -> 0, 0, 1 ; true 1 -> 1 ; true 2 -> 0
    probs = torch.tensor([
        [0.85, 0.10, 0.05],
        [0.55, 0.35, 0.10],
        [0.15, 0.82, 0.03],
        [0.10, 0.65, 0.25],
        [0.45, 0.20, 0.35],
    ])
    labels = torch.tensor([0, 0, 0, 1, 2])
    m = ClassificationMetrics(3, ["a", "b", "c"], n_bins=10)
    m.update([ClassPrediction(p, int(p.argmax())) for p in probs], labels.tolist())
    assert m.confusion_matrix().tolist() == [[2, 1, 0], [0, 1, 0], [1, 0, 0]]
    out = m.compute()
    assert "top5" not in out  # only 3 classes
    assert out["accuracy"] == pytest.approx(3 / 5)
    a, b, c = m.per_class()
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)
    assert (b["precision"], b["recall"], b["f1"]) == (pytest.approx(0.5), 1.0, pytest.approx(2 / 3))
    assert math.isnan(c["precision"]) and c["recall"] == 0.0 and c["f1"] == 0.0
    assert out["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    # ECE by hand, 10 bins (confidences kept off the bin edges, where float32 rounding decides):
    # (0.8, 0.9] holds 0.85 (right) and 0.82 (wrong): accuracy 0.5, confidence 0.835, 2 images;
    # 0.55 (right), 0.65 (right) and 0.45 (wrong) are alone in their bins.
    ece = (2 * abs(0.5 - 0.835) + abs(1 - 0.55) + abs(1 - 0.65) + abs(0 - 0.45)) / 5
    assert out["ece"] == pytest.approx(ece)
    table = m.format_confusion()
    assert table.splitlines()[0].split()[-3:] == ["a", "b", "c"]
    assert table.splitlines()[1].split() == ["a", "2", "1", "0"]


@pytest.mark.parametrize("C", [3, 10])
def test_against_torchmetrics(C):
    tm_acc = MulticlassAccuracy(C, average="micro")
    tm_f1 = MulticlassF1Score(C, average="macro")
    tm_ece = MulticlassCalibrationError(C, n_bins=15, norm="l1")
    tm_top5 = MulticlassAccuracy(C, top_k=5, average="micro") if C > 5 else None
    m = ClassificationMetrics(C)
    for seed in range(4):  # several batches: accumulation must equal one pass over everything
        probs, labels = _random_batch(seed, 250, C)
        if seed == 3:
            labels[labels == 1] = 0  # class 1 absent from the targets of this batch
        m.update_probs(probs, labels)
        for metric in (tm_acc, tm_f1, tm_ece) + ((tm_top5,) if tm_top5 else ()):
            metric.update(probs, labels)
    out = m.compute()
    assert out["accuracy"] == pytest.approx(float(tm_acc.compute()), abs=1e-6)
    assert out["macro_f1"] == pytest.approx(float(tm_f1.compute()), abs=1e-6)
    # torchmetrics bins [lo, hi) where zir bins (lo, hi]: the same unless a confidence sits on an edge.
    assert out["ece"] == pytest.approx(float(tm_ece.compute()), abs=1e-5)
    if tm_top5:
        assert out["top5"] == pytest.approx(float(tm_top5.compute()), abs=1e-6)
    else:
        assert "top5" not in out
    assert 0.3 < out["accuracy"] < 0.95  # a real mix of right and wrong


def test_macro_f1_skips_classes_never_seen():
    m = ClassificationMetrics(4)
    m.update_probs(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), torch.tensor([0, 1]))
    assert math.isnan(m.per_class()[3]["f1"])  # class 3: no example, never predicted
    assert m.compute()["macro_f1"] == 1.0


def test_rejects_bad_input():
    m = ClassificationMetrics(3)
    with pytest.raises(ValueError, match="softmax"):
        m.update_probs(torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="label 5 is outside the 3 classes"):
        m.update_probs(torch.tensor([[1.0, 0, 0]]), torch.tensor([5]))
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        m.update_probs(torch.ones(2, 4) / 4, torch.tensor([0, 1]))
    assert all(math.isnan(v) for v in m.compute().values())


def _assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()


def test_plots_write_pngs(tmp_path):
    probs, labels = _random_batch(0, 300, 6)
    m = ClassificationMetrics(6, [f"class {i}" for i in range(6)], n_bins=10)
    m.update_probs(probs, labels)
    out = plot_confusion(m.confusion_matrix(), m.classes, tmp_path / "plots" / "confusion.png")
    assert out == tmp_path / "plots" / "confusion.png"
    _assert_png(out)
    _assert_png(plot_confusion(m.confusion_matrix(), m.classes, tmp_path / "counts.png", normalize=False))
    reliability = m.reliability()
    assert len(reliability.bin_edges) == 11 and sum(reliability.count) == 300
    _assert_png(plot_calibration(reliability, tmp_path / "calibration.png"))
    with pytest.raises(ValueError):
        plot_confusion(m.confusion_matrix(), m.classes[:3], tmp_path / "bad.png")
