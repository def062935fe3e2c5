"""Figures of the follow-up sweeps (SPEC section 6): one figure per protocol across its grid.

The per-condition cards and the comparison figure (:mod:`protocols.figures`)
show one condition at a time; these show how the end state depends on the
swept setting. Every number is the one the table reads (the Brian2 validation
on the test digits with the trained weights, and the final weight metrics:
:func:`protocols.table._value`), averaged over a condition's completed seeds;
verdicts are :func:`protocols.verdicts.run_verdict` and
:func:`~protocols.verdicts.condition_verdict`.

- ``basin_map``: :func:`basin_map_figure` (``basin_map.<format>``), five
  heatmaps (two rows of three panels, the sixth a key) over the (initial W_EI,
  initial W_IE) grid of the final I rate, gamma peak frequency and relative
  power, W_EI pruned fraction and test accuracy, with the condition verdict in
  each cell; cells without a completed run are hatched, never drawn as 0; and
  :func:`basin_arrows_figure` (``basin_map_arrows.<format>``): an arrow from
  each start to its end in the (effective W_EI mean, effective W_IE mean)
  plane, coloured by verdict. ``basin_map.json``: the cells.
- ``tau_gaba``: :func:`tau_gaba_figure` (``tau_gaba.<format>``), gamma peak
  frequency, I rate, W_EI pruned fraction and accuracy against tau_GABA,
  frozen and trainable loop side by side; :func:`frozen_gamma_fit`
  (``tau_gaba_fit.json``): does the frozen gamma frequency fall as tau_GABA
  rises?
- ``anti_pruning``: :func:`anti_pruning_figure` (``anti_pruning.<format>``),
  I rate, W_EI pruned fraction, gamma relative power and accuracy against the
  penalty strength lambda (log axis, lambda = 0 at the left edge), one line
  per penalty; :func:`smallest_keeping_lambda` (``anti_pruning_lambda.json``).

:func:`draw_sweep_figures` picks the figures from the protocol's name, or,
for an unnamed protocol, from which settings its conditions vary.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biosim.plotting import E_COLOR, I_COLOR

from . import definitions
from .figures import _pyplot
from .results import RunRecord, initial_effective
from .table import _value
from .verdicts import (
    CHANGED,
    DEFAULT_CRITERIA,
    DIVERGED,
    LOOP_DISMANTLED,
    PING_KEPT,
    REWIRED,
    VerdictCriteria,
    condition_verdict,
    run_verdict,
)

__all__ = [
    "Quantity",
    "QUANTITIES",
    "PENALTY_KEYS",
    "TAU_GABA_KEY",
    "BasinGrid",
    "basin_grid",
    "basin_cells",
    "basin_map_figure",
    "basin_arrows_figure",
    "tau_gaba_figure",
    "frozen_gamma_points",
    "frozen_gamma_fit",
    "anti_pruning_figure",
    "penalty_lambda",
    "smallest_keeping_lambda",
    "smallest_keeping_lambdas",
    "setting_sweep_figure",
    "short_verdict",
    "sweep_kind",
    "draw_sweep_figures",
    "SWEEP_FIGURES",
    "VERDICT_COLORS",
]

TAU_GABA_KEY = "network.synapse.tau_gaba_ms"
PENALTY_KEYS = {
    "reg_w_ei_distance": "W_EI distance penalty",
    "reg_gamma_power": "gamma-power penalty",
}
"""Settings that hold an anti-pruning penalty strength lambda, and their names in the figure."""

SEED_ALPHA = 0.45
FIGURE_DPI = 130


# --- what is read from each run ------------------------------------------------------------------


@dataclass(frozen=True)
class Quantity:
    """One final value of a run, as the table reads it (``source``: see :func:`protocols.table._value`)."""

    key: str
    label: str
    """Axis / colourbar label, with unit."""
    source: str
    scale: float = 1.0
    thresholds: tuple[tuple[float, str], ...] = ()
    """Verdict thresholds drawn as dotted lines (value in the scaled unit, short text)."""
    cmap: str = "viridis"

    def of(self, record: RunRecord) -> float:
        return _value(record, self.source) * self.scale


def _quantities(criteria: VerdictCriteria) -> dict[str, Quantity]:
    low_hz, high_hz = criteria.kept_gamma_band_hz
    quantities = (
        Quantity(
            "rate_i",
            "Brian2 I rate (Hz)",
            "brian2:rate_i_hz",
            thresholds=(
                (criteria.dismantled_max_rate_i_hz, f"dismantled < {criteria.dismantled_max_rate_i_hz:g} Hz"),
                (criteria.kept_min_rate_i_hz, f"kept >= {criteria.kept_min_rate_i_hz:g} Hz"),
            ),
        ),
        Quantity(
            "gamma_peak",
            "gamma peak frequency (Hz)",
            "brian2:gamma_peak_hz",
            thresholds=((low_hz, f"kept band {low_hz:g}-{high_hz:g} Hz"), (high_hz, "")),
            cmap="plasma",
        ),
        Quantity(
            "gamma_power",
            "gamma peak power (x band median)",
            "brian2:gamma_relative_power",
            thresholds=((criteria.kept_min_relative_power, f"kept >= {criteria.kept_min_relative_power:g}"),),
            cmap="magma",
        ),
        Quantity(
            "w_ei_pruned",
            "W_EI pruned (% of edges)",
            "final:w_ei_pruned_fraction",
            100.0,
            thresholds=(
                (
                    criteria.rewired_min_w_ei_pruned_fraction * 100.0,
                    f"rewired > {criteria.rewired_min_w_ei_pruned_fraction * 100:g} %",
                ),
            ),
            cmap="cividis",
        ),
        Quantity("accuracy", "test accuracy, Brian2 (%)", "brian2:accuracy", 100.0, cmap="Greens"),
    )
    return {q.key: q for q in quantities}


QUANTITIES = _quantities(DEFAULT_CRITERIA)
"""Every quantity the sweep figures draw, by key, with the default verdict thresholds."""


def _settings(condition: str) -> Mapping[str, Any]:
    found = definitions.CONDITIONS.get(condition)
    return found.settings if found is not None else {}


def _setting(record: RunRecord, key: str) -> Any:
    """The condition's setting ``key``; else the value in the run's saved config (None if neither has it)."""
    settings = _settings(record.condition)
    if key in settings:
        return settings[key]
    config = record.spec.config
    if key.startswith("network."):
        _, section, name = key.split(".")
        return getattr(getattr(config.network_params(), section, None), name, None)
    return getattr(config, key, None)


def _multiple(value: Any) -> float:
    """An ``init_w_*`` setting as a multiple of canonical ("canonical" = 1, "zero" = 0)."""
    if value == "canonical":
        return 1.0
    if value == "zero":
        return 0.0
    return float(value)


def _by_condition(records: Iterable[RunRecord]) -> dict[str, list[RunRecord]]:
    grouped: dict[str, list[RunRecord]] = {}
    for record in records:
        grouped.setdefault(record.condition, []).append(record)
    return {c: sorted(runs, key=lambda r: r.seed) for c, runs in grouped.items()}


def _mean(values: Sequence[float]) -> float:
    """Mean over the defined values (NaN ignored, +inf kept); NaN if none."""
    values = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    return float(values.mean()) if values.size else float("nan")


def _majority(verdicts: Sequence[str | None]) -> str | None:
    """The most frequent verdict (ties: alphabetical, as in :func:`condition_verdict`), None if none."""
    counts = Counter(v for v in verdicts if v is not None)
    if not counts:
        return None
    return sorted(counts.items(), key=lambda item: (-item[1], item[0].lower()))[0][0]


_SHORT = ((LOOP_DISMANTLED, "dismantled"), (PING_KEPT, "kept"), (REWIRED, "+rw"))


def short_verdict(text: str) -> str:
    """A condition verdict shortened for a heatmap cell.

    >>> short_verdict("PING kept, rewired (1/1)")
    'kept+rw'
    >>> short_verdict("loop dismantled (2/3)")
    'dismantled (2/3)'
    """
    for long, short in _SHORT:
        text = text.replace(long, short)
    return text.removesuffix(" (1/1)")


def _status_text(runs: Sequence[RunRecord]) -> str:
    """What a condition without a completed run has: "not run", "running", "failed", "diverged"."""
    if not runs:
        return "not run"
    statuses = Counter(r.status.get("status", "incomplete") for r in runs)
    if statuses.get(DIVERGED):
        return DIVERGED
    if statuses.get("failed"):
        return "failed"
    return "running" if statuses.get("incomplete") else ", ".join(sorted(statuses))


@dataclass
class _Summary:
    runs: list[RunRecord]
    completed: list[RunRecord]
    values: dict[str, float]
    verdict: str
    """Condition verdict over the completed runs, or the status of a condition without one."""
    majority: str | None
    """The most frequent run verdict (``"diverged"`` if every finished run diverged)."""


def _summarise(runs: Sequence[RunRecord], quantities: Mapping[str, Quantity], criteria: VerdictCriteria) -> _Summary:
    completed = [r for r in runs if r.ok]
    values = {key: _mean([q.of(r) for r in completed]) for key, q in quantities.items()}
    if completed:
        verdicts = [run_verdict(r.status, criteria) for r in completed]
        return _Summary(list(runs), completed, values, condition_verdict(verdicts), _majority(verdicts))
    status = _status_text(runs)
    return _Summary(list(runs), completed, values, status, DIVERGED if status == DIVERGED else None)


VERDICT_COLORS = {
    PING_KEPT: "#1b9e3a",
    PING_KEPT + REWIRED: "#8fd18a",
    CHANGED: "#e08a1e",
    CHANGED + REWIRED: "#a0522d",
    LOOP_DISMANTLED: "#c0392b",
    DIVERGED: "#222222",
    None: "#9a9a9a",
}
"""Colour of each run verdict (None: no verdict yet)."""


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
    return path


def _write_json(path: Path, data: Any) -> Path:
    from biosim.records import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {value!r}")


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


# --- basin_map ------------------------------------------------------------------------------------


@dataclass
class BasinGrid:
    """The (initial W_EI multiple, initial W_IE multiple) grid of a basin map.

    Arrays are indexed ``[i_ei, i_ie]``; a cell without a completed run holds
    NaN in every value array and its status in ``verdicts``.
    """

    w_ei: list[float]
    """Initial W_EI multiples of canonical (rows, ascending)."""
    w_ie: list[float]
    """Initial W_IE multiples of canonical (columns, ascending)."""
    conditions: np.ndarray
    """Condition name per cell ("" where the grid has no condition)."""
    values: dict[str, np.ndarray] = field(default_factory=dict)
    """Quantity key -> mean over the completed seeds (NaN: no completed run, or undefined)."""
    verdicts: np.ndarray = None
    """Condition verdict per cell, or "not run" / "running" / "failed" / "diverged"."""
    majority: np.ndarray = None
    """Most frequent run verdict per cell (None: no verdict)."""
    completed: np.ndarray = None
    """Completed seeds per cell."""
    n_runs: np.ndarray = None
    """Runs (any status) per cell."""
    initial_nS: dict[str, np.ndarray] = field(default_factory=dict)
    """``w_ei`` / ``w_ie`` -> mean effective weight at initialisation (nS), mean over the cell's runs."""
    final_nS: dict[str, np.ndarray] = field(default_factory=dict)
    """``w_ei`` / ``w_ie`` -> mean effective weight after training (nS), mean over completed seeds."""

    def cell(self, w_ei: float, w_ie: float) -> tuple[int, int]:
        return self.w_ei.index(float(w_ei)), self.w_ie.index(float(w_ie))


