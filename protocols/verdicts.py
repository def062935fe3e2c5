"""The answer of the Dale-pruning protocol: did training keep or dismantle the PING loop?

Every run gets a verdict from its Brian2 validation summary
(``status["validation"]["simulators"]["brian2:<backend>"]``: the trained
weights run in the Brian2 network on the test digits, see
:mod:`bridge.validation`) and from its final weight metrics
(``status["final"]``). The criteria, checked in this order, are the fields
of :class:`VerdictCriteria`:

1. ``"loop dismantled"``: the I-population rate is below 1 Hz. The
   interneurons are silent, so the E -> I -> E loop carries nothing.
2. ``"PING kept"``: I-population rate >= 5 Hz, AND the E-population gamma
   peak frequency lies in 25-80 Hz (inclusive), AND the peak stands out:
   ``gamma_relative_power`` (peak power over the median power in the
   20-100 Hz band, see :func:`biosim.analysis.spectra.gamma_peak`) >= 3.
3. ``"changed"``: anything else (the interneurons fire, but there is no
   clear PING rhythm, or it has left the 25-80 Hz band).

Function and structure are kept apart. A kept or changed loop that has lost
more than half of its E -> I edges (``w_ei_pruned_fraction`` > 0.5; pruned =
stored weight < 0) gets ", rewired" appended: ``"PING kept, rewired"``,
``"changed, rewired"``. The pruned fraction alone never declares the loop
dismantled. On the study tier, gradient descent pruned 60 to 70 % of W_EI
and doubled the remaining edges, and Brian2 still showed I at 33 to 37 Hz
with a 41 Hz gamma peak: the loop had been rewired, not taken apart
(docs/training.md).

A quantity that is missing or undefined (NaN: no gamma peak in a silent
network) satisfies no comparison. A diverged run's verdict is
``"diverged"``; a run without a Brian2 validation (failed, unfinished, or
validated only in the mirror) has no verdict (``None``).

For ``trainable_zero_init``, whose E-I loop starts at zero, nothing can be
"kept" or "dismantled": there ``"PING kept"`` means PING is present at the
end of training (the loop grew into a gamma rhythm) and ``"loop dismantled"``
means it is absent.

A condition's verdict (:func:`condition_verdict`) is the most frequent run
verdict with how many seeds agree, e.g. ``"PING kept (3/3)"``; a tie lists
every tied verdict, e.g. ``"changed 1, PING kept 1 (of 2)"``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

__all__ = [
    "VerdictCriteria",
    "DEFAULT_CRITERIA",
    "PING_KEPT",
    "LOOP_DISMANTLED",
    "CHANGED",
    "DIVERGED",
    "REWIRED",
    "run_verdict",
    "condition_verdict",
    "describe_criteria",
    "brian2_summary",
]

PING_KEPT = "PING kept"
LOOP_DISMANTLED = "loop dismantled"
CHANGED = "changed"
DIVERGED = "diverged"
REWIRED = ", rewired"
"""Appended to a kept or changed verdict when more than half of W_EI is pruned."""


@dataclass(frozen=True)
class VerdictCriteria:
    """Thresholds of the run verdicts (see the module docstring for how they combine)."""

    kept_min_rate_i_hz: float = 5.0
    """PING kept: I-population rate at least this (Hz)."""
    kept_gamma_band_hz: tuple[float, float] = (25.0, 80.0)
    """PING kept: gamma peak frequency within this band, bounds included (Hz)."""
    kept_min_relative_power: float = 3.0
    """PING kept: gamma peak power at least this multiple of the band median (dimensionless)."""
    dismantled_max_rate_i_hz: float = 1.0
    """Loop dismantled: I-population rate below this (Hz)."""
    rewired_min_w_ei_pruned_fraction: float = 0.5
    """", rewired": fraction of E -> I edges pruned above this (0 to 1)."""


DEFAULT_CRITERIA = VerdictCriteria()
"""The criteria the protocol's table and figures use."""


def _number(value: Any) -> float:
    """``value`` as a float; NaN where it is missing (None) so that no comparison holds."""
    return float("nan") if value is None else float(value)


