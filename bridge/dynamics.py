"""The PING network's dynamics as a pure PyTorch step function.

``step(input_spikes, state, constants, weights) -> (spikes_e, spikes_i, state)``
reproduces one time step of the Brian2 network (:mod:`biosim.equations`) in
Brian2's schedule order:

1. state update (exponential Euler, conductances frozen over the step;
   ``v`` held while refractory, refractoriness counted in whole steps);
2. threshold ``v > v_threshold`` outside the refractory period;
3. synaptic propagation with zero delay (input -> E, E -> I, I -> E,
   E -> readout, and the optional E -> E and I -> I blocks); the membrane
   sees it from the next step on;
4. reset of the neurons that spiked; the readout accumulator adds ``u``.

The order is written once, in :func:`transition`; the eager step
(:func:`step`/:func:`advance`), the fused engine's torch forward pass and its
recompute call it, each with its own threshold (surrogate spikes, bool masks,
a saved raster) and its own way of delivering spikes to the pathways of
:data:`PATHWAYS` (products, summed weight rows, a precomputed chunk). The
state is an immutable :class:`NetworkState`; loops call :func:`step`, never a
copy of it. The update rule's parts (:func:`exponential_euler`,
:func:`update_membrane`, :func:`crossed`/:func:`fire`, :func:`reset`) are the
ones every PyTorch engine uses (the fused engine's torch path included), so
the rule is written once in Python; the fused engine's C++ kernels mirror it
in one state-update function (``bridge/csrc/fused_engine.cpp``).

Refractoriness has one representation everywhere: ``ready``, the first step
at which a neuron integrates again (it spiked at step ``s``: ``ready = s +
refractory_steps``), compared with the step's index. A countdown would need a
write per neuron and step; ``ready`` changes only when a neuron spikes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from biosim.params import MembraneParams, NetworkParams

from .feedback import readout_increment

__all__ = [
    "NetworkState",
    "PopulationConstants",
    "Constants",
    "Weights",
    "make_constants",
    "initial_state",
    "exponential_euler",
    "update_membrane",
    "crossed",
    "fire",
    "reset",
    "Pathway",
    "PATHWAYS",
    "Transition",
    "transition",
    "step",
    "advance",
]

SpikeFunction = Callable[[torch.Tensor], torch.Tensor]


class NetworkState(NamedTuple):
    """Network state for a batch of trials (units: mV, uS), at the start of step ``step``."""

    v_e: torch.Tensor
    ge_e: torch.Tensor
    gi_e: torch.Tensor
    ready_e: torch.Tensor
    """First step at which each neuron integrates again (int32); refractory while ``step < ready``."""
    v_i: torch.Tensor
    ge_i: torch.Tensor
    gi_i: torch.Tensor
    ready_i: torch.Tensor
    u: torch.Tensor
    """Readout potentials, (batch, n_classes); None where a loop tracks no readout (the fused recompute)."""
    score_sum: torch.Tensor
    """Sum over past steps of ``u`` at the end of each step (None with ``u``)."""
    step: int = 0
    """Index of the next step: steps taken since the state was initialised."""


@dataclass(frozen=True, eq=False)
class Weights:
    """Effective weights (uS; ``w_out`` dimensionless), layout (pre, post).

    ``w_ee`` (E -> E, (n_e, n_e)) and ``w_ii`` (I -> I, (n_i, n_i)) are the
    optional recurrent blocks, None where the network has none. Iterating
    gives the matrices present, in field order (the four of every network,
    then the blocks there are), so code that handles "every matrix" (leaf
    copies, dtype checks, gradients) sees exactly the network's;
    :meth:`items` gives them with their names. :attr:`BASE` names the
    four every network has, :attr:`BLOCKS` the optional ones.
    """

    BASE: ClassVar[tuple[str, ...]] = ("w_in", "w_ei", "w_ie", "w_out")
    BLOCKS: ClassVar[tuple[str, ...]] = ("w_ee", "w_ii")

    w_in: torch.Tensor
    w_ei: torch.Tensor
    w_ie: torch.Tensor
    w_out: torch.Tensor
    w_ee: torch.Tensor | None = None
    w_ii: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # Positional construction from an iteration with one block only would put w_ii in w_ee's place.
        n_e, n_i = self.w_in.shape[-1], self.w_ie.shape[0]
        for name, shape in (("w_ee", (n_e, n_e)), ("w_ii", (n_i, n_i))):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"Weights.{name}: expected shape {shape} (pre, post), found {tuple(value.shape)}")

    def items(self) -> list[tuple[str, torch.Tensor]]:
        """``(name, matrix)`` of the matrices present, in field order."""
        names = (*self.BASE, *(name for name in self.BLOCKS if getattr(self, name) is not None))
        return [(name, getattr(self, name)) for name in names]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (matrix for _, matrix in self.items())

    def __len__(self) -> int:
        return len(self.items())


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
        ready_e=torch.zeros_like(v_init_e, dtype=torch.int32),
        v_i=v_init_i,
        ge_i=zeros_i,
        gi_i=zeros_i,
        ready_i=torch.zeros_like(v_init_i, dtype=torch.int32),
        u=readout,
        score_sum=readout,
        step=0,
    )


def heaviside(x: torch.Tensor) -> torch.Tensor:
    return (x > 0).to(x.dtype)


def exponential_euler(
    v: torch.Tensor, ge: torch.Tensor, gi: torch.Tensor, k: PopulationConstants, dt: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exponential-Euler candidate ``v_new`` (mV), written as Brian2 generates it, and its intermediates.

    Returns ``(v_new, A, B, E)`` with ``A = -(gL + ge + gi)/C`` (1/ms),
    ``B = (gL EL + ge E_exc + gi E_inh)/(C A)`` (mV) and ``E = exp(dt A)``;
    ``v_new = -B + (B + v) E``. The fused engine's adjoint reuses the intermediates.
    """
    total = k.minus_g_leak_over_c - (k.one_over_c * ge + k.one_over_c * gi)
    ba = (k.leak_drive_over_c + (k.e_exc_over_c * ge + k.e_inh_over_c * gi)) / total
    growth = torch.exp(dt * total)
    return -ba + (ba + v) * growth, total, ba, growth