def basin_grid(
    records: Sequence[RunRecord],
    conditions: Sequence[str] | None = None,
    *,
    criteria: VerdictCriteria = DEFAULT_CRITERIA,
) -> BasinGrid:
    """The cells of a basin map: one per condition, placed by its ``init_w_ei`` and ``init_w_ie``.

    Parameters
    ----------
    records : list of RunRecord
        The protocol's runs (any status).
    conditions : list of str, optional
        Every condition of the protocol (``protocol.json``), so that cells
        whose runs have not started yet are shown as missing; default: the
        conditions of ``records``.
    """
    grouped = _by_condition(records)
    names = list(dict.fromkeys([*(conditions or []), *grouped]))
    placed: dict[tuple[float, float], str] = {}
    for name in names:
        runs = grouped.get(name)
        settings = _settings(name)
        if "init_w_ei" in settings and "init_w_ie" in settings:
            key = (_multiple(settings["init_w_ei"]), _multiple(settings["init_w_ie"]))
        elif runs:
            key = (_multiple(runs[0].spec.config.init_w_ei), _multiple(runs[0].spec.config.init_w_ie))
        else:
            continue
        placed[key] = name
    w_ei = sorted({k[0] for k in placed})
    w_ie = sorted({k[1] for k in placed})
    shape = (len(w_ei), len(w_ie))
    quantities = _quantities(criteria)
    grid = BasinGrid(
        w_ei,
        w_ie,
        np.full(shape, "", dtype=object),
        {key: np.full(shape, np.nan) for key in quantities},
        np.full(shape, "not run", dtype=object),
        np.full(shape, None, dtype=object),
        np.zeros(shape, dtype=int),
        np.zeros(shape, dtype=int),
        {name: np.full(shape, np.nan) for name in ("w_ei", "w_ie")},
        {name: np.full(shape, np.nan) for name in ("w_ei", "w_ie")},
    )
    for (ei, ie), name in placed.items():
        i, j = grid.cell(ei, ie)
        runs = grouped.get(name, [])
        summary = _summarise(runs, quantities, criteria)
        grid.conditions[i, j] = name
        grid.verdicts[i, j] = summary.verdict
        grid.majority[i, j] = summary.majority
        grid.completed[i, j] = len(summary.completed)
        grid.n_runs[i, j] = len(runs)
        for key in quantities:
            grid.values[key][i, j] = summary.values[key]
        if runs:
            initial = [initial_effective(r) for r in runs]
            for matrix in ("w_ei", "w_ie"):
                grid.initial_nS[matrix][i, j] = float(np.mean([w[matrix].mean() for w in initial])) * 1e3
                grid.final_nS[matrix][i, j] = _mean(
                    [_value(r, f"final:{matrix}_effective_mean") * 1e3 for r in summary.completed]
                )
    return grid


