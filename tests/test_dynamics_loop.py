"""Tests of bridge.model: the eager time loop, Dale's law and agreement with the no-grad mirror."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import small_network

from biosim.data import load_split
from biosim.inputs import make_trials
from biosim.weights import init_weights
from bridge.dynamics import initial_state, make_constants, step
from bridge.model import ENGINES, MATRICES, PINGModel, get_engine, run_network
from bridge.simulate import run_mirror
from bridge.surrogates import get_surrogate

PARAMS = small_network()
N_TRIALS = 8


@pytest.fixture(scope="module")
def trials():
    split = load_split("smoke")
    return make_trials(split.train.images[:N_TRIALS], split.train.labels[:N_TRIALS], PARAMS, seed=3)


@pytest.fixture(scope="module")
def weights():
    return init_weights(PARAMS, seed=1)


def batch(trials, dtype=torch.float64):
    x = torch.from_numpy(trials.dense(slice(None)))
    return x, torch.as_tensor(trials.v_init_e_mv, dtype=dtype), torch.as_tensor(trials.v_init_i_mv, dtype=dtype)


def test_loop_equals_repeated_steps(trials, weights):
    model = PINGModel(PARAMS, weights, spike_fn=get_surrogate(), dtype=torch.float64)
    x, v_init_e, v_init_i = batch(trials)
    w = model.effective_weights()
    constants = make_constants(PARAMS)
    output = run_network(x, v_init_e, v_init_i, w, constants, model.spike_fn, record_population=True)

    state = initial_state(v_init_e, v_init_i, PARAMS.connectivity.n_classes)
    counts_e, counts_i, population_e, population_i = 0, 0, [], []
    for t in range(PARAMS.simulation.n_steps):
        spikes_e, spikes_i, state = step(x[:, t].double(), state, constants, w, model.spike_fn)
        counts_e, counts_i = counts_e + spikes_e, counts_i + spikes_i
        population_e.append(spikes_e.sum(1))
        population_i.append(spikes_i.sum(1))

    assert output.spike_counts_e.sum() > 0 and output.spike_counts_i.sum() > 0  # not a silent test
    assert torch.equal(output.scores, state.score_sum / PARAMS.simulation.n_steps)
    assert torch.equal(output.spike_counts_e, counts_e)
    assert torch.equal(output.spike_counts_i, counts_i)
    assert torch.equal(output.population_e, torch.stack(population_e, 1))
    assert torch.equal(output.population_i, torch.stack(population_i, 1))
    assert output.final_state.step == state.step == PARAMS.simulation.n_steps
    for name, value in output.final_state._asdict().items():
        if name != "step":
            assert torch.equal(value, getattr(state, name)), name
    assert output.population_e.shape == (N_TRIALS, PARAMS.simulation.n_steps)
    assert run_network(x, v_init_e, v_init_i, w, constants).population_e is None


def test_model_matches_mirror_float64(trials, weights):
    model = PINGModel.from_network_weights(PARAMS, weights, spike_fn=get_surrogate(), dtype=torch.float64)
    with torch.no_grad():
        output = model(*batch(trials))
    mirror = run_mirror(PARAMS, weights, trials, dtype=torch.float64, batch_size=3)
    assert len(mirror.spikes_e) > 0 and len(mirror.spikes_i) > 0
    np.testing.assert_array_equal(output.scores.numpy(), mirror.scores)
    np.testing.assert_array_equal(output.spike_counts_e.numpy(), mirror.spikes_e.counts())
    np.testing.assert_array_equal(output.spike_counts_i.numpy(), mirror.spikes_i.counts())


def test_dale_clamp_negative_stored_weights_have_no_effect(trials, weights):
    rng = np.random.default_rng(0)
    negative = {name: -np.abs(rng.normal(size=getattr(weights, name).shape)) for name in ("w_ei", "w_ie")}
    pruned = rng.random(weights.w_ie.shape) < 0.5
    stored = weights.__class__(
        w_in=np.where(rng.random(weights.w_in.shape) < 0.3, -1.0, weights.w_in),
        w_ei=np.where(rng.random(weights.w_ei.shape) < 0.5, negative["w_ei"], weights.w_ei),
        w_ie=np.where(pruned, negative["w_ie"], weights.w_ie),
        w_out=weights.w_out,
        input_mask=weights.input_mask,
    )
    model = PINGModel(PARAMS, stored, spike_fn=get_surrogate(), dtype=torch.float64)
    clamped = PINGModel(PARAMS, stored.effective(), spike_fn=get_surrogate(), dtype=torch.float64)
    for name in ("w_in", "w_ei", "w_ie"):
        assert bool((getattr(model.effective_weights(), name) >= 0).all())
        torch.testing.assert_close(
            getattr(model.effective_weights(), name), getattr(clamped.effective_weights(), name), rtol=0, atol=0
        )
    x, v_init_e, v_init_i = batch(trials)
    output = model(x, v_init_e, v_init_i)
    reference = clamped(x, v_init_e, v_init_i)
    assert torch.equal(output.scores, reference.scores)
    assert torch.equal(output.spike_counts_e, reference.spike_counts_e)
    # Pruned entries receive no gradient; the existing ones do.
    output.scores.sum().backward()
    assert torch.all(model.w_ie.grad[torch.from_numpy(pruned)] == 0)
    assert torch.any(model.w_ie.grad[~torch.from_numpy(pruned)] != 0)


def test_zero_initialised_conductance_still_gets_gradient(trials, weights):
    """clamp(min=0) passes the gradient at w == 0, so a zero-initialised loop can grow."""
    zero = init_weights(PARAMS, seed=1, w_ei="zero")
    model = PINGModel(PARAMS, zero, spike_fn=get_surrogate(), dtype=torch.float64)
    model(*batch(trials)).scores.sum().backward()
    assert float(model.w_ei.grad.abs().sum()) > 0


def test_input_gradient_is_zero_outside_the_mask(trials, weights):
    model = PINGModel(PARAMS, weights, spike_fn=get_surrogate(), dtype=torch.float64)
    with torch.no_grad():
        model.w_in.fill_(0.05)  # stored values outside the mask must still have no effect
    reference = PINGModel(PARAMS, weights, dtype=torch.float64)
    with torch.no_grad():
        reference.w_in.copy_(model.w_in * model.input_mask)
    x, v_init_e, v_init_i = batch(trials)
    output = model(x, v_init_e, v_init_i)
    with torch.no_grad():
        assert torch.equal(output.scores, reference(x, v_init_e, v_init_i).scores)
    torch.nn.functional.cross_entropy(output.scores, torch.as_tensor(trials.labels)).backward()
    mask = model.input_mask
    assert torch.all(model.w_in.grad[~mask] == 0)
    assert torch.any(model.w_in.grad[mask] != 0)


def test_trainable_flags_and_dtype(weights):
    model = PINGModel(PARAMS, weights, trainable={"w_ei": False, "w_ie": False})
    assert model.trainable == {"w_in": True, "w_ei": False, "w_ie": False, "w_out": True}
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["w_in", "w_out"]
    assert all(getattr(model, name).dtype == torch.float32 for name in MATRICES)
    assert model.input_mask.dtype == torch.bool
    with pytest.raises(ValueError, match="w_xx"):
        PINGModel(PARAMS, weights, trainable={"w_xx": True})


def test_network_weights_round_trip(weights):
    model = PINGModel.from_network_weights(PARAMS, weights, dtype=torch.float64)
    stored = model.to_network_weights()
    for name in (*MATRICES, "input_mask"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(weights, name))
        assert getattr(stored, name).dtype == getattr(weights, name).dtype
    effective = model.to_network_weights(stored=False)
    effective.check_dale()
    for name in (*MATRICES, "input_mask"):
        np.testing.assert_array_equal(getattr(effective, name), getattr(weights.effective(), name))
    again = PINGModel.from_network_weights(PARAMS, stored, dtype=torch.float64)
    for name in MATRICES:
        assert torch.equal(getattr(again, name), getattr(model, name))


def test_engine_registry():
    assert get_engine("eager") is run_network is ENGINES["eager"]
    assert set(ENGINES) == {"eager", "fused"}
    with pytest.raises(ValueError, match="valid engines: eager, fused"):
        get_engine("jit")
    with pytest.raises(ValueError, match="unknown engine"):
        PINGModel(PARAMS, init_weights(PARAMS, seed=1), engine="jit")


def test_readout_unit_changes_the_parameter_not_the_network(trials, weights):
    """w_out_unit rescales the trainable readout parameter; the network and its weight export stay the same."""
    plain = PINGModel(PARAMS, weights, dtype=torch.float64)
    scaled = PINGModel(PARAMS, weights, dtype=torch.float64, w_out_unit=8.0)  # a power of 2: exact round trip
    torch.testing.assert_close(scaled.w_out * 8.0, plain.w_out, rtol=0, atol=0)
    np.testing.assert_array_equal(scaled.to_network_weights().w_out, weights.w_out)
    x = torch.from_numpy(trials.dense(slice(0, 2)))
    v_e = torch.as_tensor(trials.v_init_e_mv[:2], dtype=torch.float64)
    v_i = torch.as_tensor(trials.v_init_i_mv[:2], dtype=torch.float64)
    assert torch.equal(plain(x, v_e, v_i).scores, scaled(x, v_e, v_i).scores)
    with pytest.raises(ValueError, match="w_out_unit"):
        PINGModel(PARAMS, weights, w_out_unit=0.0)
