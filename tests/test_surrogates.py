"""Tests of bridge.surrogates: exact Heaviside forward, named surrogate derivatives backward."""

from __future__ import annotations

import math

import pytest
import torch

from bridge.surrogates import DEFAULT_SLOPE, DEFAULT_SURROGATE, SURROGATES, get_surrogate, surrogate_derivative

NAMES = sorted(SURROGATES)
SLOPES = (0.5, 1.0, 3.0)


def closed_form(name: str, x: torch.Tensor, slope: float) -> torch.Tensor:
    """The surrogate derivatives as written in the module docstring, independently of its code."""
    if name == "fast_sigmoid":
        return 1.0 / (1.0 + slope * x.abs()) ** 2
    if name == "sigmoid":
        # k s (1 - s) with s = sigmoid(k x), written without the cancellation of 1 - s at large k x.
        decay = torch.exp(-slope * x.abs())
        return slope * decay / (1.0 + decay) ** 2
    if name == "atan":
        return (slope / 2.0) / (1.0 + (math.pi / 2.0 * slope * x) ** 2)
    if name == "triangle":
        return torch.clamp(1.0 - slope * x.abs(), min=0.0)
    raise AssertionError(name)


def membrane_arguments() -> torch.Tensor:
    """``v - v_threshold`` (mV) across +-100 mV, including exactly 0 and values next to it."""
    grid = torch.linspace(-100.0, 100.0, 2001, dtype=torch.float64)
    tiny = torch.tensor([0.0, 1e-12, -1e-12, 5e-324, -5e-324], dtype=torch.float64)
    return torch.cat([grid, tiny])


def test_defaults():
    spike_fn = get_surrogate()
    assert (spike_fn.name, spike_fn.slope) == (DEFAULT_SURROGATE, DEFAULT_SLOPE) == ("fast_sigmoid", 1.0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_is_exact_heaviside(name, dtype):
    x = membrane_arguments().to(dtype)
    spikes = get_surrogate(name, 1.0)(x)
    assert spikes.dtype == dtype
    assert torch.equal(spikes, (x > 0).to(dtype))  # strict: v == v_threshold does not spike
    assert spikes[x == 0].eq(0).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("slope", SLOPES)
def test_gradient_matches_closed_form_float64(name, slope):
    x = membrane_arguments().requires_grad_(True)
    upstream = torch.linspace(0.5, 2.0, len(x), dtype=torch.float64)
    (get_surrogate(name, slope, unit_mv=1.0)(x) * upstream).sum().backward()
    expected = closed_form(name, x.detach(), slope) * upstream
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(
        surrogate_derivative(name, x.detach(), slope, unit_mv=1.0), closed_form(name, x.detach(), slope)
    )


@pytest.mark.parametrize("unit_mv", [1.0, 1000.0])
@pytest.mark.parametrize("name", NAMES)
def test_gradient_finite_and_positive_across_100_mv(name, unit_mv):
    x = membrane_arguments().requires_grad_(True)
    get_surrogate(name, 1.0, unit_mv)(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad >= 0).all()
    if name == "triangle":  # compact support: positive exactly where |x| < unit / slope
        inside = x.detach().abs() < unit_mv
        assert (x.grad[inside] > 0).all() and (x.grad[~inside] == 0).all()
    else:
        assert (x.grad > 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_peak_value_and_symmetry(name):
    slope = 2.0
    peak = {"fast_sigmoid": 1.0, "sigmoid": slope / 4, "atan": slope / 2, "triangle": 1.0}[name]
    x = torch.linspace(-5.0, 5.0, 101, dtype=torch.float64)
    derivative = surrogate_derivative(name, x, slope, unit_mv=1.0)
    assert float(derivative.max()) == pytest.approx(peak, rel=1e-12)
    assert float(derivative[50]) == pytest.approx(peak, rel=1e-12)  # x = 0
    torch.testing.assert_close(derivative, derivative.flip(0), rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("name", ["sigmoid", "atan"])
def test_derivative_is_that_of_a_smooth_step(name):
    """``sigmoid`` and ``atan`` are derivatives of smooth steps: compare to autograd of the step."""
    slope = 1.5  # |k x| <= 15 keeps autograd's s (1 - s) accurate to about 1e-9
    x = torch.linspace(-10.0, 10.0, 401, dtype=torch.float64, requires_grad=True)
    if name == "sigmoid":
        step = torch.sigmoid(slope * x)
    else:
        step = torch.atan(math.pi / 2 * slope * x) / math.pi + 0.5
    (gradient,) = torch.autograd.grad(step.sum(), x)
    torch.testing.assert_close(
        surrogate_derivative(name, x.detach(), slope, unit_mv=1.0), gradient, rtol=1e-8, atol=0.0
    )


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown surrogate 'superspike'") as error:
        get_surrogate("superspike")
    for name in NAMES:
        assert name in str(error.value)


@pytest.mark.parametrize("slope", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_slope(slope):
    with pytest.raises(ValueError, match="slope"):
        get_surrogate("fast_sigmoid", slope)


def test_default_unit_is_the_volt():
    """slope 1/V: d spike/d v per mV is sigma'(x / 1000 mV) / 1000."""
    x = torch.linspace(-100.0, 100.0, 201, dtype=torch.float64)  # mV
    default = get_surrogate("fast_sigmoid", 1.0)
    assert default.unit_mv == 1000.0
    expected = 1e-3 / (1.0 + (x / 1000.0).abs()) ** 2
    torch.testing.assert_close(default.derivative(x), expected, rtol=1e-15, atol=0.0)
    x = x.clone().requires_grad_(True)
    default(x).sum().backward()
    torch.testing.assert_close(x.grad, expected, rtol=1e-15, atol=0.0)
