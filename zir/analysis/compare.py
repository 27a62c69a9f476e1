"""``zir compare A/analysis.json B/analysis.json``: two ``zir analyze`` reports side by side.

The lecture's three questions (distance, crowding, transformations) and the detection errors, one row per
number both reports have: A and B with their bootstrap 95% intervals, the difference B - A, whether the
two intervals overlap (when they do, the test set does not tell the models apart on that number), and
the lecture's error reduction ``(E_A - E_B) / E_A`` with ``E = 1 - metric`` for accuracy-like numbers.
Each question also gets a *degradation* row per model: how much of the metric is lost from the easy to
the hard end (clean to the smallest zoom factor, isolated to the most crowded objects, clean to the
weather corruptions as ``1 - rPC``), so "which of the two degrades more" is one line.

Output: a plain-text table for the terminal (:func:`format_text`), and markdown and HTML files.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zir.errors import DataError

Interval = Sequence[float | None] | None


@dataclass
class Row:
    """One number of both reports.

    Attributes:
        question: ``clean``, ``distance``, ``crowding``, ``transformations`` or ``errors``.
        item: what the number is (e.g. ``zoom x0.25 bbox/AP50``).
        a, b: the two values (NaN where a report has none).
        a_ci, b_ci: their 95% intervals, or None.
        higher_is_better: True for metrics, False for losses of a metric (degradation, dAP).
    """

    question: str
    item: str
    a: float
    b: float
    a_ci: Interval = None
    b_ci: Interval = None
    higher_is_better: bool = True

    @property
    def diff(self) -> float:
        return self.b - self.a

    @property
    def overlap(self) -> bool | None:
        """Whether the intervals overlap; None when either is missing."""
        if not _ok(self.a_ci) or not _ok(self.b_ci):
            return None
        return self.a_ci[0] <= self.b_ci[1] and self.b_ci[0] <= self.a_ci[1]  # type: ignore[index,operator]

    @property
    def error_reduction(self) -> float:
        """The lecture's ``(E_A - E_B) / E_A`` in percent, ``E = 1 - metric`` (a metric in [0, 1]) or the
        number itself (a loss: degradation, dAP); NaN where it has no meaning (E_A = 0, missing values)."""
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            return math.nan
        ea, eb = (1 - self.a, 1 - self.b) if self.higher_is_better else (self.a, self.b)
        if not self.higher_is_better and (ea <= 0 or eb < 0):
            return math.nan
        return 100 * (ea - eb) / ea if ea > 0 else math.nan


def _ok(ci: Interval) -> bool:
    return ci is not None and len(ci) == 2 and all(c is not None and math.isfinite(c) for c in ci)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None else math.nan


def load_analysis(path: str | Path) -> dict[str, Any]:
    """An ``analysis.json`` (or the folder / run holding it) as a dict.

    Raises:
        DataError: no such file, or not an analysis (the message names the path).
    """
    p = Path(path)
    for candidate in (p, p / "analysis.json", p / "analysis" / "analysis.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except json.JSONDecodeError as e:
                raise DataError(candidate, f"not JSON ({e}); pass the analysis.json written by zir analyze") from e
            if not isinstance(data, dict) or "task" not in data or "clean" not in data:
                raise DataError(candidate, "not an analysis.json of zir analyze (no task / clean numbers)")
            return data
    raise DataError(p, "no analysis.json there; run `zir analyze RUN` first and pass RUN/analysis/analysis.json")


def compare_analyses(a: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    """Every number both analyses have, as :class:`Row` s in the report's order (module docstring)."""
    rows: list[Row] = []
    for k in a["clean"]:
        if k in b["clean"]:
            rows.append(Row("clean", k, _num(a["clean"][k]), _num(b["clean"][k]),
                            a.get("clean_ci", {}).get(k), b.get("clean_ci", {}).get(k)))
    key = next(iter(a["clean"]))
    # 1. Distance
    rows += _bin_rows("distance", "size", a.get("size", {}).get("relative"), b.get("size", {}).get("relative"))
    za = {z["factor"]: z for z in a.get("zoom", [])}
    zb = {z["factor"]: z for z in b.get("zoom", [])}
    for f in [f for f in za if f in zb]:
        for k in za[f]["metrics"]:
            if k in zb[f]["metrics"]:
                rows.append(Row("distance", f"zoom x{f:g} {k}", _num(za[f]["metrics"][k]), _num(zb[f]["metrics"][k]),
                                za[f].get("ci", {}).get(k), zb[f].get("ci", {}).get(k)))
    common = sorted(set(za) & set(zb))
    if len(common) > 1 and key in za[common[0]]["metrics"]:
        lo, hi = common[0], common[-1]
        rows.append(Row("distance", f"degradation {key}: zoom x{hi:g} - x{lo:g}",
                        _drop(za[hi]["metrics"][key], za[lo]["metrics"][key]),
                        _drop(zb[hi]["metrics"][key], zb[lo]["metrics"][key]), higher_is_better=False))
    # 2. Crowding
    ca, cb = a.get("crowding", {}), b.get("crowding", {})
    for name in ("max_iou", "synth_overlap"):
        rows += _bin_rows("crowding", name, ca.get(name), cb.get(name))
    if ca.get("max_iou") and cb.get("max_iou"):
        rkey = f"recall@{a.get('score', 0.3):g}"
        rows.append(Row("crowding", f"degradation {rkey}: alone - most crowded bin",
                        _bin_drop(ca["max_iou"], rkey), _bin_drop(cb["max_iou"], rkey), higher_is_better=False))
    # 3. Transformations
    ta, tb = a.get("corruptions", {}), b.get("corruptions", {})
    for group in ("all", "benchmark15", "weather"):
        if group in ta and group in tb:
            for k in ("mPC", "rPC"):
                rows.append(Row("transformations", f"{group} {k} ({ta[group]['corruptions']} corruptions)", _num(ta[group][k]), _num(tb[group][k]),
                                ta[group].get(f"{k}_ci"), tb[group].get(f"{k}_ci")))
    if "weather" in ta and "weather" in tb:
        rows.append(Row("transformations", "degradation: weather 1 - rPC", 1 - _num(ta["weather"]["rPC"]),
                        1 - _num(tb["weather"]["rPC"]), _flip(ta["weather"].get("rPC_ci")),
                        _flip(tb["weather"].get("rPC_ci")), higher_is_better=False))
    for name in [n for n in ta.get("table", {}) if n in tb.get("table", {})]:
        va, vb = _mean(ta["table"][name]), _mean(tb["table"][name])
        rows.append(Row("transformations", f"{name} (mean over severities)", va, vb))
    ga, gb = a.get("geometric", {}), b.get("geometric", {})
    for kind in [k for k in ga if k in gb]:
        amounts_b = {r["amount"]: r for r in gb[kind]}
        for r in ga[kind]:
            if r["amount"] in amounts_b and r["amount"] != 0 and key in r["metrics"]:
                rows.append(Row("transformations", f"{kind} {r['amount']:g} {key}", _num(r["metrics"][key]),
                                _num(amounts_b[r["amount"]]["metrics"].get(key))))
    # 4. Detection errors
    for name, label in (("tide", "boxes"), ("tide_segm", "masks")):
        da, db = a.get(name), b.get(name)
        if da and db:
            rows.append(Row("errors", f"TIDE ({label}) {da['metric']}", _num(da["AP"]), _num(db["AP"]),
                            da.get("AP_ci"), db.get("AP_ci")))
            for kind in da["dAP"]:
                if kind in db["dAP"]:
                    rows.append(Row("errors", f"TIDE ({label}) dAP {kind}", _num(da["dAP"][kind]),
                                    _num(db["dAP"][kind]), da.get("dAP_ci", {}).get(kind),
                                    db.get("dAP_ci", {}).get(kind), higher_is_better=False))
    return rows