def brian2_summary(status: dict[str, Any]) -> dict[str, Any] | None:
    """The Brian2 simulator summary of a run's validation, or None without one.

    Parameters
    ----------
    status : dict
        A run's ``status.json``.

    Returns
    -------
    dict or None
        ``rate_e_hz``, ``rate_i_hz`` (Hz), ``gamma_peak_hz`` (Hz),
        ``gamma_relative_power`` (dimensionless), ``accuracy`` (0 to 1) of the
        ``brian2:<backend>`` entry of the validation's simulators.
    """
    validation = status.get("validation") or {}
    simulators = validation.get("simulators") or {}
    backend = validation.get("backend")
    if backend is not None and f"brian2:{backend}" in simulators:
        return simulators[f"brian2:{backend}"]
    # Older or hand-made records may lack the backend: take the Brian2 entry there is.
    return next((value for key, value in simulators.items() if key.startswith("brian2:")), None)


def run_verdict(status: dict[str, Any], criteria: VerdictCriteria = VerdictCriteria()) -> str | None:
    """The verdict of one run.

    Parameters
    ----------
    status : dict
        The run's ``status.json``: ``status``, ``validation`` (Brian2 summary)
        and ``final`` (``w_ei_pruned_fraction``, 0 to 1).
    criteria : VerdictCriteria
        Thresholds.

    Returns
    -------
    str or None
        ``"diverged"`` for a diverged run; ``"loop dismantled"``,
        ``"PING kept"`` or ``"changed"`` for a run with a Brian2 validation;
        None otherwise.
    """
    if status.get("status") == DIVERGED:
        return DIVERGED
    brian = brian2_summary(status)
    if brian is None:
        return None
    rate_i_hz = _number(brian.get("rate_i_hz"))
    gamma_hz = _number(brian.get("gamma_peak_hz"))
    relative_power = _number(brian.get("gamma_relative_power"))
    pruned = _number((status.get("final") or {}).get("w_ei_pruned_fraction"))
    # NaN compares False both ways: an undefined quantity decides nothing.
    if rate_i_hz < criteria.dismantled_max_rate_i_hz:
        return LOOP_DISMANTLED
    low_hz, high_hz = criteria.kept_gamma_band_hz
    kept = (
        rate_i_hz >= criteria.kept_min_rate_i_hz
        and low_hz <= gamma_hz <= high_hz
        and relative_power >= criteria.kept_min_relative_power
    )
    verdict = PING_KEPT if kept else CHANGED
    return f"{verdict}{REWIRED}" if pruned > criteria.rewired_min_w_ei_pruned_fraction else verdict


def condition_verdict(verdicts: list[str | None]) -> str:
    """The verdict of a condition: the most frequent run verdict and how many seeds agree.

    Parameters
    ----------
    verdicts : list of str or None
        One :func:`run_verdict` per seed. None (no verdict) counts in the
        number of seeds but never wins.

    Returns
    -------
    str
        ``"PING kept (3/3)"``; with a tie for the most frequent verdict every
        tied verdict, most frequent first: ``"changed 1, PING kept 1 (of 2)"``;
        ``"n/a"`` when no run has a verdict.
    """
    counts = Counter(v for v in verdicts if v is not None)
    if not counts:
        return "n/a"
    # Most frequent first, then alphabetically (ignoring case) so the text is reproducible.
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0].lower()))
    top = ranked[0][1]
    tied = [(verdict, count) for verdict, count in ranked if count == top]
    if len(tied) == 1:
        return f"{tied[0][0]} ({top}/{len(verdicts)})"
    return ", ".join(f"{verdict} {count}" for verdict, count in ranked) + f" (of {len(verdicts)})"


def _hz(value: float) -> str:
    return f"{value:g} Hz"


def describe_criteria(criteria: VerdictCriteria = VerdictCriteria()) -> str:
    """The criteria in one line (for the table's footnote)."""
    low_hz, high_hz = criteria.kept_gamma_band_hz
    return (
        f'Verdict per run (Brian2 on the test digits, trained weights): "{LOOP_DISMANTLED}" if I rate < '
        f'{_hz(criteria.dismantled_max_rate_i_hz)}; else "{PING_KEPT}" if I rate >= '
        f"{_hz(criteria.kept_min_rate_i_hz)} and gamma peak in {low_hz:g}-{high_hz:g} Hz and peak >= "
        f'{criteria.kept_min_relative_power:g} x band median; else "{CHANGED}"; "{REWIRED.lstrip(", ")}" is '
        f"added when more than {criteria.rewired_min_w_ei_pruned_fraction * 100:g} % of W_EI is pruned. "
        "Per condition: the most frequent run verdict (seeds agreeing / completed seeds); for "
        'trainable_zero_init "kept" / "dismantled" mean PING present / absent at the end.'
    )
