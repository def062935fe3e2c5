"""Run the PyTorch mirror on a :class:`~biosim.inputs.TrialSet` (no gradients)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch

from biosim.inputs import TrialSet
from biosim.params import NetworkParams
from biosim.results import SimulationResult, SpikeTrains
from biosim.weights import NetworkWeights

from .dynamics import Weights, advance, initial_state, make_constants
from .torch_settings import flushed_denormals, torch_threads

__all__ = ["MIRROR_ENGINES", "torch_weights", "input_drive", "run_mirror"]


def torch_weights(weights: NetworkWeights, *, dtype: torch.dtype, device: torch.device | str = "cpu") -> Weights:
    """Effective weights as tensors (clamped under Dale's law, input masked), recurrent blocks included."""
    matrices = weights.effective().matrices()
    return Weights(**{name: torch.as_tensor(value, dtype=dtype, device=device) for name, value in matrices.items()})


def input_drive(
    trials: TrialSet, index: np.ndarray, w_in: torch.Tensor, chunk_steps: int = 200
) -> Iterator[tuple[int, torch.Tensor]]:
    """Input conductance increments ``x_t @ w_in`` of trials ``index``, in chunks of time.

    Yields ``(first_step, drive)`` with ``drive`` of shape (batch, steps, n_e).
    Only the rows of ``w_in`` of inputs that spiked are gathered, so the cost
    scales with the number of input spikes, not with ``n_input``.
    """
    sub = trials.subset(index)
    n_steps, batch = sub.n_steps, len(index)
    for first in range(0, n_steps, chunk_steps):
        last = min(first + chunk_steps, n_steps)
        keep = (sub.input_step >= first) & (sub.input_step < last)
        rows = torch.as_tensor(
            sub.input_trial[keep] * (last - first) + (sub.input_step[keep] - first), device=w_in.device
        )
        drive = w_in.new_zeros(batch * (last - first), w_in.shape[1])
        drive.index_add_(0, rows.long(), w_in[torch.as_tensor(sub.input_neuron[keep], device=w_in.device).long()])
        yield first, drive.view(batch, last - first, -1)


MIRROR_ENGINES = ("fused", "eager")
"""Time loops :func:`run_mirror` can use; both give the same spikes, bit for bit."""


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
    engine: str | None = None,
    record_readout: bool = False,
) -> SimulationResult:
    """Simulate ``trials`` with the mirror; same outputs as :func:`biosim.backends.run_trials`.

    Parameters
    ----------
    engine : {"fused", "eager"}, optional
        ``"fused"``: the forward pass of :mod:`bridge.fast_engine` (about
        100x faster on a CPU). ``"eager"``: :func:`bridge.dynamics.advance`
        called once per step. Their spikes are identical (tested). Default:
        ``"fused"``, or ``"eager"`` when ``record_v`` is given (only the
        step loop exposes the membrane potentials).
    record_v : dict, optional
        ``{"e": indices, "i": indices}``: record the membrane potential at
        the end of each step (after the reset), as the Brian2 network's
        ``StateMonitor(when="end")`` does. Needs ``engine="eager"``.
    record_readout : bool
        Also return the readout potentials after each step as
        ``traces["readout"]`` (n_trials, n_steps, n_classes), as
        :func:`biosim.backends.run_trials` does (digit streams, :mod:`biosim.streams`).

    Raises
    ------
    ValueError
        An unknown ``engine``, or ``record_v`` with ``engine="fused"``.
    """
    engine = engine or ("eager" if record_v else "fused")
    if engine not in MIRROR_ENGINES:
        raise ValueError(f"unknown mirror engine {engine!r}; valid engines: {', '.join(MIRROR_ENGINES)}")
    if record_v and engine != "eager":
        raise ValueError("record_v needs engine='eager': the fused engine does not expose membrane potentials")
    weights.check_shapes(params)
    if engine == "fused":
        return _run_fused(
            params, weights, trials, dtype=dtype, device=device, batch_size=batch_size, record_readout=record_readout
        )
    # Per-step tensors here are tiny: a fork/join per operation costs more than it saves, and on a loaded
    # machine 2-thread regions wait for descheduled threads (measured: 32 s instead of 0.9 s for 2 trials).
    # Decaying conductances reach denormal numbers, which are ~20x slower; flushing them to zero cannot
    # move a spike (Brian2's compiled code does it too). The fused engine flushes on its own.
    with torch_threads(1), flushed_denormals():
        return _run_mirror(
            params,
            weights,
            trials,
            dtype=dtype,
            device=device,
            batch_size=batch_size,
            record_v=record_v,
            record_readout=record_readout,
        )


