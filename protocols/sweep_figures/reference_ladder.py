"""``reference_ladder``: the end state on each rung from this project's recipe to the reference study's.

The ladder (``ladder_0_project`` to ``ladder_5_batch``) switches one factor of
:data:`protocols.catalog.reference_ladder.REFERENCE_FACTORS` to the reference's value per
rung, at the same 120 Adam steps; each ``reverse_*`` condition is the
reference recipe with one factor set back. A row per condition holds what the
table reads (:func:`protocols.table._value`), the largest epoch-mean W_EI
gradient norm before clipping (``metrics.jsonl``), each seed's verdict and how
far its Brian2 I rate is from the verdict thresholds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import registry
from ..figures import _pyplot
from ..results import RunRecord
from ..table import COLUMNS, _format
from ..verdicts import DEFAULT_CRITERIA, VerdictCriteria, describe_criteria, run_verdict
from .common import (
    SEED_ALPHA,
    SYMLOG_LINTHRESH,
    VERDICT_COLORS,
    Quantity,
    _by_condition,
    _finite_or_none,
    _quantities,
    _save,
    _summarise,
    _thresholds,
    _wide_range,
    _write_json,
    short_verdict,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "GRAD_NORM_KEY",
    "rung_label",
    "ladder_rows",
    "ladder_table_markdown",
    "reference_ladder_figure",
    "ladder_trajectories_figure",
    "draw_reference_ladder",
]

GRAD_NORM_KEY = "grad_norm_w_ei"
"""The ``metrics.jsonl`` key of the epoch-mean W_EI gradient norm before clipping."""

# Row key -> the source protocols.table._value reads.
_SOURCES = (
    ("accuracy", "brian2:accuracy"),
    ("rate_e", "brian2:rate_e_hz"),
    ("rate_i", "brian2:rate_i_hz"),
    ("gamma_peak", "brian2:gamma_peak_hz"),
    ("gamma_power", "brian2:gamma_relative_power"),
    ("w_ei_pruned", "final:w_ei_pruned_fraction"),
    ("w_ei_effective_mean", "final:w_ei_effective_mean"),
    ("w_ie_pruned", "final:w_ie_pruned_fraction"),
)


def _ladder_quantities(criteria: VerdictCriteria) -> dict[str, Quantity]:
    """The values of a row: label and scale of :data:`protocols.table.COLUMNS` (the sweeps' where it has none)."""
    columns = {source: (label, scale) for label, scale, source in COLUMNS}
    sweep = {q.source: q for q in _quantities(criteria).values()}
    quantities = {}
    for key, source in _SOURCES:
        label, scale = columns[source] if source in columns else (sweep[source].label, sweep[source].scale)
        thresholds = sweep[source].thresholds if source in sweep else ()
        quantities[key] = Quantity(key, label, source, scale, thresholds)
    return quantities


# --- rows ----------------------------------------------------------------------------------------------------


_FACTOR_SHORT = {"global_clip": "clip", "readout_unit": "readout unit"}


def rung_label(condition: str) -> str:
    """A short tick label: ``0 project``, ``1 +constants``, ..., ``rev. clip`` (other names unchanged).

    >>> rung_label("ladder_3_global_clip"), rung_label("reverse_global_clip"), rung_label("ladder_0_project")
    ('3 +clip', 'rev. clip', '0 project')
    """
    if match := re.fullmatch(r"ladder_(\d+)_(\w+)", condition):
        rung, factor = int(match[1]), match[2]
        return f"{rung} project" if rung == 0 else f"{rung} +{_FACTOR_SHORT.get(factor, factor.replace('_', ' '))}"
    if match := re.fullmatch(r"reverse_(\w+)", condition):
        return f"rev. {_FACTOR_SHORT.get(match[1], match[1].replace('_', ' '))}"
    return condition


def _max_grad_norm(record: RunRecord) -> float | None:
    """The largest epoch mean of :data:`GRAD_NORM_KEY` over the run's epochs (None if no epoch has one).

    Epoch 0 (untrained) has no gradient; non-finite values cannot occur in a
    completed run (the trainer retries or marks it diverged) and are skipped.
    """
    values = [m.get(GRAD_NORM_KEY) for m in record.metrics()]
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return max(finite) if finite else None


def _thresholds_hz(criteria: VerdictCriteria) -> tuple[tuple[str, float], ...]:
    return (("dismantled", criteria.dismantled_max_rate_i_hz), ("PING", criteria.kept_min_rate_i_hz))


def _distance_text(rate_i_hz: float, name: str, threshold_hz: float) -> str:
    """``"12.4 above dismantled (1 Hz)"``: an I rate equal to a threshold is on its upper side (0 above)."""
    side = "above" if rate_i_hz >= threshold_hz else "below"
    return f"{_format(abs(rate_i_hz - threshold_hz))} {side} {name} ({threshold_hz:g} Hz)"


def _margin_text(rate_i_hz: float, criteria: VerdictCriteria) -> str:
    """``"I 13.4 Hz: 12.4 above dismantled (1 Hz), 8.4 above PING (5 Hz)"``."""
    parts = [_distance_text(rate_i_hz, name, hz) for name, hz in _thresholds_hz(criteria)]
    return f"I {_format(rate_i_hz)} Hz: " + ", ".join(parts)


def _run_row(record: RunRecord, quantities: dict[str, Quantity], criteria: VerdictCriteria) -> dict[str, Any]:
    """One run: its verdict, its values (None unless completed), its I-rate margins."""
    row: dict[str, Any] = {
        "seed": record.seed,
        "status": record.status.get("status", "incomplete"),
        "verdict": run_verdict(record.status, criteria),
    }
    # Only completed runs give values, as in the table: a diverged or failed run's numbers are not its end state.
    for key, quantity in quantities.items():
        row[key] = _finite_or_none(quantity.of(record)) if record.ok else None
    row["max_grad_norm_w_ei"] = _max_grad_norm(record) if record.ok else None
    rate_i = row["rate_i"]
    for name, hz in _thresholds_hz(criteria):
        row[f"margin_{name.lower()}_hz"] = None if rate_i is None else rate_i - hz
    row["margin"] = None if rate_i is None else _margin_text(rate_i, criteria)
    return row


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean over the defined values (the table's: missing and non-finite left out); None if none."""
    defined = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(defined)) if defined else None


def _closest(runs: Sequence[dict[str, Any]], criteria: VerdictCriteria) -> tuple[str | None, float | None]:
    """The seed whose I rate is nearest a verdict threshold: (text, signed distance in Hz), or (None, None)."""
    best: tuple[float, str, float] | None = None
    for run in runs:
        if run["rate_i"] is None:
            continue
        for name, hz in _thresholds_hz(criteria):
            distance = run["rate_i"] - hz
            if best is None or abs(distance) < best[0]:
                text = f"seed {run['seed']}, I {_format(run['rate_i'])} Hz: {_distance_text(run['rate_i'], name, hz)}"
                best = (abs(distance), text, distance)
    return (None, None) if best is None else (best[1], best[2])


def ladder_rows(
    records: Sequence[RunRecord],
    conditions: Sequence[str] | None = None,
    criteria: VerdictCriteria = DEFAULT_CRITERIA,
) -> list[dict[str, Any]]:
    """One row per condition of the ladder: what the table reads, the max gradient norm, verdicts, margins.

    Parameters
    ----------
    records : list of RunRecord
        The protocol's runs (any status; only completed runs give values).
    conditions : list of str, optional
        Every condition of the protocol in its order (``protocol.json``), so
        that conditions without a run get a row; conditions of ``records``
        not listed follow. Default: the conditions of ``records``.
    criteria : VerdictCriteria
        Verdict thresholds.

    Returns
    -------
    list of dict
        Per condition: ``condition``, ``rung`` (:func:`rung_label`),
        ``reverse`` (a ``reverse_*`` condition), ``description``,
        ``completed_seeds``, ``started_seeds``; the mean over completed seeds
        of ``accuracy`` (%), ``rate_e``, ``rate_i``, ``gamma_peak`` (Hz),
        ``gamma_power`` (x band median), ``w_ei_pruned`` (%),
        ``w_ei_effective_mean`` (nS), ``w_ie_pruned`` (%);
        ``max_grad_norm_w_ei`` (the largest epoch-mean W_EI gradient norm
        before clipping, max over seeds); ``verdict`` (condition verdict, or
        the status of a condition without a completed run: "not run",
        "running", ...), ``majority_verdict``; ``closest_margin`` (the seed
        whose I rate is nearest the dismantled or PING threshold, as text)
        and ``closest_margin_hz`` (signed); ``runs``: per seed the same values
        (None unless completed), ``status``, ``verdict``, ``margin`` (text)
        and ``margin_dismantled_hz``, ``margin_ping_hz`` (I rate minus
        threshold). Missing values are None, never 0.
    """
    quantities = _ladder_quantities(criteria)
    grouped = _by_condition(records)
    rows = []
    for name in dict.fromkeys([*(conditions or []), *grouped]):
        runs = grouped.get(name, [])
        summary = _summarise(runs, {}, criteria)
        per_run = [_run_row(r, quantities, criteria) for r in runs]
        completed = [run for run in per_run if run["status"] == "completed"]
        found = registry.CONDITIONS.get(name)
        grad_norms = [run["max_grad_norm_w_ei"] for run in completed if run["max_grad_norm_w_ei"] is not None]
        closest, closest_hz = _closest(completed, criteria)
        rows.append(
            {
                "condition": name,
                "rung": rung_label(name),
                "reverse": name.startswith("reverse_"),
                "description": found.description if found is not None else None,
                "completed_seeds": len(completed),
                "started_seeds": len(runs),
                **{key: _mean([run[key] for run in completed]) for key in quantities},
                "max_grad_norm_w_ei": max(grad_norms) if grad_norms else None,
                "verdict": summary.verdict,
                "majority_verdict": summary.majority,
                "closest_margin": closest,
                "closest_margin_hz": closest_hz,
                "runs": per_run,
            }
        )
    return rows


# --- Markdown ------------------------------------------------------------------------------------------------


_TABLE_COLUMNS = (
    ("accuracy (%)", "accuracy"),
    ("E rate (Hz)", "rate_e"),
    ("I rate (Hz)", "rate_i"),
    ("gamma peak (Hz)", "gamma_peak"),
    ("W_EI pruned (%)", "w_ei_pruned"),
    ("W_EI eff. mean (nS)", "w_ei_effective_mean"),
)


def _cell(values: Sequence[float | None]) -> str:
    """As :func:`protocols.table.table_rows` writes a value: mean (sample std) over seeds, "n/a" without one."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return "n/a"
    if finite.size == 1:
        return f"{finite[0]:.3g}"
    return f"{finite.mean():.3g} ({finite.std(ddof=1):.2g})"


def _run_text(run: dict[str, Any]) -> str:
    """``"seed 43 (PING kept): I 13.4 Hz: 12.4 above dismantled (1 Hz), 8.4 above PING (5 Hz)"``."""
    if run["verdict"] is None:
        return f"seed {run['seed']} (no verdict: {run['status']})"
    margin = f": {run['margin']}" if run["margin"] is not None else ""
    return f"seed {run['seed']} ({run['verdict']}){margin}"


def ladder_table_markdown(rows: Sequence[dict[str, Any]], criteria: VerdictCriteria = DEFAULT_CRITERIA) -> str:
    """The rows of :func:`ladder_rows` as a Markdown table, then one line per rung with each seed's verdict.

    Table columns: rung, seeds (completed/started), accuracy, E and I rate,
    gamma peak, W_EI pruned, W_EI effective mean (mean and sample std over
    completed seeds, as ``table.md``), the max W_EI gradient norm (``%.2g``,
    max over seeds) and the condition verdict.
    """
    header = ["rung", "seeds", *(label for label, _ in _TABLE_COLUMNS), "max grad norm W_EI", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        completed = [run for run in row["runs"] if run["status"] == "completed"]
        grad = row["max_grad_norm_w_ei"]
        cells = [
            row["rung"],
            f"{row['completed_seeds']}/{row['started_seeds']}",
            *(_cell([run[key] for run in completed]) for _, key in _TABLE_COLUMNS),
            "n/a" if grad is None else f"{grad:.2g}",
            row["verdict"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean over completed seeds (sample std in parentheses); Brian2 on the test digits with the trained weights. "
        "max grad norm W_EI: the largest epoch mean of the W_EI gradient norm before clipping, max over seeds. "
        "Margins: how far each seed's Brian2 I rate is from the dismantled threshold (below it: loop dismantled) "
        "and the PING threshold (PING kept needs at least this, and a gamma peak).",
        "",
        describe_criteria(criteria),
        "",
        "Per rung, each seed's verdict and I-rate margins:",
    ]
    for row in rows:
        runs = "; ".join(_run_text(run) for run in row["runs"]) or "no run"
        closest = f" Closest to a threshold: {row['closest_margin']}." if row["closest_margin"] else ""
        lines.append(f"- {row['rung']} (`{row['condition']}`): {runs}.{closest}")
    return "\n".join(lines) + "\n"


# --- figure --------------------------------------------------------------------------------------------------


# (row key, axis label): the panels, left to right and top to bottom.
_PANELS = (
    ("accuracy", "test accuracy, Brian2 (%)"),
    ("rate_e", "Brian2 E rate (Hz)"),
    ("rate_i", "Brian2 I rate (Hz)"),
    ("w_ei_pruned", "W_EI pruned (% of edges)"),
    ("w_ei_effective_mean", "W_EI effective mean (nS)"),
    ("max_grad_norm_w_ei", "max epoch-mean W_EI grad norm\n(before clipping; log)"),
)


def _positions(rows: Sequence[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """x of each row, one apart, with a gap of one where the ladder turns into the reverse conditions.

    Returns the positions and the x of each gap (where the separating line goes).
    """
    xs: list[float] = []
    gaps: list[float] = []
    x = 0.0
    for k, row in enumerate(rows):
        if k and row["reverse"] != rows[k - 1]["reverse"]:
            gaps.append(x)
            x += 1.0
        xs.append(x)
        x += 1.0
    return xs, gaps


def reference_ladder_figure(
    rows: Sequence[dict[str, Any]], title: str = "reference_ladder", criteria: VerdictCriteria = DEFAULT_CRITERIA
) -> Figure:
    """Six panels over the rungs: accuracy, E rate, I rate, W_EI pruned, W_EI effective mean, max grad norm W_EI.

    Each completed seed is a small dot; the mean over seeds (the max over
    seeds for the gradient norm) a larger marker coloured by the condition's
    most frequent run verdict (:data:`VERDICT_COLORS`), and the tick labels
    carry the condition verdict (:func:`short_verdict`). Missing values are
    left out, never drawn as 0; a condition without a completed run says why
    in each panel. The caller closes the figure.
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D

    quantities = _ladder_quantities(criteria)
    xs, gaps = _positions(rows)
    fig, axes = plt.subplots(2, 3, figsize=(17.0, 8.6), sharex=True)
    for ax, (key, label) in zip(axes.ravel(), _PANELS, strict=True):
        seeds = [[run[key] for run in row["runs"] if run[key] is not None] for row in rows]
        means = [row[key] for row in rows]
        for x, values in zip(xs, seeds, strict=True):
            ax.plot(
                [x] * len(values),
                values,
                ls="",
                marker="o",
                color="0.3",
                alpha=SEED_ALPHA,
                markersize=4,
                markeredgewidth=0,
                zorder=3,
            )
        # A thin line through the ladder's means, broken where a value is missing; the reverse
        # conditions each set back a different factor, so they are not a sequence and stay unjoined.
        ladder = [(x, m) for x, m, row in zip(xs, means, rows, strict=True) if not row["reverse"]]
        if ladder:
            ax.plot(
                [x for x, _ in ladder], [np.nan if m is None else m for _, m in ladder], color="0.55", lw=0.9, zorder=2
            )
        for x, mean, row in zip(xs, means, rows, strict=True):
            if mean is not None:
                color = VERDICT_COLORS.get(row["majority_verdict"], VERDICT_COLORS[None])
                ax.plot([x], [mean], ls="", marker="D", markersize=8, color=color, markeredgecolor="black", zorder=4)
            elif row["completed_seeds"] == 0:
                # High in the panel, clear of the threshold labels.
                ax.text(
                    x,
                    0.75,
                    row["verdict"],
                    transform=ax.get_xaxis_transform(),
                    rotation=90,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="0.4",
                    style="italic",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 0.5},
                )
        for gap in gaps:
            ax.axvline(gap, color="0.45", lw=1.0, ls="--", zorder=1)
        if key in ("rate_i", "w_ei_pruned"):
            _thresholds(ax, quantities[key])
        shown = np.array([v for values in seeds for v in values], dtype=float)
        if key == "max_grad_norm_w_ei":
            if (shown > 0).any():
                ax.set_yscale("log")
        elif key == "w_ei_pruned":
            ax.set_ylim(-3, 103)
        else:
            ax.set_ylim(bottom=0)
            if key in ("rate_e", "rate_i") and _wide_range(shown):
                from matplotlib.ticker import FuncFormatter

                ax.set_yscale("symlog", linthresh=SYMLOG_LINTHRESH, linscale=0.6)
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                label += " (symlog)"
        ax.set_ylabel(label, fontsize=9)
        ax.set_title(label.split("\n")[0], fontsize=10)
        ax.grid(alpha=0.25)
    if xs:
        ticks = [f"{row['rung']}: {short_verdict(str(row['verdict']))}" for row in rows]
        for ax in axes[-1]:
            ax.set_xticks(xs, ticks, rotation=35, ha="right", rotation_mode="anchor", fontsize=8)
        axes[0, 0].set_xlim(xs[0] - 0.6, xs[-1] + 0.6)
    used = list(dict.fromkeys(row["majority_verdict"] for row in rows if row["completed_seeds"]))
    handles = [
        Line2D([], [], ls="", marker="o", color="0.3", alpha=SEED_ALPHA, markeredgewidth=0, label="one seed"),
        *(
            Line2D(
                [],
                [],
                ls="",
                marker="D",
                markersize=8,
                color=VERDICT_COLORS.get(v, VERDICT_COLORS[None]),
                markeredgecolor="black",
                label=f"mean: {v or 'no verdict'}",
            )
            for v in VERDICT_COLORS
            if v in used
        ),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), bbox_to_anchor=(0.5, -0.01), fontsize=9)
    fig.suptitle(
        f"{title}: from the project's recipe (rung 0) to the reference study's, one factor per rung at 120 Adam "
        "steps; right of the dashed line: the reference with one factor set back\n(Brian2 on the test digits, "
        "trained weights; dots: seeds; diamonds: mean over completed seeds, max for the gradient norm, coloured by "
        "the most frequent verdict; dotted: verdict thresholds)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    return fig


# (metrics.jsonl key, scale, axis label): the mirror's test numbers after each epoch.
_TRAJECTORY_PANELS = (
    ("test_accuracy", 100.0, "test accuracy, mirror (%)"),
    ("rate_e_hz", 1.0, "E rate, mirror (Hz)"),
    ("rate_i_hz", 1.0, "I rate, mirror (Hz)"),
    ("w_ei_pruned_fraction", 100.0, "W_EI pruned (% of edges)"),
)


def _trajectory(record: RunRecord, key: str, scale: float) -> tuple[list[float], list[float]]:
    """(Adam steps, value) after every epoch of a run; epoch 0 is the untrained network at step 0."""
    steps, values = [], []
    for metrics in record.metrics():
        value = metrics.get(key)
        if value is not None and math.isfinite(float(value)):
            steps.append(float(metrics.get("optimizer_steps") or 0))
            values.append(float(value) * scale)
    return steps, values


def ladder_trajectories_figure(
    records: Sequence[RunRecord], conditions: Sequence[str], title: str = "reference_ladder"
) -> Figure:
    """How each rung gets to its end state: accuracy, E and I rate, W_EI pruned against Adam steps.

    One line per seed (the mirror's numbers on the test digits after each
    epoch, ``metrics.jsonl``), one colour per condition: the ladder's rungs
    solid, the ``reverse_*`` conditions dashed. Rungs of the same number of
    Adam steps but another batch have other epochs, so the x axis is the
    step, not the epoch. The caller closes the figure.
    """
    plt = _pyplot()
    grouped = _by_condition(records)
    names = [name for name in dict.fromkeys([*conditions, *grouped]) if grouped.get(name)]
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, max(len(names), 1)))
    fig, axes = plt.subplots(1, len(_TRAJECTORY_PANELS), figsize=(18.0, 4.6))
    for ax, (key, scale, label) in zip(axes, _TRAJECTORY_PANELS, strict=True):
        for color, name in zip(colors, names, strict=False):
            style = "--" if name.startswith("reverse_") else "-"
            label_of_line: str | None = rung_label(name)  # on the condition's first line only
            for record in grouped[name]:
                steps, values = _trajectory(record, key, scale)
                if not steps:
                    continue  # a run that has not finished an epoch yet
                ax.plot(steps, values, ls=style, color=color, lw=1.3, alpha=0.85, label=label_of_line)
                label_of_line = None
        ax.set_xlabel("Adam steps")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.25)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{title}: the test numbers after every epoch (one line per seed)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


