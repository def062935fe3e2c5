"""``anti_pruning``: loop survival and accuracy against the penalty strength lambda."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from biosim.plotting import E_COLOR

from ..results import RunRecord
from ..verdicts import (
    DEFAULT_CRITERIA,
    PING_KEPT,
    REWIRED,
    VerdictCriteria,
    condition_verdict,
    run_verdict,
)
from .common import (
    Quantity,
    _finite_or_none,
    _mean,
    _quantities,
    _settings,
    _status_text,
    _write_json,
    setting_sweep_figure,
)

PENALTY_KEYS = {
    "reg_w_ei_distance": "W_EI distance penalty",
    "reg_gamma_power": "gamma-power penalty",
}
"""Settings that hold an anti-pruning penalty strength lambda, and their names in the figure."""


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


def draw_anti_pruning(
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
