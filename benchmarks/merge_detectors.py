"""Merge the outputs of several ``zir bench detectors`` runs on the same data into one table and chart.

When the detectors of one comparison were trained and scored by separate bench runs (to run them side by
side, or because one was rerun with more epochs), this takes each run's ``results.json`` rows and writes
one ``table.md``, ``results.json`` and ``chart.png``. Every row keeps its own numbers; the rows must score
the same test images (checked: same test annotations, byte for byte). The table's header lists the
commands that produced the rows.

    python benchmarks/merge_detectors.py OUT BENCH_DIR[:MODEL,MODEL] [BENCH_DIR[:MODEL,...] ...]

``BENCH_DIR:yolo_v1`` takes only that row from that folder; ``BENCH_DIR:rcnn=rcnn (96 px)`` takes it under
a new name (to keep two rows of one model); a row name given twice keeps the last one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zir.analysis import bench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("sources", nargs="+", help="BENCH_DIR or BENCH_DIR:MODEL,MODEL")
    args = p.parse_args()

    rows: dict[str, bench.BenchRow] = {}
    commands, data, baseline, test_bytes, threads, minutes = [], None, {}, None, 0, float("nan")
    for source in args.sources:
        folder, _, names = source.partition(":")
        results = json.loads((Path(folder) / "results.json").read_text())
        info = results["data"]
        this = Path(info["test"]).read_bytes()
        if test_bytes is None:
            test_bytes, baseline, threads = this, results["baseline"], results["threads"]
            data = bench.from_coco(info["train"], info["test"], info["name"], info["kind"])
        elif this != test_bytes:
            raise SystemExit(f"{folder}: scored on other test images than {args.sources[0]}; not merged")
        wanted = {}  # row name -> name in the merged table
        for item in filter(None, names.split(",")):
            old, _, new = item.partition("=")
            wanted[old] = new or old
        for r in results["rows"]:
            if not wanted or r["name"] in wanted:
                r["name"] = wanted.get(r["name"], r["name"])
                rows[r["name"]] = bench.BenchRow(**{k: (float("nan") if v is None else v) for k, v in r.items()})
        if results["command"] not in commands:  # a folder given twice (rows renamed) is one command
            commands.append(results["command"])
    assert data is not None
    order = {name: i for i, name in enumerate(bench.detectors())}
    merged = sorted(rows.values(), key=lambda r: order.get(r.model, len(order)))
    command = " ; ".join(commands)
    table, _, chart = bench.write_outputs(merged, data, args.out, command=command, threads=threads, device="cpu",
                                          minutes=minutes, baseline=baseline)
    print(table.read_text())
    print(f"chart: {chart}")


if __name__ == "__main__":
    main()
