"""Tables of results: markdown tables, a sweep's `results.csv` and its `report.md`.

A sweep's records are one dict per run: {"variant", "seed", "status", "step", <metric>: float, ...}.
`report.md` shows variant x metric as mean +- sample standard deviation over the seeds that finished.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RUN_COLUMNS = ("variant", "seed", "status", "step")


def fmt(value: Any, digits: int = 3) -> str:
    """A float with `digits` decimals; nan (no value, e.g. AP of an absent class) as an en dash."""
    if isinstance(value, float | int) and not isinstance(value, bool):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results_csv(path: str | Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """One row per run; the run columns first, then every metric any run has (sorted), blank if missing."""
    metrics = sorted({k for r in records for k in r} - set(RUN_COLUMNS))
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*RUN_COLUMNS, *metrics], restval="")
        writer.writeheader()
        writer.writerows(records)
    return path


def read_results_csv(path: str | Path) -> list[dict[str, Any]]:
    """`write_results_csv`'s rows back: seed and step as int, metrics as float, blank cells left out."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    kinds = {"variant": str, "status": str, "seed": int, "step": int}
    return [{k: kinds.get(k, float)(v) for k, v in row.items() if v != ""} for row in rows]


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation); the spread of a single value is 0, nan values are left out."""
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarize(records: Sequence[Mapping[str, Any]], metrics: Sequence[str]
              ) -> dict[str, dict[str, tuple[float, float]]]:
    """variant -> metric -> (mean, spread) over that variant's finished runs, variants in first-seen order."""
    done = [r for r in records if r["status"] == "done"]
    variants = list(dict.fromkeys(r["variant"] for r in records))
    return {v: {m: mean_spread([float(r[m]) for r in done if r["variant"] == v and m in r]) for m in metrics}
            for v in variants}


def comparison_table(summary: Mapping[str, Mapping[str, tuple[float, float]]], metrics: Sequence[str],
                     seeds: Mapping[str, int]) -> str:
    rows = [[variant, seeds.get(variant, 0),
             *(f"{fmt(m)} ± {fmt(s)}" if not math.isnan(m) else "–" for m, s in (values[k] for k in metrics))]
            for variant, values in summary.items()]
    return markdown_table(["variant", "seeds", *metrics], rows)


def write_report(path: str | Path, title: str, records: Sequence[Mapping[str, Any]], metrics: Sequence[str],
                 notes: Sequence[str] = (), figures: Mapping[str, str] | None = None,
                 more: Mapping[str, Sequence[str]] | None = None) -> Path:
    """report.md: the comparison table of `metrics`, one more per `more` entry (caption -> metrics), every
    finished run with its seed, the runs that did not finish, then the figures (relative paths)."""
    seeds = Counter(r["variant"] for r in records if r["status"] == "done")
    parts = [f"# {title}", *notes,
             "Mean ± sample standard deviation over seeds (finished runs only).",
             comparison_table(summarize(records, metrics), metrics, seeds)]
    for caption, columns in (more or {}).items():
        parts += [f"## {caption}", comparison_table(summarize(records, columns), columns, seeds)]
    done = [r for r in records if r["status"] == "done"]
    columns = [*metrics, *(m for c in (more or {}).values() for m in c)]
    parts += ["## Every run", markdown_table(["variant", "seed", *columns],
                                             [[r["variant"], r["seed"], *(fmt(r.get(m, math.nan)) for m in columns)]
                                              for r in done])]
    broken = [r for r in records if r["status"] != "done"]
    if broken:
        rows = [[r["variant"], r["seed"], r["status"]] for r in broken]
        parts += ["## Runs that did not finish", markdown_table(["variant", "seed", "status"], rows)]
    for caption, file in (figures or {}).items():
        parts.append(f"## {caption}\n\n![{caption}]({file})")
    path = Path(path)
    path.write_text("\n\n".join(parts) + "\n")
    return path
