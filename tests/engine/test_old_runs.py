"""Runs written by an earlier zir still evaluate and predict.

``tests/fixtures/runs/*_v0`` were trained (1 epoch, tiny settings, ``test_efficientnet`` backbone) with
the code of 2026-11-27, before the two-stage detectors were composed of parts; their weights carry the
parameter names of that code. Loading maps old names onto new ones (``zir.engine.checkpoint``).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

import zir
from zir.data.contract import DetectionPrediction, PanopticPrediction

FIXTURES = Path(__file__).parent.parent / "fixtures" / "runs"


@pytest.fixture
def run(tmp_path, request):
    """A copy of the fixture (evaluation writes nothing into it, but a test must not risk the original)."""
    dst = tmp_path / request.param
    shutil.copytree(FIXTURES / request.param, dst)
    return dst


@pytest.mark.parametrize("run", ["mask_rcnn_v0", "panoptic_fpn_v0"], indirect=True)
def test_old_run_loads_predicts_and_evaluates(run):
    torch.set_num_threads(1)
    predictor = zir.load(run)
    image = torch.rand(3, 48, 80)
    (pred,) = predictor.predict([image])
    if isinstance(pred, PanopticPrediction):
        assert pred.ids.shape == (48, 80)
    else:
        assert isinstance(pred, DetectionPrediction) and pred.masks is not None
        assert pred.masks.shape[1:] == (48, 80)
    metrics = zir.evaluate(run, progress=False)
    key = "PQ" if "panoptic" in run.name else "segm/AP"
    assert key in metrics and not math.isnan(metrics[key])
    if "mask_rcnn" in run.name:  # measured with the code that wrote the run, before the restructure
        assert metrics["bbox/AP"] == pytest.approx(0.00502121640735502, rel=1e-6)
        assert metrics["bbox/AR100"] == pytest.approx(0.05)


def test_old_weights_equal_after_loading():
    """Every tensor of the old file reaches the model: nothing is dropped by the key mapping."""
    from safetensors.torch import load_file

    predictor = zir.load(FIXTURES / "mask_rcnn_v0")
    old = load_file(str(FIXTURES / "mask_rcnn_v0" / "weights" / "best.safetensors"))
    new = predictor.model.state_dict()
    assert len(old) == len(new)
    old_sums = sorted(float(t.double().sum()) for t in old.values())
    new_sums = sorted(float(t.double().sum()) for t in new.values())
    assert old_sums == new_sums
