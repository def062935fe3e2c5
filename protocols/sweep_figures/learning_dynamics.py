"""``learning_dynamics``: one figure per condition from its trajectory records, and a table across seeds.

For each completed run :func:`run_dynamics` writes ``RUN/dynamics.json``
(:func:`bridge.learning_dynamics.write_dynamics_summary`; kept while it is newer
than every file of ``RUN/trajectory``). Per condition, on its first completed
seed (``<condition>_dynamics.<format>``), :func:`dynamics_figure` draws four panels:

- racing: each I cell's incoming effective W_EI norm (the column of W_EI) at
  every record, coloured by its initial alignment (cosine between its initial
  and final incoming vectors; grey where undefined, a zero start or a fully
  pruned cell);
- effective rank (participation ratio) of W_EI and W_IE, and of their change
  from the initial record, at every record;
- laziness: ``||W_t - W_0||_F / ||W_0||_F`` of W_EI, W_IE and of the E cells'
  W_in column norms, with the linear CKA of the E representation (initial vs
  trained network, test digits) in the title;
- loss and I rate per Adam step, their change points as vertical lines and the
  upward gradient-norm jumps as triangles.

:func:`dynamics_rows` gathers, per condition, each completed seed's values of
``dynamics.json`` (:data:`COLUMNS`); :func:`dynamics_table_markdown` writes them
as mean and range over seeds (``learning_dynamics.md``, with the rows as
``learning_dynamics.json``).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biosim.analysis import learning_dynamics as ld
from biosim.plotting import E_COLOR, I_COLOR
from biosim.records import atomic_write_text
from bridge.learning_dynamics import DYNAMICS_NAME, write_dynamics_summary
from bridge.trajectory import TRAJECTORY_DIR, Trajectory, load_trajectory

from .. import registry
from ..figures import _pyplot
from ..results import RunRecord
from ..verdicts import DEFAULT_CRITERIA, VerdictCriteria
from .common import _by_condition, _save, _write_json

__all__ = [
    "COLUMNS",
    "Column",
    "draw_learning_dynamics",
    "dynamics_figure",
    "dynamics_rows",
    "dynamics_table_markdown",
    "mean_and_range",
    "run_dynamics",
    "trajectory_series",
]

NS_PER_US = 1e3
"""The records hold conductances in uS; the racing panel shows nS."""
UNDEFINED_COLOR = "0.7"


# --- per run ---------------------------------------------------------------------------------------------------


def _stale(run_dir: Path) -> bool:
    """Is ``dynamics.json`` missing, or older than a file of the trajectory records?"""
    path = run_dir / DYNAMICS_NAME
    if not path.is_file():
        return True
    newest = max((p.stat().st_mtime_ns for p in (run_dir / TRAJECTORY_DIR).iterdir()), default=0)
    return path.stat().st_mtime_ns < newest


def run_dynamics(run_dir: Path) -> dict[str, Any]:
    """``RUN/dynamics.json``, written first where missing or older than the trajectory records."""
    if _stale(run_dir):
        write_dynamics_summary(run_dir)
    return json.loads((run_dir / DYNAMICS_NAME).read_text())


def _relative(series: np.ndarray) -> np.ndarray:
    """``||x_t - x_0|| / ||x_0||`` per record (over all but the first axis); NaN from a zero start."""
    series = np.asarray(series, dtype=np.float64)
    flat = series.reshape(len(series), -1)
    start = np.linalg.norm(flat[0])
    change = np.linalg.norm(flat - flat[0], axis=1)
    return change / start if start > 0 else np.full(len(flat), np.nan)


def trajectory_series(trajectory: Trajectory) -> dict[str, np.ndarray]:
    """Per record: effective rank of each loop matrix's change from the first record, and relative changes.

    Keys ``rank_change_<m>`` and ``relative_<m>`` for ``w_ei`` and ``w_ie``, and ``relative_w_in_norms``
    (NaN throughout where the start is zero).
    """
    out = {}
    for name in ("w_ei", "w_ie"):
        series = trajectory.matrices[name].astype(np.float64)
        out[f"rank_change_{name}"] = np.array([ld.effective_rank(m - series[0]) for m in series])
        out[f"relative_{name}"] = _relative(series)
    out["relative_w_in_norms"] = _relative(trajectory.w_in_norms)
    return out


# --- the figure ------------------------------------------------------------------------------------------------


def _racing(ax, fig, summary: dict[str, Any]) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    racing = summary["racing_w_ei"]
    steps = np.asarray(summary["record_steps"], dtype=float)
    norms = np.asarray(racing["norms"], dtype=float) * NS_PER_US  # records x cells
    alignment = np.array([np.nan if a is None else a for a in racing["alignment"]], dtype=float)
    cmap, norm = colormaps["viridis"], Normalize(0.0, 1.0)  # effective weights >= 0: cosines in [0, 1]
    undefined = np.isnan(alignment)
    order = [*np.flatnonzero(undefined), *np.flatnonzero(~undefined)[np.argsort(alignment[~undefined])]]
    segments = [np.column_stack([steps, norms[:, j]]) for j in order]
    colors = [UNDEFINED_COLOR if undefined[j] else cmap(norm(alignment[j])) for j in order]
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=0.7, alpha=0.8))
    ax.set_xlim(steps[0], max(steps[-1], steps[0] + 1))
    top = float(np.nanmax(norms)) if norms.size else 0.0
    ax.set_ylim(0.0, top * 1.05 if top > 0 else 1.0)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    bar.set_label("initial alignment (cos initial, final)", fontsize=8)
    lottery, race = _number(racing["lottery"]), _number(racing["race"])
    share = racing["top_share"]
    ax.set_title(
        f"racing: each I cell's incoming W_EI norm\nSpearman init-final norm {lottery}, alignment-final norm "
        f"{race}\ntop 10 % share {_number(share['initial'])} -> {_number(share['final'])}",
        fontsize=8,
    )
    if undefined.all():
        note = "every cell grey: alignment undefined\n(zero start or fully pruned)"
    elif undefined.any():
        note = f"{int(undefined.sum())} cells grey: alignment undefined\n(zero start or fully pruned)"
    else:
        note = ""
    if note:
        ax.text(0.02, 0.97, note, transform=ax.transAxes, fontsize=7, va="top", color="0.3")
    ax.set_xlabel("Adam step")
    ax.set_ylabel("incoming W_EI norm (nS)")


def _rank(ax, summary: dict[str, Any], series: dict[str, np.ndarray]) -> None:
    steps = summary["record_steps"]
    for name, label, color in (("w_ei", "W_EI", E_COLOR), ("w_ie", "W_IE", I_COLOR)):
        ax.plot(steps, summary["rank"][name]["effective_rank"], color=color, lw=1.6, label=label)
        ax.plot(steps, series[f"rank_change_{name}"], color=color, lw=1.2, ls="--", label=f"{label} - initial")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("Adam step")
    ax.set_ylabel("effective rank (participation ratio)")
    ax.set_title("effective rank of the loop matrices\nand of their change from the start (dashed)", fontsize=8)
    ax.legend(fontsize=7)


def _laziness(ax, summary: dict[str, Any], series: dict[str, np.ndarray]) -> None:
    steps = summary["record_steps"]
    zero_start = []
    for key, label, color in (
        ("relative_w_ei", "W_EI", E_COLOR),
        ("relative_w_ie", "W_IE", I_COLOR),
        ("relative_w_in_norms", "W_in column norms", "0.35"),
    ):
        values = series[key]
        if np.isnan(values).all():
            zero_start.append(label)
            continue
        ax.plot(steps, values, color=color, lw=1.6, label=label)
    if zero_start:
        ax.text(
            0.02,
            0.97,
            f"{', '.join(zero_start)}:\nzero start, relative change undefined",
            transform=ax.transAxes,
            fontsize=7,
            va="top",
            color="0.3",
        )
    ax.set_ylim(bottom=0)
    ax.set_xlabel("Adam step")
    ax.set_ylabel("||W_t - W_0|| / ||W_0||")
    representation = summary.get("representation") or {}
    cka = _number(representation.get("linear_cka"))
    ax.set_title(f"laziness: relative change from the start\nCKA of E rates, initial vs trained: {cka}", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best", framealpha=0.8)


def _transitions(ax, trajectory: Trajectory, summary: dict[str, Any]) -> None:
    scalars = trajectory.scalars
    transitions = summary.get("transitions") or {}
    if "step" not in scalars or len(scalars["step"]) == 0:
        ax.text(0.5, 0.5, "no per-step records", ha="center", va="center", transform=ax.transAxes)
        return
    steps = scalars["step"]
    marker = "." if len(steps) <= 40 else None  # a short run's points would be lost in (or as) a line
    ax.plot(steps, scalars["loss"], color="k", lw=1.0, marker=marker, label="loss")
    rate = ax.twinx()
    rate.plot(steps, scalars["rate_i_hz"], color=I_COLOR, lw=1.0, marker=marker, label="I rate")
    titles = []
    for key, label, color, style, axis in (
        ("loss", "loss", "k", "--", ax),
        ("rate_i_hz", "I rate", I_COLOR, ":", rate),
    ):
        found = transitions.get(key) or {}
        points = found.get("change_point_steps")
        if points is None:
            titles.append(f"{label}: {found.get('skipped', 'not searched')}")
            continue
        for step in points:
            axis.axvline(step, color=color, ls=style, lw=1.3)
        after = sum(bool(j) for j in found.get("gradient_jump_before", []))
        titles.append(f"{label}: {len(points)} change points ({after} after a gradient jump)")
    grad = scalars.get("grad_norm")
    jumps = [float(steps[g]) for g in ld.gradient_jumps(grad)] if grad is not None and np.isfinite(grad).all() else []
    if jumps:  # an empty line drawn outside the axes (clip_on False) would stretch the layout's bounding box
        ax.plot(
            jumps,
            [0.0] * len(jumps),
            ls="",
            marker="^",
            color="#e08a1e",
            markersize=7,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label="gradient-norm jump",
        )
    ax.set_xlabel("Adam step")
    ax.set_ylabel("training loss")
    rate.set_ylabel("I rate, training batch (Hz)", color=I_COLOR)
    rate.set_ylim(bottom=0)
    handles = [*ax.get_legend_handles_labels()[0], *rate.get_legend_handles_labels()[0]]
    labels = [*ax.get_legend_handles_labels()[1], *rate.get_legend_handles_labels()[1]]
    ax.legend(handles, labels, fontsize=7, loc="best", framealpha=0.8)
    ax.set_title("loss and I rate per Adam step\n" + "\n".join(titles), fontsize=8)


def dynamics_figure(
    record: RunRecord, summary: dict[str, Any], trajectory: Trajectory, path: Path, *, title: str = ""
) -> Path:
    """The four panels of one run (module docstring) into ``path``."""
    plt = _pyplot()
    series = trajectory_series(trajectory)
    fig, axes = plt.subplots(2, 2, figsize=(12.5, 9.0), layout="constrained")
    _racing(axes[0, 0], fig, summary)
    _rank(axes[0, 1], summary, series)
    _laziness(axes[1, 0], summary, series)
    _transitions(axes[1, 1], trajectory, summary)
    for ax in axes.flat:
        ax.grid(alpha=0.25)
    condition = registry.CONDITIONS.get(record.condition)
    description = f" ({condition.description})" if condition is not None else ""
    head = f"{title}: " if title else ""
    fig.suptitle(f"{head}{record.condition}{description}, seed {record.seed}", fontsize=10)
    _save(fig, path)
    plt.close(fig)
    return path


# --- the table -------------------------------------------------------------------------------------------------


def _get(summary: dict[str, Any], *keys: Any) -> Any:
    value: Any = summary
    for key in keys:
        if value is None:
            return None
        value = value[key] if isinstance(key, int) else value.get(key)
    return value


def _relative_change(name: str) -> Callable[[dict[str, Any]], float | None]:
    def read(summary: dict[str, Any]) -> float | None:
        value = _get(summary, "rank", name, "relative_change")
        # dynamics.json writes an infinite change (from a zero start: its rank is 0) as null.
        if value is None and _get(summary, "rank", name, "effective_rank", 0) == 0:
            return math.inf
        return value

    return read


def _count(series: str) -> Callable[[dict[str, Any]], float | None]:
    def read(summary: dict[str, Any]) -> float | None:
        points = _get(summary, "transitions", series, "change_point_steps")
        return None if points is None else len(points)

    return read


def _jumps(summary: dict[str, Any]) -> tuple[int, int]:
    """(change points of loss and I rate after a gradient jump, change points) of one run."""
    flags = [
        flag
        for series in ("loss", "rate_i_hz")
        for flag in (_get(summary, "transitions", series, "gradient_jump_before") or [])
    ]
    return sum(bool(f) for f in flags), len(flags)


@dataclass(frozen=True)
class Column:
    """One column of the table: a number per run, read from its ``dynamics.json``."""

    key: str
    label: str
    read: Callable[[dict[str, Any]], float | None]


COLUMNS = (
    Column("lottery", "Spearman init norm, final norm", lambda s: _get(s, "racing_w_ei", "lottery")),
    Column("race", "Spearman init alignment, final norm", lambda s: _get(s, "racing_w_ei", "race")),
    Column("top_share_initial", "top 10 % share, init", lambda s: _get(s, "racing_w_ei", "top_share", "initial")),
    Column("top_share_final", "top 10 % share, final", lambda s: _get(s, "racing_w_ei", "top_share", "final")),
    Column("relative_change_w_ei", "rel. change W_EI", _relative_change("w_ei")),
    Column("relative_change_w_ie", "rel. change W_IE", _relative_change("w_ie")),
    Column("rank_w_ei_initial", "eff. rank W_EI, init", lambda s: _get(s, "rank", "w_ei", "effective_rank", 0)),
    Column("rank_w_ei_final", "eff. rank W_EI, final", lambda s: _get(s, "rank", "w_ei", "effective_rank", -1)),
    Column("rank_w_ie_initial", "eff. rank W_IE, init", lambda s: _get(s, "rank", "w_ie", "effective_rank", 0)),
    Column("rank_w_ie_final", "eff. rank W_IE, final", lambda s: _get(s, "rank", "w_ie", "effective_rank", -1)),
    Column("cka", "CKA E rates, init vs trained", lambda s: _get(s, "representation", "linear_cka")),
    Column("loss_change_points", "loss change points", _count("loss")),
    Column("rate_i_change_points", "I-rate change points", _count("rate_i_hz")),
)
"""The table's numeric columns, in order, each read from a run's ``dynamics.json``."""


def dynamics_rows(
    summaries: dict[str, list[tuple[int, dict[str, Any]]]], conditions: Sequence[str]
) -> list[dict[str, Any]]:
    """Per condition: its seeds, each column's value per seed (None: undefined), and the gradient jumps.

    ``summaries``: condition -> [(seed, dynamics.json), ...] of its completed runs.
    """
    rows = []
    for condition in conditions:
        runs = summaries.get(condition, [])
        jumps = [_jumps(s) for _, s in runs]
        rows.append(
            {
                "condition": condition,
                "seeds": [seed for seed, _ in runs],
                "values": {c.key: [c.read(s) for _, s in runs] for c in COLUMNS},
                "change_points_after_gradient_jump": sum(j for j, _ in jumps),
                "change_points": sum(n for _, n in jumps),
            }
        )
    return rows


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.3g}"


def mean_and_range(values: Sequence[float | None]) -> str:
    """Mean (min to max) over the seeds with a value; how many have one, where not all."""
    defined = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not defined:
        return "n/a"
    text = _number(float(np.mean(defined)))
    if len(defined) > 1 and min(defined) != max(defined):
        text += f" ({_number(min(defined))} to {_number(max(defined))})"
    if len(defined) < len(values):
        text += f" [{len(defined)}/{len(values)} seeds]"
    return text


def dynamics_table_markdown(rows: Sequence[dict[str, Any]], title: str = "learning_dynamics") -> str:
    """The rows as a Markdown table: per column the mean over seeds (min to max), and a legend."""
    header = ["condition", "seeds", *(c.label for c in COLUMNS), "change points after a gradient jump"]
    lines = [f"### {title}: learning dynamics", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        seeds = ", ".join(map(str, row["seeds"])) or "none completed"
        jumps = f"{row['change_points_after_gradient_jump']}/{row['change_points']}" if row["seeds"] else "n/a"
        cells = [row["condition"], seeds, *(mean_and_range(row["values"][c.key]) for c in COLUMNS), jumps]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each cell: the mean over the condition's completed seeds (min to max where they differ), from each run's "
        "`dynamics.json` (docs/learning_dynamics.md). Spearman init norm, final norm: the I cells' incoming W_EI "
        "norms at the first and last record (high: the cells that start strong end strong). Spearman init "
        "alignment, final norm: each cell's cosine between its initial and final incoming vector against its "
        "final norm (high: the cells that keep their direction grow). Top 10 % share: of the total incoming "
        "norm, held by the 10 % strongest I cells. Rel. change: ||W_final - W_init|| / ||W_init|| (inf from a "
        "zero start). Eff. rank: participation ratio of the squared singular values. CKA: linear CKA of the E "
        "rates on the test digits, initial vs trained network. Change points: of the per-step loss and I rate; "
        "the last column counts, over seeds and both series, those with an upward gradient-norm jump at most "
        "5 steps before them. n/a: undefined for every seed (a constant ranking, a zero matrix).",
        "",
    ]
    return "\n".join(lines)


# --- the protocol's figures ------------------------------------------------------------------------------------


def draw_learning_dynamics(
    records: Sequence[RunRecord],
    figure_dir: Path,
    formats: Sequence[str],
    *,
    conditions: Sequence[str] | None = None,
    title: str = "learning_dynamics",
    criteria: VerdictCriteria = DEFAULT_CRITERIA,
) -> list[Path]:
    """Per completed run ``dynamics.json``; per condition its figure; the table (``.md`` and ``.json``)."""
    del criteria  # the verdicts are the cards' and the table's; these figures draw the trajectories
    figure_dir = Path(figure_dir)
    grouped = _by_condition(records)
    names = list(conditions or grouped)
    summaries: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    paths: list[Path] = []
    for condition in names:
        completed = [r for r in grouped.get(condition, []) if r.ok and _has_records(r)]
        summaries[condition] = [(r.seed, run_dynamics(r.run_dir)) for r in completed]
        if not completed:
            continue
        first = completed[0]  # the lowest seed (42 by default)
        trajectory = load_trajectory(first.run_dir)
        for fmt in formats:
            path = figure_dir / f"{condition}_dynamics.{fmt}"
            paths.append(dynamics_figure(first, summaries[condition][0][1], trajectory, path, title=title))
    rows = dynamics_rows(summaries, names)
    paths.append(_write_json(figure_dir / "learning_dynamics.json", _finite(rows)))
    table = figure_dir / "learning_dynamics.md"
    table.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(table, dynamics_table_markdown(rows, title))
    paths.append(table)
    return paths


def _has_records(record: RunRecord) -> bool:
    """Does the run hold trajectory records? A run without them is left out of the figures, with a warning."""
    directory = record.run_dir / TRAJECTORY_DIR
    if directory.is_dir() and any(p.suffix == ".npz" for p in directory.iterdir()):
        return True
    print(
        f"[learning_dynamics] warning: {record.run_dir} has no trajectory records (trained without record_every); "
        "left out of the learning-dynamics figures and table",
        file=sys.stderr,
    )
    return False


def _finite(value: Any) -> Any:
    """Infinities as the string "inf" (JSON has none); everything else as is."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value
