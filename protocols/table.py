"""The at-a-glance table of a protocol: mean (std) over seeds per condition.

Accuracy, rates and gamma peak are Brian2's (the trained weights run in the
Brian2 network on the test digits, see :mod:`bridge.validation`); weight
statistics are of the trained stored weights. The ``verdict`` column is the
protocol's answer per condition (:func:`protocols.verdicts.condition_verdict`
over the completed runs, criteria in the footnote), and ``table.md`` lists
every run's verdict with the numbers it rests on. Diverged runs are listed
with their epoch and step and never averaged; failed runs are listed with
their error.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from bridge.run_records import describe_environment

from .definitions import CONDITIONS
from .results import RunRecord
from .verdicts import (
    DEFAULT_CRITERIA,
    DIVERGED,
    VerdictCriteria,
    brian2_summary,
    condition_verdict,
    describe_criteria,
    run_verdict,
)

__all__ = ["COLUMNS", "table_rows", "run_verdict_lines", "write_tables"]

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


def _ordered_conditions(records: list[RunRecord]) -> list[str]:
    """The conditions present in ``records``, in :data:`CONDITIONS` order (unknown ones last)."""
    return sorted({r.condition for r in records}, key=lambda c: list(CONDITIONS).index(c) if c in CONDITIONS else 99)


def table_rows(
    records: list[RunRecord], criteria: VerdictCriteria = DEFAULT_CRITERIA
) -> tuple[list[dict[str, str]], list[str]]:
    """One row per condition (mean and std over completed seeds, verdict) and notes on diverged/failed runs."""
    rows, notes = [], []
    for condition in _ordered_conditions(records):
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
        row["verdict"] = condition_verdict([run_verdict(r.status, criteria) for r in completed])
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


def _format(value: Any, scale: float = 1.0) -> str:
    """``value * scale`` to 3 significant digits; "n/a" where it is missing or NaN."""
    if value is None or not np.isfinite(float(value)):
        return "n/a"
    return f"{float(value) * scale:.3g}"


def run_verdict_lines(records: list[RunRecord], criteria: VerdictCriteria = DEFAULT_CRITERIA) -> list[str]:
    """One line per run: its verdict and the numbers it rests on.

    ``condition seed N: verdict (I x Hz, gamma y Hz at z x median, W_EI pruned w %)``
    for a run with a Brian2 validation; diverged runs give where they diverged,
    runs without a verdict their status.
    """
    lines = []
    for condition in _ordered_conditions(records):
        for r in sorted((r for r in records if r.condition == condition), key=lambda r: r.seed):
            verdict = run_verdict(r.status, criteria)
            brian = brian2_summary(r.status)
            prefix = f"{r.condition} seed {r.seed}"
            if verdict == DIVERGED:
                where = r.status.get("diverged") or {}
                lines.append(f"{prefix}: {DIVERGED} (epoch {where.get('epoch')}, step {where.get('step')})")
            elif verdict is None or brian is None:
                lines.append(f"{prefix}: no verdict ({r.status.get('status', 'unknown')}, no Brian2 validation)")
            else:
                pruned = (r.status.get("final") or {}).get("w_ei_pruned_fraction")
                lines.append(
                    f"{prefix}: {verdict} (I {_format(brian.get('rate_i_hz'))} Hz, "
                    f"gamma {_format(brian.get('gamma_peak_hz'))} Hz at "
                    f"{_format(brian.get('gamma_relative_power'))} x median, "
                    f"W_EI pruned {_format(pruned, 100.0)} %)"
                )
    return lines


def _recorded_environment(record: RunRecord) -> dict[str, Any] | None:
    """The ``environment`` entry of a run's ``config.json`` (``None`` where there is none)."""
    try:
        return json.loads((record.run_dir / "config.json").read_text()).get("environment")
    except (OSError, ValueError, AttributeError):
        return None


def write_tables(
    records: list[RunRecord], out_dir: Path, *, title: str, criteria: VerdictCriteria = DEFAULT_CRITERIA
) -> tuple[Path, Path]:
    """``table.md`` (table, footnote with the verdict criteria, per-run verdicts) and ``table.csv`` in ``out_dir``."""
    rows, notes = table_rows(records, criteria)
    header = ["condition", "seeds", *(c for c, _, _ in COLUMNS), "Brian2 validation", "verdict"]
    markdown = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    markdown += ["| " + " | ".join(row[h] for h in header) + " |" for row in rows]
    backends = sorted({(r.status.get("validation") or {}).get("backend", "?") for r in records if r.ok})
    markdown += [
        "",
        "Mean over completed seeds (sample std in parentheses). Accuracy, rates and gamma peak: "
        f"Brian2 ({', '.join(backends) or 'n/a'}) on the test digits with the trained weights. "
        "Weights: trained; pruned = stored < 0; effective mean = mean of max(stored, 0).",
        "",
        describe_criteria(criteria),
    ]
    markdown += ["", describe_environment([_recorded_environment(r) for r in records])]
    markdown += ["", "Per-run verdicts:", *(f"- {line}" for line in run_verdict_lines(records, criteria))]
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
