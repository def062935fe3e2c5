"""The PING network's dynamics as a pure PyTorch step function.

``step(input_spikes, state, constants, weights) -> (spikes_e, spikes_i, state)``
reproduces one time step of the Brian2 network (:mod:`biosim.equations`) in
Brian2's schedule order:

1. state update (exponential Euler, conductances frozen over the step;
   ``v`` held while refractory, refractoriness counted in whole steps);
2. threshold ``v > v_threshold`` outside the refractory period;
3. synaptic propagation with zero delay (input -> E, E -> I, I -> E,
   E -> readout); the membrane sees it from the next step on;
4. reset of the neurons that spiked; the readout accumulator adds ``u``.

The state is an immutable :class:`NetworkState`; loops call :func:`step`,
never a copy of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from biosim.params import MembraneParams, NetworkParams

__all__ = [
    "NetworkState",
    "PopulationConstants",
    "Constants",
    "Weights",
    "make_constants",
    "initial_state",
    "step",
    "advance",
]

SpikeFunction = Callable[[torch.Tensor], torch.Tensor]


class NetworkState(NamedTuple):
    """Network state for a batch of trials (units: mV, uS)."""

    v_e: torch.Tensor
    ge_e: torch.Tensor
    gi_e: torch.Tensor
    refractory_e: torch.Tensor
    """Steps of refractoriness left (int); the neuron integrates when it reaches 0."""
    v_i: torch.Tensor
    ge_i: torch.Tensor
    gi_i: torch.Tensor
    refractory_i: torch.Tensor
    u: torch.Tensor
    """Readout potentials, (batch, n_classes)."""
    score_sum: torch.Tensor
    """Sum over past steps of ``u`` at the end of each step."""


class Weights(NamedTuple):
    """Effective weights (uS; ``w_out`` dimensionless), layout (pre, post)."""

    w_in: torch.Tensor
    w_ei: torch.Tensor
    w_ie: torch.Tensor
    w_out: torch.Tensor


@dataclass(frozen=True)
class PopulationConstants:
    """Per-step coefficients of one population, in the order Brian2 evaluates them."""

    e_exc_over_c: float
    e_inh_over_c: float
    leak_drive_over_c: float
    minus_g_leak_over_c: float
    one_over_c: float
    v_threshold: float
    v_reset: float
    refractory_steps: int


@dataclass(frozen=True)
class Constants:
    dt: float
    e: PopulationConstants
    i: PopulationConstants
    decay_ampa: float
    decay_gaba: float
    decay_readout: float


def _population(membrane: MembraneParams, params: NetworkParams, refractory_steps: int) -> PopulationConstants:
    syn = params.synapse
    return PopulationConstants(
        e_exc_over_c=syn.e_exc_mv / membrane.c_m_nf,
        e_inh_over_c=syn.e_inh_mv / membrane.c_m_nf,
        leak_drive_over_c=(membrane.e_leak_mv * membrane.g_leak_us) / membrane.c_m_nf,
        minus_g_leak_over_c=-membrane.g_leak_us / membrane.c_m_nf,
        one_over_c=1.0 / membrane.c_m_nf,
        v_threshold=membrane.v_threshold_mv,
        v_reset=membrane.v_reset_mv,
        refractory_steps=refractory_steps,
    )


def make_constants(params: NetworkParams) -> Constants:
    """Per-step constants from the shared parameter object (mV, ms, uS, nF)."""
    dt = params.simulation.dt_ms
    return Constants(
        dt=dt,
        e=_population(params.membrane_e, params, params.refractory_steps("e")),
        i=_population(params.membrane_i, params, params.refractory_steps("i")),
        decay_ampa=math.exp(-dt / params.synapse.tau_ampa_ms),
        decay_gaba=math.exp(-dt / params.synapse.tau_gaba_ms),
        decay_readout=math.exp(-dt / params.readout.tau_readout_ms),
    )


def initial_state(v_init_e: torch.Tensor, v_init_i: torch.Tensor, n_classes: int) -> NetworkState:
    """State at a trial's start: given potentials (mV), no conductance, not refractory."""
    batch = v_init_e.shape[0]
    zeros_e, zeros_i = torch.zeros_like(v_init_e), torch.zeros_like(v_init_i)
    readout = v_init_e.new_zeros(batch, n_classes)
    return NetworkState(
        v_e=v_init_e,
        ge_e=zeros_e,
        gi_e=zeros_e,
        refractory_e=torch.zeros_like(v_init_e, dtype=torch.int32),
        v_i=v_init_i,
        ge_i=zeros_i,
        gi_i=zeros_i,
        refractory_i=torch.zeros_like(v_init_i, dtype=torch.int32),
        u=readout,
        score_sum=readout,
    )


