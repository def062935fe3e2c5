"""Run the PyTorch mirror on a :class:`~biosim.inputs.TrialSet` (no gradients)."""

from __future__ import annotations

import time

import numpy as np
import torch

from biosim.inputs import TrialSet
from biosim.params import NetworkParams
from biosim.results import SimulationResult, SpikeTrains
from biosim.weights import NetworkWeights

from .dynamics import Weights, initial_state, make_constants, step

__all__ = ["torch_weights", "run_mirror"]


def torch_weights(weights: NetworkWeights, *, dtype: torch.dtype, device: torch.device | str = "cpu") -> Weights:
    """Effective weights as tensors (clamped under Dale's law, input masked)."""
    effective = weights.effective()
    return Weights(*(torch.as_tensor(getattr(effective, n), dtype=dtype, device=device) for n in Weights._fields))


@torch.no_grad()
def run_mirror(
    params: NetworkParams,
    weights: NetworkWeights,
    trials: TrialSet,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    record_v: dict[str, np.ndarray] | None = None,
) -> SimulationResult:
    """Simulate ``trials`` with the mirror; same outputs as :func:`biosim.backends.run_trials`."""
    weights.check_shapes(params)
    c, n_steps = params.connectivity, params.simulation.n_steps
    constants = make_constants(params)
    w = torch_weights(weights, dtype=dtype, device=device)
    spikes = {"e": [], "i": []}
    scores, traces = [], {f"v_{k}": [] for k in (record_v or {})}
    t0 = time.perf_counter()
    for start in range(0, trials.n_trials, batch_size):
        index = np.arange(start, min(start + batch_size, trials.n_trials))
        x = torch.as_tensor(trials.dense(index), device=device).to(dtype)
        state = initial_state(
            torch.as_tensor(trials.v_init_e_mv[index], dtype=dtype, device=device),
            torch.as_tensor(trials.v_init_i_mv[index], dtype=dtype, device=device),
            c.n_classes,
        )
        batch_spikes = {"e": [], "i": []}
        batch_traces = {key: [] for key in traces}
        for t in range(n_steps):
            s_e, s_i, state = step(x[:, t], state, constants, w)
            batch_spikes["e"].append(s_e.to(torch.bool))
            batch_spikes["i"].append(s_i.to(torch.bool))
            for population, indices in (record_v or {}).items():
                # v after the state update, before reset (as Brian2 records it)
                v = state.v_e if population == "e" else state.v_i
                fired = (s_e if population == "e" else s_i)[:, indices] > 0
                threshold = constants.e.v_threshold if population == "e" else constants.i.v_threshold
                batch_traces[f"v_{population}"].append(v[:, indices])  # reset values replaced below
                del fired, threshold
        for population in ("e", "i"):
            raster = torch.stack(batch_spikes[population], dim=1).cpu().numpy()  # (batch, step, neuron)
            trial, step_index, neuron = np.nonzero(raster)
            spikes[population].append((trial + start, step_index, neuron))
        scores.append((state.score_sum / n_steps).cpu().numpy())
    elapsed = time.perf_counter() - t0

    def trains(population: str, n: int) -> SpikeTrains:
        parts = spikes[population]
        return SpikeTrains.from_arrays(
            *(np.concatenate([p[k] for p in parts]) for k in range(3)), n_neurons=n, n_trials=trials.n_trials, n_steps=n_steps
        )

    return SimulationResult(
        spikes_e=trains("e", c.n_e),
        spikes_i=trains("i", c.n_i),
        scores=np.concatenate(scores),
        dt_ms=params.simulation.dt_ms,
        simulator=f"mirror:{torch.device(device).type}:{str(dtype).replace('torch.', '')}",
        timings_s={"simulate": elapsed},
    )