def _text_color(rgba: Sequence[float]) -> str:
    luminance = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
    return "black" if luminance > 0.55 else "white"


def _cell_value_text(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.3g}"


def _multiple_text(value: float) -> str:
    return f"{value:g}"


SYMLOG_LINTHRESH = 1.0
"""Linear below this, logarithmic above, on a value axis spanning orders of magnitude (I rates up to ~1 kHz)."""
_SYMLOG_TICKS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def _wide_range(values: np.ndarray) -> bool:
    """Do the (finite) values span so many orders of magnitude that a linear scale hides most of them?"""
    positive = values[np.isfinite(values) & (values > 0)]
    return bool(positive.size >= 2 and positive.max() > 100.0 and positive.max() > 5.0 * np.median(positive))


def _heatmap(ax, fig, grid: BasinGrid, quantity: Quantity) -> None:
    import matplotlib as mpl
    from matplotlib.patches import Rectangle

    values = grid.values[quantity.key]
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    if quantity.key == "w_ei_pruned":
        vmin, vmax = 0.0, 100.0
    elif quantity.key == "accuracy":
        vmin, vmax = 0.0, max(vmax, 10.0)
    elif quantity.key in ("rate_i", "gamma_power"):
        vmin = min(vmin, 0.0)
    cmap = mpl.colormaps[quantity.cmap].with_extremes(bad="0.82")
    wide = _wide_range(finite)
    norm = mpl.colors.SymLogNorm(SYMLOG_LINTHRESH, linscale=0.6, vmin=vmin, vmax=vmax) if wide else None
    norm = norm or mpl.colors.Normalize(vmin, vmax)
    shown = np.where(np.isposinf(values), vmax, values)
    image = ax.imshow(np.ma.masked_invalid(shown), origin="lower", cmap=cmap, norm=norm, aspect="auto")
    n_ei, n_ie = values.shape
    for i in range(n_ei):
        for j in range(n_ie):
            if grid.completed[i, j] == 0:
                ax.add_patch(
                    Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="white", edgecolor="0.55", hatch="///", lw=0.0)
                )
                color = "0.25"
                text = "missing" if grid.conditions[i, j] == "" else grid.verdicts[i, j]
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color=color,
                    style="italic",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85},
                )
                continue
            value = values[i, j]
            color = _text_color(cmap(norm(shown[i, j]))) if np.isfinite(shown[i, j]) else "black"
            ax.text(
                j,
                i + 0.22,
                _cell_value_text(value),
                ha="center",
                va="center",
                fontsize=8,
                color=color,
                fontweight="bold",
            )
            ax.text(
                j,
                i - 0.14,
                short_verdict(str(grid.verdicts[i, j])).replace(", ", ",\n").replace(" (", "\n("),
                ha="center",
                va="center",
                fontsize=6.5,
                color=color,
                linespacing=0.9,
            )
    ax.set_xticks(range(n_ie), [_multiple_text(v) for v in grid.w_ie])
    ax.set_yticks(range(n_ei), [_multiple_text(v) for v in grid.w_ei])
    ax.set_xlabel("initial W_IE (x canonical)")
    ax.set_ylabel("initial W_EI (x canonical)")
    ax.set_title(quantity.label, fontsize=10)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    colorbar.set_label(quantity.label + (" (symlog scale)" if wide else ""), fontsize=8)
    if wide:
        ticks = [t for t in _SYMLOG_TICKS if vmin <= t <= vmax]
        colorbar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    colorbar.ax.tick_params(labelsize=7)
    for threshold, _ in quantity.thresholds:
        if vmin <= threshold <= vmax:
            colorbar.ax.axhline(threshold, color="white", linewidth=2.2)
            colorbar.ax.axhline(threshold, color="black", linewidth=1.0, linestyle="--")


