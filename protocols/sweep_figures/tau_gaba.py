"""``tau_gaba``: final values against tau_GABA, frozen and trainable loop, and the frozen gamma fit."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biosim.plotting import I_COLOR

from ..results import RunRecord
from ..verdicts import (
    DEFAULT_CRITERIA,
    VerdictCriteria,
)
from .common import QUANTITIES, Quantity, _quantities, _setting, _write_json, setting_sweep_figure

TAU_GABA_KEY = "network.synapse.tau_gaba_ms"


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


def draw_tau_gaba(records, figure_dir, formats, *, conditions=None, title="tau_gaba", criteria=DEFAULT_CRITERIA):
    paths = [
        tau_gaba_figure(records, figure_dir / f"tau_gaba.{fmt}", title=title, criteria=criteria) for fmt in formats
    ]
    paths.append(_write_json(figure_dir / "tau_gaba_fit.json", frozen_gamma_fit(records)))
    return paths