def update_membrane(
    v: torch.Tensor,
    ge: torch.Tensor,
    gi: torch.Tensor,
    ready: torch.Tensor,
    step: int,
    k: PopulationConstants,
    dt: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """State update of one population at ``step``: ``(v1, integrating)``; ``v`` is held while refractory."""
    integrating = ready <= step
    return torch.where(integrating, exponential_euler(v, ge, gi, k, dt)[0], v), integrating


def crossed(v1: torch.Tensor, integrating: torch.Tensor, k: PopulationConstants) -> torch.Tensor:
    """Threshold as a bool mask: ``v1 > v_threshold`` outside the refractory period."""
    return ((v1 - k.v_threshold) > 0) & integrating


def fire(v1: torch.Tensor, integrating: torch.Tensor, k: PopulationConstants, spike_fn: SpikeFunction) -> torch.Tensor:
    """Threshold as spikes in ``v1``'s dtype: :func:`crossed` with ``spike_fn`` (its surrogate) in place of ``>``."""
    return spike_fn(v1 - k.v_threshold) * integrating.to(v1.dtype)


def reset(
    v: torch.Tensor, ready: torch.Tensor, fired: torch.Tensor, step: int, k: PopulationConstants
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reset of the neurons that ``fired`` (bool) at ``step``: ``v = v_reset``, refractory until ``step + t_ref``.

    ``step`` may be a 0-d int32 tensor (a captured CUDA graph's step index): ``masked_fill`` would read a tensor
    value back to the host on CUDA, which a capture forbids, so the same integers are selected by ``where``.
    """
    if isinstance(step, torch.Tensor):
        return v.masked_fill(fired, k.v_reset), torch.where(fired, step + k.refractory_steps, ready)
    return v.masked_fill(fired, k.v_reset), ready.masked_fill(fired, step + k.refractory_steps)


Threshold = Callable[[str, torch.Tensor, torch.Tensor, PopulationConstants], tuple[torch.Tensor, torch.Tensor]]
"""``(population, v1, integrating, k) -> (spikes, fired)``: the threshold of population ``"e"`` or ``"i"``;
``spikes`` go to the synapses, the bool mask ``fired`` to the reset. The eager engine returns :func:`fire`'s
spikes; the fused engine's forward pass the bool mask of :func:`crossed` twice; its recompute the saved raster
of the step."""

Synapses = Callable[[str, torch.Tensor], "torch.Tensor | None"]
"""``(weight name, presynaptic spikes) -> increment of the target``: how one pathway of :data:`PATHWAYS`
delivers a step's spikes (a dense product, summed weight rows, a precomputed chunk); None adds nothing (no
spike, or no such block)."""


class Pathway(NamedTuple):
    """A synaptic pathway: spikes of population ``pre`` through ``Weights.<weight>`` onto the state field ``target``."""

    weight: str
    pre: str
    target: str


PATHWAYS: tuple[Pathway, ...] = (
    Pathway("w_ee", "e", "ge_e"),
    Pathway("w_ie", "i", "gi_e"),
    Pathway("w_ei", "e", "ge_i"),
    Pathway("w_ii", "i", "gi_i"),
    Pathway("w_out", "e", "u"),
)
"""Every synaptic pathway after the input (which reaches ``ge_e`` first, as ``input_drive``), in Brian2's
pathway order where two share a target (input, then E -> E onto ``ge_e``; ``biosim.equations``). A new model
block is a row here, a field of :class:`Weights`, and the adjoint's terms in :mod:`bridge.fast_engine`."""


TARGETS = ("ge_e", "gi_e", "ge_i", "gi_i", "u")
"""The state fields synapses add to (:func:`transition` delivers onto each, in this order)."""

_PLAN = tuple((TARGETS.index(p.target), p.weight, p.pre == "e") for p in PATHWAYS)
""":data:`PATHWAYS` as ``(index in TARGETS, weight name, from E)``, looked up once rather than per step."""


class Transition(NamedTuple):
    """What one step makes: the threshold's spikes and masks, the integrating masks, and the next state."""

    spikes_e: torch.Tensor
    spikes_i: torch.Tensor
    fired_e: torch.Tensor
    fired_i: torch.Tensor
    integrating_e: torch.Tensor
    integrating_i: torch.Tensor
    state: NetworkState


def transition(
    state: NetworkState,
    constants: Constants,
    input_drive: torch.Tensor,
    threshold: Threshold,
    synapses: Synapses,
) -> Transition:
    """One time step in Brian2's schedule order: the one definition of that order.

    The eager step (:func:`advance`), the fused engine's torch forward pass and its recompute
    (:mod:`bridge.fast_engine`) all call it; they differ only in how a population fires
    (``threshold``) and how spikes reach their targets (``synapses``). The C++ kernels
    (``bridge/csrc/fused_engine.cpp``) keep their own copy, tested equal bit for bit.
    ``state.u`` may be None (the recompute tracks no readout): the readout pathways are then skipped.
    """
    k_e, k_i, dt, t = constants.e, constants.i, constants.dt, state.step
    # 1. state update: membranes with the conductances at the step's start, then the decays
    v_e, integrating_e = update_membrane(state.v_e, state.ge_e, state.gi_e, state.ready_e, t, k_e, dt)
    v_i, integrating_i = update_membrane(state.v_i, state.ge_i, state.gi_i, state.ready_i, t, k_i, dt)
    ge_e, gi_e = state.ge_e * constants.decay_ampa, state.gi_e * constants.decay_gaba
    ge_i, gi_i = state.ge_i * constants.decay_ampa, state.gi_i * constants.decay_gaba
    u = None if state.u is None else state.u * constants.decay_readout
    # 2. threshold
    spikes_e, fired_e = threshold("e", v_e, integrating_e, k_e)
    spikes_i, fired_i = threshold("i", v_i, integrating_i, k_i)
    # 3. synaptic propagation, zero delay: the input first, then every pathway onto each target
    targets = [ge_e + input_drive, gi_e, ge_i, gi_i, u]  # TARGETS
    for index, weight, from_e in _PLAN:
        if targets[index] is not None:  # u is None where the readout is not tracked
            increment = synapses(weight, spikes_e if from_e else spikes_i)
            if increment is not None:
                targets[index] = targets[index] + increment
    ge_e, gi_e, ge_i, gi_i, u = targets
    # 4. reset; the readout accumulates u at the end of the step
    v_e, ready_e = reset(v_e, state.ready_e, fired_e, t, k_e)
    v_i, ready_i = reset(v_i, state.ready_i, fired_i, t, k_i)
    score_sum = None if u is None else state.score_sum + u
    following = NetworkState(v_e, ge_e, gi_e, ready_e, v_i, ge_i, gi_i, ready_i, u, score_sum, t + 1)
    return Transition(spikes_e, spikes_i, fired_e, fired_i, integrating_e, integrating_i, following)


def step(
    input_spikes: torch.Tensor,
    state: NetworkState,
    constants: Constants,
    weights: Weights,
    spike_fn: SpikeFunction = heaviside,
    feedback: torch.Tensor | None = None,
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
    feedback : Tensor (n_e, n_classes), optional
        Fixed feedback matrix: the readout's gradient reaches the E spikes
        through it instead of ``w_out`` (:mod:`bridge.feedback`); None: exact.

    Returns
    -------
    spikes_e, spikes_i, state
    """
    return advance(input_spikes @ weights.w_in, state, constants, weights, spike_fn, feedback)


def advance(
    input_drive: torch.Tensor,
    state: NetworkState,
    constants: Constants,
    weights: Weights,
    spike_fn: SpikeFunction = heaviside,
    feedback: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, NetworkState]:
    """:func:`step` with the input already projected: ``input_drive = input_spikes @ w_in``.

    Input spikes are sparse, so callers that gather the rows of ``w_in`` for
    the active inputs (see :func:`bridge.simulate.input_drive`) skip a dense
    matrix product per step; the dynamics are the same.
    """

    def threshold(population: str, v1: torch.Tensor, integrating: torch.Tensor, k: PopulationConstants):
        spikes = fire(v1, integrating, k, spike_fn)
        return spikes, spikes > 0

    def synapses(name: str, spikes: torch.Tensor) -> torch.Tensor | None:
        weight = getattr(weights, name)
        if name == "w_out":
            return readout_increment(spikes, weight, feedback)
        return None if weight is None else spikes @ weight

    step = transition(state, constants, input_drive, threshold, synapses)
    return step.spikes_e, step.spikes_i, step.state