def _criteria_note(criteria: VerdictCriteria) -> str:
    low_hz, high_hz = criteria.kept_gamma_band_hz
    return (
        "Verdicts (per run; Brian2, test digits):\n"
        f"kept = PING kept: I rate >= {criteria.kept_min_rate_i_hz:g} Hz, gamma peak in {low_hz:g}-{high_hz:g} Hz\n"
        f"    and peak >= {criteria.kept_min_relative_power:g} x band median\n"
        f"dismantled = loop dismantled: I rate < {criteria.dismantled_max_rate_i_hz:g} Hz\n"
        "changed = anything else\n"
        f"+rw = rewired: more than {criteria.rewired_min_w_ei_pruned_fraction * 100:g} % of W_EI pruned (stored < 0)"
    )


def basin_map_figure(
    grid: BasinGrid, path: Path, *, title: str = "basin_map", criteria: VerdictCriteria = DEFAULT_CRITERIA
) -> Path:
    """Heatmaps of the final I rate, gamma peak frequency and power, W_EI pruned and accuracy over the grid.

    Two rows of three panels: the five heatmaps, then the verdict criteria.
    Each cell: the mean over the completed seeds (bold) and the condition
    verdict, shortened (:func:`short_verdict`).
    """
    plt = _pyplot()
    quantities = list(_quantities(criteria).values())
    n_ei, n_ie = max(len(grid.w_ei), 1), max(len(grid.w_ie), 1)
    cell = 0.78
    panel_w, panel_h = max(3.6, cell * n_ie + 1.9), max(3.0, cell * n_ei + 1.1)
    n_cols = 3
    n_rows = math.ceil((len(quantities) + 1) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel_w * n_cols, panel_h * n_rows + 0.6), squeeze=False)
    flat = list(axes.ravel())
    for ax, quantity in zip(flat, quantities, strict=False):
        _heatmap(ax, fig, grid, quantity)
    note = flat[len(quantities)]
    note.axis("off")
    seeds = sorted({int(n) for n in grid.completed.ravel() if n > 0})
    note.text(
        0.0,
        1.0,
        "How to read the cells\n\n"
        "bold: mean over the completed seeds\n"
        "below: the condition verdict (seeds agreeing / completed)\n"
        "hatched: no completed run; its status is written\n"
        "grey: undefined (no gamma peak in a silent network)\n"
        "dashed lines on the colourbars: verdict thresholds\n\n" + _criteria_note(criteria),
        transform=note.transAxes,
        ha="left",
        va="top",
        fontsize=8.5,
        wrap=True,
    )
    for ax in flat[len(quantities) + 1 :]:
        ax.axis("off")
    done = int((grid.completed > 0).sum())
    fig.suptitle(
        f"{title}\nend state of each start of the E-I loop (loop trainable; Brian2 on the test digits, trained "
        f"weights); {done}/{grid.conditions.size} cells completed"
        + (f"; completed seeds per cell: {seeds[0]}" + (f" to {seeds[-1]}" if len(seeds) > 1 else "") if seeds else ""),
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    _save(fig, path)
    plt.close(fig)
    return path


def basin_arrows_figure(
    grid: BasinGrid, path: Path, *, title: str = "basin_map", criteria: VerdictCriteria = DEFAULT_CRITERIA
) -> Path:
    """For each start, an arrow from the initial to the final (effective W_EI mean, effective W_IE mean), nS."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9.6, 7.0))
    used = []
    n_ei, n_ie = grid.conditions.shape
    for i in range(n_ei):
        for j in range(n_ie):
            x0, y0 = grid.initial_nS["w_ei"][i, j], grid.initial_nS["w_ie"][i, j]
            if not (np.isfinite(x0) and np.isfinite(y0)):
                continue
            verdict = grid.majority[i, j]
            color = VERDICT_COLORS.get(verdict, VERDICT_COLORS[None])
            x1, y1 = grid.final_nS["w_ei"][i, j], grid.final_nS["w_ie"][i, j]
            ax.plot([x0], [y0], "o", markerfacecolor="white", markeredgecolor=color, markersize=6, zorder=3)
            if np.isfinite(x1) and np.isfinite(y1):
                ax.annotate(
                    "",
                    xy=(x1, y1),
                    xytext=(x0, y0),
                    arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.4, "shrinkA": 3, "shrinkB": 0},
                    zorder=2,
                )
                ax.plot([x1], [y1], "o", color=color, markersize=4.5, zorder=4)
            used.append(verdict)
    canonical = _canonical_nS(grid)
    handles = [
        Line2D([], [], color=VERDICT_COLORS.get(v, VERDICT_COLORS[None]), lw=2, label=v or "no verdict yet")
        for v in VERDICT_COLORS
        if v in used
    ]
    handles += [
        Line2D([], [], ls="", marker="o", markerfacecolor="white", markeredgecolor="0.3", label="start (initial)"),
        Line2D([], [], ls="", marker="o", color="0.3", markersize=4.5, label="end (trained)"),
    ]
    ax.legend(
        handles=handles,
        title="verdict (most frequent over seeds)",
        fontsize=8,
        title_fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.16, 1.0),
    )
    ax.set_xlabel("effective W_EI mean (nS; E -> I)")
    ax.set_ylabel("effective W_IE mean (nS; I -> E)")
    for matrix, line, axis_name in (("w_ei", ax.axvline, "x"), ("w_ie", ax.axhline, "y")):
        unit = canonical[matrix]
        if not unit:
            continue
        line(unit, color="0.6", lw=0.8, ls=":", zorder=0)
        # The same axis in multiples of the canonical mean, where the starts sit on the grid.
        functions = (lambda v, u=unit: v / u, lambda m, u=unit: m * u)
        if axis_name == "x":
            top = ax.secondary_xaxis("top", functions=functions)
            top.set_xlabel("W_EI (x canonical mean; dotted: canonical)", fontsize=8, color="0.35")
        else:
            right = ax.secondary_yaxis("right", functions=functions)
            right.set_ylabel("W_IE (x canonical mean; dotted: canonical)", fontsize=8, color="0.35")
    ax.set_xlim(left=min(0.0, ax.get_xlim()[0]))
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    ax.grid(alpha=0.25)
    ax.set_title(
        f"{title}: where each start of the loop went (mean of max(stored, 0) over all edges;\n"
        "means over seeds; ends only for completed runs)",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _canonical_nS(grid: BasinGrid) -> dict[str, float | None]:
    """The canonical effective mean (nS) of W_EI and W_IE, from the cells with a nonzero initial multiple."""
    out: dict[str, float | None] = {}
    for matrix, multiples, axis in (("w_ei", grid.w_ei, 0), ("w_ie", grid.w_ie, 1)):
        ratios = []
        for k, multiple in enumerate(multiples):
            if multiple > 0:
                line = np.take(grid.initial_nS[matrix], k, axis=axis)
                ratios += [v / multiple for v in line if np.isfinite(v)]
        out[matrix] = float(np.median(ratios)) if ratios else None
    return out


def basin_cells(grid: BasinGrid) -> list[dict[str, Any]]:
    """The grid as a list of cells (for ``basin_map.json``)."""
    cells = []
    for i, ei in enumerate(grid.w_ei):
        for j, ie in enumerate(grid.w_ie):
            cells.append(
                {
                    "condition": grid.conditions[i, j] or None,
                    "init_w_ei_multiple": ei,
                    "init_w_ie_multiple": ie,
                    "completed_seeds": int(grid.completed[i, j]),
                    "runs": int(grid.n_runs[i, j]),
                    "verdict": grid.verdicts[i, j],
                    **{key: _finite_or_none(values[i, j]) for key, values in grid.values.items()},
                    **{
                        f"{matrix}_effective_mean_nS_{when}": _finite_or_none(store[matrix][i, j])
                        for when, store in (("initial", grid.initial_nS), ("final", grid.final_nS))
                        for matrix in ("w_ei", "w_ie")
                    },
                }
            )
    return cells


def _draw_basin_map(records, figure_dir, formats, *, conditions=None, title="basin_map", criteria=DEFAULT_CRITERIA):
    grid = basin_grid(records, conditions, criteria=criteria)
    paths = []
    for fmt in formats:
        paths.append(basin_map_figure(grid, figure_dir / f"basin_map.{fmt}", title=title, criteria=criteria))
        paths.append(basin_arrows_figure(grid, figure_dir / f"basin_map_arrows.{fmt}", title=title, criteria=criteria))
    counts = Counter(str(v) for v in grid.majority.ravel() if v is not None)
    paths.append(
        _write_json(
            figure_dir / "basin_map.json",
            {"cells": basin_cells(grid), "majority_verdict_counts": dict(sorted(counts.items()))},
        )
    )
    return paths


# --- a final value against a numeric setting (tau_gaba, anti_pruning) ----------------------------------------


@dataclass(frozen=True)
class _Point:
    x: float
    value: float
    seed: int


def _series(
    records: Sequence[RunRecord],
    quantity: Quantity,
    place: Callable[[RunRecord], Iterable[tuple[str, float]]],
) -> dict[str, list[_Point]]:
    """Line label -> one point per completed run (a run may sit on several lines, e.g. a lambda = 0 control)."""
    lines: dict[str, list[_Point]] = {}
    for record in records:
        if not record.ok:
            continue
        for label, x in place(record):
            lines.setdefault(label, []).append(_Point(float(x), quantity.of(record), record.seed))
    return lines


def _draw_series(ax, lines: Mapping[str, list[_Point]], colors: Mapping[str, str], x_shown: Callable[[float], float]):
    markers = "osD^v"
    for k, (label, points) in enumerate(lines.items()):
        color = colors.get(label, f"C{k}")
        xs = np.array([x_shown(p.x) for p in points])
        ys = np.array([p.value for p in points])
        ax.plot(
            xs,
            np.where(np.isposinf(ys), np.nan, ys),
            ls="",
            marker=markers[k % len(markers)],
            color=color,
            alpha=SEED_ALPHA,
            markersize=4,
            markeredgewidth=0,
        )
        unique = sorted({p.x for p in points})
        means = [_mean([p.value for p in points if p.x == x]) for x in unique]
        ax.plot(
            [x_shown(x) for x in unique],
            means,
            color=color,
            lw=2.2,
            marker=markers[k % len(markers)],
            markersize=6,
            label=label,
        )


def _thresholds(ax, quantity: Quantity) -> None:
    """The verdict thresholds of ``quantity`` as dotted lines (a band as a light span), labelled at the right."""
    values = [value for value, _ in quantity.thresholds]
    if quantity.key == "gamma_peak" and len(values) == 2:
        ax.axhspan(min(values), max(values), color="#1b9e3a", alpha=0.06, zorder=0, lw=0)
    for value, text in quantity.thresholds:
        ax.axhline(value, color="0.5", lw=0.8, ls=":", zorder=0)
        if text:
            ax.text(
                0.99,
                value,
                text,
                transform=ax.get_yaxis_transform(),
                fontsize=7,
                color="0.3",
                va="bottom",
                ha="right",
                zorder=5,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 0.5},
            )


def setting_sweep_figure(
    records: Sequence[RunRecord],
    path: Path,
    *,
    place: Callable[[RunRecord], Iterable[tuple[str, float]]],
    quantities: Sequence[Quantity],
    xlabel: str,
    title: str,
    colors: Mapping[str, str] | None = None,
    log_x: bool = False,
    zero_label: str | None = None,
    decorate: Callable[[Any, Quantity, Callable[[float], float]], None] | None = None,
) -> Path:
    """Final values against a numeric setting: one panel per quantity, one line per label of ``place``.

    Parameters
    ----------
    place : callable
        ``record -> [(line label, x), ...]``: where a completed run is drawn.
    log_x : bool
        Logarithmic x axis; an x of 0 is then drawn at the left edge (a tenth of
        the smallest positive x), with the tick ``zero_label`` (default "0").
    decorate : callable, optional
        ``(ax, quantity, x_shown)``, called after each panel is drawn.
    """
    plt = _pyplot()
    colors = dict(colors or {})
    all_x = sorted({x for r in records if r.ok for _, x in place(r)})
    positive = [x for x in all_x if x > 0]
    zero_at = (min(positive) / 10.0 if positive else 1e-3) if log_x else 0.0

    def x_shown(x: float) -> float:
        return zero_at if (log_x and x <= 0) else x

    fig, axes = plt.subplots(1, len(quantities), figsize=(4.3 * len(quantities), 3.9), squeeze=False)
    for ax, quantity in zip(axes[0], quantities, strict=True):
        lines = _series(records, quantity, place)
        _draw_series(ax, lines, colors, x_shown)
        if log_x:
            ax.set_xscale("log")
            ticks = [zero_at, *positive]
            ax.set_xticks(ticks, [zero_label or "0", *(f"{x:g}" for x in positive)])
            ax.minorticks_off()
            if any(x <= 0 for x in all_x):
                # The axis is broken between lambda = 0 and the smallest positive lambda.
                split = math.sqrt(zero_at * (min(positive) if positive else zero_at * 10))
                ax.axvline(split, color="0.6", lw=0.8, ls=(0, (2, 2)))
                ax.text(
                    split,
                    0.0,
                    "//",
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="0.3",
                    clip_on=False,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.0},
                )
        elif all_x:
            ax.set_xticks(all_x, [f"{x:g}" for x in all_x])
        _thresholds(ax, quantity)
        if decorate is not None:
            decorate(ax, quantity, x_shown)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(quantity.label)
        ax.set_title(quantity.label, fontsize=10)
        ax.grid(alpha=0.25)
        if quantity.key == "w_ei_pruned":
            ax.set_ylim(-3, 103)
        elif quantity.key in ("accuracy", "rate_i", "gamma_power"):
            ax.set_ylim(bottom=0)
        shown_values = np.array([p.value for points in lines.values() for p in points], dtype=float)
        if quantity.key != "w_ei_pruned" and _wide_range(shown_values):
            from matplotlib.ticker import FuncFormatter

            ax.set_yscale("symlog", linthresh=SYMLOG_LINTHRESH, linscale=0.6)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_ylabel(quantity.label + " (symlog)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, -0.06), fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    _save(fig, path)
    plt.close(fig)
    return path


# --- tau_gaba --------------------------------------------------------------------------------------------


FROZEN, TRAINABLE = "loop frozen", "loop trainable"
LOOP_COLORS = {FROZEN: "#333333", TRAINABLE: I_COLOR}


def _tau_ms(record: RunRecord) -> float | None:
    value = _setting(record, TAU_GABA_KEY)
    return None if value is None else float(value)


def _trainable(record: RunRecord) -> bool:
    return bool(_setting(record, "train_w_ei")) or bool(_setting(record, "train_w_ie"))


def _place_tau(record: RunRecord) -> list[tuple[str, float]]:
    tau = _tau_ms(record)
    return [] if tau is None else [(TRAINABLE if _trainable(record) else FROZEN, tau)]


def frozen_gamma_points(records: Sequence[RunRecord]) -> list[tuple[float, float]]:
    """(tau_GABA in ms, Brian2 gamma peak frequency in Hz) of every completed frozen-loop run with a peak."""
    quantity = QUANTITIES["gamma_peak"]
    points = []
    for record in records:
        if record.ok and not _trainable(record) and (tau := _tau_ms(record)) is not None:
            frequency = quantity.of(record)
            if math.isfinite(frequency) and frequency > 0:
                points.append((tau, frequency))
    return sorted(points)


def _r2(y: np.ndarray, fitted: np.ndarray) -> float | None:
    total = float(((y - y.mean()) ** 2).sum())
    return None if total == 0 else 1.0 - float(((y - fitted) ** 2).sum()) / total


def frozen_gamma_fit(records: Sequence[RunRecord]) -> dict[str, Any]:
    """Does the frozen-loop gamma frequency fall as tau_GABA rises? Two fits over the runs' points.

    - Power law: ``log f = log c + s log tau`` (least squares); ``s`` < 0 when
      frequency falls with tau (``s`` = -1: the period is proportional to tau).
    - Period: ``1000 / f = a + b tau`` (ms; least squares on the period), i.e.
      ``f = 1000 / (a + b tau)``; ``b`` > 0 when the PING period grows with
      tau_GABA (``b`` ms of period per ms of tau_GABA, ``a`` the rest of the
      cycle: E and I delays, integration).

    Returns
    -------
    dict
        ``points`` (tau ms, f Hz) per run, ``mean_points`` per tau,
        ``loglog`` {slope, intercept, r2}, ``period_fit`` {a_ms, b, r2},
        ``falls_with_tau`` (slope < 0, b > 0 and the per-tau means fall
        monotonically), ``note`` (one sentence); the fits are None with fewer
        than two distinct tau values.
    """
    points = frozen_gamma_points(records)
    taus = sorted({tau for tau, _ in points})
    mean_points = [(tau, float(np.mean([f for t, f in points if t == tau]))) for tau in taus]
    result: dict[str, Any] = {
        "points": [list(p) for p in points],
        "mean_points": [list(p) for p in mean_points],
        "loglog": None,
        "period_fit": None,
        "falls_with_tau": None,
    }
    if len(taus) < 2:
        result["note"] = (
            f"Frozen gamma frequency: {len(points)} run(s) with a gamma peak at {len(taus)} tau_GABA value(s); "
            "no fit (need two or more)."
        )
        return result
    tau = np.array([p[0] for p in points])
    frequency = np.array([p[1] for p in points])
    slope, intercept = np.polyfit(np.log(tau), np.log(frequency), 1)
    result["loglog"] = {
        "slope": float(slope),
        "intercept": float(intercept),
        "r2": _r2(np.log(frequency), intercept + slope * np.log(tau)),
    }
    period = 1000.0 / frequency
    b, a = np.polyfit(tau, period, 1)
    result["period_fit"] = {"a_ms": float(a), "b": float(b), "r2": _r2(period, a + b * tau)}
    means = [f for _, f in mean_points]
    monotone = all(later < earlier for earlier, later in zip(means, means[1:], strict=False))
    falls = bool(slope < 0 and b > 0 and monotone)
    result["falls_with_tau"] = falls
    verdict = (
        "follows the expected dependence (frequency falls as tau_GABA rises; PING period grows with tau_GABA)"
        if falls
        else "does NOT follow the expected fall of frequency with tau_GABA"
        + ("" if monotone else " (the per-tau means are not monotonically falling)")
    )
    result["note"] = (
        f"Frozen-loop gamma peak goes from {means[0]:.3g} Hz at tau_GABA = {taus[0]:g} ms to {means[-1]:.3g} Hz "
        f"at {taus[-1]:g} ms (log-log slope {slope:.2f}, r2 {_fmt_r2(result['loglog']['r2'])}; period = "
        f"{a:.3g} ms + {b:.3g} x tau_GABA, r2 {_fmt_r2(result['period_fit']['r2'])}): it {verdict}."
    )
    return result


def _fmt_r2(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def tau_gaba_figure(
    records: Sequence[RunRecord], path: Path, *, title: str = "tau_gaba", criteria: VerdictCriteria = DEFAULT_CRITERIA
) -> Path:
    """Gamma peak frequency, I rate, W_EI pruned and accuracy against tau_GABA, frozen and trainable loop."""
    quantities = _quantities(criteria)
    fit = frozen_gamma_fit(records)

    def decorate(ax, quantity: Quantity, x_shown) -> None:
        if quantity.key != "gamma_peak" or fit["period_fit"] is None:
            return
        taus = np.linspace(min(p[0] for p in fit["points"]), max(p[0] for p in fit["points"]), 100)
        a, b = fit["period_fit"]["a_ms"], fit["period_fit"]["b"]
        period = a + b * taus
        with np.errstate(divide="ignore", invalid="ignore"):
            ax.plot(
                taus,
                np.where(period > 0, 1000.0 / period, np.nan),
                color=LOOP_COLORS[FROZEN],
                lw=1.0,
                ls="--",
                label="frozen fit",
            )
        ax.text(
            0.97,
            0.97,
            f"frozen fit: f = 1000 / ({a:.3g} + {b:.3g} tau)\nlog-log slope {fit['loglog']['slope']:.2f}",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
            bbox={"facecolor": "white", "edgecolor": "0.8", "pad": 2},
        )

    return setting_sweep_figure(
        records,
        path,
        place=_place_tau,
        quantities=[quantities[k] for k in ("gamma_peak", "rate_i", "w_ei_pruned", "accuracy")],
        xlabel="tau_GABA (ms)",
        title=(
            f"{title}: Brian2 on the test digits after training, against the GABA decay time constant "
            "(thin points: seeds; bold: mean over seeds; dotted: verdict thresholds)"
        ),
        colors=LOOP_COLORS,
        decorate=decorate,
    )


def _draw_tau_gaba(records, figure_dir, formats, *, conditions=None, title="tau_gaba", criteria=DEFAULT_CRITERIA):
    paths = [
        tau_gaba_figure(records, figure_dir / f"tau_gaba.{fmt}", title=title, criteria=criteria) for fmt in formats
    ]
    paths.append(_write_json(figure_dir / "tau_gaba_fit.json", frozen_gamma_fit(records)))
    return paths


# --- anti_pruning ------------------------------------------------------------------------------------------


def penalty_lambda(condition: str) -> tuple[str | None, float]:
    """The penalty a condition switches on and its strength lambda.

    ``(key, lambda)`` for a condition with one penalty key of
    :data:`PENALTY_KEYS` set above 0 (or set to 0 alone); ``(None, 0.0)`` for
    a condition with no penalty (the lambda = 0 control, drawn on every
    penalty's line). A condition with two nonzero penalties raises ValueError.
    """
    settings = _settings(condition)
    present = {k: float(settings[k]) for k in PENALTY_KEYS if k in settings and settings[k] is not None}
    nonzero = {k: v for k, v in present.items() if v > 0}
    if len(nonzero) > 1:
        raise ValueError(f"condition {condition!r} sets more than one penalty: {nonzero}")
    if nonzero:
        return next(iter(nonzero.items()))
    if len(present) == 1:
        return next(iter(present)), 0.0
    return None, 0.0


def _penalties(records: Sequence[RunRecord], conditions: Sequence[str] | None = None) -> list[str]:
    names = list(dict.fromkeys([*(conditions or []), *(r.condition for r in records)]))
    keys = set()
    for name in names:
        try:
            key, _ = penalty_lambda(name)
        except ValueError:
            continue
        if key is not None:
            keys.add(key)
    return [k for k in PENALTY_KEYS if k in keys]


def _lambda_points(records: Sequence[RunRecord]) -> dict[str, dict[float, list[RunRecord]]]:
    """Penalty key -> lambda -> runs (the no-penalty control under every penalty at lambda = 0)."""
    keys = _penalties(records)
    out: dict[str, dict[float, list[RunRecord]]] = {k: {} for k in keys}
    for record in records:
        try:
            key, strength = penalty_lambda(record.condition)
        except ValueError:
            continue
        for target in keys if key is None else [key]:
            out[target].setdefault(strength, []).append(record)
    return out


def smallest_keeping_lambda(
    records: Sequence[RunRecord],
    key: str,
    *,
    criteria: VerdictCriteria = DEFAULT_CRITERIA,
    allow_rewired: bool = False,
) -> float | None:
    """The smallest lambda of penalty ``key`` whose condition verdict is "PING kept".

    A lambda counts when "PING kept" is the condition's single most frequent
    run verdict over its completed seeds (:func:`condition_verdict`); with
    ``allow_rewired``, "PING kept, rewired" counts too. The no-penalty control
    counts as lambda = 0. None if no lambda keeps the loop.
    """
    accepted = {PING_KEPT, PING_KEPT + REWIRED} if allow_rewired else {PING_KEPT}
    for strength, runs in sorted(_lambda_points(records).get(key, {}).items()):
        completed = [r for r in runs if r.ok]
        text = condition_verdict([run_verdict(r.status, criteria) for r in completed]) if completed else "n/a"
        if any(text.startswith(f"{verdict} (") for verdict in accepted):
            return strength
    return None


def smallest_keeping_lambdas(
    records: Sequence[RunRecord], *, criteria: VerdictCriteria = DEFAULT_CRITERIA, allow_rewired: bool = False
) -> dict[str, float | None]:
    """:func:`smallest_keeping_lambda` of every penalty present in ``records``."""
    return {
        key: smallest_keeping_lambda(records, key, criteria=criteria, allow_rewired=allow_rewired)
        for key in _penalties(records)
    }


PENALTY_COLORS = {"reg_w_ei_distance": E_COLOR, "reg_gamma_power": "#2a9d8f"}


def anti_pruning_figure(
    records: Sequence[RunRecord],
    path: Path,
    *,
    title: str = "anti_pruning",
    criteria: VerdictCriteria = DEFAULT_CRITERIA,
) -> Path:
    """Loop survival (I rate, W_EI pruned, gamma power) and accuracy against lambda, one line per penalty."""
    quantities = _quantities(criteria)
    keeping = smallest_keeping_lambdas(records, criteria=criteria)
    labels = {
        key: f"{PENALTY_KEYS[key]} ({key}); smallest lambda with verdict PING kept: "
        + ("none" if keeping.get(key) is None else f"{keeping[key]:g}")
        for key in _penalties(records)
    }

    def place(record: RunRecord) -> list[tuple[str, float]]:
        try:
            key, strength = penalty_lambda(record.condition)
        except ValueError:
            return []
        return [(labels[k], strength) for k in (labels if key is None else [key]) if k in labels]

    def decorate(ax, quantity: Quantity, x_shown) -> None:
        styles = ("-.", (0, (5, 2)))
        for n, (key, strength) in enumerate(keeping.items()):
            if strength is not None:
                color = PENALTY_COLORS.get(key, "0.3")
                ax.axvline(x_shown(strength), color=color, lw=1.1, ls=styles[n % 2], alpha=0.8, zorder=1)

    return setting_sweep_figure(
        records,
        path,
        place=place,
        quantities=[quantities[k] for k in ("rate_i", "w_ei_pruned", "gamma_power", "accuracy")],
        xlabel="penalty strength lambda (log; 0 at the left edge)",
        title=(
            f"{title}: loop survival and accuracy against the anti-pruning penalty (Brian2, test digits; thin "
            "points: seeds; bold: mean; dotted: verdict thresholds;\nvertical lines: the smallest lambda whose "
            "condition verdict is PING kept, not rewired)"
        ),
        colors={labels[k]: PENALTY_COLORS.get(k, f"C{n}") for n, k in enumerate(labels)},
        log_x=True,
        zero_label="0",
        decorate=decorate,
    )


def _draw_anti_pruning(
    records, figure_dir, formats, *, conditions=None, title="anti_pruning", criteria=DEFAULT_CRITERIA
):
    paths = [
        anti_pruning_figure(records, figure_dir / f"anti_pruning.{fmt}", title=title, criteria=criteria)
        for fmt in formats
    ]
    summary = {
        "smallest_keeping_lambda": smallest_keeping_lambdas(records, criteria=criteria),
        "smallest_keeping_lambda_rewired_allowed": smallest_keeping_lambdas(
            records, criteria=criteria, allow_rewired=True
        ),
        "conditions": {},
    }
    for key, by_lambda in _lambda_points(records).items():
        summary["conditions"][key] = [
            {
                "lambda": strength,
                "conditions": sorted({r.condition for r in runs}),
                "verdict": condition_verdict([run_verdict(r.status, criteria) for r in runs if r.ok])
                if any(r.ok for r in runs)
                else _status_text(runs),
                **{
                    key: _finite_or_none(_mean([quantity.of(r) for r in runs if r.ok]))
                    for key, quantity in _quantities(criteria).items()
                },
            }
            for strength, runs in sorted(by_lambda.items())
        ]
    paths.append(_write_json(figure_dir / "anti_pruning_lambda.json", summary))
    return paths


# --- dispatch -----------------------------------------------------------------------------------------------


SWEEP_FIGURES: dict[str, Callable[..., list[Path]]] = {
    "basin_map": _draw_basin_map,
    "tau_gaba": _draw_tau_gaba,
    "anti_pruning": _draw_anti_pruning,
}
"""Protocol name -> what draws its sweep figures."""


def sweep_kind(conditions: Iterable[str], protocol_name: str | None = None) -> str | None:
    """Which sweep figures a protocol gets: a key of :data:`SWEEP_FIGURES`, or None.

    A protocol named in :data:`SWEEP_FIGURES` gets its own; another known
    protocol (``dale_pruning``) none. An unnamed or unknown protocol is
    recognised from its conditions' settings: a penalty of
    :data:`PENALTY_KEYS` -> ``anti_pruning``; several tau_GABA values ->
    ``tau_gaba``; ``init_w_ei`` and ``init_w_ie`` varied independently (a
    grid, not a diagonal) -> ``basin_map``.
    """
    if protocol_name in SWEEP_FIGURES:
        return protocol_name
    if protocol_name in definitions.PROTOCOLS:
        return None
    settings = [_settings(name) for name in conditions]
    if any(key in s for s in settings for key in PENALTY_KEYS):
        return "anti_pruning"
    if len({s[TAU_GABA_KEY] for s in settings if TAU_GABA_KEY in s}) > 1:
        return "tau_gaba"
    pairs = {(str(s["init_w_ei"]), str(s["init_w_ie"])) for s in settings if "init_w_ei" in s and "init_w_ie" in s}
    n_ei, n_ie = len({p[0] for p in pairs}), len({p[1] for p in pairs})
    if n_ei > 1 and n_ie > 1 and len(pairs) > max(n_ei, n_ie):
        return "basin_map"
    return None


def draw_sweep_figures(
    records: Sequence[RunRecord],
    figure_dir: Path,
    formats: tuple[str, ...] = ("png",),
    *,
    protocol_name: str | None = None,
    conditions: Sequence[str] | None = None,
    title: str | None = None,
    criteria: VerdictCriteria = DEFAULT_CRITERIA,
) -> list[Path]:
    """The sweep figures of a protocol (nothing for a protocol that is not a sweep).

    Parameters
    ----------
    records : list of RunRecord
        The protocol's runs (any status; only completed runs give values).
    figure_dir : Path
        Where the figures (one per format) and their JSON summaries go.
    protocol_name, conditions : optional
        From ``protocol.json``: the protocol's name and every one of its
        conditions (cells of runs not started yet are drawn as missing).
    """
    names = list(conditions or dict.fromkeys(r.condition for r in records))
    kind = sweep_kind(names, protocol_name)
    if kind is None:
        return []
    figure_dir = Path(figure_dir)
    return SWEEP_FIGURES[kind](
        list(records), figure_dir, formats, conditions=names, title=title or protocol_name or kind, criteria=criteria
    )
