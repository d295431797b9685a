"""Benchmark results: one JSON file per benchmark in ``bench/results/`` and a table on stdout.

Every row is a measured step; a row may name the reference row it is compared against, and
its ``ratio`` is then ``reference seconds / seconds`` for throughput rows (above 1 = faster
than the reference) unless the row sets its own ratio (bytes sent, files per second).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machine import load_average

RESULTS = Path(__file__).resolve().parent / "results"


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Of several runs of one step (dicts with "seconds"), the one with the median time (the
    lower middle one for an even count), with every run's seconds added as
    ``samples_seconds``: the machine is shared, so one run alone can be far off."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    pick = dict(ordered[(len(ordered) - 1) // 2])
    pick["samples_seconds"] = [round(r["seconds"], 3) for r in runs]
    return pick


@dataclass
class Row:
    """One measurement: ``seconds`` to move ``nbytes`` (and/or ``files``)."""

    group: str
    name: str
    seconds: float
    nbytes: int = 0
    files: int = 0
    reference: str | None = None
    ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float | None:
        return self.nbytes / self.seconds / 1e6 if self.nbytes and self.seconds > 0 else None

    @property
    def files_per_s(self) -> float | None:
        return self.files / self.seconds if self.files and self.seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "name": self.name,
            "seconds": round(self.seconds, 4),
            "bytes": self.nbytes,
            "files": self.files,
            "mb_per_s": None if self.mb_per_s is None else round(self.mb_per_s, 1),
            "files_per_s": None if self.files_per_s is None else round(self.files_per_s, 1),
            "reference": self.reference,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            **self.extra,
        }


@dataclass
class Report:
    name: str
    machine: dict[str, Any]
    params: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        """Record ``row``; if it names a reference (a row of the same group) and has no ratio of
        its own, its ratio is the reference's time over its time."""
        if row.reference and row.ratio is None:
            ref = self.find(row.group, row.reference)
            if ref is not None and row.seconds > 0:
                row.ratio = ref.seconds / row.seconds
        self.rows.append(row)
        return row

    def find(self, group: str, name: str) -> Row | None:
        return next((r for r in self.rows if r.group == group and r.name == name), None)

    def table(self) -> str:
        head = ["group", "step", "seconds", "MB/s", "files/s", "ratio", "vs"]
        lines = [head]
        for r in self.rows:
            lines.append(
                [
                    r.group,
                    r.name,
                    f"{r.seconds:.2f}",
                    "" if r.mb_per_s is None else f"{r.mb_per_s:.0f}",
                    "" if r.files_per_s is None else f"{r.files_per_s:.0f}",
                    "" if r.ratio is None else f"{r.ratio:.2f}",
                    r.reference or "",
                ]
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        out = []
        for i, line in enumerate(lines):
            out.append(
                "  ".join(
                    cell.ljust(w) if j < 2 else cell.rjust(w) for j, (cell, w) in enumerate(zip(line, widths))
                )
            )
            if i == 0:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.machine["load_average_end"] = load_average()
        path = RESULTS / f"{self.name}.json"
        body = {
            "benchmark": self.name,
            "machine": self.machine,
            "params": self.params,
            "rows": [r.to_dict() for r in self.rows],
            "notes": self.notes,
        }
        path.write_text(json.dumps(body, indent=2) + "\n")
        return path

    def print(self) -> None:
        print()
        print(self.table())
        for n in self.notes:
            print(f"  * {n}")

    def finish(self) -> None:
        """Write the results file, print the table and where the file is."""
        path = self.write()
        self.print()
        print(f"\nresults: {path}")
