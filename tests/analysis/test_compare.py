"""``zir compare`` of two analysis.json files, on two hand-built analyses."""

from __future__ import annotations

import json
import math

import pytest

import zir
from zir.analysis.compare import compare_analyses, load_analysis
from zir.cli import main
from zir.errors import DataError


def analysis(clean, clean_ci, zoom_small, alone, crowded, rpc, rpc_ci, dap_miss, miss_ci, model="m"):
    """A detection analysis with the fields compare reads; numbers given per test."""
    return {
        "run": f"runs/{model}", "model": model, "task": "detect", "score": 0.3,
        "clean": {"bbox/AP50": clean}, "clean_ci": {"bbox/AP50": clean_ci},
        "size": {"relative": [{"name": "[0, 0.05)", "objects": 0, "metrics": {}, "ci": {}},
                              {"name": "[0.05, 0.1)", "objects": 4, "metrics": {"bbox/AP50": 0.2},
                               "ci": {"bbox/AP50": [0.1, 0.3]}}]},
        "zoom": [{"factor": 1.0, "metrics": {"bbox/AP50": clean}, "ci": {"bbox/AP50": clean_ci}},
                 {"factor": 0.25, "metrics": {"bbox/AP50": zoom_small}, "ci": {"bbox/AP50": [None, None]}}],
        "crowding": {"max_iou": [{"name": "alone", "objects": 10, "metrics": {"recall@0.3": alone}, "ci": {}},
                                 {"name": "IoU > 0.3", "objects": 3, "metrics": {"recall@0.3": crowded}, "ci": {}}]},
        "corruptions": {"table": {"fog": {"3": 0.4}},
                        "weather": {"mPC": rpc * clean, "rPC": rpc, "corruptions": 1, "rPC_ci": rpc_ci}},
        "tide": {"metric": "bbox/AP50", "AP": clean, "dAP": {"miss": dap_miss}, "dAP_ci": {"miss": miss_ci}},
    }


def test_rows_differences_overlap_and_degradation():
    a = analysis(0.8, [0.75, 0.85], 0.2, 0.9, 0.5, 0.5, [0.45, 0.55], 0.10, [0.08, 0.12], "a")
    b = analysis(0.6, [0.50, 0.70], 0.3, 0.8, 0.7, 0.8, [0.70, 0.90], 0.05, [0.02, 0.09], "b")
    rows = {r.item: r for r in compare_analyses(a, b)}
    clean = rows["bbox/AP50"]
    assert clean.diff == pytest.approx(-0.2) and clean.overlap is False  # [0.75, 0.85] vs [0.50, 0.70]
    assert clean.error_reduction == pytest.approx(100 * (0.2 - 0.4) / 0.2)  # error 0.2 -> 0.4: -100%
    # distance: the drop from x1 to x0.25, A 0.6 and B 0.3: B degrades less
    drop = rows["degradation bbox/AP50: zoom x1 - x0.25"]
    assert (drop.a, drop.b) == pytest.approx((0.6, 0.3)) and drop.error_reduction == pytest.approx(50.0)
    # crowding: recall alone - recall in the most crowded bin, A 0.4 and B 0.1
    crowd = rows["degradation recall@0.3: alone - most crowded bin"]
    assert (crowd.a, crowd.b) == pytest.approx((0.4, 0.1))
    # weather: 1 - rPC with the flipped interval; overlap of [0.45, 0.55] and [0.10, 0.30] is none
    weather = rows["degradation: weather 1 - rPC"]
    assert (weather.a, weather.b) == pytest.approx((0.5, 0.2)) and weather.overlap is False
    assert weather.b_ci == pytest.approx((0.1, 0.3))
    # TIDE dAP: a loss, intervals [0.08, 0.12] and [0.02, 0.09] overlap
    miss = rows["TIDE (boxes) dAP miss"]
    assert miss.overlap is True and miss.error_reduction == pytest.approx(50.0)
    # an empty bin in both gives no row; a missing interval gives no overlap verdict
    assert not any("[0, 0.05)" in item for item in rows)
    assert rows["zoom x0.25 bbox/AP50"].overlap is None
    assert rows["size [0.05, 0.1) bbox/AP50 (objects 4 / 4)"].diff == 0 and math.isnan(rows["fog (mean over severities)"].a) is False


def test_cli_and_api_write_the_table_and_files(tmp_path, capsys):
    a = analysis(0.8, [0.75, 0.85], 0.2, 0.9, 0.5, 0.5, [0.45, 0.55], 0.10, [0.08, 0.12], "a")
    b = analysis(0.6, [0.50, 0.70], 0.3, 0.8, 0.7, 0.8, [0.70, 0.90], 0.05, [0.02, 0.09], "b")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pa, pb = tmp_path / "a" / "analysis.json", tmp_path / "b" / "analysis.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert main(["compare", str(pa), str(pb), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "degradation: weather 1 - rPC" in out and "NO" in out and "compare.md" in out
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| transformations | degradation: weather 1 - rPC | 0.5000 [0.450, 0.550] | 0.2000 [0.100, 0.300] |" in md
    assert "<table>" in (tmp_path / "cmp" / "compare.html").read_text()
    assert "TIDE (boxes) dAP miss" in zir.compare(pa, pb)
    assert load_analysis(tmp_path / "a")["model"] == "a"  # a folder holding analysis.json is accepted


def test_bad_inputs_name_the_file(tmp_path, capsys):
    with pytest.raises(DataError, match="no analysis.json"):
        load_analysis(tmp_path / "nothing")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DataError, match="not JSON"):
        load_analysis(tmp_path / "x.json")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(analysis(0.8, None, 0.2, 0.9, 0.5, 0.5, None, 0.1, None)))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**analysis(0.8, None, 0.2, 0.9, 0.5, 0.5, None, 0.1, None), "task": "classify"}))
    assert main(["compare", str(good), str(other)]) == 2
    assert "cannot be compared" in capsys.readouterr().err
