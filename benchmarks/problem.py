"""The benchmark problem: full-size network, medium-tier digits, one forward + backward (BPTT) batch.

Every measurement of :mod:`benchmarks.bench` times, or compares, :func:`bptt` on a
:class:`Problem` built by :func:`build_problem`; ``scripts/brian2_timing.py`` uses
:func:`problem_params` for the same trials.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from biosim.data import load_split
from biosim.inputs import make_trials
from biosim.params import NetworkParams
from biosim.weights import init_weights

__all__ = ["ENGINES", "Problem", "bptt", "build_problem", "problem_params", "synchronize", "timed"]

ENGINES = ("eager", "fused")
"""The two training engines the benchmark compares, in the order it times them."""


@dataclass
class Problem:
    """Inputs and weights of one benchmark problem."""

    params: NetworkParams
    x: torch.Tensor
    v_init_e: torch.Tensor
    v_init_i: torch.Tensor
    labels: torch.Tensor
    weights: dict[str, torch.Tensor]


def problem_params(n_steps: int) -> NetworkParams:
    """The default network with trials of ``n_steps`` steps (the transient at most a quarter of the trial)."""
    base = NetworkParams()
    trial_ms = n_steps * base.simulation.dt_ms
    return base.replace(
        simulation__trial_ms=trial_ms, simulation__transient_ms=min(base.simulation.transient_ms, trial_ms / 4)
    )


def build_problem(n_steps: int, batch_size: int, dtype: torch.dtype, device: str, seed: int) -> Problem:
    """The first ``batch_size`` medium-tier training digits as input spikes, and initial weights of ``seed``."""
    params = problem_params(n_steps)
    effective = init_weights(params, seed=seed).effective()
    weights = {
        name: torch.as_tensor(getattr(effective, name), dtype=dtype, device=device)
        for name in ("w_in", "w_ei", "w_ie", "w_out")
    }
    split = load_split("medium")
    trials = make_trials(split.train.images[:batch_size], split.train.labels[:batch_size], params, seed=seed)
    return Problem(
        params=params,
        x=torch.from_numpy(trials.dense(slice(None))).to(device),
        v_init_e=torch.as_tensor(trials.v_init_e_mv, dtype=dtype, device=device),
        v_init_i=torch.as_tensor(trials.v_init_i_mv, dtype=dtype, device=device),
        labels=torch.as_tensor(trials.labels, device=device),
        weights=weights,
    )


def bptt(engine: str, problem: Problem) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward + backward of the cross-entropy on the scores; returns (spike counts E, gradients)."""
    from bridge.dynamics import Weights, make_constants
    from bridge.eager import run_network
    from bridge.fast_engine import run_network_fused
    from bridge.surrogates import get_surrogate

    engines = {"eager": run_network, "fused": run_network_fused}
    if engine not in engines:
        raise ValueError(f"unknown engine {engine!r}; valid: {', '.join(engines)}")
    weights = {name: value.detach().clone().requires_grad_(True) for name, value in problem.weights.items()}
    output = engines[engine](
        problem.x,
        problem.v_init_e,
        problem.v_init_i,
        Weights(**weights),
        make_constants(problem.params),
        get_surrogate(),
    )
    torch.nn.functional.cross_entropy(output.scores, problem.labels).backward()
    return output.spike_counts_e.detach(), {name: value.grad for name, value in weights.items()}


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; on CPU nothing to wait for)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(function: Callable[[], Any], device: str) -> float:
    """Wall seconds of ``function()``, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start
