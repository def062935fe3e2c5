"""The "fused" engine: the whole time loop as one autograd function with a hand-derived adjoint.

:func:`run_network_fused` has the signature and the semantics of
:func:`bridge.eager.run_network` (the "eager" engine, which calls
:func:`bridge.dynamics.step` once per step and lets autograd record every
operation). It returns the same :class:`~bridge.eager.NetworkOutput`, with
the same spikes in float64, but runs the time loop inside one
:class:`torch.autograd.Function` whose backward pass is the reverse-time
recursion (the adjoint) of :func:`bridge.dynamics.advance`, written out by
hand. It is the model engine ``"fused"`` (:data:`bridge.model.ENGINES`).

This module is the algorithm: the forward pass, the recomputation and the
adjoint, on torch operations and driving the C++ kernels. It is long (about
1000 lines) because those three must be read side by side: they share the
chunk layout, the saved buffers and the index conventions of the adjoint
below, and a change to one is a change to all. Building, loading and
binding the C++ (``csrc/fused_engine.cpp``) is :mod:`bridge.fused_kernels`.

What is saved, what is recomputed
---------------------------------
The forward pass keeps only the spike rasters (one byte per neuron and step)
and the network state every ``chunk_steps`` steps (checkpoints). The backward
pass walks the chunks from the last to the first: it recomputes the chunk's
states from its checkpoint and the saved spikes (bit-identical to the forward
pass), turns them into the coefficients of the adjoint step in one pass, and
runs the adjoint recursion through the chunk. Autograd records nothing per
step.

Spikes propagate event-driven: the rows of ``w_in``, ``w_ei``, ``w_ie`` and
``w_out`` (and ``w_ee``, ``w_ii`` where they exist) of the neurons that spiked are summed instead of multiplying dense
0/1 matrices, forward and in the weight gradients (``dW_ei = sum_t s_e(t)^T
l_ge_i(t+1)`` over the spiking rows only).

The adjoint
-----------
Per population, with the state ``(v, ge, gi)`` at the start of a step, the
integrating mask ``m`` (not refractory), and ``C`` the capacitance,

* ``A = -g_L/C - (ge/C + gi/C)``, ``B = (g_L E_L/C + (E_exc/C ge + E_inh/C gi)) / A``,
  ``E = exp(dt A)``, ``v_new = -B + (B + v) E``,
* ``v1 = m ? v_new : v``, ``s = H(v1 - v_th) m``, ``v' = s ? v_reset : v1``,
* ``ge' = decay_ampa ge + (input)``, ``gi' = decay_gaba gi + (input)``,

the adjoints ``l_x = dL/dx`` of the state after the step give those before it:

* ``l_v1 = (1 - s) l_v' + m sigma'(v1 - v_th) l_s`` (the reset's condition
  carries no gradient; its selected branch does, so a spike cuts ``l_v'``),
* ``l_v = (m ? E : 1) l_v1``,
* ``l_ge = decay_ampa l_ge' + m (E_exc/C (E - 1)/A - Q/C) l_v1``,
* ``l_gi = decay_gaba l_gi' + m (E_inh/C (E - 1)/A - Q/C) l_v1``,

with ``Q = dv_new/dA = (B + v) E dt - (E - 1) B / A`` and ``sigma'`` the
surrogate's own :meth:`~bridge.surrogates.Surrogate.derivative`. The spike
adjoints come from where spikes go, ``l_s_e = l_ge_i' w_ei^T + l_u' w_out^T +
dL/dcount_e`` and ``l_s_i = l_gi_e' w_ie^T + dL/dcount_i``; the readout's is
``l_u = dL/dscore_sum + decay_readout l_u'``. The weight gradients are
``dW_in = sum_t x(t)^T l_ge_e(t+1)``, ``dW_ie = sum_t s_i(t)^T l_gi_e(t+1)``,
``dW_ei = sum_t s_e(t)^T l_ge_i(t+1)``, ``dW_out = sum_t s_e(t)^T l_u(t+1)``.
With a feedback matrix ``B`` (:mod:`bridge.feedback`) the E spikes' adjoint
reads ``l_u' B^T`` in place of ``l_u' w_out^T`` (``[w_ei, B]`` in the
product), and ``dW_out`` is unchanged.
Without an I -> I block ``gi_i`` has no input, so its adjoint reaches no
weight and is not computed; without an E -> E block ``l_ge_e`` only feeds
``dW_in`` and is computed only when ``w_in`` needs a gradient. This is the
graph autograd records for the eager engine.

The optional recurrent blocks (``Weights.w_ee``, ``Weights.w_ii``) add
``l_ge_e' w_ee^T`` to ``l_s_e`` and ``l_gi_i' w_ii^T`` to ``l_s_i``, give
``gi_i`` its adjoint (``l_gi_i = decay_gaba l_gi_i' + m (E_inh/C (E - 1)/A -
Q/C) l_v1``, I population), and have the gradients ``dW_ee = sum_t s_e(t)^T
l_ge_e(t+1)`` and ``dW_ii = sum_t s_i(t)^T l_gi_i(t+1)``. Forward, E -> E
adds to ``ge_e`` after the input (Brian2's pathway order). Where a block is
absent its pointers are null and no step does any of this work: the results
are bit for bit those of a network that never had the option.

Two implementations
-------------------
* CPU kernels (float32 and float64 CPU tensors on Linux, PyTorch built with
  MKL): a small C++ library, ``bridge/csrc/fused_engine.cpp``, compiled on first use with the
  system C++ compiler (about 2 s) and cached in ``~/.cache/biosim/kernels``
  (or ``$BIOSIM_KERNEL_CACHE``); ``BIOSIM_FUSED_KERNELS=0`` disables it.
  Trials are independent, so the threads take trials through the whole
  forward pass, then blocks of trials through the whole backward pass
  (recomputation and adjoint recursion, chunk after chunk), without a
  barrier per step or per chunk. The recursion's two products per step with
  the recurrent weights are register-tiled AVX-512 or AVX2 loops in float32
  (MKL's packed GEMM without either, ``dgemm`` in float64); the per-neuron
  loops run on whole vectors of neurons. The forward pass
  does the same floating-point operations in the same order as the eager
  engine (no fused multiply-adds; ``exp`` is MKL VML in the mode
  ``torch.exp`` uses on CPU), so it is bit-identical. The
  kernels evaluate the named surrogates of :data:`bridge.surrogates.SURROGATES`
  themselves, with the operations of their torch definitions (tests compare
  the two); a surrogate they do not know runs on the torch implementation.
* Torch operations (any device and dtype; the fallback): the same algorithm
  with vectorised torch operations. On CUDA (``propagation="auto"``) spikes
  propagate by dense products of the 0/1 spike matrices, which need no host
  synchronisation per step, and the weight gradients are one product per
  chunk. Two switches, off by default (unmeasured on a GPU), change how the torch path steps, not what it
  computes: ``BIOSIM_CUDA_TRITON=on`` runs each step's population updates and readout in the Triton
  kernels of :mod:`bridge.triton_step` (forward and recompute; the products stay torch's), and
  ``BIOSIM_CUDA_GRAPHS=on`` replays each full chunk of forward and of recomputed steps as a captured CUDA
  graph (:mod:`bridge.cuda_graphs`; dense products only). See ``docs/gpu.md``.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from . import cuda_graphs, triton_step
from .dynamics import (
    PATHWAYS,
    Constants,
    NetworkState,
    PopulationConstants,
    SpikeFunction,
    Weights,
    crossed,
    exponential_euler,
    heaviside,
    transition,
)
from .eager import NetworkOutput, run_network
from .feedback import check_feedback
from .fused_kernels import (
    GRADIENT_ACCUMULATORS,
    KERNEL_SURROGATES,
    STATE_NAMES,
    AdjointBuffers,
    ChunkBuffers,
    ChunkExtras,
    ForwardBuffers,
    KernelLibrary,
    Network,
    address,
    kernel_library,
    make_struct,
    phase_recorder,
    population_struct,
    state_struct,
)
from .surrogates import Surrogate
from .torch_settings import flushed_denormals, torch_threads

__all__ = ["FusedEngine", "run_network_fused"]

Derivative = Callable[[torch.Tensor], torch.Tensor]


TRIALS_PER_BLOCK = 8
"""Trials per block of the kernels' backward pass: the products (tiles of 4 trials) ran as fast on 8 trials as
on 16 or 32 with AVX-512, and blocks of 4, 8 and 16 timed alike on AVX2; 4 blocks per batch of 32 balance 2
threads when one of them is slowed."""


# --- torch-operation kernels (any device; the fallback) ---------------------------
# Every step, forward and recomputed, is bridge.dynamics.transition (the eager engine's step order), so
# that the torch path rounds exactly like the eager engine; only the adjoint is local.


def _adjoint_coefficients(
    v: torch.Tensor,
    ge: torch.Tensor,
    gi: torch.Tensor,
    integrating: torch.Tensor,
    k: PopulationConstants,
    dt: float,
    derivative: Derivative | None,
    want_ge: bool,
    want_gi: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Coefficients of the linear adjoint step for a block of states (elementwise, any shape).

    Returns ``S = m sigma'(v1 - v_th)`` (1/mV; ``None`` without surrogate),
    ``Cv = m ? E : 1``, ``Cge = m dv_new/dge`` and ``Cgi = m dv_new/dgi``
    (mV/uS; ``None`` where not wanted).
    """
    v_new, total, ba, growth = exponential_euler(v, ge, gi, k, dt)
    surrogate = None
    if derivative is not None:
        v1 = torch.where(integrating, v_new, v)
        surrogate = torch.where(integrating, derivative(v1 - k.v_threshold), 0.0)
    c_v = torch.where(integrating, growth, 1.0)
    c_ge = c_gi = None
    if want_ge or want_gi:
        growth_minus_one_over_total = (growth - 1.0) / total
        d_total = (ba + v) * growth * dt - growth_minus_one_over_total * ba  # dv_new/dA
        if want_ge:
            c_ge = torch.where(integrating, k.e_exc_over_c * growth_minus_one_over_total - k.one_over_c * d_total, 0.0)
        if want_gi:
            c_gi = torch.where(integrating, k.e_inh_over_c * growth_minus_one_over_total - k.one_over_c * d_total, 0.0)
    return surrogate, c_v, c_ge, c_gi


