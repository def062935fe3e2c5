"""Spike functions with surrogate gradients, chosen by name.

The forward pass is always the exact Heaviside step of the membrane argument
``v - v_threshold``: ``H = 1`` for ``v > v_threshold``, else ``0`` (the same
strict inequality as the Brian2 threshold). The backward pass replaces the
step's derivative (a Dirac delta) by a smooth surrogate ``sigma'(x)`` of
``x = (v - v_threshold) / unit`` with a ``slope`` ``k`` in 1/unit. The default
unit is the volt, Brian2's base unit (``unit_mv = 1000``); the mirror works in
mV, so the derivative per mV carries the factor ``1 / unit_mv``:
``d spike / d v = sigma'((v - v_threshold) / unit_mv) / unit_mv``.

================  ================================================  =============
name              surrogate derivative ``sigma'(x)``                peak (1/unit)
================  ================================================  =============
``fast_sigmoid``  ``1 / (1 + k |x|)^2`` (SuperSpike, Zenke & Ganguli  1
                  2018)
``sigmoid``       ``k s (1 - s)``, ``s = 1 / (1 + exp(-k x))``      ``k / 4``
``atan``          ``(k / 2) / (1 + (pi k x / 2)^2)``, the           ``k / 2``
                  derivative of ``arctan(pi k x / 2) / pi + 1/2``
``triangle``      ``max(0, 1 - k |x|)``; zero for ``|x| >= 1 / k``  1
================  ================================================  =============

The default is ``fast_sigmoid`` with slope ``k = 1 / V`` (the reference study's slope 1):
``d spike / d v = 1e-3 / (1 + |v - v_threshold| / 1 V)^2`` per mV, nearly
flat over the membrane's range, so every neuron receives a learning signal.
Why volts: with the same form in mV (``unit_mv = 1``, peak 1/mV) the
surrogate linearisation of the all-to-all E-I loop is strongly unstable and
BPTT gradients over a 200 ms trial grow to ~1e99 (float64; float32
overflows at the first batch), measured on the calibrated network; in volts
they stay ~1e4 (docs/model.md, "Surrogate gradients"). ``unit_mv`` and
``slope`` are configurable (``TrainConfig.surrogate_unit_mv``).
All forms except ``triangle`` are strictly positive for every finite ``x``.

Examples
--------
>>> spike_fn = get_surrogate("fast_sigmoid", slope=1.0)  # 1/V
>>> x = torch.tensor([-2.0, 0.0, 3.0], requires_grad=True)
>>> spike_fn(x)
tensor([0., 0., 1.], grad_fn=<SurrogateSpikeBackward>)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["DEFAULT_SURROGATE", "DEFAULT_SLOPE", "SURROGATES", "Surrogate", "get_surrogate", "surrogate_derivative"]

DEFAULT_SURROGATE = "fast_sigmoid"
DEFAULT_SLOPE = 1.0
"""Default surrogate slope (1/unit, i.e. 1/V by default)."""
DEFAULT_UNIT_MV = 1000.0
"""Default unit of the surrogate's argument, in mV (1000 mV = 1 V)."""


def _fast_sigmoid(x: torch.Tensor, slope: float) -> torch.Tensor:
    return 1.0 / (1.0 + slope * x.abs()) ** 2


def _sigmoid(x: torch.Tensor, slope: float) -> torch.Tensor:
    # sigmoid(kx) * sigmoid(-kx) == s (1 - s) without the cancellation of 1 - s for large kx.
    return slope * torch.sigmoid(slope * x) * torch.sigmoid(-slope * x)


def _atan(x: torch.Tensor, slope: float) -> torch.Tensor:
    return (slope / 2.0) / (1.0 + (math.pi / 2.0 * slope * x) ** 2)


def _triangle(x: torch.Tensor, slope: float) -> torch.Tensor:
    return torch.clamp(1.0 - slope * x.abs(), min=0.0)


SURROGATES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "fast_sigmoid": _fast_sigmoid,
    "sigmoid": _sigmoid,
    "atan": _atan,
    "triangle": _triangle,
}
"""Surrogate derivatives ``sigma'(x; slope)`` by name (see the module docstring)."""


class SurrogateSpike(torch.autograd.Function):
    """Heaviside forward, ``surrogate.derivative(x)`` backward."""

    @staticmethod
    def forward(x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:  # type: ignore[override]
        return (x > 0).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        x, surrogate = inputs
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_output * ctx.surrogate.derivative(x), None


@dataclass(frozen=True)
class Surrogate:
    """A spike function ``x -> H(x)`` whose backward pass uses a named surrogate.

    Attributes
    ----------
    name : str
        A key of :data:`SURROGATES`.
    slope : float
        Slope ``k`` of the surrogate (1/unit), > 0.
    unit_mv : float
        Unit of the surrogate's argument in mV (default 1000: volts).
    """

    name: str = DEFAULT_SURROGATE
    slope: float = DEFAULT_SLOPE
    unit_mv: float = DEFAULT_UNIT_MV

    def __post_init__(self) -> None:
        if self.name not in SURROGATES:
            raise ValueError(f"unknown surrogate {self.name!r}; valid surrogates: {', '.join(SURROGATES)}")
        for field_name in ("slope", "unit_mv"):
            value = getattr(self, field_name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"surrogate {field_name} must be a finite number > 0, got {value!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``H(x)`` of membrane arguments ``x = v - v_threshold`` (mV), same dtype as ``x``."""
        return SurrogateSpike.apply(x, self)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """``d spike / d v`` (1/mV) at ``x = v - v_threshold`` (mV), as used by the backward pass."""
        unit = float(self.unit_mv)
        return SURROGATES[self.name](x / unit, float(self.slope)) / unit


def get_surrogate(
    name: str = DEFAULT_SURROGATE, slope: float = DEFAULT_SLOPE, unit_mv: float = DEFAULT_UNIT_MV
) -> Surrogate:
    """The spike function of surrogate ``name`` with slope ``slope`` (1/unit).

    Parameters
    ----------
    name : str
        One of ``fast_sigmoid`` (default), ``sigmoid``, ``atan``, ``triangle``.
    slope : float
        Surrogate slope ``k`` (1/unit), default 1.
    unit_mv : float
        Unit of the surrogate's argument in mV, default 1000 (volts).

    Returns
    -------
    Surrogate
        Callable ``spike_fn(x) -> H(x)`` for :func:`bridge.dynamics.step`.

    Raises
    ------
    ValueError
        If ``name`` is unknown (the valid names are listed) or ``slope`` is not > 0.
    """
    return Surrogate(name, slope, unit_mv)


def surrogate_derivative(
    name: str, x: torch.Tensor, slope: float = DEFAULT_SLOPE, unit_mv: float = DEFAULT_UNIT_MV
) -> torch.Tensor:
    """Surrogate derivative ``d spike / d v`` (1/mV) of surrogate ``name`` at ``x = v - v_threshold`` (mV)."""
    return get_surrogate(name, slope, unit_mv).derivative(x)
