"""Many networks of one shape as one batched simulation: a leading run axis on weights and state.

:func:`run_networks` is :func:`bridge.eager.run_network` for ``R`` runs at
once: the effective weights are stacked, ``(R, pre, post)``, the state and
the inputs carry the run axis first, ``(R, batch, n)``, and every synaptic
product is one batched product, ``torch.matmul(spikes (R, B, pre), W (R, pre,
post))``. The step order is :func:`bridge.dynamics.transition`, called with a
batched synapse callback; the elementwise update rule broadcasts over the run
axis as it does over the batch. Runs never mix: each run's slice of every
tensor depends on that run's weights and inputs only, forward and backward.

Memory: autograd through thousands of eager steps holds every step's
intermediates. The time loop is therefore cut into chunks of
``chunk_steps`` steps, each run under :func:`torch.utils.checkpoint.checkpoint`:
the forward pass keeps only the state at each chunk's start, and the
backward pass recomputes one chunk at a time (the same operations on the
same inputs, so the same spikes) and differentiates through it. This is the
structure of the fused engine (checkpoints + recompute, :mod:`bridge.fast_engine`),
with autograd inside a chunk in place of the hand-derived adjoint.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .dynamics import Constants, NetworkState, PopulationConstants, SpikeFunction, Weights, fire, heaviside, transition
from .eager import NetworkOutput, _ScaleGradient

__all__ = ["CHUNK_STEPS", "run_networks", "run_output", "stack_weights"]

CHUNK_STEPS = 100
"""Steps per recomputed chunk: the backward pass holds one chunk's intermediates (and the forward one state per
chunk), so memory grows with ``chunk_steps + n_steps / chunk_steps`` rather than with ``n_steps``."""

_STATE_FIELDS = ("v_e", "ge_e", "gi_e", "ready_e", "v_i", "ge_i", "gi_i", "ready_i", "u", "score_sum")


def stack_weights(runs: list[Weights]) -> dict[str, torch.Tensor]:
    """The runs' effective weights stacked on a leading run axis, ``{name: (R, pre, post)}``."""
    names = [name for name, _ in runs[0].items()]
    for weights in runs[1:]:
        if [name for name, _ in weights.items()] != names:
            raise ValueError("stack_weights: every run must have the same matrices (recurrent blocks included)")
    return {name: torch.stack([getattr(weights, name) for weights in runs]) for name in names}


