"""Trainable PING network: a thin ``nn.Module`` around :func:`bridge.dynamics.step`.

The time loop lives in one function per *engine*, looked up by name in
:data:`ENGINES`: ``"eager"`` (:func:`bridge.eager.run_network`) calls the pure
step function once per time step, ``"fused"``
(:func:`bridge.fast_engine.run_network_fused`) runs the loop with a
hand-derived adjoint. Another engine can be registered under another name
without touching the model or the trainer, as long as it has the same
signature and returns the same :class:`~bridge.eager.NetworkOutput`.

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

import numpy as np
import torch
from torch import nn

from biosim.params import NetworkParams
from biosim.weights import NetworkWeights

from .dynamics import SpikeFunction, Weights, heaviside, make_constants
from .eager import Engine, NetworkOutput, run_network
from .fast_engine import run_network_fused

__all__ = [
    "ENGINES",
    "MATRICES",
    "RECURRENT_BLOCKS",
    "NetworkOutput",
    "PINGModel",
    "get_engine",
    "run_network",
]

MATRICES = ("w_in", "w_ei", "w_ie", "w_out")
"""Stored weight matrices of every model, in :class:`~bridge.dynamics.Weights` order."""
RECURRENT_BLOCKS = Weights.BLOCKS
"""The optional recurrent blocks (``w_ee``, ``w_ii``): parameters of the models whose network has them."""


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
        Trainable flag per matrix (``w_in``, ``w_ei``, ``w_ie``, ``w_out``,
        and ``w_ee``, ``w_ii`` where the network has them); missing ones
        default to True. A block the network lacks may be named with
        False (it has nothing to train), never with True.
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
    feedback : ndarray (n_e, n_classes), optional
        Fixed feedback matrix through which the readout's error reaches the
        E spikes instead of ``w_out`` (:mod:`bridge.feedback`); None: exact BPTT.

    Attributes
    ----------
    w_in, w_ei, w_ie : nn.Parameter
        Stored conductances (uS), shapes ``(pre, post)`` as in :mod:`biosim.weights`.
    w_out : nn.Parameter
        Stored readout weights divided by ``w_out_unit``.
    w_ee, w_ii : nn.Parameter
        Stored recurrent blocks (uS), only where ``params`` has them
        (``connectivity.p_ee`` / ``p_ii`` > 0).
    matrices : tuple of str
        The names of the stored matrices, :data:`MATRICES` and then the blocks.
    input_mask : Tensor (n_input, n_e) of bool
        Buffer: which input -> E edges exist. ``w_in`` is multiplied by it in
        the forward pass, so entries outside the mask get zero gradient.
    feedback : Tensor (n_e, n_classes) or None
        Buffer: the feedback matrix, in the model's dtype (saved with the
        model's state where there is one).
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
        feedback: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(membrane_grad_scale, (int, float)) and 0 < membrane_grad_scale <= 1):
            raise ValueError(f"membrane_grad_scale must lie in (0, 1], got {membrane_grad_scale!r}")
        self.membrane_grad_scale = float(membrane_grad_scale)
        if not (isinstance(w_out_unit, (int, float)) and math.isfinite(w_out_unit) and w_out_unit > 0):
            raise ValueError(f"w_out_unit must be a finite number > 0, got {w_out_unit!r}")
        self.w_out_unit = float(w_out_unit)
        weights.check_shapes(params)
        self.matrices = tuple(weights.matrices())
        trainable = dict(trainable or {})
        unknown = sorted(set(trainable) - set(MATRICES) - set(RECURRENT_BLOCKS))
        if unknown:
            valid = ", ".join((*MATRICES, *RECURRENT_BLOCKS))
            raise ValueError(f"trainable: unknown matrix name(s) {unknown}; valid names: {valid}")
        absent = sorted(name for name, flag in trainable.items() if flag and name not in self.matrices)
        if absent:
            raise ValueError(
                f"trainable: {absent} set to True, but the network has no such block (connectivity.p_ee / p_ii = 0)"
            )
        self.params = params
        self.constants = make_constants(params)
        self.spike_fn = spike_fn
        self.engine = engine
        get_engine(engine)  # fail at construction, not at the first forward
        for name in self.matrices:
            value = np.asarray(getattr(weights, name), dtype=np.float64)
            value = torch.as_tensor(value / self.w_out_unit if name == "w_out" else value, dtype=dtype)
            self.register_parameter(name, nn.Parameter(value.clone(), requires_grad=trainable.get(name, True)))
        self.register_buffer("input_mask", torch.as_tensor(np.asarray(weights.input_mask, dtype=bool)).clone())
        if feedback is not None:
            feedback = torch.as_tensor(np.asarray(feedback, dtype=np.float64), dtype=dtype)
            if feedback.shape != self.w_out.shape:
                expected = tuple(self.w_out.shape)
                raise ValueError(f"feedback: expected the shape of w_out {expected}, got {tuple(feedback.shape)}")
        self.register_buffer("feedback", feedback)

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
        feedback: np.ndarray | None = None,
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
            feedback=feedback,
        )
        return model.to(device)

    @property
    def trainable(self) -> dict[str, bool]:
        """Trainable flag of each matrix the model has."""
        return {name: getattr(self, name).requires_grad for name in self.matrices}

    def effective_weights(self) -> Weights:
        """Weights the dynamics see: conductances clamped at 0 (Dale's law), ``w_in`` masked."""
        w_in = torch.clamp(self.w_in, min=0.0) * self.input_mask.to(self.w_in.dtype)
        w_out = self.w_out * self.w_out_unit if self.w_out_unit != 1.0 else self.w_out
        blocks = {name: torch.clamp(getattr(self, name), min=0.0) for name in self.matrices if name in RECURRENT_BLOCKS}
        return Weights(w_in, torch.clamp(self.w_ei, min=0.0), torch.clamp(self.w_ie, min=0.0), w_out, **blocks)

    def to_network_weights(self, stored: bool = True) -> NetworkWeights:
        """The weights as float64 numpy arrays.

        Parameters
        ----------
        stored : bool
            True: the stored, unconstrained values (what training changes).
            False: the effective values (what Brian2 receives).
        """
        arrays = {name: getattr(self, name).detach().cpu().to(torch.float64).numpy().copy() for name in self.matrices}
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
        # Only with a feedback matrix: an engine registered without the option still runs exact models.
        options = {} if self.feedback is None else {"feedback": self.feedback}
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
            **options,
        )