def _result(params, trials, spikes, scores, elapsed_s, dtype, device, *, traces) -> SimulationResult:
    """A :class:`SimulationResult` from per-batch ``(trial, step, neuron)`` spike parts and scores."""
    c, n_steps = params.connectivity, params.simulation.n_steps

    def trains(population: str, n_neurons: int) -> SpikeTrains:
        parts = spikes[population]
        arrays = (np.concatenate([p[k] for p in parts]) for k in range(3))
        return SpikeTrains.from_arrays(*arrays, n_neurons=n_neurons, n_trials=trials.n_trials, n_steps=n_steps)

    return SimulationResult(
        spikes_e=trains("e", c.n_e),
        spikes_i=trains("i", c.n_i),
        scores=np.concatenate(scores),
        dt_ms=params.simulation.dt_ms,
        simulator=f"mirror:{torch.device(device).type}:{str(dtype).replace('torch.', '')}",
        timings_s={"simulate": elapsed_s},
        traces=traces,
    )


def _run_fused(params, weights, trials, *, dtype, device, batch_size, record_readout=False) -> SimulationResult:
    from .fast_engine import FusedEngine

    constants = make_constants(params)
    w = torch_weights(weights, dtype=dtype, device=device)
    engine = FusedEngine()
    spikes: dict[str, list] = {"e": [], "i": []}
    scores, readout = [], []
    t0 = time.perf_counter()
    for start in range(0, trials.n_trials, batch_size):
        index = np.arange(start, min(start + batch_size, trials.n_trials))
        x = torch.from_numpy(trials.dense(index)).to(device)
        v_init_e = torch.as_tensor(trials.v_init_e_mv[index], dtype=dtype, device=device)
        v_init_i = torch.as_tensor(trials.v_init_i_mv[index], dtype=dtype, device=device)
        outputs = engine.spike_rasters(x, v_init_e, v_init_i, w, constants, readout_trace=record_readout)
        batch_scores, raster_e, raster_i = outputs[:3]
        if record_readout:
            readout.append(outputs[3].cpu().numpy())
        for population, raster in (("e", raster_e), ("i", raster_i)):
            step_index, trial, neuron = np.nonzero(raster.cpu().numpy())  # (step, batch, neuron)
            spikes[population].append((trial + start, step_index, neuron))
        scores.append(batch_scores.cpu().numpy())
    traces = {"readout": np.concatenate(readout)} if record_readout else {}
    return _result(params, trials, spikes, scores, time.perf_counter() - t0, dtype, device, traces=traces)


def _run_mirror(
    params, weights, trials, *, dtype, device, batch_size, record_v, record_readout=False
) -> SimulationResult:
    c, n_steps = params.connectivity, params.simulation.n_steps
    constants = make_constants(params)
    w = torch_weights(weights, dtype=dtype, device=device)
    record_v = {k: torch.as_tensor(np.asarray(v), device=device).long() for k, v in (record_v or {}).items()}
    spikes: dict[str, list] = {"e": [], "i": []}
    scores, traces = [], {f"v_{k}": [] for k in record_v}
    if record_readout:
        traces["readout"] = []
    t0 = time.perf_counter()
    for start in range(0, trials.n_trials, batch_size):
        index = np.arange(start, min(start + batch_size, trials.n_trials))
        state = initial_state(
            torch.as_tensor(trials.v_init_e_mv[index], dtype=dtype, device=device),
            torch.as_tensor(trials.v_init_i_mv[index], dtype=dtype, device=device),
            c.n_classes,
        )
        batch_spikes: dict[str, list] = {"e": [], "i": []}
        batch_traces: dict[str, list] = {key: [] for key in traces}
        for _, drive in input_drive(trials, index, w.w_in):
            for t in range(drive.shape[1]):
                s_e, s_i, state = advance(drive[:, t], state, constants, w)
                batch_spikes["e"].append(s_e.to(torch.bool))
                batch_spikes["i"].append(s_i.to(torch.bool))
                for population, indices in record_v.items():
                    v = state.v_e if population == "e" else state.v_i
                    batch_traces[f"v_{population}"].append(v[:, indices].clone())
                if record_readout:
                    batch_traces["readout"].append(state.u.clone())
        for population in ("e", "i"):
            raster = torch.stack(batch_spikes[population], dim=1).cpu().numpy()  # (batch, step, neuron)
            trial, step_index, neuron = np.nonzero(raster)
            spikes[population].append((trial + start, step_index, neuron))
        for key, values in batch_traces.items():
            traces[key].append(torch.stack(values, dim=1).cpu().numpy())
        scores.append((state.score_sum / n_steps).cpu().numpy())
    elapsed = time.perf_counter() - t0
    traces = {key: np.concatenate(values) for key, values in traces.items()}
    return _result(params, trials, spikes, scores, elapsed, dtype, device, traces=traces)
