"""``loop_rank``: how much training moved the loop and the E representation, against the loop's initial rank.

Each completed run's learning-dynamics summary (:func:`bridge.learning_dynamics.dynamics_summary`, from its
trajectory records) is read from ``RUN_DIR/dynamics.json`` where a summary with the representation change is
there, else computed and written there.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.learning_dynamics import DYNAMICS_NAME, write_dynamics_summary

from ..results import RunRecord
from ..verdicts import DEFAULT_CRITERIA, VerdictCriteria
from .common import Quantity, _quantities, _setting, _write_json, setting_sweep_figure

TRUNCATED, FLAT = "top singular values (truncated)", "equal singular values (flat)"
PROFILE_COLORS = {TRUNCATED: "#1f5fa8", FLAT: "#d9731a"}

__all__ = ["draw_loop_rank", "initial_rank", "loop_rank_figure", "loop_rank_rows", "run_dynamics"]


def run_dynamics(record: RunRecord) -> dict[str, Any] | None:
    """The run's learning-dynamics summary with its representation change; None without trajectory records."""
    path = record.run_dir / DYNAMICS_NAME
    if path.is_file():
        try:
            summary = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            summary = None
        if isinstance(summary, dict) and "representation" in summary:
            return summary
    try:
        write_dynamics_summary(record.run_dir)
    except (FileNotFoundError, ValueError) as error:
        print(f"[protocols.sweep_figures] {record.run_dir}: no learning dynamics ({error})", file=sys.stderr)
        return None
    return json.loads(path.read_text())


def _dig(summary: Mapping[str, Any] | None, path: Sequence[Any]) -> float:
    value: Any = summary
    for key in path:
        if value is None:
            return math.nan
        value = value[key] if isinstance(value, list) else value.get(key)
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class _Dynamic(Quantity):
    """A value of the run's learning-dynamics summary (``path`` into it); NaN where absent."""

    summaries: Mapping[Path, Any] = field(default_factory=dict)
    path: tuple[Any, ...] = ()

    def of(self, record: RunRecord) -> float:
        return _dig(self.summaries.get(record.run_dir), self.path) * self.scale


def _dynamics_quantities(summaries: Mapping[Path, Any]) -> dict[str, Quantity]:
    def dynamic(key: str, label: str, *path: Any) -> Quantity:
        return _Dynamic(key, label, f"dynamics:{key}", summaries=summaries, path=path)

    return {
        q.key: q
        for q in (
            dynamic("change_w_ei", "relative change of W_EI", "rank", "w_ei", "relative_change"),
            dynamic("change_w_ie", "relative change of W_IE", "rank", "w_ie", "relative_change"),
            dynamic("cka_e", "CKA of E rates, initial vs trained", "representation", "linear_cka"),
            dynamic("rank_change_w_ei", "effective rank of W_EI's change", "rank", "w_ei", "effective_rank_of_change"),
        )
    }


def initial_rank(summary: Mapping[str, Any] | None) -> float:
    """Centred participation ratio of the initial effective W_EI (the step-0 record)."""
    return _dig(summary, ("rank", "w_ei", "effective_rank_centred", 0))


def loop_rank_rows(records: Sequence[RunRecord], summaries: Mapping[Path, Any]) -> list[dict[str, Any]]:
    """One row per completed run: its rank settings, initial effective ranks and what training changed."""
    accuracy, rate_i = (_quantities(DEFAULT_CRITERIA)[k] for k in ("accuracy", "rate_i"))
    rows = []
    for record in records:
        if not record.ok:
            continue
        summary = summaries.get(record.run_dir)
        row: dict[str, Any] = {
            "condition": record.condition,
            "seed": record.seed,
            "init_rank_w_ei": _setting(record, "init_rank_w_ei"),
            "init_rank_w_ie": _setting(record, "init_rank_w_ie"),
            "init_rank_spectrum": _setting(record, "init_rank_spectrum"),
        }
        for name in ("w_ei", "w_ie"):
            for metric in ("effective_rank", "effective_rank_centred"):
                row[f"initial_{metric}_{name}"] = _dig(summary, ("rank", name, metric, 0))
            row[f"relative_change_{name}"] = _dig(summary, ("rank", name, "relative_change"))
            row[f"effective_rank_of_change_{name}"] = _dig(summary, ("rank", name, "effective_rank_of_change"))
        row["linear_cka_e"] = _dig(summary, ("representation", "linear_cka"))
        row["accuracy_brian2"] = accuracy.of(record) / 100.0
        row["rate_i_hz_brian2"] = rate_i.of(record)
        rows.append({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    return rows


def loop_rank_figure(
    records: Sequence[RunRecord],
    summaries: Mapping[Path, Any],
    path: Path,
    *,
    title: str = "loop_rank",
    criteria: VerdictCriteria = DEFAULT_CRITERIA,
) -> Path:
    """Relative change of W_EI and W_IE, E-representation CKA, rank of the change, accuracy and I rate."""
    dynamics = _dynamics_quantities(summaries)
    final = _quantities(criteria)
    # A condition's seeds sit at the mean of their initial ranks (they differ in the third digit), to 3 digits.
    ranks: dict[str, list[float]] = {}
    for record in records:
        x = initial_rank(summaries.get(record.run_dir)) if record.ok else math.nan
        if math.isfinite(x):
            ranks.setdefault(record.condition, []).append(x)
    condition_x = {c: float(f"{sum(xs) / len(xs):.3g}") for c, xs in ranks.items()}

    def place(record: RunRecord) -> list[tuple[str, float]]:
        if record.condition not in condition_x or not math.isfinite(initial_rank(summaries.get(record.run_dir))):
            return []
        line = FLAT if _setting(record, "init_rank_spectrum") == "flat" else TRUNCATED
        return [(line, condition_x[record.condition])]

    return setting_sweep_figure(
        records,
        path,
        place=place,
        quantities=[*dynamics.values(), final["accuracy"], final["rate_i"]],
        xlabel="initial effective rank of W_EI (centred)",
        title=(
            f"{title}: what training changed against the loop's initial rank (thin points: seeds; bold: mean "
            "over seeds; accuracy and I rate: Brian2 on the test digits after training)"
        ),
        colors=PROFILE_COLORS,
        log_x=True,
    )


def draw_loop_rank(records, figure_dir, formats, *, conditions=None, title="loop_rank", criteria=DEFAULT_CRITERIA):
    summaries = {r.run_dir: run_dynamics(r) for r in records if r.ok}
    paths = [
        loop_rank_figure(records, summaries, figure_dir / f"loop_rank.{fmt}", title=title, criteria=criteria)
        for fmt in formats
    ]
    paths.append(_write_json(figure_dir / "loop_rank.json", loop_rank_rows(records, summaries)))
    return paths