def _steps(
    start: int,
    x: torch.Tensor,
    weights: dict[str, torch.Tensor],
    constants: Constants,
    spike_fn: SpikeFunction,
    membrane_grad_scale: float,
    record_population: bool,
    record_readout: bool,
    *tensors: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Steps ``start .. start + x.shape[2] - 1`` from the state and counts in ``tensors``.

    Returns the state fields, the two spike counts, then the per-step records asked for (stacked on dim 2).
    """
    state = NetworkState(*tensors[: len(_STATE_FIELDS)], step=start)
    counts_e, counts_i = tensors[len(_STATE_FIELDS) :]
    dtype = state.v_e.dtype

    def threshold(population: str, v1: torch.Tensor, integrating: torch.Tensor, k: PopulationConstants):
        spikes = fire(v1, integrating, k, spike_fn)
        return spikes, spikes > 0

    def synapses(name: str, spikes: torch.Tensor) -> torch.Tensor | None:
        weight = weights.get(name)
        return None if weight is None else torch.matmul(spikes, weight)

    population_e, population_i, trace = [], [], []
    for t in range(x.shape[2]):
        if membrane_grad_scale != 1.0 and state.step > 0:
            state = state._replace(
                v_e=_ScaleGradient.apply(state.v_e, membrane_grad_scale),
                v_i=_ScaleGradient.apply(state.v_i, membrane_grad_scale),
            )
        drive = torch.matmul(x[:, :, t].to(dtype), weights["w_in"])
        step = transition(state, constants, drive, threshold, synapses)
        state = step.state
        counts_e = counts_e + step.spikes_e
        counts_i = counts_i + step.spikes_i
        if record_population:
            population_e.append(step.spikes_e.sum(dim=-1))
            population_i.append(step.spikes_i.detach().sum(dim=-1))
        if record_readout:
            trace.append(state.u)
    records = []
    if record_population:
        records += [torch.stack(population_e, dim=2), torch.stack(population_i, dim=2)]
    if record_readout:
        records.append(torch.stack(trace, dim=2))
    return (*(getattr(state, name) for name in _STATE_FIELDS), counts_e, counts_i, *records)


def run_networks(
    x: torch.Tensor,
    v_init_e: torch.Tensor,
    v_init_i: torch.Tensor,
    weights: dict[str, torch.Tensor],
    constants: Constants,
    spike_fn: SpikeFunction = heaviside,
    *,
    record_population: bool = False,
    record_readout: bool = False,
    membrane_grad_scale: float = 1.0,
    chunk_steps: int = CHUNK_STEPS,
) -> NetworkOutput:
    """Run ``R`` networks of one shape over their own trials at once.

    Parameters
    ----------
    x : Tensor (R, batch, n_steps, n_input) of bool
        Each run's input rasters.
    v_init_e, v_init_i : Tensor (R, batch, n_e), (R, batch, n_i)
        Initial membrane potentials (mV) in the simulation's dtype.
    weights : dict of str to Tensor (R, pre, post)
        Effective weights by name (:func:`stack_weights`).
    constants, spike_fn, record_population, record_readout, membrane_grad_scale
        As in :func:`bridge.eager.run_network` (shared by the runs).
    chunk_steps : int
        Steps per checkpointed chunk (used when gradients are recorded).

    Returns
    -------
    NetworkOutput
        Every tensor with the run axis first (:func:`run_output` takes one run's).
    """
    if chunk_steps < 1:
        raise ValueError(f"chunk_steps: expected a positive number of steps, got {chunk_steps!r}")
    runs, batch, n_steps = x.shape[:3]
    n_classes = weights["w_out"].shape[-1]
    zeros_e, zeros_i = torch.zeros_like(v_init_e), torch.zeros_like(v_init_i)
    readout = v_init_e.new_zeros(runs, batch, n_classes)
    tensors: tuple[torch.Tensor, ...] = (
        v_init_e,
        zeros_e,
        zeros_e,
        torch.zeros_like(v_init_e, dtype=torch.int32),
        v_init_i,
        zeros_i,
        zeros_i,
        torch.zeros_like(v_init_i, dtype=torch.int32),
        readout,
        readout,
        zeros_e,
        zeros_i,
    )
    recording = torch.is_grad_enabled() and any(w.requires_grad for w in weights.values())
    options = (constants, spike_fn, membrane_grad_scale, record_population, record_readout)
    records: list[tuple[torch.Tensor, ...]] = []
    n_carried = len(tensors)
    for start in range(0, n_steps, chunk_steps):
        chunk = x[:, :, start : start + chunk_steps]
        if recording:
            out = checkpoint(_steps, start, chunk, weights, *options, *tensors, use_reentrant=False)
        else:
            out = _steps(start, chunk, weights, *options, *tensors)
        tensors, rest = out[:n_carried], out[n_carried:]
        records.append(rest)
    state = NetworkState(*tensors[: len(_STATE_FIELDS)], step=n_steps)
    per_step = [torch.cat(parts, dim=2) for parts in zip(*records, strict=True)] if records[0] else []
    population_e = population_i = trace = None
    if record_population:
        population_e, population_i = per_step[0], per_step[1]
    if record_readout:
        trace = per_step[-1]
    return NetworkOutput(
        scores=state.score_sum / n_steps,
        spike_counts_e=tensors[-2],
        spike_counts_i=tensors[-1],
        final_state=state,
        population_e=population_e,
        population_i=population_i,
        readout_trace=trace,
    )


def run_output(output: NetworkOutput, run: int) -> NetworkOutput:
    """Run ``run``'s slice of a batched :class:`NetworkOutput`: what that run alone returns."""
    state = output.final_state
    fields = {name: getattr(state, name)[run] for name in _STATE_FIELDS}
    return NetworkOutput(
        scores=output.scores[run],
        spike_counts_e=output.spike_counts_e[run],
        spike_counts_i=output.spike_counts_i[run],
        final_state=NetworkState(**fields, step=state.step),
        population_e=None if output.population_e is None else output.population_e[run],
        population_i=None if output.population_i is None else output.population_i[run],
        readout_trace=None if output.readout_trace is None else output.readout_trace[run],
    )
