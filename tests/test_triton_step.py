"""The Triton step (bridge/triton_step.py) against the torch step of bridge/dynamics.py, on the CPU through
Triton's interpreter. Skipped where triton is not installed (it is not in the project's requirements).

On the CPU the interpreter's ``exp`` is numpy's, which differs from torch's CPU ``exp`` in the last bit for
some arguments: the states then agree to a few ulps (the tolerances below), and the spikes exactly. Every
other operation runs in the order of dynamics.py, so states whose update does not go through ``exp``
(refractory neurons, resets) and neurons exactly at threshold are compared bit for bit.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton decorates the kernels
pytest.importorskip("triton")

from helpers import small_network  # noqa: E402

from bridge import cuda_graphs, triton_step  # noqa: E402
from bridge.dynamics import (  # noqa: E402
    NetworkState,
    crossed,
    make_constants,
    reset,
    transition,
    update_membrane,
)

pytestmark = pytest.mark.skipif(not triton_step.AVAILABLE, reason="triton is not installed")

CONSTANTS = make_constants(small_network())
# Relative tolerance of the states where exp's last bit differs between numpy and torch (a few ulps).
RTOL = {torch.float64: 1e-15, torch.float32: 5e-7}


def _random_population(shape, dtype, step, generator):
    """Random states of one population: potentials around threshold, conductances, refractory neurons."""
    k = CONSTANTS.e
    v = k.v_reset + (k.v_threshold - k.v_reset + 8.0) * torch.rand(shape, dtype=dtype, generator=generator)
    ge = 0.05 * torch.rand(shape, dtype=dtype, generator=generator)
    gi = 0.05 * torch.rand(shape, dtype=dtype, generator=generator)
    ready = torch.randint(step - 5, step + 20, shape, dtype=torch.int32, generator=generator)
    return v, ge, gi, ready


def _torch_population(v, ge, gi, ready, step, k, drive=None):
    """The population's part of dynamics.transition (bool threshold), before the synaptic increments."""
    v1, integrating = update_membrane(v, ge, gi, ready, step, k, CONSTANTS.dt)
    fired = crossed(v1, integrating, k)
    ge1 = ge * CONSTANTS.decay_ampa
    if drive is not None:
        ge1 = ge1 + drive
    v2, ready2 = reset(v1, ready, fired, step, k)
    return v2, ge1, gi * CONSTANTS.decay_gaba, ready2, fired, integrating


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(7, 33), (3, 5, 64)])  # (batch, n) and (run, batch, n)
def test_population_step_equals_the_torch_step(dtype, shape):
    generator = torch.Generator().manual_seed(3)
    step = 40
    v, ge, gi, ready = _random_population(shape, dtype, step, generator)
    drive = 0.01 * torch.rand(shape, dtype=dtype, generator=generator)
    expected = _torch_population(v, ge, gi, ready, step, CONSTANTS.e, drive)
    actual = triton_step.population_step(v, ge, gi, ready, step, CONSTANTS.e, CONSTANTS, drive)
    v_want, ge_want, gi_want, ready_want, fired_want, integrating_want = expected
    v_got, ge_got, gi_got, ready_got, fired_got, integrating_got, spikes_got = actual
    assert torch.equal(spikes_got, fired_want.to(dtype))
    assert fired_want.any() and (~integrating_want).any()  # the case covers spikes and refractory neurons
    assert torch.equal(fired_got, fired_want) and torch.equal(integrating_got, integrating_want)
    assert torch.equal(ready_got, ready_want)
    assert torch.equal(ge_got, ge_want) and torch.equal(gi_got, gi_want)  # no exp: bit for bit
    held = ~integrating_want | fired_want  # held or reset: no exp in the result
    assert torch.equal(v_got[held], v_want[held])
    torch.testing.assert_close(v_got, v_want, rtol=RTOL[dtype], atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_neurons_exactly_at_threshold_do_not_fire(dtype):
    # v = -B is exponential Euler's fixed point: v_new = -B + (B + v) E = -B whatever exp returns, so the
    # threshold can be put exactly on a neuron's v_new.
    generator = torch.Generator().manual_seed(5)
    k = CONSTANTS.e
    v, ge, gi, _ = _random_population((4, 16), dtype, 0, generator)
    total = k.minus_g_leak_over_c - (k.one_over_c * ge + k.one_over_c * gi)
    fixed = -((k.leak_drive_over_c + (k.e_exc_over_c * ge + k.e_inh_over_c * gi)) / total)
    ready = torch.zeros_like(ge, dtype=torch.int32)
    at = dataclasses.replace(k, v_threshold=float(fixed[0, 0]))
    expected = _torch_population(fixed, ge, gi, ready, 0, at)
    actual = triton_step.population_step(fixed, ge, gi, ready, 0, at, CONSTANTS)
    assert not expected[4][0, 0] and not actual[4][0, 0]  # exactly at threshold: v > v_th is false
    assert torch.equal(actual[4], expected[4]) and expected[4].any()  # those above it fire
    assert torch.equal(actual[0], expected[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_given_spikes_replace_the_threshold(dtype):
    """The recompute's step: the saved spikes decide the reset, even where the threshold would decide otherwise."""
    generator = torch.Generator().manual_seed(4)
    step = 30
    v, ge, gi, ready = _random_population((5, 40), dtype, step, generator)
    own = triton_step.population_step(v, ge, gi, ready, step, CONSTANTS.e, CONSTANTS)
    integrating = own[5]
    given = own[4].clone()
    flip = integrating & (torch.rand(given.shape, generator=generator) < 0.3)
    given[flip] = ~given[flip]  # some spikes suppressed, some added
    assert (given & ~own[4]).any() and (own[4] & ~given).any()
    v1, integrating_want = update_membrane(v, ge, gi, ready, step, CONSTANTS.e, CONSTANTS.dt)
    v_want, ready_want = reset(v1, ready, given, step, CONSTANTS.e)
    v_got, ge_got, gi_got, ready_got, fired_got, integrating_got, spikes = triton_step.population_step(
        v, ge, gi, ready, step, CONSTANTS.e, CONSTANTS, fired=given
    )
    assert fired_got is given and spikes is None
    assert torch.equal(integrating_got, integrating_want) and torch.equal(ready_got, ready_want)
    assert torch.equal(v_got[given], v_want[given])  # reset where the given spikes say
    torch.testing.assert_close(v_got, v_want, rtol=RTOL[dtype], atol=0.0)
    assert torch.equal(ge_got, own[1]) and torch.equal(gi_got, own[2])


@pytest.mark.parametrize("step_in_memory", [False, True])  # a 0-d tensor: the index a captured graph reads
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_transition_equals_dynamics_transition(dtype, step_in_memory):
    generator = torch.Generator().manual_seed(11)
    batch, n_e, n_i, n_classes, step = 6, 64, 16, 10, 12
    v_e, ge_e, gi_e, ready_e = _random_population((batch, n_e), dtype, step, generator)
    v_i, ge_i, gi_i, ready_i = _random_population((batch, n_i), dtype, step, generator)
    u = torch.rand(batch, n_classes, dtype=dtype, generator=generator)
    state = NetworkState(v_e, ge_e, gi_e, ready_e, v_i, ge_i, gi_i, ready_i, u, u.clone(), step)
    weights = {
        "w_ee": 1e-3 * torch.rand(n_e, n_e, dtype=dtype, generator=generator),
        "w_ie": 1e-2 * torch.rand(n_i, n_e, dtype=dtype, generator=generator),
        "w_ei": 1e-2 * torch.rand(n_e, n_i, dtype=dtype, generator=generator),
        "w_ii": None,
        "w_out": torch.randn(n_e, n_classes, dtype=dtype, generator=generator),
    }
    drive = 0.01 * torch.rand(batch, n_e, dtype=dtype, generator=generator)

    def threshold(population, v1, integrating, k):
        fired = crossed(v1, integrating, k)
        return fired, fired

    def synapses(name, fired):
        weight = weights.get(name)
        return None if weight is None else fired.to(dtype) @ weight

    expected = transition(state, CONSTANTS, drive, threshold, synapses)
    if step_in_memory:
        state = state._replace(step=torch.tensor(step, dtype=torch.int32))
    actual = triton_step.fused_transition(state, CONSTANTS, drive, weights)
    assert expected.fired_e.any() and expected.fired_i.any()
    for name in ("fired_e", "fired_i", "integrating_e", "integrating_i"):
        assert torch.equal(getattr(actual, name), getattr(expected, name)), name
    for name in ("ready_e", "ready_i", "ge_e", "gi_e", "ge_i", "gi_i", "u", "score_sum"):
        assert torch.equal(getattr(actual.state, name), getattr(expected.state, name)), name
    for name in ("v_e", "v_i"):
        torch.testing.assert_close(getattr(actual.state, name), getattr(expected.state, name), rtol=RTOL[dtype], atol=0)
    assert int(actual.state.step) == step + 1


def test_a_chunk_of_triton_steps_equals_a_chunk_of_torch_steps():
    """The step function a CUDA graph would capture (bridge/cuda_graphs.py), on the Triton kernels."""
    generator = torch.Generator().manual_seed(8)
    batch, n_e, n_i, n_classes, steps = 4, 64, 16, 10, 15
    dtype = torch.float64
    v_e, ge_e, gi_e, _ = _random_population((batch, n_e), dtype, 0, generator)
    v_i, ge_i, gi_i, _ = _random_population((batch, n_i), dtype, 0, generator)
    zeros = torch.zeros(batch, n_classes, dtype=dtype)
    state = {"v_e": v_e, "ge_e": ge_e, "gi_e": gi_e, "v_i": v_i, "ge_i": ge_i, "gi_i": gi_i, "u": zeros}
    state |= {"score_sum": zeros, "step": torch.tensor(0, dtype=torch.int32)}
    state |= {f"ready_{p}": torch.zeros_like(state[f"v_{p}"], dtype=torch.int32) for p in "ei"}
    weights = {"w_ee": None, "w_ii": None, "w_out": torch.randn(n_e, n_classes, dtype=dtype, generator=generator)}
    weights["w_ie"] = 0.05 * torch.rand(n_i, n_e, dtype=dtype, generator=generator)
    weights["w_ei"] = 0.05 * torch.rand(n_e, n_i, dtype=dtype, generator=generator)
    drives = 0.03 * torch.rand(steps, batch, n_e, dtype=dtype, generator=generator)
    torch_final, torch_records = cuda_graphs.run_chunk(cuda_graphs.transition_step(CONSTANTS, weights), state, drives)
    fused = cuda_graphs.transition_step(CONSTANTS, weights, triton=True)
    triton_final, triton_records = cuda_graphs.run_chunk(fused, state, drives)
    assert torch_records["fired_e"].any() and torch_records["fired_i"].any()
    for name in ("fired_e", "fired_i"):
        assert torch.equal(triton_records[name], torch_records[name]), name
    for name in ("ready_e", "ready_i", "step"):
        assert torch.equal(triton_final[name], torch_final[name]), name
    for name in ("v_e", "ge_e", "gi_e", "v_i", "ge_i", "gi_i", "u", "score_sum"):  # exp's last bit, carried on
        torch.testing.assert_close(triton_final[name], torch_final[name], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("shape", [(6, 10), (3, 4, 10)])  # (batch, classes) and (run, batch, classes)
def test_readout_step_reads_a_column_slice_in_place_and_adds_nothing_without_increment(shape):
    generator = torch.Generator().manual_seed(6)
    u, score_sum = (torch.rand(shape, dtype=torch.float64, generator=generator) for _ in range(2))
    wide = torch.rand((*shape[:-1], 16 + shape[-1]), dtype=torch.float64, generator=generator)
    increment = wide[..., 16:]  # the readout's columns of the product with [w_ei, w_out]
    assert not increment.is_contiguous() and triton_step._row_stride(increment) == wide.shape[-1]
    decay = CONSTANTS.decay_readout
    u_got, score_got = triton_step.readout_step(u, increment, score_sum, decay)
    assert torch.equal(u_got, u * decay + increment) and torch.equal(score_got, score_sum + u_got)
    u_got, score_got = triton_step.readout_step(u, None, score_sum, decay)
    assert torch.equal(u_got, u * decay) and torch.equal(score_got, score_sum + u * decay)
    assert triton_step._row_stride(wide.transpose(-1, -2)) is None  # columns not contiguous: copied


def test_launches_per_step_counts_the_kernels():
    assert triton_step.launches_per_step() == {"triton": 3, "matmul": 4, "add": 3, "total": 10}
    assert triton_step.launches_per_step(("w_ee",))["total"] == 12
