"""The at-a-glance table of a protocol (SPEC section 4): mean (std) over seeds per condition.

Accuracy, rates and gamma peak are Brian2's (the trained weights run in the
Brian2 network on the test digits, see :mod:`bridge.validation`); weight
statistics are of the trained stored weights. Diverged runs are listed with
their epoch and never averaged; failed runs are listed with their error.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .definitions import CONDITIONS
from .results import RunRecord

__all__ = ["COLUMNS", "table_rows", "write_tables"]

# (column, unit/format, source) -- source is "brian2" (validation summary) or a final-metrics key.
COLUMNS = (
    ("accuracy (%)", 100.0, "brian2:accuracy"),
    ("E rate (Hz)", 1.0, "brian2:rate_e_hz"),
    ("I rate (Hz)", 1.0, "brian2:rate_i_hz"),
    ("gamma peak (Hz)", 1.0, "brian2:gamma_peak_hz"),
    ("W_EI pruned (%)", 100.0, "final:w_ei_pruned_fraction"),
    ("W_EI eff. mean (nS)", 1e3, "final:w_ei_effective_mean"),
    ("W_IE pruned (%)", 100.0, "final:w_ie_pruned_fraction"),
    ("W_IE eff. mean (nS)", 1e3, "final:w_ie_effective_mean"),
)


def _value(record: RunRecord, source: str) -> float:
    kind, key = source.split(":", 1)
    if kind == "brian2":
        simulators = (record.status.get("validation") or {}).get("simulators", {})
        brian = next((v for k, v in simulators.items() if k.startswith("brian2:")), None)
        return float(brian[key]) if brian and brian.get(key) is not None else float("nan")
    value = (record.status.get("final") or {}).get(key)
    return float(value) if value is not None else float("nan")


def table_rows(records: list[RunRecord]) -> tuple[list[dict[str, str]], list[str]]:
    """One row per condition (mean and std over completed seeds) and notes on diverged/failed runs."""
    rows, notes = [], []
    conditions = sorted(
        {r.condition for r in records}, key=lambda c: list(CONDITIONS).index(c) if c in CONDITIONS else 99
    )
    for condition in conditions:
        runs = [r for r in records if r.condition == condition]
        completed = [r for r in runs if r.ok]
        row = {"condition": condition, "seeds": f"{len(completed)}/{len(runs)}"}
        for column, scale, source in COLUMNS:
            values = np.array([_value(r, source) * scale for r in completed])
            values = values[np.isfinite(values)]
            if len(values) == 0:
                row[column] = "n/a"
            elif len(values) == 1:
                row[column] = f"{values[0]:.3g}"
            else:
                row[column] = f"{values.mean():.3g} ({values.std(ddof=1):.2g})"
        verdicts = [(r.status.get("validation") or {}).get("verdict") for r in completed]
        row["Brian2 validation"] = f"{sum(v == 'pass' for v in verdicts)}/{len(completed)} pass" if completed else "n/a"
        rows.append(row)
        for r in runs:
            status = r.status.get("status")
            if status == "diverged":
                where = r.status.get("diverged") or {}
                what = ", ".join(where.get("nonfinite", []))
                at = f"epoch {where.get('epoch')}, step {where.get('step')}"
                notes.append(f"{r.condition} seed {r.seed}: diverged at {at} ({what})")
            elif status not in ("completed",):
                notes.append(f"{r.condition} seed {r.seed}: {status}: {r.status.get('error', '')}".rstrip(": "))
    return rows, notes


def write_tables(records: list[RunRecord], out_dir: Path, *, title: str) -> tuple[Path, Path]:
    """``table.md`` and ``table.csv`` under ``out_dir``."""
    rows, notes = table_rows(records)
    header = ["condition", "seeds", *(c for c, _, _ in COLUMNS), "Brian2 validation"]
    markdown = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    markdown += ["| " + " | ".join(row[h] for h in header) + " |" for row in rows]
    backends = sorted({(r.status.get("validation") or {}).get("backend", "?") for r in records if r.ok})
    markdown += [
        "",
        "Mean over completed seeds (sample std in parentheses). Accuracy, rates and gamma peak: "
        f"Brian2 ({', '.join(backends) or 'n/a'}) on the test digits with the trained weights. "
        "Weights: trained; pruned = stored < 0; effective mean = mean of max(stored, 0).",
    ]
    if notes:
        markdown += ["", "Runs not averaged:", *(f"- {n}" for n in notes)]
    md_path = out_dir / "table.md"
    csv_path = out_dir / "table.csv"
    from biosim.records import atomic_write_text

    atomic_write_text(md_path, "\n".join(markdown) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buffer.getvalue())
    return md_path, csv_path
