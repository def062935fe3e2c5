"""The ``simulate`` job: run test digits through the untrained network in Brian2.

Kept apart from the CLI so that scripts and tests call the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import gamma_peak, population_rates, population_spectrum
from .backends import check_backend, run_trials
from .data import load_split
from .inputs import TrialSet, make_trials
from .params import NetworkParams
from .results import SimulationResult
from .weights import NetworkWeights, init_weights

__all__ = ["SimulationSummary", "summarize", "simulate_test_digits"]


@dataclass(frozen=True)
class SimulationSummary:
    """Rates and gamma peak of a multi-trial result (transient excluded)."""

    rate_e_hz: float
    rate_i_hz: float
    gamma_peak_hz: float
    gamma_relative_power: float
    accuracy: float
    n_trials: int
    simulator: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarize(result: SimulationResult, params: NetworkParams, labels: np.ndarray | None = None) -> SimulationSummary:
    sim = params.simulation
    frequencies, power = population_spectrum(result.spikes_e, sim.dt_ms, sim.transient_ms)
    peak = gamma_peak(frequencies, power)
    accuracy = float(np.mean(result.predictions() == labels)) if labels is not None else float("nan")
    return SimulationSummary(
        rate_e_hz=float(population_rates(result.spikes_e, sim.dt_ms, sim.transient_ms).mean()),
        rate_i_hz=float(population_rates(result.spikes_i, sim.dt_ms, sim.transient_ms).mean()),
        gamma_peak_hz=peak.frequency_hz,
        gamma_relative_power=peak.relative_power,
        accuracy=accuracy,
        n_trials=result.n_trials,
        simulator=result.simulator,
    )


def load_test_trials(
    params: NetworkParams, n_trials: int, *, seed: int, tier: str = "medium", idx_directory=None
) -> TrialSet:
    """The first ``n_trials`` test digits of ``tier`` as spike input."""
    test = load_split(tier, idx_directory=idx_directory).test
    if n_trials > len(test):
        raise ValueError(f"n_trials={n_trials} exceeds the {len(test)} test digits of tier {tier!r}")
    return make_trials(test.images[:n_trials], test.labels[:n_trials], params, seed=seed)


def simulate_test_digits(
    *,
    backend: str,
    n_trials: int,
    seed: int = 0,
    params: NetworkParams | None = None,
    weights: NetworkWeights | None = None,
    tier: str = "medium",
    idx_directory: str | Path | None = None,
    build_dir: str | Path | None = None,
    progress: bool = True,
    layout: str = "sequential",
    max_copies: int | None = None,
) -> tuple[SimulationResult, SimulationSummary, TrialSet]:
    """Run ``n_trials`` test digits on ``backend`` with (by default) untrained canonical weights.

    Input spikes and initial states come from ``seed``; so do the weights
    when none are given. ``layout`` and ``max_copies``: see :func:`biosim.backends.run_trials`.
    """
    check_backend(backend)
    params = params or NetworkParams()
    weights = weights if weights is not None else init_weights(params, seed=seed).effective()
    trials = load_test_trials(params, n_trials, seed=seed, tier=tier, idx_directory=idx_directory)
    result = run_trials(
        params, weights, trials, backend=backend, build_dir=build_dir, progress=progress,
        layout=layout, max_copies=max_copies,
    )  # fmt: skip
    return result, summarize(result, params, trials.labels), trials
