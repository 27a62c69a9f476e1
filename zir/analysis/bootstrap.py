"""Bootstrap confidence intervals over images: test sets are small, and a number without its spread
hides when two models do not differ.

The images are drawn with replacement (percentile bootstrap, Efron & Tibshirani 1993, ch. 13), the
task's own metric is computed on each draw, and the interval is the draws' 2.5th and 97.5th percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from zir.data.contract import Target


def resample(targets: Sequence[Any], index: Sequence[int]) -> list[Any]:
    """The targets at ``index`` (with repeats); a :class:`Target` drawn again gets a fresh ``image_id``,
    because evaluators refuse an image id seen twice."""
    out = []
    for j, i in enumerate(index):
        t = targets[i]
        out.append(replace(t, image_id=j + 1) if isinstance(t, Target) else t)
    return out


def bootstrap_metric(predictions: Sequence[Any], targets: Sequence[Any], make_metric: Callable[[], Any],
                     keys: Sequence[str], n: int = 200, seed: int = 0,
                     level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the metric's ``keys`` over ``n`` resamples of the images.

    Args:
        predictions, targets: one per image, as the metric's ``update`` takes them.
        make_metric: a fresh metric object (``update`` then ``compute() -> dict``).
        keys: which numbers of ``compute()`` get an interval.
        n: number of resamples; 0 gives NaN intervals.
        seed: the draws depend on it only, so a report is reproducible.

    Returns:
        ``{key: (low, high)}``; NaN where every draw was NaN (e.g. no object of that kind).
    """
    draws: dict[str, list[float]] = {k: [] for k in keys}
    m = len(predictions)
    g = torch.Generator().manual_seed(seed)
    whole = _whole(predictions, targets, make_metric) if n and m else None
    for _ in range(n if m else 0):
        index = torch.randint(m, (m,), generator=g).tolist()
        if whole is not None:  # the same images and ids as the update below, converted once
            metric = whole.resampled(index)
        else:
            metric = make_metric()
            metric.update([predictions[i] for i in index], resample(targets, index))
        values = metric.compute()
        for k in keys:
            draws[k].append(float(values.get(k, math.nan)))
    return {k: percentile_interval(v, level) for k, v in draws.items()}


def _whole(predictions: Sequence[Any], targets: Sequence[Any], make_metric: Callable[[], Any]) -> Any | None:
    """The metric of all images, when it can hand out resampled copies of itself (``resampled(index)``,
    as :class:`~zir.metrics.coco.CocoEvaluator`) and the targets are :class:`Target` s with distinct ids;
    else None (each draw then converts its images itself)."""
    metric = make_metric()
    ids = [t.image_id for t in targets if isinstance(t, Target)]
    if not hasattr(metric, "resampled") or len(ids) != len(targets) or None in ids or len(set(ids)) != len(ids):
        return None
    metric.update(list(predictions), list(targets))
    return metric


def bootstrap_ratio(hits: Sequence[float], counts: Sequence[float], n: int = 200, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float]:
    """Interval of ``sum(hits) / sum(counts)`` over resampled images (e.g. recall of a bin: per image
    the objects found and the objects in the bin). Draws with no count are left out."""
    hits_a, counts_a = np.asarray(hits, np.float64), np.asarray(counts, np.float64)
    m = len(hits_a)
    if m == 0 or n == 0:
        return math.nan, math.nan
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(m, (n, m), generator=g).numpy()  # (n, m)
    num, den = hits_a[index].sum(1), counts_a[index].sum(1)
    return percentile_interval((num[den > 0] / den[den > 0]).tolist(), level)


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """``(low, high)`` percentiles holding ``level`` of the finite ``values``; NaN when there are none."""
    v = np.asarray([x for x in values if math.isfinite(x)], np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))
