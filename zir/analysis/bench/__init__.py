"""``zir bench detectors``: every registered detector on the same data, budget and test split; accuracy
against inference time, the shape of the lecture's "YOLO vs SSD vs Faster R-CNN" figure.

    data = prepare_data("synth", out)              # or a dataset path (any format zir reads)
    result = bench_detectors(data, out, minutes=5) # train by the recipes, score, write the outputs

The parts, in the order they run:

* ``recipes.py`` and ``recipes/KIND/MODEL.yaml``: how each detector trains on a kind of data (``synth``
  or ``photo``): run config files read by ``zir.config.load_config``, the reasons as comments in them.
* ``data.py``: the training / test split as two COCO files (:class:`BenchData`).
* ``run.py``: training within the budget (the engine's ``time=``, :mod:`zir.engine.budget`: the epoch
  count is fitted from timed steps so that the cosine schedule ends with the budget, unless a recipe
  fixes it; the hard stop is checked before every step) and the whole bench (:func:`bench_detectors`).
* ``scoring.py``: every model scored the same way, through the engine's evaluation loop and COCO metric:
  each test image alone at its own size (batch 1, which also gives the median inference time). A
  trained model is scored with its *last* weights: the training run validates on the test split, so its
  "best" weights would be chosen on the test images themselves.
* ``outputs.py``: the table, the results file and the chart.

Output folder::

    OUT/table.md      markdown table; date, machine and command in the header
    OUT/results.json  the same numbers, one row per detector
    OUT/chart.png     mAP50 and mAP50-95 against ms per image (log), one-stage / two-stage marked
    OUT/data/         the train / test split as COCO files (images stay where they are)
    OUT/runs/MODEL/   the training runs (zir run folders)
"""

from zir.analysis.bench.data import BenchData, from_coco, prepare_data, prepare_synth
from zir.analysis.bench.outputs import (
    BASELINE_NAME,
    STAGE_NAMES,
    build_chart,
    format_table,
    machine,
    write_outputs,
)
from zir.analysis.bench.recipes import KINDS, RECIPES, Recipe, check_models, detectors, parse_sets, recipe_for
from zir.analysis.bench.run import (
    BenchResult,
    bench_detectors,
    parse_runs,
    train_and_score,
    train_detector,
)
from zir.analysis.bench.scoring import BenchRow, Clock, mean_box_baseline, score, score_run

__all__ = ["BASELINE_NAME", "KINDS", "RECIPES", "STAGE_NAMES", "BenchData", "BenchResult", "BenchRow", "Clock",
           "Recipe", "bench_detectors", "build_chart", "check_models", "detectors",
           "format_table", "from_coco", "machine", "mean_box_baseline", "parse_runs", "parse_sets",
           "prepare_data", "prepare_synth", "recipe_for", "score", "score_run", "train_and_score",
           "train_detector", "write_outputs"]