def _drop(easy: Any, hard: Any) -> float:
    return _num(easy) - _num(hard)


def _flip(ci: Interval) -> Interval:
    """The interval of ``1 - x`` from that of ``x``."""
    return (1 - ci[1], 1 - ci[0]) if _ok(ci) else None  # type: ignore[index,operator]


def _mean(cells: dict[str, Any]) -> float:
    vals = [_num(v) for v in cells.values() if v is not None and math.isfinite(_num(v))]
    return sum(vals) / len(vals) if vals else math.nan


def _bin_drop(bins: list[dict[str, Any]], key: str) -> float:
    """The metric of the first bin minus that of the last bin with objects (NaN if either is missing)."""
    filled = [b for b in bins if b.get("objects", 0) > 0 and key in b.get("metrics", {})]
    if len(filled) < 2 or filled[0] is not bins[0]:
        return math.nan
    return _num(filled[0]["metrics"][key]) - _num(filled[-1]["metrics"][key])


def _bin_rows(question: str, name: str, a: list[dict[str, Any]] | None, b: list[dict[str, Any]] | None) -> list[Row]:
    if not a or not b:
        return []
    out = []
    by_name = {x["name"]: x for x in b}
    for x in a:
        y = by_name.get(x["name"])
        if y is None:
            continue
        for k in x.get("metrics", {}):
            if k in y.get("metrics", {}):
                out.append(Row(question, f"{name} {x['name']} {k} (objects {x['objects']} / {y['objects']})",
                               _num(x["metrics"][k]), _num(y["metrics"][k]),
                               (x.get("ci") or {}).get(k), (y.get("ci") or {}).get(k)))
    return out


