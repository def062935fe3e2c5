"""``basin_map``: heatmaps over the (initial W_EI, initial W_IE) grid, and where each start went."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..figures import _pyplot
from ..results import RunRecord, initial_effective
from ..table import _value
from ..verdicts import (
    DEFAULT_CRITERIA,
    VerdictCriteria,
)
from .common import (
    _SYMLOG_TICKS,
    SYMLOG_LINTHRESH,
    VERDICT_COLORS,
    Quantity,
    _by_condition,
    _finite_or_none,
    _mean,
    _multiple,
    _quantities,
    _save,
    _settings,
    _summarise,
    _wide_range,
    _write_json,
    short_verdict,
)

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


def draw_basin_map(records, figure_dir, formats, *, conditions=None, title="basin_map", criteria=DEFAULT_CRITERIA):
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
