"""Property-based fuzzing of every reader: a damaged dataset ends in zir's own error or a correct read.

Each case mutates one annotation or label file of a valid tiny dataset (truncation, wrong types, NaN,
huge numbers, missing keys, unicode, random bytes), then runs what a user's command runs on it:
``open_dataset``, ``check_dataset`` (decoding every image) and ``load_sample`` of every record the check
passes. Any exception other than :class:`zir.errors.ZirError` is a bug. Bounded (``MAX_EXAMPLES`` per
reader) so that ``make test`` stays fast.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zir.data.check import bad_records, check_dataset
from zir.data.dataset import load_sample
from zir.data.formats import open_dataset
from zir.errors import ZirError

MAX_EXAMPLES = 30

# Which file of each layout (see conftest.layouts) the fuzzer damages.
TARGETS = {
    "coco": "annotations.json",
    "instance": "annotations/instances.json",
    "yolo": "labels/train/x.txt",
    "voc": "Annotations/p.xml",
    "masks": "train/label/s0.png",
    "instance-masks": "PedMasks/FudanPed00001_mask.png",
    "coco-panoptic": "panoptic.json",
    "imagefolder": "zebra/z1.png",
}
ROOTS = {"masks": "isbi"}

ODD_VALUES = st.sampled_from([None, math.nan, math.inf, -math.inf, 1e308, -1, 0, 2**63, -(2**70), "",
                              "naïve ünïcödé ✓", "1e309", [], {}, [[]], True, 3.5, [1, 2], {"a": 1}])


def _json_paths(node: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _json_paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:4]):
            out += _json_paths(v, (*path, i))
    return out


def _mutate_json(text: str, data: st.DataObject) -> str:
    doc = json.loads(text)
    paths = [p for p in _json_paths(doc) if p]
    path = data.draw(st.sampled_from(paths), label="path")
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and data.draw(st.booleans(), label="delete"):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(ODD_VALUES, label="value")
    return json.dumps(doc, allow_nan=True)


def _mutate_text(text: str, data: st.DataObject) -> str:
    tokens = ["nan", "inf", "-1", "1e309", "99999999999999999999", "ü", "\x00", "<", "</object>", " ", "\n",
              "0.5", "abc", "<bndbox>", "&", "]]>"]
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        at = data.draw(st.integers(0, len(text)), label="at")
        cut = data.draw(st.integers(0, 6), label="cut")
        text = text[:at] + data.draw(st.sampled_from(tokens), label="token") + text[at + cut:]
    return text


def _mutate(path: Path, data: st.DataObject) -> None:
    raw = path.read_bytes()
    kind = data.draw(st.sampled_from(["truncate", "bytes", "structure"]), label="kind")
    if kind == "truncate":
        path.write_bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)), label="keep")])
    elif kind == "bytes":
        at = data.draw(st.integers(0, max(0, len(raw) - 1)), label="at")
        junk = data.draw(st.binary(min_size=1, max_size=16), label="junk")
        path.write_bytes(raw[:at] + junk + raw[at + len(junk):])
    elif path.suffix == ".json":
        path.write_text(_mutate_json(raw.decode("utf-8"), data), encoding="utf-8")
    elif path.suffix in (".txt", ".xml"):
        path.write_text(_mutate_text(raw.decode("utf-8"), data), encoding="utf-8")
    else:  # an image or PNG label map: damage the pixel data after the header
        at = data.draw(st.integers(min(len(raw) - 1, 33), max(0, len(raw) - 1)), label="at")
        path.write_bytes(raw[:at] + bytes(reversed(raw[at:])))


def _use_like_a_user(root: Path) -> None:
    """What ``zir data check`` and ``zir train`` do with a dataset; only ZirError may escape."""
    try:
        index = open_dataset(root)
    except ZirError:
        return
    report = check_dataset(index, open_images=True, progress=False)
    assert all(p.file and p.message for p in report.problems)
    bad = bad_records(index, report)
    for i, record in enumerate(index.records):
        if i in bad:
            continue
        try:
            load_sample(record, index)
        except ZirError:
            pass


@pytest.mark.parametrize("layout", sorted(TARGETS))
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_files_end_in_zir_errors_or_a_correct_read(layouts, layout, data):
    source = layouts[layout] if layout not in ROOTS else layouts[layout].parent
    work = Path(tempfile.mkdtemp(prefix="zir-fuzz-"))
    try:
        root = work / "data"
        shutil.copytree(source, root)
        target = root / TARGETS[layout]
        assert target.is_file(), target
        _mutate(target, data)
        _use_like_a_user(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
