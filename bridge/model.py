"""Trainable PING network: a thin ``nn.Module`` around :func:`bridge.dynamics.step`.

The time loop lives in one function per *engine*, looked up by name in
:data:`ENGINES`. ``"eager"`` (:func:`run_network`) calls the pure step function
once per time step; a faster engine can be registered later under another
name without touching the model or the trainer, as long as it has the same
signature and returns the same :class:`NetworkOutput`.

Dale's law: the model stores unconstrained conductances and the forward pass
uses ``max(w, 0)``. The clamp is :func:`torch.clamp` with ``min=0``, whose
derivative is 1 at ``w >= 0`` and 0 at ``w < 0``: a stored zero (the
``"zero"`` initialisation) still receives a gradient and can grow, while a
negative (pruned) entry receives none. ``torch.relu`` would make an
all-zero matrix a dead fixed point, which would decide the
``trainable_zero_init`` protocol by a choice of subgradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from biosim.params import NetworkParams
from biosim.weights import NetworkWeights

from .dynamics import Constants, NetworkState, SpikeFunction, Weights, heaviside, initial_state, make_constants, step

__all__ = [
    "ENGINES",
    "MATRICES",
    "NetworkOutput",
    "PINGModel",
    "get_engine",
    "run_network",
]

MATRICES = ("w_in", "w_ei", "w_ie", "w_out")
"""Stored weight matrices of the model, in :class:`~bridge.dynamics.Weights` order."""


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

    Returns
    -------
    NetworkOutput
        Scores are ``score_sum / n_steps``, as in :func:`bridge.simulate.run_mirror`.
    """
    n_steps = x.shape[1]
    dtype = v_init_e.dtype
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
        spikes_e, spikes_i, state = step(x[:, t].to(dtype), state, constants, weights, spike_fn)
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


def run_network_fused(*args, **kwargs) -> NetworkOutput:
    """The fused engine of :mod:`bridge.fast_engine` (same signature and results, ~10x faster)."""
    from .fast_engine import run_network_fused as fused

    return fused(*args, **kwargs)


ENGINES: dict[str, Engine] = {"eager": run_network, "fused": run_network_fused}
"""Time-loop engines by name; each has the signature of :func:`run_network`."""