def draw_reference_ladder(
    records: Sequence[RunRecord],
    figure_dir: Path,
    formats: Sequence[str],
    *,
    conditions: Sequence[str] | None = None,
    title: str = "reference_ladder",
    criteria: VerdictCriteria = DEFAULT_CRITERIA,
) -> list[Path]:
    """Per format ``reference_ladder.<format>`` and ``reference_ladder_trajectories.<format>``; then
    ``reference_ladder.json`` (the rows) and ``reference_ladder.md``."""
    from biosim.records import atomic_write_text

    figure_dir = Path(figure_dir)
    rows = ladder_rows(records, conditions, criteria)
    fig = reference_ladder_figure(rows, title, criteria)
    paths = [_save(fig, figure_dir / f"reference_ladder.{fmt}") for fmt in formats]
    _pyplot().close(fig)
    fig = ladder_trajectories_figure(records, [row["condition"] for row in rows], title)
    paths += [_save(fig, figure_dir / f"reference_ladder_trajectories.{fmt}") for fmt in formats]
    _pyplot().close(fig)
    paths.append(_write_json(figure_dir / "reference_ladder.json", rows))
    md_path = figure_dir / "reference_ladder.md"
    atomic_write_text(md_path, f"### {title}\n\n" + ladder_table_markdown(rows, criteria))
    paths.append(md_path)
    return paths