# --------------------------------------------------------------------------------------------------
# Output


def _fmt(v: float, ci: Interval = None) -> str:
    if not math.isfinite(v):
        return "n/a"
    text = f"{v:.4f}"
    if _ok(ci):
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"  # type: ignore[index]
    return text


def _cells(r: Row) -> list[str]:
    overlap = {True: "yes", False: "NO", None: ""}[r.overlap]
    er = r.error_reduction
    return [r.question, r.item, _fmt(r.a, r.a_ci), _fmt(r.b, r.b_ci),
            f"{r.diff:+.4f}" if math.isfinite(r.diff) else "n/a", overlap, f"{er:+.1f}%" if math.isfinite(er) else ""]


HEADER = ["question", "number", "A [95% CI]", "B [95% CI]", "B - A", "CIs overlap", "error reduction B vs A"]


def format_text(rows: Sequence[Row], name_a: str, name_b: str) -> str:
    """A fixed-width table for the terminal."""
    table = [HEADER, *(_cells(r) for r in rows)]
    widths = [max(len(t[i]) for t in table) for i in range(len(HEADER))]
    lines = [f"A: {name_a}", f"B: {name_b}", ""]
    for k, t in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("CIs overlap 'NO': the test set tells the two apart on that number. Degradation rows and dAP: lower "
                 "is better; error reduction (E_A - E_B) / E_A with E = 1 - metric (or the loss itself).")
    return "\n".join(lines)


def format_markdown(rows: Sequence[Row], name_a: str, name_b: str) -> str:
    out = [f"A: `{name_a}`  ", f"B: `{name_b}`", "", "| " + " | ".join(HEADER) + " |",
           "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |" for r in rows]
    return "\n".join(out) + "\n"


def format_html(rows: Sequence[Row], name_a: str, name_b: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join("<tr" + (" style='font-weight:bold'" if r.overlap is False else "") + ">" +
                   "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in rows)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>zir compare</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto}td,th{padding:2px 8px}"
            "tr:nth-child(even){background:#f2f2f2}</style></head><body>"
            f"<h1>zir compare</h1><p>A: <code>{html.escape(name_a)}</code><br>B: <code>{html.escape(name_b)}</code></p>"
            "<p>Bold: the 95% intervals do not overlap. Degradation rows and dAP: lower is better.</p>"
            f"<table><tr>{head}</tr>{body}</table></body></html>")


def compare(path_a: str | Path, path_b: str | Path, out: str | Path | None = None) -> str:
    """Compare two ``analysis.json`` files: the terminal table; with ``out`` (a folder) also
    ``out/compare.md`` and ``out/compare.html``.

    Raises:
        DataError: a file is missing or not an analysis, or the two are of different tasks.
    """
    a, b = load_analysis(path_a), load_analysis(path_b)
    if a["task"] != b["task"]:
        raise DataError(Path(path_b), f"a {b['task']} analysis cannot be compared with a {a['task']} one ({path_a})")
    rows = compare_analyses(a, b)
    name_a, name_b = f"{a.get('model')} {a.get('run')}", f"{b.get('model')} {b.get('run')}"
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "compare.md").write_text(format_markdown(rows, name_a, name_b))
        (folder / "compare.html").write_text(format_html(rows, name_a, name_b))
    return format_text(rows, name_a, name_b)