def get_engine(name: str) -> Engine:
    """The engine registered as ``name``; raises ``ValueError`` listing the valid names."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINES)}")
    return ENGINES[name]


class PINGModel(nn.Module):
    """The PING network with stored, unconstrained weights and per-matrix trainable flags.

    Parameters
    ----------
    params : NetworkParams
        Network and trial definition (sizes, constants, time grid).
    weights : NetworkWeights
        Initial *stored* weights (e.g. :func:`biosim.weights.init_weights`);
        negative conductances are kept and act as pruned edges.
    trainable : dict of str to bool, optional
        Trainable flag per matrix (``w_in``, ``w_ei``, ``w_ie``, ``w_out``);
        missing ones default to True.
    spike_fn : callable
        Spike function for the forward pass (default exact Heaviside, no gradient).
    engine : str
        Key of :data:`ENGINES`.
    dtype : torch.dtype
        Parameter and state dtype.
    w_out_unit : float
        Unit of the readout parameter: the model holds ``w_out / w_out_unit``
        and the network sees ``w_out_unit x`` the parameter. The network and
        every weight it exchanges are unchanged; what changes is the size of
        an optimizer step in the readout (Adam moves a parameter by about
        ``lr`` per step, so ``w_out`` moves by about ``lr x w_out_unit``).
        See docs/training.md, "The readout's scale".
    membrane_grad_scale : float
        Damping of the membrane gradient through time (:func:`run_network`).

    Attributes
    ----------
    w_in, w_ei, w_ie : nn.Parameter
        Stored conductances (uS), shapes ``(pre, post)`` as in :mod:`biosim.weights`.
    w_out : nn.Parameter
        Stored readout weights divided by ``w_out_unit``.
    input_mask : Tensor (n_input, n_e) of bool
        Buffer: which input -> E edges exist. ``w_in`` is multiplied by it in
        the forward pass, so entries outside the mask get zero gradient.
    """

    def __init__(
        self,
        params: NetworkParams,
        weights: NetworkWeights,
        *,
        trainable: dict[str, bool] | None = None,
        spike_fn: SpikeFunction = heaviside,
        engine: str = "eager",
        dtype: torch.dtype = torch.float32,
        w_out_unit: float = 1.0,
        membrane_grad_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not (isinstance(membrane_grad_scale, (int, float)) and 0 < membrane_grad_scale <= 1):
            raise ValueError(f"membrane_grad_scale must lie in (0, 1], got {membrane_grad_scale!r}")
        self.membrane_grad_scale = float(membrane_grad_scale)
        if not (isinstance(w_out_unit, (int, float)) and math.isfinite(w_out_unit) and w_out_unit > 0):
            raise ValueError(f"w_out_unit must be a finite number > 0, got {w_out_unit!r}")
        self.w_out_unit = float(w_out_unit)
        weights.check_shapes(params)
        trainable = dict(trainable or {})
        unknown = sorted(set(trainable) - set(MATRICES))
        if unknown:
            raise ValueError(f"trainable: unknown matrix name(s) {unknown}; valid names: {', '.join(MATRICES)}")
        self.params = params
        self.constants = make_constants(params)
        self.spike_fn = spike_fn
        self.engine = engine
        get_engine(engine)  # fail at construction, not at the first forward
        for name in MATRICES:
            value = np.asarray(getattr(weights, name), dtype=np.float64)
            value = torch.as_tensor(value / self.w_out_unit if name == "w_out" else value, dtype=dtype)
            self.register_parameter(name, nn.Parameter(value.clone(), requires_grad=trainable.get(name, True)))
        self.register_buffer("input_mask", torch.as_tensor(np.asarray(weights.input_mask, dtype=bool)).clone())

    @classmethod
    def from_network_weights(
        cls,
        params: NetworkParams,
        weights: NetworkWeights,
        *,
        trainable: dict[str, bool] | None = None,
        spike_fn: SpikeFunction = heaviside,
        engine: str = "eager",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        w_out_unit: float = 1.0,
        membrane_grad_scale: float = 1.0,
    ) -> PINGModel:
        """Build a model from stored numpy weights and move it to ``device``."""
        model = cls(
            params,
            weights,
            trainable=trainable,
            spike_fn=spike_fn,
            engine=engine,
            dtype=dtype,
            w_out_unit=w_out_unit,
            membrane_grad_scale=membrane_grad_scale,
        )
        return model.to(device)

    @property
    def trainable(self) -> dict[str, bool]:
        """Trainable flag of each matrix."""
        return {name: getattr(self, name).requires_grad for name in MATRICES}

    def effective_weights(self) -> Weights:
        """Weights the dynamics see: conductances clamped at 0 (Dale's law), ``w_in`` masked."""
        w_in = torch.clamp(self.w_in, min=0.0) * self.input_mask.to(self.w_in.dtype)
        w_out = self.w_out * self.w_out_unit if self.w_out_unit != 1.0 else self.w_out
        return Weights(w_in, torch.clamp(self.w_ei, min=0.0), torch.clamp(self.w_ie, min=0.0), w_out)

    def to_network_weights(self, stored: bool = True) -> NetworkWeights:
        """The weights as float64 numpy arrays.

        Parameters
        ----------
        stored : bool
            True: the stored, unconstrained values (what training changes).
            False: the effective values (what Brian2 receives).
        """
        arrays = {name: getattr(self, name).detach().cpu().to(torch.float64).numpy().copy() for name in MATRICES}
        arrays["w_out"] = arrays["w_out"] * self.w_out_unit
        weights = NetworkWeights(**arrays, input_mask=self.input_mask.detach().cpu().numpy().copy())
        return weights if stored else weights.effective()

    def forward(
        self,
        x: torch.Tensor,
        v_init_e: torch.Tensor,
        v_init_i: torch.Tensor,
        *,
        record_population: bool = False,
        record_readout: bool = False,
    ) -> NetworkOutput:
        """Simulate a batch of trials.

        Parameters
        ----------
        x : Tensor (batch, n_steps, n_input) of bool
            Input spike raster.
        v_init_e, v_init_i : Tensor (batch, n_e), (batch, n_i)
            Initial membrane potentials (mV); cast to the model's dtype.
        record_population : bool
            Also return per-step population spike counts.
        record_readout : bool
            Also return the readout potentials after each step.
        """
        dtype = self.w_out.dtype
        return get_engine(self.engine)(
            x,
            v_init_e.to(dtype),
            v_init_i.to(dtype),
            self.effective_weights(),
            self.constants,
            self.spike_fn,
            record_population=record_population,
            record_readout=record_readout,
            membrane_grad_scale=self.membrane_grad_scale,
        )
