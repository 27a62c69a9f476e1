"""Metrics: ``update(predictions, targets)`` then ``compute() -> dict[str, float]``; they know nothing of models.

* :mod:`zir.metrics.classification`: accuracy, top-5, per-class precision / recall / F1, confusion
  matrix, expected calibration error, and the lecture's error reduction.
* :mod:`zir.metrics.coco`: COCO bbox / segm AP and AR through faster-coco-eval, per-class AP,
  precision-recall curves, the detection confusion matrix, COCO results files.
* :mod:`zir.metrics.semantic`: pixel accuracy, IoU and Dice from one confusion matrix; the ISBI 2012
  challenge's pixel error (best F-score over thresholds) of a binary probability map.
* :mod:`zir.metrics.panoptic`: panoptic quality PQ = SQ x RQ per class, things / stuff / all.
* :mod:`zir.metrics.plots`: the pictures of a run report (imported on its own: it loads matplotlib).
"""

from zir.metrics.classification import ClassificationMetrics, Reliability, error_reduction
from zir.metrics.coco import CocoEvaluator, evaluate_results_json, to_coco_results
from zir.metrics.panoptic import PanopticMetrics
from zir.metrics.semantic import SemanticMetrics, ThresholdSweep

__all__ = [
    "ClassificationMetrics",
    "CocoEvaluator",
    "PanopticMetrics",
    "Reliability",
    "SemanticMetrics",
    "ThresholdSweep",
    "error_reduction",
    "evaluate_results_json",
    "to_coco_results",
]