def _propagate(fired: torch.Tensor, weight: torch.Tensor, sparse: bool) -> torch.Tensor | None:
    """``fired @ weight`` for a (batch, pre) bool spike matrix; ``None`` when nothing fired (sparse mode).

    Sparse mode sums the rows of the presynaptic neurons that fired, per trial,
    in increasing presynaptic order (the order of the dense product's sum).
    """
    if not sparse:
        return fired.to(weight.dtype) @ weight
    trial, neuron = fired.nonzero(as_tuple=True)
    if trial.numel() == 0:
        return None
    return weight.new_zeros(fired.shape[0], weight.shape[1]).index_add_(0, trial, weight.index_select(0, neuron))


def _scatter_rows(rows: torch.Tensor, neuron: torch.Tensor, weight: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``out[r] = sum of weight[neuron[e]] over events e with rows[e] == r``: a (n_rows, n_post) matrix."""
    out = weight.new_zeros(n_rows, weight.shape[1])
    if rows.numel():
        out.index_add_(0, rows, weight.index_select(0, neuron))
    return out


def _raster_events(raster: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes of a (steps, batch, neurons) raster as (step * batch + trial, neuron), sorted."""
    step, trial, neuron = raster.nonzero(as_tuple=True)
    return step * raster.shape[1] + trial, neuron


@dataclass
class _InputEvents:
    """The input raster's spikes sorted by step (stable, so inputs stay in increasing order within a trial and
    step), for chunks of steps (torch implementation; the CPU kernels read the raster directly)."""

    step: torch.Tensor
    trial: torch.Tensor
    neuron: torch.Tensor

    @classmethod
    def from_raster(cls, x: torch.Tensor) -> _InputEvents:
        trial, step, neuron = x.nonzero(as_tuple=True)
        order = torch.argsort(step, stable=True)
        return cls(step[order], trial[order], neuron[order])

    def chunk(self, first: int, last: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Input spikes of steps ``[first, last)`` as ``((t - first) * batch + trial, input)``."""
        bounds = torch.searchsorted(self.step, torch.tensor([first, last], device=self.step.device)).tolist()
        part = slice(bounds[0], bounds[1])
        return (self.step[part] - first) * batch + self.trial[part], self.neuron[part]


# --- the autograd function --------------------------------------------------------


@dataclass
class _Problem:
    """Everything the autograd function needs besides the weights; no gradient flows through it."""

    x: torch.Tensor
    v_init_e: torch.Tensor
    v_init_i: torch.Tensor
    constants: Constants
    surrogate: Surrogate | None
    """The spike function's surrogate; None: heaviside (spikes carry no gradient)."""
    chunk_steps: int
    sparse: bool
    save: bool
    library: KernelLibrary | None
    membrane_grad_scale: float = 1.0
    """Factor on the membrane adjoint at every step (:func:`run_network_fused`)."""
    feedback: torch.Tensor | None = None
    """Fixed feedback matrix in place of ``w_out`` in the E spikes' adjoint (:mod:`bridge.feedback`); None: exact."""
    triton: bool = False
    """The torch path steps on the Triton kernels (``BIOSIM_CUDA_TRITON``; never with the CPU kernels)."""
    graphs: bool = False
    """The torch forward pass replays captured chunks (``BIOSIM_CUDA_GRAPHS``; dense products)."""

    @property
    def n_chunks(self) -> int:
        return -(-self.x.shape[1] // self.chunk_steps)

    @property
    def derivative(self) -> Derivative | None:
        return None if self.surrogate is None else self.surrogate.derivative

    def network_struct(
        self,
        w_in: torch.Tensor,
        w_ie: torch.Tensor,
        w_e_out: torch.Tensor,
        w_ee: torch.Tensor | None,
        w_ii: torch.Tensor | None,
        w_e_back: torch.Tensor | None = None,
    ) -> Network:
        c, (batch, n_steps, n_input) = self.constants, self.x.shape
        kind, slope, unit_mv = _surrogate_fields(self.surrogate)
        return make_struct(
            Network,
            batch=batch,
            n_steps=n_steps,
            n_e=w_in.shape[1],
            n_i=w_ie.shape[0],
            n_classes=w_e_out.shape[1] - w_ie.shape[0],
            chunk=self.chunk_steps,
            n_threads=torch.get_num_threads(),
            mxcsr=self.library.control_word(),
            dt=c.dt,
            decay_ampa=c.decay_ampa,
            decay_gaba=c.decay_gaba,
            decay_readout=c.decay_readout,
            e=population_struct(c.e),
            i=population_struct(c.i),
            n_input=n_input,
            x=self.x,
            w_in=w_in,
            w_ie=w_ie,
            w_e_out=w_e_out,
            surrogate=kind,
            surrogate_slope=slope,
            surrogate_unit_mv=unit_mv,
            membrane_grad_scale=self.membrane_grad_scale,
            w_ee=w_ee,
            w_ii=w_ii,
            w_e_back=w_e_back,
        )


def _surrogate_fields(surrogate: Surrogate | None) -> tuple[int, float, float]:
    """``(kind, slope, unit_mv)`` of the kernels' ``Network``; kind 0: no surrogate."""
    if surrogate is None:
        return 0, 0.0, 1.0
    return KERNEL_SURROGATES[surrogate.name], float(surrogate.slope), float(surrogate.unit_mv)


def _initial_state(problem: _Problem) -> dict[str, torch.Tensor]:
    v_e, v_i = problem.v_init_e, problem.v_init_i
    return {
        "v_e": v_e.clone(memory_format=torch.contiguous_format),
        "ge_e": torch.zeros_like(v_e, memory_format=torch.contiguous_format),
        "gi_e": torch.zeros_like(v_e, memory_format=torch.contiguous_format),
        "ready_e": torch.zeros(v_e.shape, dtype=torch.int32, device=v_e.device),
        "v_i": v_i.clone(memory_format=torch.contiguous_format),
        "ge_i": torch.zeros_like(v_i, memory_format=torch.contiguous_format),
        "gi_i": torch.zeros_like(v_i, memory_format=torch.contiguous_format),
        "ready_i": torch.zeros(v_i.shape, dtype=torch.int32, device=v_i.device),
    }


def _forward_kernels(
    problem: _Problem,
    w_in,
    w_ie,
    w_e_out,
    w_ee,
    w_ii,
    u,
    score_sum,
    trace,
    raster_e,
    raster_i,
    checkpoints,
    events,
    w_e_back=None,
):
    """The whole time loop in the CPU kernels; returns the final state, spike counts, population counts and the
    kernels' ``Network`` struct (the backward pass passes it back, ``w_e_back`` for its adjoint)."""
    state = _initial_state(problem)
    batch, n_steps, _ = problem.x.shape
    counts = {name: torch.zeros_like(state[f"v_{name}"]) for name in ("e", "i")}
    population = {name: u.new_empty(batch, n_steps) for name in ("e", "i")}
    network = problem.network_struct(w_in, w_ie, w_e_out, w_ee, w_ii, w_e_back)
    buffers = make_struct(
        ForwardBuffers,
        state=state_struct(state),
        u=u,
        score_sum=score_sum,
        raster_e=raster_e,
        raster_i=raster_i,
        counts_e=counts["e"],
        counts_i=counts["i"],
        population_e=population["e"],
        population_i=population["i"],
        checkpoints=state_struct(checkpoints),
        readout_trace=trace,
    )
    recorder, started = phase_recorder(), time.perf_counter()
    problem.library.forward[u.dtype](ctypes.byref(network), ctypes.byref(buffers))
    if recorder is not None:
        recorder.add("forward", time.perf_counter() - started)
    return state, counts["e"], counts["i"], population["e"], population["i"], network


class _ForwardSynapses:
    """The pathways of the torch forward pass (:data:`bridge.dynamics.PATHWAYS`) on bool spike masks.

    E spikes feed ``ge_i`` and the readout: one gather of ``[w_ei, w_out]`` per step serves both.
    """

    def __init__(self, weights: dict[str, torch.Tensor | None], w_e_out: torch.Tensor, n_i: int, sparse: bool):
        self.weights, self.w_e_out, self.n_i, self.sparse = weights, w_e_out, n_i, sparse
        self.fired_e: torch.Tensor | None = None
        self.from_e: torch.Tensor | None = None

    def __call__(self, name: str, fired: torch.Tensor) -> torch.Tensor | None:
        if name in ("w_ei", "w_out"):
            if self.fired_e is not fired:  # a new step
                self.fired_e, self.from_e = fired, _propagate(fired, self.w_e_out, self.sparse)
            if self.from_e is None:
                return None
            return self.from_e[:, : self.n_i] if name == "w_ei" else self.from_e[:, self.n_i :]
        weight = self.weights[name]
        return None if weight is None else _propagate(fired, weight, self.sparse)


def _forward_torch(
    problem: _Problem,
    w_in,
    w_ie,
    w_e_out,
    w_ee,
    w_ii,
    u,
    score_sum,
    trace,
    raster_e,
    raster_i,
    checkpoints,
    events,
    w_e_back=None,
):
    """The whole time loop in torch operations (each step :func:`bridge.dynamics.transition`); returns what
    :func:`_forward_kernels` returns (``w_e_back`` is the adjoint's alone)."""
    x, constants = problem.x, problem.constants
    chunk, sparse = problem.chunk_steps, problem.sparse
    batch, n_steps, _ = x.shape
    n_i = w_ie.shape[0]
    start = _initial_state(problem)
    state = NetworkState(**start, u=u.clone(), score_sum=score_sum.clone(), step=0)
    synapses = _ForwardSynapses({"w_ee": w_ee, "w_ie": w_ie, "w_ii": w_ii}, w_e_out, n_i, sparse)

    def threshold(population: str, v1: torch.Tensor, integrating: torch.Tensor, k: PopulationConstants):
        fired = crossed(v1, integrating, k)
        return fired, fired

    if problem.graphs:
        state = _forward_chunks_captured(problem, w_in, synapses, state, trace, raster_e, raster_i, checkpoints)
    else:
        for index, first in enumerate(range(0, n_steps, chunk)):
            last = min(first + chunk, n_steps)
            if sparse:
                rows, neuron = events.chunk(first, last, batch)
                drive = _scatter_rows(rows, neuron, w_in, (last - first) * batch).view(last - first, batch, -1)
            else:
                drive = x[:, first:last].transpose(0, 1).to(w_in.dtype) @ w_in
            if checkpoints is not None:
                for name in STATE_NAMES:
                    checkpoints[name][index] = getattr(state, name)
            for t in range(first, last):
                if problem.triton:  # the same step on the Triton kernels: the products stay the synapses' own
                    made = triton_step.kernel_transition(state, constants, drive[t - first], synapses)
                else:
                    made = transition(state, constants, drive[t - first], threshold, synapses)
                state = made.state
                trace[:, t] = state.u
                raster_e[t] = made.fired_e
                raster_i[t] = made.fired_i
    u.copy_(state.u)
    score_sum.copy_(state.score_sum)
    dtype = u.dtype
    counts_e, counts_i = raster_e.sum(dim=0).to(dtype), raster_i.sum(dim=0).to(dtype)
    population_e, population_i = raster_e.sum(dim=2).t().to(dtype), raster_i.sum(dim=2).t().to(dtype)
    final = {name: getattr(state, name) for name in STATE_NAMES}
    return final, counts_e, counts_i, population_e.contiguous(), population_i.contiguous(), None


def _forward_chunks_captured(
    problem: _Problem, w_in, synapses: _ForwardSynapses, state: NetworkState, trace, raster_e, raster_i, checkpoints
) -> NetworkState:
    """:func:`_forward_torch`'s chunk loop with every full chunk replayed as one captured CUDA graph.

    The step is :func:`bridge.cuda_graphs.transition_step` with the forward pass's own dense pathways and
    threshold (or the Triton step), its index a 0-d tensor; the graph is captured at the first full chunk of
    the call (the weights are new tensors each call), and a shorter last chunk runs the same step uncaptured.
    Returns the final state (step: the trial's length, an int as elsewhere).
    """
    x, chunk, n_steps = problem.x, problem.chunk_steps, problem.x.shape[1]
    step = cuda_graphs.transition_step(problem.constants, {}, triton=problem.triton, synapses=synapses)
    tensors = {name: value for name, value in state._asdict().items() if name != "step"}
    tensors["step"] = torch.tensor(0, dtype=torch.int32, device=w_in.device)
    captured = None
    for index, first in enumerate(range(0, n_steps, chunk)):
        last = min(first + chunk, n_steps)
        drive = x[:, first:last].transpose(0, 1).to(w_in.dtype) @ w_in
        if checkpoints is not None:
            for name in STATE_NAMES:
                checkpoints[name][index] = tensors[name]
        if last - first == chunk:
            if captured is None:
                captured = cuda_graphs.CapturedChunk(step, tensors, drive, warmup=1)
            tensors, records = captured(tensors, drive)
        else:
            tensors, records = cuda_graphs.run_chunk(step, tensors, drive)
        raster_e[first:last] = records["fired_e"]
        raster_i[first:last] = records["fired_i"]
        trace[:, first:last] = records["u"].transpose(0, 1)
    return NetworkState(**{name: value for name, value in tensors.items() if name != "step"}, step=n_steps)


class _Replay:
    """Threshold and pathways of the recompute at step ``step``: the saved spikes, and the chunk's synaptic
    increments (``(steps, batch, n_post)`` per weight name, from step ``first``) gathered beforehand."""

    def __init__(self, rasters: dict[str, torch.Tensor], increments: dict[str, torch.Tensor], first: int):
        self.rasters, self.increments, self.first = rasters, increments, first
        self.step = first

    def threshold(self, population: str, v1: torch.Tensor, integrating: torch.Tensor, k: PopulationConstants):
        fired = self.rasters[population][self.step]
        return fired, fired

    def synapses(self, name: str, spikes: torch.Tensor) -> torch.Tensor | None:
        increment = self.increments.get(name)
        return None if increment is None else increment[self.step - self.first]


class _ForwardRun(NamedTuple):
    """What the forward time loop fills and returns (:func:`_run_forward`)."""

    checkpoints: dict[str, torch.Tensor] | None
    """The state at the start of every chunk, (n_chunks, batch, n) per :data:`STATE_NAMES`; None unless saved."""
    raster_e: torch.Tensor
    raster_i: torch.Tensor
    u: torch.Tensor
    score_sum: torch.Tensor
    trace: torch.Tensor
    state: dict[str, torch.Tensor]
    """The final state, by :data:`STATE_NAMES`."""
    counts_e: torch.Tensor
    counts_i: torch.Tensor
    population_e: torch.Tensor
    population_i: torch.Tensor
    network: Network | None
    """The kernels' ``Network`` struct (None on torch operations)."""
    events: _InputEvents | None
    """The input raster's spikes by step (torch operations only; the kernels read the raster)."""


def _run_forward(
    problem: _Problem, w_in, w_ie, w_e_out, n_classes: int, w_ee=None, w_ii=None, w_e_back=None
) -> _ForwardRun:
    """The forward time loop (kernels or torch operations), with the buffers it fills.

    ``w_ee`` / ``w_ii``: the recurrent blocks (contiguous), None where the network has none. ``w_e_back``:
    ``[w_ei, B]`` for the adjoint's E-spike products with a feedback matrix ``B`` (None: ``w_e_out``).
    """
    batch, n_steps, _ = problem.x.shape
    n_e, n_i = w_in.shape[1], w_ie.shape[0]
    dtype, device = w_e_out.dtype, w_e_out.device
    events = _InputEvents.from_raster(problem.x) if problem.library is None else None
    u = torch.zeros(batch, n_classes, dtype=dtype, device=device)
    score_sum = torch.zeros_like(u)
    trace = torch.empty(batch, n_steps, n_classes, dtype=dtype, device=device)
    raster_e = torch.empty(n_steps, batch, n_e, dtype=torch.bool, device=device)
    raster_i = torch.empty(n_steps, batch, n_i, dtype=torch.bool, device=device)
    checkpoints = None
    if problem.save:
        checkpoints = {
            name: torch.empty((problem.n_chunks, *value.shape), dtype=value.dtype, device=device)
            for name, value in _initial_state(problem).items()
        }
    run = _forward_kernels if problem.library is not None else _forward_torch
    buffers = (u, score_sum, trace, raster_e, raster_i, checkpoints)
    state, counts_e, counts_i, population_e, population_i, network = run(
        problem, w_in, w_ie, w_e_out, w_ee, w_ii, *buffers, events, w_e_back
    )
    return _ForwardRun(
        checkpoints,
        raster_e,
        raster_i,
        u,
        score_sum,
        trace,
        state,
        counts_e,
        counts_i,
        population_e,
        population_i,
        network,
        events,
    )


class _Outputs(NamedTuple):
    """The autograd function's outputs, in the order it returns them; its backward receives their gradients
    (None where none flowed) in the same order, and names them with this class too."""

    scores: torch.Tensor | None
    counts_e: torch.Tensor | None
    counts_i: torch.Tensor | None
    v_e: torch.Tensor | None
    ge_e: torch.Tensor | None
    gi_e: torch.Tensor | None
    v_i: torch.Tensor | None
    ge_i: torch.Tensor | None
    gi_i: torch.Tensor | None
    u: torch.Tensor | None
    score_sum: torch.Tensor | None
    ready_e: torch.Tensor | None
    """Not differentiable, as ``ready_i`` and ``population_i``."""
    ready_i: torch.Tensor | None
    population_e: torch.Tensor | None
    population_i: torch.Tensor | None
    trace: torch.Tensor | None


class _Saved(NamedTuple):
    """The tensors the backward pass reads, in the order of ``ctx.save_for_backward`` (None: absent)."""

    x: torch.Tensor
    w_in: torch.Tensor
    w_ie: torch.Tensor
    w_out: torch.Tensor
    w_ee: torch.Tensor | None
    w_ii: torch.Tensor | None
    w_e_out: torch.Tensor
    """``[w_ei, w_out]``, the forward pass's concatenation (the adjoint's products use it too)."""
    w_e_back: torch.Tensor | None
    """``[w_ei, B]`` with a feedback matrix ``B``: the adjoint's E-spike products use it instead; None: exact."""
    raster_e: torch.Tensor
    raster_i: torch.Tensor
    events_step: torch.Tensor | None
    events_trial: torch.Tensor | None
    events_neuron: torch.Tensor | None
    checkpoint_v_e: torch.Tensor
    checkpoint_ge_e: torch.Tensor
    checkpoint_gi_e: torch.Tensor
    checkpoint_ready_e: torch.Tensor
    checkpoint_v_i: torch.Tensor
    checkpoint_ge_i: torch.Tensor
    checkpoint_gi_i: torch.Tensor
    checkpoint_ready_i: torch.Tensor

    @property
    def checkpoints(self) -> dict[str, torch.Tensor]:
        """The state at the start of every chunk, by :data:`STATE_NAMES`."""
        return {name: getattr(self, f"checkpoint_{name}") for name in STATE_NAMES}

    @property
    def input_events(self) -> _InputEvents | None:
        if self.events_step is None:
            return None
        return _InputEvents(self.events_step, self.events_trial, self.events_neuron)


class _FusedNetwork(torch.autograd.Function):
    """Forward: the time loop without autograd. Backward: the adjoint recursion (:class:`_Adjoint`).

    Tensors reach the backward pass through ``ctx.save_for_backward`` (:class:`_Saved`), so autograd checks
    that none was modified in place in between; ``ctx.problem`` carries the configuration (constants,
    surrogate, chunking, library) and ``ctx.network`` the kernels' struct of pointers into saved tensors.
    """

    @staticmethod
    def forward(ctx, problem: _Problem, w_in, w_ei, w_ie, w_out, w_ee, w_ii):  # type: ignore[override]
        n_steps = problem.x.shape[1]
        w_in, w_ie = w_in.contiguous(), w_ie.contiguous()
        w_ee, w_ii = (None if w is None else w.contiguous() for w in (w_ee, w_ii))  # None: no such block
        w_e_out = torch.cat([w_ei, w_out], dim=1)  # E spikes feed ge_i and the readout: one gather serves both
        # Feedback alignment: the readout's error reaches the E spikes through B instead of w_out.
        w_e_back = None if problem.feedback is None else torch.cat([w_ei.detach(), problem.feedback], dim=1)
        run = _run_forward(problem, w_in, w_ie, w_e_out, w_out.shape[1], w_ee, w_ii, w_e_back)
        state = run.state
        if problem.save:
            events = run.events
            ctx.save_for_backward(
                *_Saved(
                    problem.x,
                    w_in,
                    w_ie,
                    w_out,
                    w_ee,
                    w_ii,
                    w_e_out,
                    w_e_back,
                    run.raster_e,
                    run.raster_i,
                    *((None,) * 3 if events is None else (events.step, events.trial, events.neuron)),
                    *(run.checkpoints[name] for name in STATE_NAMES),
                )
            )
            ctx.problem, ctx.network = problem, run.network
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(state["ready_e"], state["ready_i"], run.population_i)
        return tuple(
            _Outputs(
                scores=run.score_sum / n_steps,
                counts_e=run.counts_e,
                counts_i=run.counts_i,
                v_e=state["v_e"],
                ge_e=state["ge_e"],
                gi_e=state["gi_e"],
                v_i=state["v_i"],
                ge_i=state["ge_i"],
                gi_i=state["gi_i"],
                u=run.u,
                score_sum=run.score_sum,
                ready_e=state["ready_e"],
                ready_i=state["ready_i"],
                population_e=run.population_e,
                population_i=run.population_i,
                trace=run.trace,
            )
        )

    @staticmethod
    @once_differentiable  # first derivatives only: the adjoint itself is not differentiated
    def backward(ctx, *grads):  # type: ignore[override]
        saved = _Saved(*ctx.saved_tensors)
        adjoint = _Adjoint(ctx.problem, saved, ctx.network, _Outputs(*grads), ctx.needs_input_grad[1:7])
        with flushed_denormals():
            return (None, *adjoint.run())


class _Adjoint:
    """The backward pass: the adjoint recursion, chunk by chunk from the last step to the first.

    Buffers of adjoints are indexed by *slot*: slot ``j`` of a chunk that
    starts at step ``first`` holds the adjoint of the state at time ``first +
    j`` (before step ``first + j``, after step ``first + j - 1``). Step ``t``
    reads slot ``t - first + 1`` and writes slot ``t - first``; the weight
    gradients of step ``t`` use slot ``t - first + 1``.
    """

    def __init__(self, problem: _Problem, saved: _Saved, network: Network | None, grads: _Outputs, needs) -> None:
        g = grads
        g_scores, g_counts_e, g_counts_i, g_score_sum = g.scores, g.counts_e, g.counts_i, g.score_sum
        g_v_e, g_ge_e, g_gi_e, g_v_i, g_ge_i, g_gi_i, g_u = g.v_e, g.ge_e, g.gi_e, g.v_i, g.ge_i, g.gi_i, g.u
        g_population_e, g_trace = g.population_e, g.trace
        self.problem, self.saved, self.network = problem, saved, network
        self.need_in, self.need_ei, self.need_ie, self.need_out, self.need_ee, self.need_ii = needs
        w_in, w_ie, w_out, w_ee, w_ii = saved.w_in, saved.w_ie, saved.w_out, saved.w_ee, saved.w_ii
        self.w_in, self.w_ie, self.w_out = w_in, w_ie, w_out
        self.w_ee, self.w_ii = w_ee, w_ii  # the recurrent blocks, None where the network has none
        self.w_e_out = saved.w_e_out
        # The E spikes' adjoint reads [w_ei, B] with a feedback matrix; dW_out stays sum_t s_e(t)^T l_u(t + 1).
        self.w_e_back = saved.w_e_out if saved.w_e_back is None else saved.w_e_back
        self.input_events = saved.input_events
        raster_e = saved.raster_e
        self.n_steps, self.batch, self.n_e = raster_e.shape
        self.n_i, self.n_classes = w_ie.shape[0], w_out.shape[1]
        self.dtype, self.device = w_out.dtype, w_out.device
        batch, n_e, n_i, n_classes, chunk = self.batch, self.n_e, self.n_i, self.n_classes, problem.chunk_steps

        # dL/dscore_sum at the end, through scores = score_sum / n_steps and directly.
        self.g_sum = self._zeros_or(g_score_sum, (batch, n_classes))
        if g_scores is not None:
            self.g_sum += g_scores.to(self.dtype) / self.n_steps
        # The membrane chain has a source only through a surrogate or a loss on the state or the counts
        # (gi_i depends on the weights only through an I -> I block).
        g_gi_i = g_gi_i if w_ii is not None else None
        self.full = problem.derivative is not None or any(
            g is not None
            for g in (g_counts_e, g_counts_i, g_v_e, g_ge_e, g_gi_e, g_v_i, g_ge_i, g_gi_i, g_population_e)
        )
        # l_ge_e feeds dW_in and, through w_ee, the E spikes; l_gi_i exists only with an I -> I block.
        self.want_ge_e = (self.need_in or w_ee is not None) and self.full
        self.want_gi_i = w_ii is not None and self.full
        self.g_counts_e = None if g_counts_e is None else g_counts_e.to(self.dtype).contiguous()
        self.g_counts_i = None if g_counts_i is None else g_counts_i.to(self.dtype).contiguous()
        # Losses on the per-step outputs: the E population count of each step and the readout trace.
        self.g_population_e = None if g_population_e is None else g_population_e.to(self.dtype).contiguous()
        self.g_trace = None if g_trace is None else g_trace.to(self.dtype).contiguous()

        # Adjoint buffers, with the adjoints of the final state (time T) in their slot. The kernels keep two
        # ring slots (time t in slot t % 2) and add the weight gradients as they go; the torch
        # implementation keeps a chunk's slots for its weight-gradient products.
        self.kernels = self.full and problem.library is not None
        slots, last_slot = (
            (2, self.n_steps % 2) if self.kernels else (chunk + 1, self.n_steps - (problem.n_chunks - 1) * chunk)
        )
        self.leo = self._empty(slots, batch, n_i + n_classes)  # [l_ge_i, l_u]
        self.leo[last_slot, :, :n_i] = self._zeros_or(g_ge_i, (batch, n_i))
        self.leo[last_slot, :, n_i:] = self._zeros_or(g_u, (batch, n_classes)) + self.g_sum
        if self.g_trace is not None:  # the final u is the trace's last entry
            self.leo[last_slot, :, n_i:] += self.g_trace[:, -1]
        self.lgi_e = self.lge_e = self.lgi_i = None
        if self.full:
            self.lv_e = self._zeros_or(g_v_e, (batch, n_e))
            self.lv_i = self._zeros_or(g_v_i, (batch, n_i))
            self.lgi_e = self._empty(slots, batch, n_e)
            self.lgi_e[last_slot] = self._zeros_or(g_gi_e, (batch, n_e))
            if self.want_ge_e:
                self.lge_e = self._empty(slots, batch, n_e)
                self.lge_e[last_slot] = self._zeros_or(g_ge_e, (batch, n_e))
            if self.want_gi_i:
                self.lgi_i = self._empty(slots, batch, n_i)
                self.lgi_i[last_slot] = self._zeros_or(g_gi_i, (batch, n_i))
        self.grad_in = torch.zeros_like(w_in) if self.need_in else None
        self.grad_ie = torch.zeros_like(w_ie) if self.need_ie else None
        self.grad_e_out = torch.zeros_like(self.w_e_out) if (self.need_ei or self.need_out) else None
        self.grad_ee = torch.zeros_like(w_ee) if self.need_ee else None
        self.grad_ii = torch.zeros_like(w_ii) if self.need_ii else None
        self.captured_recompute: cuda_graphs.CapturedChunk | None = None  # BIOSIM_CUDA_GRAPHS: made once per pass

    def _empty(self, *shape: int) -> torch.Tensor:
        return torch.empty(shape, dtype=self.dtype, device=self.device)

    def _zeros_or(self, grad: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
        if grad is None:
            return torch.zeros(shape, dtype=self.dtype, device=self.device)
        return grad.to(self.dtype).clone(memory_format=torch.contiguous_format)

    def run(self) -> tuple[torch.Tensor | None, ...]:
        if self.kernels:
            self._run_kernels()
        else:
            self._chunks(self._chunk_torch if self.full else self._chunk_readout)
        grad_ei = grad_out = None
        if self.grad_e_out is not None:
            grad_ei = self.grad_e_out[:, : self.n_i].contiguous() if self.need_ei else None
            grad_out = self.grad_e_out[:, self.n_i :].contiguous() if self.need_out else None
        return self.grad_in, grad_ei, self.grad_ie, grad_out, self.grad_ee, self.grad_ii

    def _chunk_bounds(self) -> Iterator[tuple[int, int, int]]:
        """``(index, first, last)`` of every chunk, last chunk first."""
        chunk = self.problem.chunk_steps
        for index in range(self.problem.n_chunks - 1, -1, -1):
            yield index, index * chunk, min((index + 1) * chunk, self.n_steps)

    def _chunks(self, chunk_adjoint) -> None:
        """The torch implementation: chunk by chunk, then the chunk's weight gradients."""
        raster_e, raster_i = self.saved.raster_e, self.saved.raster_i
        chunk = self.problem.chunk_steps
        for index, first, last in self._chunk_bounds():
            chunk_adjoint(index, first, last)
            self._accumulate_weight_gradients(first, last, raster_e[first:last], raster_i[first:last])
            # Slot 0 of this chunk is the last slot of the one before.
            for buffer in (self.leo, self.lgi_e, self.lge_e, self.lgi_i):
                if buffer is not None:
                    buffer[chunk] = buffer[0]

    def _accumulate_weight_gradients(self, first: int, last: int, raster_e, raster_i) -> None:
        """``dW = sum_t s(t)^T l(t + 1)`` over the chunk (torch implementation; slots 1..n hold ``l(t + 1)``).

        Sparse: only the rows of the presynaptic events are gathered and added. Dense: one product per
        chunk, which is also deterministic on GPU (``index_add_`` is not).
        """
        n, batch = last - first, self.batch
        dense = not self.problem.sparse
        blocks = []
        if self.grad_e_out is not None:
            blocks.append((self.grad_e_out, raster_e, self.leo))
        if self.grad_ie is not None and self.full:
            blocks.append((self.grad_ie, raster_i, self.lgi_e))
        # The recurrent blocks: dW_ee = sum_t s_e(t)^T l_ge_e(t + 1), dW_ii = sum_t s_i(t)^T l_gi_i(t + 1).
        if self.grad_ee is not None and self.full:
            blocks.append((self.grad_ee, raster_e, self.lge_e))
        if self.grad_ii is not None and self.full:
            blocks.append((self.grad_ii, raster_i, self.lgi_i))
        for grad, raster, adjoint in blocks:
            after = adjoint[1 : n + 1].reshape(n * batch, -1)
            if dense:
                grad.addmm_(raster.reshape(n * batch, -1).t().to(self.dtype), after)
                continue
            rows, neuron = _raster_events(raster)
            if rows.numel():
                grad.index_add_(0, neuron, after.index_select(0, rows))
        if self.grad_in is not None and self.want_ge_e:
            after = self.lge_e[1 : n + 1].reshape(n * batch, -1)
            if dense:
                inputs = self.saved.x[:, first:last].transpose(0, 1).reshape(n * batch, -1)
                self.grad_in.addmm_(inputs.t().to(self.dtype), after)
                return
            rows, neuron = self.input_events.chunk(first, last, batch)
            if rows.numel():
                self.grad_in.index_add_(0, neuron, after.index_select(0, rows))

    def _chunk_readout(self, index: int, first: int, last: int) -> None:
        """Without a membrane chain only the readout carries gradient: ``l_u = g + decay l_u'``."""
        n_i, decay = self.n_i, self.problem.constants.decay_readout
        for j in range(last - first - 1, -1, -1):
            torch.mul(self.leo[j + 1, :, n_i:], decay, out=self.leo[j, :, n_i:]).add_(self.g_sum)
            self._add_trace_gradient(self.leo[j, :, n_i:], first + j)
        self.leo[: last - first, :, :n_i] = 0.0

    def _add_trace_gradient(self, l_u: torch.Tensor, t: int) -> None:
        """``l_u(t) += dL/dtrace[t - 1]``: the u of time ``t`` is the trace entry that step ``t - 1`` made."""
        if self.g_trace is not None and t > 0:
            l_u.add_(self.g_trace[:, t - 1])

    def _spike_adjoints(self, j: int, t: int):
        """``l_s_e = [l_ge_i, l_u](slot j + 1) [w_ei, w_out]^T + dL/dcount_e + dL/dpopulation_e(t)``, ``l_s_i = ...``.

        With a feedback matrix ``B``, ``[w_ei, B]`` in place of ``[w_ei, w_out]``.

        ``l_s_i = l_gi_e(slot j + 1) w_ie^T + dL/dcount_i``; ``t`` is the step of slot ``j``.
        """
        bias_e = self.g_counts_e
        if self.g_population_e is not None:  # the step's population count is the sum of its E spikes
            population = self.g_population_e[:, t : t + 1]
            bias_e = population.expand(-1, self.n_e) if bias_e is None else bias_e + population
        product = []
        for bias, adjoint, weight in (
            (bias_e, self.leo[j + 1], self.w_e_back),
            (self.g_counts_i, self.lgi_e[j + 1], self.w_ie),
        ):
            product.append(torch.mm(adjoint, weight.t()) if bias is None else torch.addmm(bias, adjoint, weight.t()))
        # The recurrent blocks: + l_ge_e w_ee^T and + l_gi_i w_ii^T.
        if self.w_ee is not None:
            product[0].addmm_(self.lge_e[j + 1], self.w_ee.t())
        if self.w_ii is not None:
            product[1].addmm_(self.lgi_i[j + 1], self.w_ii.t())
        return product

    # --- CPU kernels -------------------------------------------------------------
    def _prepare_kernels(self) -> None:
        problem, chunk, batch = self.problem, self.problem.chunk_steps, self.batch
        n_e, n_i = self.n_e, self.n_i
        # The chunk's adjoint coefficients; s = m sigma' only with a surrogate.
        surrogate = problem.surrogate is not None
        self.s_e = self._empty(chunk, batch, n_e) if surrogate else None
        self.s_i = self._empty(chunk, batch, n_i) if surrogate else None
        self.cv_e, self.cgi_e = self._empty(chunk, batch, n_e), self._empty(chunk, batch, n_e)
        self.cge_e = self._empty(chunk, batch, n_e) if self.want_ge_e else None
        self.cv_i, self.cge_i = self._empty(chunk, batch, n_i), self._empty(chunk, batch, n_i)
        self.cgi_i = self._empty(chunk, batch, n_i) if self.want_gi_i else None
        self.ls_e, self.ls_i = self._empty(batch, n_e), self._empty(batch, n_i)
        # Blocks of trials, each taken through the whole backward pass by one thread (ctypes releases the
        # GIL); more blocks than threads, so that a thread that another process slows down takes fewer.
        self.trial_blocks = [(b, min(b + TRIALS_PER_BLOCK, batch)) for b in range(0, batch, TRIALS_PER_BLOCK)]
        self.n_threads = max(1, min(int(self.network.n_threads), len(self.trial_blocks)))
        # Each block adds its weight gradients into its own accumulator: no write conflicts, and the sum
        # does not depend on which thread ran which block.
        self.gradient_parts = {
            name: torch.zeros((len(self.trial_blocks), *getattr(self, name).shape), dtype=self.dtype)
            for name in GRADIENT_ACCUMULATORS
            if getattr(self, name) is not None
        }
        self.packed = (None, None)
        if self.dtype == torch.float32:
            # The recurrent weights packed once per backward pass for products of up to `rows` trials.
            rows = max(last - first for first, last in self.trial_blocks)
            sizes = torch.zeros(2, dtype=torch.int64)
            problem.library.packed_sizes(ctypes.byref(self.network), rows, sizes.data_ptr())
            self.packed = tuple(torch.empty(int(size), dtype=torch.uint8) for size in sizes.tolist())
            problem.library.pack_weights(ctypes.byref(self.network), rows, *(address(t) for t in self.packed))

    def _run_kernels(self) -> None:
        """The CPU kernels: each block of trials goes through all chunks, last to first, in one thread.

        Trials are independent and every buffer the kernels write is indexed by trial (or is the block's
        own accumulator), so the threads never wait for each other, not even between chunks.
        """
        recorder, started = phase_recorder(), time.perf_counter()
        self._prepare_kernels()
        library = self.problem.library
        network = ctypes.byref(self.network)
        checkpoints, saved = self.saved.checkpoints, self.saved
        coefficients = ("s_e", "cv_e", "cge_e", "cgi_e", "s_i", "cv_i", "cge_i", "cgi_i")
        chunk_coefficients = {name: getattr(self, name) for name in coefficients}
        rasters = {"raster_e": saved.raster_e, "raster_i": saved.raster_i}

        def through_all_chunks(part: int) -> None:  # one block of trials
            trials = self.trial_blocks[part]
            accumulators = {name: parts[part] for name, parts in self.gradient_parts.items()}
            extras = make_struct(
                ChunkExtras,
                g_counts_e=self.g_counts_e,
                g_counts_i=self.g_counts_i,
                packed_e=self.packed[0],
                packed_i=self.packed[1],
                g_population_e=self.g_population_e,
                **{name: accumulators.get(name) for name in GRADIENT_ACCUMULATORS},
            )
            recompute_s = adjoint_s = 0.0
            for index, first, last in self._chunk_bounds():
                start = state_struct({name: value[index] for name, value in checkpoints.items()})
                buffers = make_struct(
                    ChunkBuffers, first=first, last=last, start=start, **rasters, **chunk_coefficients
                )
                entered = time.perf_counter()
                library.recompute[self.dtype](network, ctypes.byref(buffers), *trials)
                adjoint = self._adjoint_buffers(first)
                recomputed = time.perf_counter()
                library.adjoint_steps[self.dtype](
                    network, ctypes.byref(adjoint), ctypes.byref(extras), 0, last - first, *trials
                )
                recompute_s += recomputed - entered
                adjoint_s += time.perf_counter() - recomputed
            if recorder is not None:
                recorder.add("recompute", recompute_s)
                recorder.add("adjoint", adjoint_s)

        # MKL's products inside each thread run one-threaded (torch.set_num_threads also sets MKL's count).
        with torch_threads(1):
            if self.n_threads == 1:
                for part in range(len(self.trial_blocks)):
                    through_all_chunks(part)
            else:
                with ThreadPoolExecutor(self.n_threads) as pool:
                    for future in [pool.submit(through_all_chunks, part) for part in range(len(self.trial_blocks))]:
                        future.result()
        for name, parts in self.gradient_parts.items():  # the blocks' own accumulators
            torch.sum(parts, dim=0, out=getattr(self, name))
        if recorder is not None:
            recorder.add("backward", time.perf_counter() - started)
            recorder.add("batches", 1)

    def _adjoint_buffers(self, first: int) -> ctypes.Structure:
        names = ("s_e", "cv_e", "cge_e", "cgi_e", "s_i", "cv_i", "cge_i", "cgi_i", "ls_e", "ls_i", "lv_e", "lv_i")
        names += ("lgi_e", "lge_e", "lgi_i", "leo", "g_sum", "g_trace")
        return make_struct(
            AdjointBuffers,
            first=first,
            raster_e=self.saved.raster_e,
            raster_i=self.saved.raster_i,
            **{name: getattr(self, name) for name in names},
        )

    # --- torch operations --------------------------------------------------------
    def _chunk_torch(self, index: int, first: int, last: int) -> None:
        problem, constants, n_i = self.problem, self.problem.constants, self.n_i
        k_e, k_i, dt, derivative = constants.e, constants.i, constants.dt, problem.derivative
        damping = problem.membrane_grad_scale
        v_e, ge_e, gi_e, integrating_e, v_i, ge_i, gi_i, integrating_i = self._recompute_torch(index, first, last)
        s_e, cv_e, cge_e, cgi_e = _adjoint_coefficients(
            v_e, ge_e, gi_e, integrating_e, k_e, dt, derivative, self.want_ge_e, True
        )
        s_i, cv_i, cge_i, cgi_i = _adjoint_coefficients(
            v_i, ge_i, gi_i, integrating_i, k_i, dt, derivative, True, self.want_gi_i
        )
        fired_e, fired_i = self.saved.raster_e[first:last], self.saved.raster_i[first:last]
        leo, lgi_e, lge_e, lgi_i = self.leo, self.lgi_e, self.lge_e, self.lgi_i
        for j in range(last - first - 1, -1, -1):
            lambda_s_e, lambda_s_i = self._spike_adjoints(j, first + j)
            # E: the reset cuts the adjoint where a spike fired; the spike adds the surrogate path.
            lambda_v1_e = self.lv_e.masked_fill_(fired_e[j], 0.0)
            if s_e is not None:
                lambda_v1_e.addcmul_(lambda_s_e, s_e[j])
            torch.mul(lgi_e[j + 1], constants.decay_gaba, out=lgi_e[j]).addcmul_(lambda_v1_e, cgi_e[j])
            if lge_e is not None:
                torch.mul(lge_e[j + 1], constants.decay_ampa, out=lge_e[j]).addcmul_(lambda_v1_e, cge_e[j])
            self.lv_e = lambda_v1_e.mul_(cv_e[j])
            if damping != 1.0:
                self.lv_e.mul_(damping)
            # I
            lambda_v1_i = self.lv_i.masked_fill_(fired_i[j], 0.0)
            if s_i is not None:
                lambda_v1_i.addcmul_(lambda_s_i, s_i[j])
            torch.mul(leo[j + 1, :, :n_i], constants.decay_ampa, out=leo[j, :, :n_i]).addcmul_(lambda_v1_i, cge_i[j])
            if lgi_i is not None:
                torch.mul(lgi_i[j + 1], constants.decay_gaba, out=lgi_i[j]).addcmul_(lambda_v1_i, cgi_i[j])
            self.lv_i = lambda_v1_i.mul_(cv_i[j])
            if damping != 1.0:
                self.lv_i.mul_(damping)
            # readout: u(t) enters score_sum at the step that makes it, and u(t + 1) through the decay
            torch.mul(leo[j + 1, :, n_i:], constants.decay_readout, out=leo[j, :, n_i:]).add_(self.g_sum)
            self._add_trace_gradient(leo[j, :, n_i:], first + j)

    def _recompute_torch(self, index: int, first: int, last: int) -> tuple[torch.Tensor, ...]:
        """States at the start of every step of a chunk, from its checkpoint and the saved spikes.

        Each step is :func:`bridge.dynamics.transition` with the saved spikes as its threshold and the
        chunk's synaptic input, gathered for all its steps at once, as its pathways (the readout is not
        recomputed). Returns ``(v_e, ge_e, gi_e, integrating_e, v_i, ge_i, gi_i, integrating_i)``,
        each (steps, batch, neurons); bit-identical to the forward pass.
        """
        problem, saved = self.problem, self.saved
        n, batch, n_e, n_i = last - first, self.batch, self.n_e, self.n_i
        rasters = {"e": saved.raster_e, "i": saved.raster_i}
        weights = {"w_ee": self.w_ee, "w_ie": self.w_ie, "w_ei": self.w_e_out[:, :n_i], "w_ii": self.w_ii}
        increments: dict[str, torch.Tensor] = {}  # per pathway: (steps, batch, n_post)
        if problem.sparse:
            rows, neuron = self.input_events.chunk(first, last, batch)
            drive = _scatter_rows(rows, neuron, self.w_in, n * batch).view(n, batch, n_e)
            events = {name: _raster_events(raster[first:last]) for name, raster in rasters.items()}
            for pathway in PATHWAYS:
                weight = weights.get(pathway.weight)
                if weight is not None:
                    rows, neuron = events[pathway.pre]
                    increments[pathway.weight] = _scatter_rows(rows, neuron, weight, n * batch).view(n, batch, -1)
        else:
            drive = saved.x[:, first:last].transpose(0, 1).to(self.dtype) @ self.w_in
            for pathway in PATHWAYS:
                weight = weights.get(pathway.weight)
                if weight is not None:
                    increments[pathway.weight] = rasters[pathway.pre][first:last].to(self.dtype) @ weight
        start = {name: value[index].clone() for name, value in saved.checkpoints.items()}
        if problem.graphs and n == problem.chunk_steps:  # a full chunk: replayed as one captured graph
            return self._recompute_captured(start, drive, increments, first)
        state = NetworkState(**start, u=None, score_sum=None, step=first)
        out = [self._empty(n, batch, n_e) for _ in range(3)]
        out.append(torch.empty(n, batch, n_e, dtype=torch.bool, device=self.device))
        out += [self._empty(n, batch, n_i) for _ in range(3)]
        out.append(torch.empty(n, batch, n_i, dtype=torch.bool, device=self.device))

        replay = _Replay(rasters, increments, first)
        for j in range(n):
            out[0][j], out[1][j], out[2][j] = state.v_e, state.ge_e, state.gi_e
            out[4][j], out[5][j], out[6][j] = state.v_i, state.ge_i, state.gi_i
            replay.step = first + j
            if problem.triton:  # the population kernels with the saved spikes as their threshold
                fired = (saved.raster_e[first + j], saved.raster_i[first + j])
                made = triton_step.kernel_transition(state, problem.constants, drive[j], replay.synapses, fired)
            else:
                made = transition(state, problem.constants, drive[j], replay.threshold, replay.synapses)
            out[3][j], out[7][j] = made.integrating_e, made.integrating_i
            state = made.state
        return tuple(out)

    def _recompute_captured(
        self, start: dict[str, torch.Tensor], drive: torch.Tensor, increments: dict[str, torch.Tensor], first: int
    ) -> tuple[torch.Tensor, ...]:
        """:meth:`_recompute_torch`'s steps for a full chunk, replayed as a captured CUDA graph (dense products).

        A step's inputs (its input drive, the chunk's increment of each pathway, the saved spikes as 0/1) are
        packed side by side in one tensor per step, the step function's ``drive``; the step is the same
        transition (or Triton step) with the saved spikes as its threshold, its index a 0-d tensor. Captured at
        the first full chunk of the backward pass. The results are the graph's buffers, valid until the next
        replay: the adjoint reads them before the next chunk is recomputed.
        """
        saved, constants, n = self.saved, self.problem.constants, drive.shape[0]
        names = [pathway.weight for pathway in PATHWAYS if pathway.weight in increments]
        rasters = [raster[first : first + n].to(self.dtype) for raster in (saved.raster_e, saved.raster_i)]
        parts = [drive, *(increments[name] for name in names), *rasters]
        widths = [part.shape[-1] for part in parts]
        packed = torch.cat(parts, dim=-1)

        def step(tensors: dict[str, torch.Tensor], inputs: torch.Tensor):
            drive_j, *rest = inputs.split(widths, dim=-1)
            chunk_increments = dict(zip(names, rest[: len(names)], strict=True))
            fired_e, fired_i = rest[-2] != 0, rest[-1] != 0
            current = NetworkState(**{name: tensors[name] for name in STATE_NAMES}, u=None, score_sum=None,
                                   step=tensors["step"])  # fmt: skip

            def synapses(name: str, spikes: torch.Tensor) -> torch.Tensor | None:
                return chunk_increments.get(name)

            if self.problem.triton:
                made = triton_step.kernel_transition(current, constants, drive_j, synapses, (fired_e, fired_i))
            else:

                def threshold(population: str, v1, integrating, k: PopulationConstants):
                    fired = fired_e if population == "e" else fired_i
                    return fired, fired

                made = transition(current, constants, drive_j, threshold, synapses)
            record = {name: tensors[name] for name in ("v_e", "ge_e", "gi_e", "v_i", "ge_i", "gi_i")}
            record |= {"integrating_e": made.integrating_e, "integrating_i": made.integrating_i}
            following = {name: getattr(made.state, name) for name in STATE_NAMES}
            following["step"] = made.state.step
            return following, record

        state = {**start, "step": torch.tensor(first, dtype=torch.int32, device=self.device)}
        if self.captured_recompute is None:
            self.captured_recompute = cuda_graphs.CapturedChunk(step, state, packed, warmup=1)
        _, records = self.captured_recompute(state, packed)
        fields = ("v_e", "ge_e", "gi_e", "integrating_e", "v_i", "ge_i", "gi_i", "integrating_i")
        return tuple(records[name] for name in fields)


# --- public entry points ------------------------------------------------------------


@dataclass(frozen=True)
class FusedEngine:
    """A configured fused engine; calling it is :func:`run_network_fused` with these options.

    Attributes
    ----------
    chunk_steps : int
        Steps between state checkpoints, and per block recomputed in the
        backward pass. The backward pass holds a few (chunk_steps, batch,
        neurons) buffers; fewer, longer chunks cost memory, more, shorter
        ones cost per-chunk overhead. 50 suits T = 2000 on CPU.
    implementation : {"auto", "kernels", "torch"}
        ``"kernels"``: the compiled CPU kernels (float32/float64 CPU tensors
        only; raises if they cannot be built). ``"torch"``: torch
        operations, any device. ``"auto"``: the kernels where they apply,
        torch operations elsewhere.
    propagation : {"auto", "sparse", "dense"}
        How spikes reach their targets in the torch implementation:
        ``"sparse"`` sums the weight rows of the neurons that fired (fast on
        CPU, where spikes are rare), ``"dense"`` multiplies the 0/1 spike
        matrix (no host synchronisation; better on GPU). ``"auto"``: sparse
        on CPU, dense elsewhere. The CPU kernels are always sparse.
    """

    chunk_steps: int = 50
    implementation: str = "auto"
    propagation: str = "auto"

    def __post_init__(self) -> None:
        if not (isinstance(self.chunk_steps, int) and self.chunk_steps > 0):
            raise ValueError(f"FusedEngine.chunk_steps must be a positive int, got {self.chunk_steps!r}")
        if self.implementation not in ("auto", "kernels", "torch"):
            raise ValueError(
                f"FusedEngine.implementation must be 'auto', 'kernels' or 'torch', got {self.implementation!r}"
            )
        if self.propagation not in ("auto", "sparse", "dense"):
            raise ValueError(f"FusedEngine.propagation must be 'auto', 'sparse' or 'dense', got {self.propagation!r}")

    def _library(self, tensor: torch.Tensor, surrogate: Surrogate | None) -> KernelLibrary | None:
        reason = None
        if not (tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64)):
            reason = "they need float32/float64 CPU tensors"
        elif surrogate is not None and surrogate.name not in KERNEL_SURROGATES:
            reason = f"they evaluate the surrogates {', '.join(KERNEL_SURROGATES)}, not {surrogate.name!r}"
        if self.implementation == "torch" or (self.implementation == "auto" and reason is not None):
            return None
        library = kernel_library()
        if self.implementation == "kernels" and (library is None or reason is not None):
            raise RuntimeError(f"FusedEngine(implementation='kernels'): {reason or 'they cannot be built here'}")
        return library

    def __call__(
        self,
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
        """Run whole trials; see :func:`run_network_fused`."""
        check_feedback(feedback, weights.w_out)

        if spike_fn is heaviside:
            surrogate = None
        elif isinstance(spike_fn, Surrogate):
            surrogate = spike_fn
        else:
            # Neither its forward nor its derivative is ours to assume.
            return run_network(
                x,
                v_init_e,
                v_init_i,
                weights,
                constants,
                spike_fn,
                record_population=record_population,
                record_readout=record_readout,
                membrane_grad_scale=membrane_grad_scale,
                feedback=feedback,
            )
        save = torch.is_grad_enabled() and any(w.requires_grad for w in weights)
        problem = self._problem(x, v_init_e, v_init_i, weights, constants, surrogate, save)
        problem.membrane_grad_scale = float(membrane_grad_scale)
        problem.feedback = None if feedback is None else feedback.detach().contiguous()
        w = weights
        # The kernels take the caller's flush-to-zero mode at the forward pass into the backward pass too.
        with flushed_denormals():
            outputs = _FusedNetwork.apply(problem, w.w_in, w.w_ei, w.w_ie, w.w_out, w.w_ee, w.w_ii)
        scores, counts_e, counts_i = outputs[:3]
        v_e, ge_e, gi_e, v_i, ge_i, gi_i, u, score_sum, ready_e, ready_i = outputs[3:13]
        population_e, population_i, trace = outputs[13:]
        return NetworkOutput(
            scores=scores,
            spike_counts_e=counts_e,
            spike_counts_i=counts_i,
            final_state=NetworkState(v_e, ge_e, gi_e, ready_e, v_i, ge_i, gi_i, ready_i, u, score_sum, x.shape[1]),
            population_e=population_e if record_population else None,
            population_i=population_i if record_population else None,
            readout_trace=trace if record_readout else None,
        )

    def _problem(self, x, v_init_e, v_init_i, weights: Weights, constants, surrogate, save: bool) -> _Problem:
        if x.dim() != 3 or x.shape[1] == 0:
            raise ValueError(f"x must be (batch, n_steps >= 1, n_input), got shape {tuple(x.shape)}")
        if x.dtype != torch.bool:
            if not bool(((x == 0) | (x == 1)).all()):
                raise ValueError("x must be a spike raster: bool, or numbers that are all 0 or 1")
            x = x != 0
        dtype = weights.w_out.dtype
        if any(w.dtype != dtype for w in weights) or v_init_e.dtype != dtype or v_init_i.dtype != dtype:
            raise ValueError("weights and initial potentials must share one floating-point dtype")
        device = v_init_e.device
        # The switches are read at each call (both off by default; refused off CUDA, see their functions).
        triton, graphs = triton_step.wanted(device), cuda_graphs.wanted(device)
        if graphs and self.propagation == "sparse":
            raise ValueError("BIOSIM_CUDA_GRAPHS=on: a captured chunk needs dense products, not "
                             "FusedEngine(propagation='sparse') (its nonzero waits for the host)")  # fmt: skip
        sparse = self.propagation == "sparse" or (self.propagation == "auto" and device.type == "cpu" and not graphs)
        library = self._library(v_init_e, surrogate)
        return _Problem(
            x=x.contiguous(),
            v_init_e=v_init_e.detach(),
            v_init_i=v_init_i.detach(),
            constants=constants,
            surrogate=surrogate,
            chunk_steps=self.chunk_steps,
            sparse=sparse,
            save=save,
            library=library,
            triton=triton and library is None,
            graphs=graphs and library is None,
        )

    @torch.no_grad()
    def spike_rasters(
        self,
        x: torch.Tensor,
        v_init_e: torch.Tensor,
        v_init_i: torch.Tensor,
        weights: Weights,
        constants: Constants,
        *,
        readout_trace: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """The forward pass alone, with every spike: ``(scores, raster_e, raster_i)``.

        The rasters are bool tensors of shape ``(n_steps, batch, n_e)`` and
        ``(n_steps, batch, n_i)``: the spikes of :func:`run_network_fused`,
        which are those of the eager engine (and, in float64, of Brian2).
        Used to validate trained networks without the eager engine's
        per-step overhead. With ``readout_trace``, a fourth element: the
        readout potentials after each step, ``(batch, n_steps, n_classes)``
        (the readout windows of digit streams, :mod:`biosim.streams`).
        """
        problem = self._problem(x, v_init_e, v_init_i, weights, constants, None, save=False)
        w_e_out = torch.cat([weights.w_ei, weights.w_out], dim=1)
        with flushed_denormals():
            blocks = (None if w is None else w.contiguous() for w in (weights.w_ee, weights.w_ii))
            _, raster_e, raster_i, _, score_sum, trace, *_ = _run_forward(
                problem, weights.w_in.contiguous(), weights.w_ie.contiguous(), w_e_out, weights.w_out.shape[1], *blocks
            )
        rasters = (score_sum / x.shape[1], raster_e, raster_i)
        return (*rasters, trace) if readout_trace else rasters


_DEFAULT_ENGINE = FusedEngine()


def run_network_fused(
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
    """Run whole trials with the fused engine: a drop-in for :func:`bridge.eager.run_network`.

    Parameters
    ----------
    x : Tensor (batch, n_steps, n_input) of bool
        Input spike raster (0/1 numbers are accepted and converted).
    v_init_e, v_init_i : Tensor (batch, n_e), (batch, n_i)
        Initial membrane potentials (mV), in the dtype of the weights. No
        gradient flows to them.
    weights : Weights
        Effective weights (uS; readout dimensionless), with the recurrent
        blocks where the network has them. Gradients flow to all of them
        (the caller's clamp and mask act outside, through autograd).
    constants : Constants
        From :func:`bridge.dynamics.make_constants`.
    spike_fn : callable
        :func:`bridge.dynamics.heaviside` (spikes carry no gradient) or a
        :class:`bridge.surrogates.Surrogate`, whose ``derivative`` the
        adjoint uses. Any other callable runs on the eager engine instead.
    record_population : bool
        Also return the E and I spike counts per step.
    record_readout : bool
        Also return the readout potentials after each step.
    membrane_grad_scale : float
        As in :func:`bridge.eager.run_network`: the membrane adjoint is
        multiplied by it at every step (1: exact gradients).
    feedback : Tensor (n_e, n_classes), optional
        As in :func:`bridge.eager.run_network`: the E spikes' adjoint reads
        ``[w_ei, feedback]`` instead of ``[w_ei, w_out]`` (None: exact).

    Returns
    -------
    NetworkOutput
        As :func:`bridge.eager.run_network`, with the same spikes. ``scores``,
        ``spike_counts_e``/``_i``, the floating-point fields of
        ``final_state``, the E population counts and the readout trace are
        differentiable with respect to the weights, with the gradients of the
        eager engine's autograd graph; the refractory counters and the I
        population counts are not.

    Notes
    -----
    Flushes denormals to zero during the forward and the backward pass, and
    restores the caller's mode after each. Uses the compiled CPU kernels
    where they apply (see the module docstring) and torch operations
    elsewhere; :class:`FusedEngine` chooses explicitly.
    """
    return _DEFAULT_ENGINE(
        x,
        v_init_e,
        v_init_i,
        weights,
        constants,
        spike_fn,
        record_population=record_population,
        record_readout=record_readout,
        membrane_grad_scale=membrane_grad_scale,
        feedback=feedback,
    )