def heaviside(x: torch.Tensor) -> torch.Tensor:
    return (x > 0).to(x.dtype)


def _membrane_update(v, ge, gi, refractory, k: PopulationConstants, dt: float):
    """Exponential Euler for ``v``, written as Brian2 generates it."""
    refractory = torch.clamp(refractory - 1, min=0)
    integrating = refractory == 0
    total = k.minus_g_leak_over_c - (k.one_over_c * ge + k.one_over_c * gi)
    ba = (k.leak_drive_over_c + (k.e_exc_over_c * ge + k.e_inh_over_c * gi)) / total
    v_new = -ba + (ba + v) * torch.exp(dt * total)
    return torch.where(integrating, v_new, v), refractory, integrating


def _fire(v, integrating, k: PopulationConstants, spike_fn: SpikeFunction):
    return spike_fn(v - k.v_threshold) * integrating.to(v.dtype)


def _reset(v, refractory, spikes, k: PopulationConstants):
    fired = spikes > 0
    v = torch.where(fired, torch.full_like(v, k.v_reset), v)
    refractory = torch.where(fired, torch.full_like(refractory, k.refractory_steps), refractory)
    return v, refractory


def step(
    input_spikes: torch.Tensor,
    state: NetworkState,
    constants: Constants,
    weights: Weights,
    spike_fn: SpikeFunction = heaviside,
) -> tuple[torch.Tensor, torch.Tensor, NetworkState]:
    """Advance the network by one time step.

    Parameters
    ----------
    input_spikes : Tensor (batch, n_input)
        Input spikes of this step (0/1).
    state : NetworkState
    constants : Constants
    weights : Weights
        Effective weights.
    spike_fn : callable
        Maps ``v - v_threshold`` to spikes; the Heaviside step in the forward
        pass, with a surrogate derivative when training.

    Returns
    -------
    spikes_e, spikes_i, state
    """
    return advance(input_spikes @ weights.w_in, state, constants, weights, spike_fn)


def advance(
    input_drive: torch.Tensor,
    state: NetworkState,
    constants: Constants,
    weights: Weights,
    spike_fn: SpikeFunction = heaviside,
) -> tuple[torch.Tensor, torch.Tensor, NetworkState]:
    """:func:`step` with the input already projected: ``input_drive = input_spikes @ w_in``.

    Input spikes are sparse, so callers that gather the rows of ``w_in`` for
    the active inputs (see :func:`bridge.simulate.input_drive`) skip a dense
    matrix product per step; the dynamics are the same.
    """
    k_e, k_i, dt = constants.e, constants.i, constants.dt
    # 1. state update: membranes with the conductances at the step's start
    v_e, refractory_e, integrating_e = _membrane_update(state.v_e, state.ge_e, state.gi_e, state.refractory_e, k_e, dt)
    v_i, refractory_i, integrating_i = _membrane_update(state.v_i, state.ge_i, state.gi_i, state.refractory_i, k_i, dt)
    ge_e, gi_e = state.ge_e * constants.decay_ampa, state.gi_e * constants.decay_gaba
    ge_i, gi_i = state.ge_i * constants.decay_ampa, state.gi_i * constants.decay_gaba
    u = state.u * constants.decay_readout
    # 2. threshold
    spikes_e = _fire(v_e, integrating_e, k_e, spike_fn)
    spikes_i = _fire(v_i, integrating_i, k_i, spike_fn)
    # 3. synaptic propagation
    ge_e = ge_e + input_drive
    gi_e = gi_e + spikes_i @ weights.w_ie
    ge_i = ge_i + spikes_e @ weights.w_ei
    u = u + spikes_e @ weights.w_out
    # 4. reset; readout accumulates u at the end of the step
    v_e, refractory_e = _reset(v_e, refractory_e, spikes_e, k_e)
    v_i, refractory_i = _reset(v_i, refractory_i, spikes_i, k_i)
    state = NetworkState(v_e, ge_e, gi_e, refractory_e, v_i, ge_i, gi_i, refractory_i, u, state.score_sum + u)
    return spikes_e, spikes_i, state
