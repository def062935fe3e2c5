"""What the sweep figures read from each run, and the figure of a final value against a numeric setting."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import registry
from ..figures import _pyplot
from ..results import RunRecord
from ..table import _value
from ..verdicts import (
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
    found = registry.CONDITIONS.get(condition)
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
            # The 0 tick only where a run sits at x = 0 (loop_rank's axis has none).
            zero = [zero_at] if any(x <= 0 for x in all_x) else []
            ax.set_xticks([*zero, *positive], [*(zero_label or "0" for _ in zero), *(f"{x:g}" for x in positive)])
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


SYMLOG_LINTHRESH = 1.0
"""Linear below this, logarithmic above, on a value axis spanning orders of magnitude (I rates up to ~1 kHz)."""
_SYMLOG_TICKS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def _wide_range(values: np.ndarray) -> bool:
    """Do the (finite) values span so many orders of magnitude that a linear scale hides most of them?"""
    positive = values[np.isfinite(values) & (values > 0)]
    return bool(positive.size >= 2 and positive.max() > 100.0 and positive.max() > 5.0 * np.median(positive))
