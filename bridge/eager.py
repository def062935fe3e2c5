"""The "eager" engine: whole trials by calling :func:`bridge.dynamics.step` once per step.

Autograd records every operation, so any loss on what it returns has the exact
gradient of the step function (or the surrogate's). It is the reference that
the fused engine (:mod:`bridge.fast_engine`) is tested against, and defines
:class:`NetworkOutput`, what every engine returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .dynamics import Constants, NetworkState, SpikeFunction, Weights, heaviside, initial_state, step
from .feedback import check_feedback

__all__ = ["Engine", "NetworkOutput", "run_network"]


class NetworkOutput(NamedTuple):
    """What one engine run over a batch of trials returns.

    Attributes
    ----------
    scores : Tensor (batch, n_classes)
        "mem-mean" readout: the readout potentials averaged over all steps.
    spike_counts_e : Tensor (batch, n_e)
        Spikes of each E neuron over the trial (differentiable through the surrogate).
    spike_counts_i : Tensor (batch, n_i)
        Spikes of each I neuron over the trial.
    final_state : NetworkState
        State after the last step; non-finite potentials here reveal a
        diverged simulation even when the scores are finite (a NaN membrane
        never crosses threshold, so it cannot reach the readout).
    population_e : Tensor (batch, n_steps) or None
        E spikes per step, when requested; for rates and spectra, and
        differentiable through the surrogate (a loss on the population
        rhythm, :mod:`bridge.regularisers`).
    population_i : Tensor (batch, n_steps) or None
        I spikes per step (detached), when requested.
    readout_trace : Tensor (batch, n_steps, n_classes) or None
        The readout potentials after each step, when requested
        (differentiable; ``scores`` is their mean over all steps). Readouts
        over windows of a trial are means over slices of it.
    """

    scores: torch.Tensor
    spike_counts_e: torch.Tensor
    spike_counts_i: torch.Tensor
    final_state: NetworkState
    population_e: torch.Tensor | None = None
    population_i: torch.Tensor | None = None
    readout_trace: torch.Tensor | None = None


Engine = Callable[..., NetworkOutput]


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient times ``factor`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.factor, None


def run_network(
    x: torch.Tensor,
    v_init_e: torch.Tensor,
    v_init_i: torch.Tensor,
    weights: Weights,
    constants: Constants,
    spike_fn: SpikeFunction = heaviside,
    *,
    record_population: bool = False,
    record_readout: bool = False,
    membrane_grad_scale: float = 1.0,
    feedback: torch.Tensor | None = None,
) -> NetworkOutput:
    """Run whole trials by calling :func:`bridge.dynamics.step` once per time step ("eager" engine).

    Parameters
    ----------
    x : Tensor (batch, n_steps, n_input) of bool
        Input spike raster (``TrialSet.dense``); converted to the weights'
        dtype one step at a time, so the raster stays one byte per entry.
    v_init_e : Tensor (batch, n_e)
        Initial E membrane potentials (mV), in the dtype of the simulation.
    v_init_i : Tensor (batch, n_i)
        Initial I membrane potentials (mV).
    weights : Weights
        Effective weights (uS; readout dimensionless).
    constants : Constants
        From :func:`bridge.dynamics.make_constants`.
    spike_fn : callable
        Heaviside forward; a :class:`bridge.surrogates.Surrogate` to train.
    record_population : bool
        Also return the E and I spike counts per step (E differentiable, I detached).
    record_readout : bool
        Also return the readout potentials after each step.
    membrane_grad_scale : float
        Factor on the gradient of every membrane potential a step hands to
        the next (E and I; 1: exact BPTT). Below 1 it damps the gradient's
        path along the membranes through time, as the reference study's
        trainer did ("v-grad dampen 1000" is 1e-3); the forward pass is
        unchanged. See docs/training.md, "Membrane-gradient damping".
    feedback : Tensor (n_e, n_classes), optional
        Fixed feedback matrix (:mod:`bridge.feedback`): the readout's error
        reaches the E spikes through it in place of ``w_out``; the gradient
        of ``w_out`` and the forward pass are unchanged. None: exact BPTT.

    Returns
    -------
    NetworkOutput
        Scores are ``score_sum / n_steps``, as in :func:`bridge.simulate.run_mirror`.
    """
    n_steps = x.shape[1]
    dtype = v_init_e.dtype
    check_feedback(feedback, weights.w_out)
    state = initial_state(v_init_e, v_init_i, weights.w_out.shape[1])
    counts_e = torch.zeros_like(v_init_e)
    counts_i = torch.zeros_like(v_init_i)
    population_e: list[torch.Tensor] = []
    population_i: list[torch.Tensor] = []
    trace: list[torch.Tensor] = []
    damped = membrane_grad_scale != 1.0
    for t in range(n_steps):
        if damped and t > 0:
            state = state._replace(
                v_e=_ScaleGradient.apply(state.v_e, membrane_grad_scale),
                v_i=_ScaleGradient.apply(state.v_i, membrane_grad_scale),
            )
        spikes_e, spikes_i, state = step(x[:, t].to(dtype), state, constants, weights, spike_fn, feedback)
        counts_e = counts_e + spikes_e
        counts_i = counts_i + spikes_i
        if record_population:
            population_e.append(spikes_e.sum(dim=1))
            population_i.append(spikes_i.detach().sum(dim=1))
        if record_readout:
            trace.append(state.u)
    return NetworkOutput(
        scores=state.score_sum / n_steps,
        spike_counts_e=counts_e,
        spike_counts_i=counts_i,
        final_state=state,
        population_e=torch.stack(population_e, dim=1) if record_population else None,
        population_i=torch.stack(population_i, dim=1) if record_population else None,
        readout_trace=torch.stack(trace, dim=1) if record_readout else None,
    )
