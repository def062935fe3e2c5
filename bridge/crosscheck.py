"""Spike-for-spike comparison of the mirror with Brian2 on identical input.

With the same weights, initial states and input spikes in float64, both
simulators integrate the same equations in the same order, so their spike
trains should be identical. Rounding differs (Brian2 works in SI units and
compiles its own expressions), so a divergence is possible in principle when a
membrane lands within ~1e-12 mV of threshold; the report says where the first
one happens so it can be inspected.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from biosim.backends import run_trials
from biosim.params import NetworkParams
from biosim.results import SimulationResult, SpikeTrains
from biosim.simulation import load_test_trials
from biosim.weights import NetworkWeights, init_weights

from .simulate import run_mirror
from .spike_identity import identity_report

__all__ = ["SpikeComparison", "compare_spikes", "trace_agreement", "crosscheck"]


@dataclass(frozen=True)
class SpikeComparison:
    """Spikes of a reference simulator (Brian2) against a candidate (the mirror)."""

    population: str
    reference_spikes: int
    identical: int
    missing: int
    """In the reference, not in the candidate."""
    extra: int
    """In the candidate, not in the reference."""
    first_divergence_step: int | None
    """Earliest step (within its trial) of a differing spike over all trials; None if identical."""
    first_divergence_trial: int | None
    diverged_trials: int

    @property
    def identical_fraction(self) -> float:
        total = self.identical + self.missing + self.extra
        return self.identical / total if total else 1.0


def _keys(spikes: SpikeTrains) -> np.ndarray:
    """One int64 per spike: (trial, step, neuron) packed, for set operations."""
    return (spikes.trial * spikes.n_steps + spikes.step) * spikes.n_neurons + spikes.neuron


def compare_spikes(reference: SpikeTrains, candidate: SpikeTrains, population: str) -> SpikeComparison:
    a, b = _keys(reference), _keys(candidate)
    common = np.intersect1d(a, b, assume_unique=True)
    differing = np.setxor1d(a, b, assume_unique=True)
    first_step = first_trial = None
    diverged_trials = 0
    if len(differing):
        trial = differing // (reference.n_steps * reference.n_neurons)
        step = (differing // reference.n_neurons) % reference.n_steps
        k = int(np.argmin(step))
        first_step, first_trial = int(step[k]), int(trial[k])
        diverged_trials = len(np.unique(trial))
    return SpikeComparison(
        population=population,
        reference_spikes=len(a),
        identical=len(common),
        missing=len(a) - len(common),
        extra=len(b) - len(common),
        first_divergence_step=first_step,
        first_divergence_trial=first_trial,
        diverged_trials=diverged_trials,
    )


def _first_divergence_per_trial(reference: SimulationResult, candidate: SimulationResult) -> np.ndarray:
    """Per trial, the first step at which E or I spikes differ (n_steps if never)."""
    first = np.full(reference.n_trials, reference.spikes_e.n_steps)
    for name in ("spikes_e", "spikes_i"):
        a, b = getattr(reference, name), getattr(candidate, name)
        differing = np.setxor1d(_keys(a), _keys(b), assume_unique=True)
        trial = differing // (a.n_steps * a.n_neurons)
        step = (differing // a.n_neurons) % a.n_steps
        np.minimum.at(first, trial, step)
    return first


def trace_agreement(reference: SimulationResult, candidate: SimulationResult) -> float:
    """Max relative membrane difference over recorded traces, up to each trial's first divergence."""
    first = _first_divergence_per_trial(reference, candidate)
    worst = 0.0
    for key, ref in reference.traces.items():
        cand = candidate.traces[key]
        steps = np.arange(ref.shape[1])[None, :, None]
        valid = steps < first[:, None, None]
        relative = np.abs(ref - cand) / np.maximum(np.abs(ref), 1e-300)
        if np.any(valid):
            worst = max(worst, float(np.max(np.where(valid, relative, 0.0))))
    return worst


def crosscheck(
    *,
    backend: str,
    n_trials: int,
    seed: int = 0,
    params: NetworkParams | None = None,
    weights: NetworkWeights | None = None,
    n_recorded: int = 16,
    build_dir: str | Path | None = None,
    progress: bool = True,
    layout: str = "sequential",
    max_copies: int | None = None,
) -> dict:
    """Run test digits in Brian2 (``backend``) and in the float64 mirror and compare.

    Returns a JSON-ready report: per population identical / missing / extra
    spikes and the first divergence, per trial the verdict of
    :func:`bridge.spike_identity.identity_report` (trials that agree, first
    divergences and their causes), the max relative membrane difference
    before it, and both simulators' timings.
    """
    params = params or NetworkParams()
    weights = (weights if weights is not None else init_weights(params, seed=seed)).effective()
    trials = load_test_trials(params, n_trials, seed=seed)
    c = params.connectivity
    record = {
        "e": np.linspace(0, c.n_e - 1, n_recorded).astype(int),
        "i": np.linspace(0, c.n_i - 1, n_recorded).astype(int),
    }
    brian = run_trials(
        params, weights, trials, backend=backend, build_dir=build_dir, record_v=record, progress=progress,
        layout=layout, max_copies=max_copies,
    )  # fmt: skip
    mirror = run_mirror(params, weights, trials, dtype=torch.float64, record_v=record)
    comparisons = [
        compare_spikes(brian.spikes_e, mirror.spikes_e, "e"),
        compare_spikes(brian.spikes_i, mirror.spikes_i, "i"),
    ]
    return {
        "backend": backend,
        "n_trials": n_trials,
        "seed": seed,
        "spikes": {
            cmp.population: {**asdict(cmp), "identical_fraction": cmp.identical_fraction} for cmp in comparisons
        },
        "identical": all(cmp.missing == 0 and cmp.extra == 0 for cmp in comparisons),
        "trials": identity_report(
            {"e": brian.spikes_e, "i": brian.spikes_i},
            {"e": mirror.spikes_e, "i": mirror.spikes_i},
            params=params,
            weights=weights,
            trials=trials,
        ),
        "max_relative_v_difference": trace_agreement(brian, mirror),
        "max_score_difference": float(np.max(np.abs(brian.scores - mirror.scores))),
        "timings_s": {"brian2": brian.timings_s, "mirror": mirror.timings_s},
    }
