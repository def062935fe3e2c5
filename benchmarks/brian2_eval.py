"""Brian2's evaluation of test trials (one build; build and simulation timed apart), checked against the fused engine.

:func:`run_brian2` simulates the trials of :func:`brian2_trials` on one standalone backend;
:func:`fused_evaluation` runs the fused engine's float64 forward pass (which equals the
mirror's) on the same trials, and :func:`mismatching_trials` names the trials whose spike counts
differ. ``scripts/brian2_timing.py`` runs the same functions with timers around Brian2's phases.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from biosim.data import load_split
from biosim.inputs import TrialSet, make_trials
from biosim.params import NetworkParams
from biosim.results import SimulationResult
from biosim.weights import NetworkWeights

from .problem import synchronize

__all__ = [
    "Brian2Timing",
    "FusedEvaluation",
    "agreement_record",
    "brian2_trials",
    "fused_evaluation",
    "mismatching_trials",
    "run_brian2",
]


def brian2_trials(params: NetworkParams, n_trials: int, seed: int) -> TrialSet:
    """The medium tier's test digits, then its training digits, up to ``n_trials``."""
    split = load_split("medium")
    images = np.concatenate([split.test.images, split.train.images])[:n_trials]
    labels = np.concatenate([split.test.labels, split.train.labels])[:n_trials]
    if len(images) < n_trials:
        raise ValueError(f"n_brian2_trials={n_trials} exceeds the {len(images)} digits of the medium tier")
    return make_trials(images, labels, params, seed=seed)


@dataclass(frozen=True)
class Brian2Timing:
    """One Brian2 run: its spikes and its build and simulation seconds."""

    result: SimulationResult
    n_trials: int
    build_s: float
    simulate_s: float

    @property
    def total_s(self) -> float:
        return self.build_s + self.simulate_s

    @property
    def trials_per_s(self) -> float:
        """Simulation only: the build is paid once per network, not per trial."""
        return self.n_trials / self.simulate_s

    @property
    def trials_per_s_with_build(self) -> float:
        return self.n_trials / self.total_s

    def record(self, prefix: str) -> dict[str, float]:
        """The figures (not the spikes), each key starting with ``prefix``."""
        figures = {
            "trials_per_s": self.trials_per_s,
            "trials_per_s_with_build": self.trials_per_s_with_build,
            "build_s": self.build_s,
            "simulate_s": self.simulate_s,
            "total_s": self.total_s,
        }
        return {f"{prefix}{key}": value for key, value in figures.items()}


def run_brian2(
    backend: str,
    params: NetworkParams,
    weights: NetworkWeights,
    trials: TrialSet,
    openmp_threads: int,
    progress: bool,
    processes: int = 1,
) -> Brian2Timing:
    """``trials`` on ``backend`` in one build, split over ``processes`` (:mod:`biosim.split_run`)."""
    import brian2 as b2

    from biosim.backends import run_trials

    previous = b2.prefs.devices.cpp_standalone.openmp_threads
    b2.prefs.devices.cpp_standalone.openmp_threads = openmp_threads
    try:
        result = run_trials(params, weights, trials, backend=backend, progress=progress, processes=processes)
    finally:
        b2.prefs.devices.cpp_standalone.openmp_threads = previous
    return Brian2Timing(
        result=result,
        n_trials=trials.n_trials,
        build_s=result.timings_s["build"],
        simulate_s=result.timings_s["simulate"],
    )


@dataclass(frozen=True)
class FusedEvaluation:
    """The fused engine's forward pass (no gradient) on a set of trials: seconds and spike counts."""

    seconds: float
    counts_e: np.ndarray
    counts_i: np.ndarray


def fused_evaluation(
    params: NetworkParams, weights: NetworkWeights, trials: TrialSet, dtype: torch.dtype, device: str
) -> FusedEvaluation:
    """The fused engine's forward pass on ``trials``, 64 at a time; only the passes are timed."""
    from bridge.dynamics import make_constants
    from bridge.fast_engine import run_network_fused
    from bridge.simulate import torch_weights

    constants, w = make_constants(params), torch_weights(weights, dtype=dtype, device=device)
    counts_e, counts_i, elapsed = [], [], 0.0
    for start in range(0, trials.n_trials, 64):
        index = np.arange(start, min(start + 64, trials.n_trials))
        x = torch.from_numpy(trials.dense(index)).to(device)
        v_e = torch.as_tensor(trials.v_init_e_mv[index], dtype=dtype, device=device)
        v_i = torch.as_tensor(trials.v_init_i_mv[index], dtype=dtype, device=device)
        with torch.no_grad():
            begin = time.perf_counter()
            output = run_network_fused(x, v_e, v_i, w, constants, record_population=True)
            synchronize(device)
            elapsed += time.perf_counter() - begin
        counts_e.append(output.spike_counts_e.cpu().numpy())
        counts_i.append(output.spike_counts_i.cpu().numpy())
    return FusedEvaluation(seconds=elapsed, counts_e=np.concatenate(counts_e), counts_i=np.concatenate(counts_i))


def mismatching_trials(result: SimulationResult, evaluation: FusedEvaluation) -> list[int]:
    """Trials whose Brian2 spike counts differ from the fused engine's in either population, per neuron."""
    differs = (result.spikes_e.counts() != evaluation.counts_e).any(axis=1) | (
        result.spikes_i.counts() != evaluation.counts_i
    ).any(axis=1)
    return np.flatnonzero(differs).tolist()


def agreement_record(timing: Brian2Timing, evaluation: FusedEvaluation) -> dict[str, Any]:
    """Brian2's spike counts against the fused engine's float64 forward pass, and that pass's speed."""
    mismatching = mismatching_trials(timing.result, evaluation)
    return {
        "brian2_spike_counts_match_fused_float64": len(mismatching) == 0,
        "brian2_trials_mismatching_fused_float64": mismatching,
        "fused_eval_float64_trials_per_s": timing.n_trials / evaluation.seconds,
    }
