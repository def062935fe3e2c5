"""Synaptic weight matrices: initialisation, Dale's law and validation.

Conductance matrices are in uS, laid out ``(n_pre, n_post)``:

========  =====================  =========================================
name      shape                  meaning
========  =====================  =========================================
``w_in``  (n_input, n_e)         input -> E, zero outside ``input_mask``
``w_ei``  (n_e, n_i)             E -> I (drives the interneurons)
``w_ie``  (n_i, n_e)             I -> E (the inhibitory shunt)
``w_out`` (n_e, n_classes)       E -> readout, dimensionless, any sign
========  =====================  =========================================

Training stores unconstrained values; the network uses ``max(w, 0)``
(Dale's law). A stored entry below zero is a structural zero ("pruned").
Brian2 only ever receives effective (clamped) weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .params import NetworkParams

__all__ = [
    "CONDUCTANCE_MATRICES",
    "DaleLawError",
    "WeightShapeError",
    "NetworkWeights",
    "expected_shapes",
    "init_weights",
    "input_mask",
]

CONDUCTANCE_MATRICES = ("w_in", "w_ei", "w_ie")

# Random streams are SeedSequence([seed, WEIGHT_STREAM, k]) with k >= 1: the
# tag keeps them apart from the input streams of biosim.inputs (same seed).
WEIGHT_STREAM = 1
_MASK, _W_IN, _W_EI, _W_IE, _W_OUT, _P_EI, _P_IE = range(1, 8)


def _rng(seed: int, k: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, WEIGHT_STREAM, k]))


MATRICES = (*CONDUCTANCE_MATRICES, "w_out")

# An initialisation is "canonical", "zero", or a multiple of canonical.
InitSpec = str | float


class WeightShapeError(ValueError):
    """A weight matrix does not have the shape the network needs."""


class DaleLawError(ValueError):
    """A conductance weight is negative where only effective weights are allowed."""


def expected_shapes(params: NetworkParams) -> dict[str, tuple[int, int]]:
    c = params.connectivity
    return {
        "w_in": (c.n_input, c.n_e),
        "w_ei": (c.n_e, c.n_i),
        "w_ie": (c.n_i, c.n_e),
        "w_out": (c.n_e, c.n_classes),
    }


@dataclass(frozen=True)
class NetworkWeights:
    """Stored weights of one network (see the module docstring for layout)."""

    w_in: np.ndarray
    w_ei: np.ndarray
    w_ie: np.ndarray
    w_out: np.ndarray
    input_mask: np.ndarray
    """Boolean (n_input, n_e): which input -> E edges exist."""

    def check_shapes(self, params: NetworkParams) -> None:
        """Raise :class:`WeightShapeError` naming the first matrix of the wrong shape."""
        shapes = expected_shapes(params)
        shapes["input_mask"] = shapes["w_in"]
        for name, shape in shapes.items():
            found = np.shape(getattr(self, name))
            if found != shape:
                raise WeightShapeError(f"{name}: expected shape {shape} (pre, post), found {found}")

    def check_dale(self) -> None:
        """Raise :class:`DaleLawError` if a conductance matrix has a negative entry."""
        for name in CONDUCTANCE_MATRICES:
            w = getattr(self, name)
            if np.any(w < 0):
                n_negative = int(np.sum(w < 0))
                raise DaleLawError(
                    f"{name}: {n_negative} negative conductance(s) (min {float(np.min(w)):.3g} uS); "
                    "Dale's law requires effective weights >= 0, pass weights.effective()"
                )

    def effective(self) -> NetworkWeights:
        """Weights as the network uses them: conductances clamped at 0, masked input."""
        return replace(
            self,
            w_in=np.where(self.input_mask, np.maximum(self.w_in, 0.0), 0.0),
            w_ei=np.maximum(self.w_ei, 0.0),
            w_ie=np.maximum(self.w_ie, 0.0),
        )

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in (*MATRICES, "input_mask")}


def input_mask(params: NetworkParams, seed: int) -> np.ndarray:
    """Fixed random input -> E connectivity with probability ``p_input``."""
    c = params.connectivity
    return _rng(seed, _MASK).random((c.n_input, c.n_e)) < c.p_input


def _scale(spec: InitSpec, name: str) -> float:
    if spec == "canonical":
        return 1.0
    if spec == "zero":
        return 0.0
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return float(spec)
    raise ValueError(f"{name}: unknown initialisation {spec!r}; use 'canonical', 'zero' or a number (x canonical)")


def init_weights(
    params: NetworkParams,
    seed: int,
    *,
    w_in: InitSpec = "canonical",
    w_ei: InitSpec = "canonical",
    w_ie: InitSpec = "canonical",
) -> NetworkWeights:
    """Draw the canonical, fan-in normalised weights of SPEC section 1.

    Each matrix has its own random stream (``SeedSequence([seed, 1, k])``), so
    changing one matrix's initialisation leaves the others unchanged.

    Parameters
    ----------
    params : NetworkParams
    seed : int
    w_in, w_ei, w_ie : "canonical", "zero" or float
        A float multiplies the canonical draw (``0.1`` = 0.1 x canonical).

    Returns
    -------
    NetworkWeights
        Stored values (negative draws are kept; see :meth:`NetworkWeights.effective`).
    """
    c, init = params.connectivity, params.init

    mask = input_mask(params, seed)
    w_in_draw = _rng(seed, _W_IN).normal(init.w_in_mean, init.w_in_std, (c.n_input, c.n_e)) * init.input_scale_us
    w_ei_draw = _rng(seed, _W_EI).normal(init.w_ei_mean_us, init.w_ei_std_us, (c.n_e, c.n_i)) / c.n_e
    w_ie_draw = _rng(seed, _W_IE).normal(init.w_ie_mean_us, init.w_ie_std_us, (c.n_i, c.n_e)) / c.n_i
    w_out = _rng(seed, _W_OUT).normal(0.0, init.w_out_std, (c.n_e, c.n_classes))
    # Sparse E<->I blocks (p < 1) are fixed masks folded in as zeros.
    if c.p_ei < 1.0:
        w_ei_draw = w_ei_draw * (_rng(seed, _P_EI).random(w_ei_draw.shape) < c.p_ei)
    if c.p_ie < 1.0:
        w_ie_draw = w_ie_draw * (_rng(seed, _P_IE).random(w_ie_draw.shape) < c.p_ie)
    return NetworkWeights(
        w_in=np.where(mask, w_in_draw * _scale(w_in, "w_in"), 0.0),
        w_ei=w_ei_draw * _scale(w_ei, "w_ei"),
        w_ie=w_ie_draw * _scale(w_ie, "w_ie"),
        w_out=w_out,
        input_mask=mask,
    )
