"""The optional recurrent blocks (E -> E, I -> I): off by default, and when on, one parameter
object through every simulator: init, weight files, Brian2 (every CPU backend), the eager mirror, the fused
engine (torch and C++ kernels, forward and adjoint) and the model."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import BRIAN2_BACKENDS as BACKENDS
from helpers import ENGINE_PARAMS as BLOCKS_OFF
from helpers import (  # the fused engine's helpers, on a network that differs only by its blocks
    IMPLEMENTATIONS,
    SMOKE,
    assert_same_forward,
    assert_same_spikes,
    bptt,
    per_step_loss,
    read_raw,
    relative_difference,
    state_and_count_loss,
    write_raw,
)

from biosim.backends import run_trials
from biosim.data import load_split
from biosim.inputs import make_trials
from biosim.params import NetworkParams, ParameterError
from biosim.weight_files import WeightFileError, entry_names, load_weights, save_weights
from biosim.weights import MATRICES, DaleLawError, WeightShapeError, expected_shapes, init_weights
from bridge.eager import run_network
from bridge.fast_engine import FusedEngine
from bridge.model import PINGModel
from bridge.simulate import run_mirror, torch_weights
from bridge.surrogates import SURROGATES, get_surrogate

PARAMS = BLOCKS_OFF.replace(connectivity__p_ee=0.2, connectivity__p_ii=0.2)
"""The fused engine's test network (64 E, 16 I, 20 ms) with both blocks: the same constants, so its helpers apply."""

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAMES = (*MATRICES, "w_ee", "w_ii")
N_TRIALS = 4


@pytest.fixture(scope="module")
def trials():
    split = load_split("smoke")
    return make_trials(split.train.images[:N_TRIALS], split.train.labels[:N_TRIALS], PARAMS, seed=3)


@pytest.fixture(scope="module")
def stored_weights():
    return init_weights(PARAMS, seed=1)


# --- parameters and initialisation ------------------------------------------------


def test_blocks_are_off_by_default_and_leave_the_other_draws_unchanged():
    default = NetworkParams()
    assert default.connectivity.p_ee == 0.0 and default.connectivity.p_ii == 0.0
    assert set(expected_shapes(default)) == set(MATRICES)
    off, on = init_weights(BLOCKS_OFF, seed=1), init_weights(PARAMS, seed=1)
    assert off.w_ee is None and off.w_ii is None
    for name in (*MATRICES, "input_mask"):
        assert np.array_equal(getattr(off, name), getattr(on, name)), name
    c = PARAMS.connectivity
    assert expected_shapes(PARAMS)["w_ee"] == (c.n_e, c.n_e) and expected_shapes(PARAMS)["w_ii"] == (c.n_i, c.n_i)
    for name, n, mean, p in (("w_ee", c.n_e, 0.5, c.p_ee), ("w_ii", c.n_i, 1.0, c.p_ii)):
        block = getattr(on, name)
        assert np.all(np.diag(block) == 0), f"{name}: no autapses"
        edges = block[~np.eye(n, dtype=bool)] != 0
        assert abs(edges.mean() - p) < 0.05, name
        assert np.isclose(block[block != 0].mean() * n, mean, rtol=0.05), name  # fan-in normalised
    assert init_weights(PARAMS, seed=1, w_ee="zero").w_ee.max() == 0.0
    with pytest.raises(ParameterError, match="p_ee"):
        NetworkParams().replace(connectivity__p_ee=1.5)
    with pytest.raises(ParameterError, match="w_ii_mean_us"):
        NetworkParams().replace(init__w_ii_mean_us=-1.0)


def test_weights_name_a_missing_extra_or_misshapen_block(stored_weights):
    stored_weights.check_shapes(PARAMS)
    with pytest.raises(WeightShapeError, match=r"w_ee: expected shape \(64, 64\).*found none"):
        replace(stored_weights, w_ee=None).check_shapes(PARAMS)
    with pytest.raises(WeightShapeError, match=r"w_ii: the network has no such block \(connectivity.p_ii = 0\)"):
        replace(stored_weights, w_ee=None).check_shapes(BLOCKS_OFF)
    with pytest.raises(WeightShapeError, match=r"w_ee: expected shape \(64, 64\) \(pre, post\), found \(64, 16\)"):
        replace(stored_weights, w_ee=stored_weights.w_ei).check_shapes(PARAMS)
    with pytest.raises(DaleLawError, match="w_ii"):
        replace(stored_weights, w_ii=-stored_weights.w_ii).check_dale()
    effective = replace(stored_weights, w_ii=-stored_weights.w_ii).effective()
    assert effective.w_ii.min() == 0.0 and np.array_equal(effective.w_ee, np.maximum(stored_weights.w_ee, 0))


# --- weight files ----------------------------------------------------------------------


def test_weight_file_round_trip_with_the_blocks(tmp_path, stored_weights):
    signs = np.random.default_rng(1).choice([-1.0, 1.0], size=stored_weights.w_ee.shape)
    stored = replace(stored_weights, w_ee=stored_weights.w_ee * signs)  # about half of it pruned
    path = save_weights(tmp_path / "w.npz", stored, PARAMS)
    loaded = load_weights(path, params=PARAMS)
    for name in NAMES:
        assert np.array_equal(getattr(loaded.stored, name), getattr(stored, name)), name
        assert np.array_equal(getattr(loaded.effective, name), getattr(stored.effective(), name)), name
    arrays, metadata = read_raw(path)
    assert sorted(arrays) == sorted(entry_names(PARAMS)) and "stored/w_ii" in arrays
    assert metadata["matrices"]["w_ee"] == {"units": "uS", "shape": [64, 64], "layout": "pre,post"}
    assert metadata["network_params"]["connectivity"]["p_ee"] == 0.2
    assert loaded.effective.w_ee.min() == 0.0  # the clamp applied


def test_weight_file_with_a_misshapen_or_inconsistent_block_names_it(tmp_path, stored_weights):
    with pytest.raises(
        WeightFileError, match=r"stored/w_ee: expected shape \(64, 64\) \(pre, post\), found \(64, 16\)"
    ):
        save_weights(tmp_path / "w.npz", replace(stored_weights, w_ee=stored_weights.w_ei), PARAMS)
    with pytest.raises(WeightFileError, match=r"stored/w_ii: expected a matrix of shape \(16, 16\).*found none"):
        save_weights(tmp_path / "w.npz", replace(stored_weights, w_ii=None), PARAMS)
    with pytest.raises(WeightFileError, match=r"stored/w_ee: expected no such matrix.*p_ee = 0"):
        save_weights(tmp_path / "w.npz", stored_weights, BLOCKS_OFF)
    # A file whose w_ee has the wrong shape (written by hand, past save_weights' checks).
    arrays, metadata = read_raw(save_weights(tmp_path / "w.npz", stored_weights, PARAMS))
    for kind in ("stored", "effective"):
        arrays[f"{kind}/w_ee"] = arrays[f"{kind}/w_ee"][:, :16]
    with pytest.raises(
        WeightFileError, match=r"stored/w_ee: expected shape \(64, 64\) \(pre, post\), found \(64, 16\)"
    ):
        load_weights(write_raw(tmp_path / "bad.npz", arrays, metadata))
    metadata["matrices"]["w_ee"]["shape"] = [64, 16]  # the description agrees with the array, not the network
    with pytest.raises(  # the .npy headers are checked against the network before anything is read
        WeightFileError, match=r"stored/w_ee: expected shape \(64, 64\) \(pre, post\), found \(64, 16\)"
    ):
        load_weights(write_raw(tmp_path / "bad.npz", arrays, metadata))
    arrays, metadata = read_raw(save_weights(tmp_path / "w.npz", stored_weights, PARAMS))
    metadata["matrices"]["w_ee"]["shape"] = [64, 16]  # the array is right, its description is not
    with pytest.raises(WeightFileError, match=r"metadata.matrices.w_ee.shape: w_ee expected \[64, 64\]"):
        load_weights(write_raw(tmp_path / "bad.npz", arrays, metadata))
    # A block the file's network does not have, or one it lacks.
    arrays, metadata = read_raw(save_weights(tmp_path / "w.npz", stored_weights, PARAMS))
    metadata["network_params"]["connectivity"]["p_ee"] = metadata["connectivity"]["p_ee"] = 0.0
    with pytest.raises(WeightFileError, match=r"stored/w_ee: expected no such matrix"):
        load_weights(write_raw(tmp_path / "bad.npz", arrays, metadata))
    arrays, metadata = read_raw(save_weights(tmp_path / "w.npz", stored_weights, PARAMS))
    del arrays["stored/w_ii"], arrays["effective/w_ii"]
    with pytest.raises(WeightFileError, match=r"stored/w_ii: expected a matrix of shape \(16, 16\)"):
        load_weights(write_raw(tmp_path / "bad.npz", arrays, metadata))


def test_a_file_from_before_the_blocks_still_loads(tmp_path):
    """Files written before p_ee / p_ii existed lack them in their metadata: a network without the blocks."""
    weights = init_weights(BLOCKS_OFF, seed=2)
    arrays, metadata = read_raw(save_weights(tmp_path / "w.npz", weights, BLOCKS_OFF))
    for section in (metadata["connectivity"], metadata["network_params"]["connectivity"]):
        del section["p_ee"], section["p_ii"]
    for section in ("init",):
        for name in ("w_ee_mean_us", "w_ee_std_us", "w_ii_mean_us", "w_ii_std_us"):
            del metadata["network_params"][section][name]
    old = write_raw(tmp_path / "old.npz", arrays, metadata)
    loaded = load_weights(old, params=BLOCKS_OFF)
    assert loaded.params == BLOCKS_OFF and loaded.stored.w_ee is None
    assert json.loads(str(np.load(old)["metadata"]))["connectivity"].get("p_ee") is None


# --- Brian2 and the mirror ----------------------------------------------------------------


@pytest.fixture(scope="module")
def brian2_network():
    """The conftest's scaled-down network (128 E, 32 I, 60 ms trials) with both blocks, and the float64 mirror."""
    off = NetworkParams().replace(
        connectivity__n_e=128, connectivity__n_i=32, simulation__trial_ms=60.0, simulation__transient_ms=10.0
    )
    params = off.replace(connectivity__p_ee=0.2, connectivity__p_ii=0.2)
    test = load_split("smoke").test
    trials = make_trials(test.images[:3], test.labels[:3], params, seed=11)
    weights = init_weights(params, seed=11).effective()
    mirror = run_mirror(params, weights, trials, dtype=torch.float64)
    without = run_mirror(off, init_weights(off, seed=11).effective(), trials, dtype=torch.float64)
    return params, weights, trials, mirror, without


def test_the_blocks_change_the_raster(brian2_network):
    *_, mirror, without = brian2_network
    for population in ("spikes_e", "spikes_i"):
        a, b = getattr(mirror, population), getattr(without, population)
        assert len(a) > 0 and len(b) > 0, population
        same = len(a) == len(b) and all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("step", "neuron"))
        assert not same, f"{population}: the blocks had no visible effect"


@pytest.mark.parametrize("backend", BACKENDS)
def test_mirror_is_spike_identical_to_brian2_with_the_blocks(brian2_network, backend, tmp_path):
    params, weights, trials, mirror, _ = brian2_network
    brian = run_trials(params, weights, trials, backend=backend, build_dir=tmp_path, progress=False)
    assert_same_spikes(brian, mirror)
    np.testing.assert_allclose(mirror.scores, brian.scores, rtol=1e-9, atol=1e-12)


def test_brian2_instantiates_one_synapse_per_positive_block_weight(brian2_network):
    import gc

    import brian2 as b2
    from brian2.utils.logger import catch_logs

    from biosim import equations
    from biosim.network import build_network

    params, weights, trials, *_ = brian2_network
    b2.prefs.codegen.target = "numpy"  # only built (the autouse fixture resets prefs)
    with catch_logs():
        network = build_network(params, weights, trials)
        counts = {s.name: len(s) for s in network.network.objects if s.name.startswith("syn_")}
        del network
        gc.collect()
    assert counts[equations.SYNAPSES_E_E] == np.count_nonzero(weights.w_ee) > 0
    assert counts[equations.SYNAPSES_I_I] == np.count_nonzero(weights.w_ii) > 0


# --- the fused engine's gradients -----------------------------------------------------------


def recurrent_state_loss(output, labels):
    """:func:`state_and_count_loss` and gi_i, which only the I -> I block makes depend on the weights."""
    return state_and_count_loss(output, labels) + 0.5 * output.final_state.gi_i.sum()


LOSSES = {"scores": None, "state": recurrent_state_loss, "per_step": per_step_loss}
_EAGER: dict = {}


def eager_gradients(trials, weights, surrogate, loss, key):
    if (key, surrogate, loss) not in _EAGER:
        _EAGER[key, surrogate, loss] = bptt(
            run_network, trials, weights, get_surrogate(surrogate), loss_fn=LOSSES[loss]
        )
    return _EAGER[key, surrogate, loss]


def assert_gradients_match(expected, actual, names, tolerance=1e-6):
    worst = 0.0
    for name, a, b in zip(names, expected, actual, strict=True):
        assert a is not None and float(a.abs().max()) > 0, name
        difference = relative_difference(a, b)
        assert difference < tolerance, f"{name}: {difference:.3g}"
        worst = max(worst, difference)
    return worst


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_fused_gradients_with_the_blocks_match_eager_autograd(trials, stored_weights, implementation, loss):
    expected_output, expected = eager_gradients(trials, stored_weights, "fast_sigmoid", loss, "both")
    assert len(expected) == 6
    engine = FusedEngine(chunk_steps=37, implementation=implementation)  # chunks that do not divide T
    output, actual = bptt(engine, trials, stored_weights, get_surrogate(), loss_fn=LOSSES[loss])
    assert_same_forward(expected_output, output)  # bit-identical forward, the blocks included
    assert_gradients_match(expected, actual, NAMES)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
def test_every_surrogate_with_the_blocks(trials, stored_weights, implementation, surrogate):
    expected_output, expected = eager_gradients(trials, stored_weights, surrogate, "scores", "both")
    output, actual = bptt(FusedEngine(implementation=implementation), trials, stored_weights, get_surrogate(surrogate))
    assert_same_forward(expected_output, output)
    assert_gradients_match(expected, actual, NAMES)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("block", ["w_ee", "w_ii"])
def test_one_block_alone(trials, stored_weights, implementation, block):
    """A network with one of the two blocks: the kernels see one null block pointer and one real one."""
    params = PARAMS.replace(**{f"connectivity__p_{'ii' if block == 'w_ee' else 'ee'}": 0.0})
    weights = replace(stored_weights, **{"w_ii" if block == "w_ee" else "w_ee": None})
    weights.check_shapes(params)
    expected_output, expected = eager_gradients(trials, weights, "fast_sigmoid", "state", block)
    output, actual = bptt(
        FusedEngine(chunk_steps=50, implementation=implementation),
        trials,
        weights,
        get_surrogate(),
        loss_fn=recurrent_state_loss,
    )
    assert_same_forward(expected_output, output)
    assert_gradients_match(expected, actual, (*MATRICES, block))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float32_with_the_blocks(trials, stored_weights, implementation):
    expected_output, expected = bptt(run_network, trials, stored_weights, get_surrogate(), dtype=torch.float32)
    output, actual = bptt(
        FusedEngine(implementation=implementation), trials, stored_weights, get_surrogate(), dtype=torch.float32
    )
    assert_same_forward(expected_output, output)
    assert_gradients_match(expected, actual, NAMES, tolerance=1e-3)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_model_trains_the_blocks_it_is_told_to(trials, stored_weights, implementation, monkeypatch):
    """Through PINGModel (stored weights, Dale's clamp, trainable flags) the engines agree on every block."""
    from bridge import model as model_module

    engine = FusedEngine(implementation=implementation)
    monkeypatch.setitem(model_module.ENGINES, "fused", engine)
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=stored_weights.w_ii.shape)
    stored = replace(stored_weights, w_ii=stored_weights.w_ii * signs)  # about half of it pruned
    x, labels = torch.from_numpy(trials.dense(slice(None))), torch.as_tensor(trials.labels)
    v_e, v_i = torch.as_tensor(trials.v_init_e_mv), torch.as_tensor(trials.v_init_i_mv)
    # w_in frozen: the fused engine still needs l_ge_e for w_ee.
    trainable = {"w_in": False, "w_ei": True, "w_ie": False, "w_out": True, "w_ee": True, "w_ii": True}
    grads = []
    for name in ("eager", "fused"):
        model = PINGModel(
            PARAMS, stored, trainable=trainable, spike_fn=get_surrogate(), engine=name, dtype=torch.float64
        )
        assert model.matrices == NAMES and model.trainable == trainable
        torch.nn.functional.cross_entropy(model(x, v_e, v_i).scores, labels).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[1]["w_in"] is None and grads[1]["w_ie"] is None
    for name in ("w_ei", "w_out", "w_ee", "w_ii"):
        assert float(grads[0][name].abs().max()) > 0, name
        assert relative_difference(grads[0][name], grads[1][name]) < 1e-6, name
    assert torch.all(grads[1]["w_ii"][torch.as_tensor(stored.w_ii < 0)] == 0)  # pruned entries get none
    back = model.to_network_weights()
    assert all(np.array_equal(getattr(back, n), getattr(stored, n)) for n in NAMES)
    with pytest.raises(ValueError, match=r"\['w_ee'\] set to True, but the network has no such block"):
        PINGModel(BLOCKS_OFF, init_weights(BLOCKS_OFF, seed=1), trainable={"w_ee": True})
    assert "w_ee" not in dict(PINGModel(BLOCKS_OFF, init_weights(BLOCKS_OFF, seed=1)).named_parameters())


def test_mirror_weights_carry_the_blocks(stored_weights):
    weights = torch_weights(stored_weights, dtype=torch.float64)
    assert [name for name, _ in weights.items()] == list(NAMES) and len(list(weights)) == 6
    assert torch.equal(weights.w_ee, torch.as_tensor(np.maximum(stored_weights.w_ee, 0)))
    off = torch_weights(init_weights(BLOCKS_OFF, seed=1), dtype=torch.float64)
    assert off.w_ee is None and off.w_ii is None and len(list(off)) == 4
    with pytest.raises(ValueError, match=r"Weights.w_ee: expected shape \(64, 64\)"):
        type(weights)(weights.w_in, weights.w_ei, weights.w_ie, weights.w_out, weights.w_ii)


# --- the trainer and validation -----------------------------------------------------------------


def test_config_flags_of_the_blocks_and_old_configs_resume(tmp_path):
    from bridge.run_records import _check_same_config
    from bridge.train_config import ConfigError

    assert SMOKE.trainable()["w_ee"] is False and SMOKE.trainable()["w_ii"] is False
    with pytest.raises(ConfigError, match=r"train_w_ee.*network connectivity p_ee = 0"):
        replace(SMOKE, train_w_ee=True)
    # A config written before p_ee / p_ii existed (its resolved network lacks them) is the same config.
    old = SMOKE.resolved().to_dict()
    for name in ("p_ee", "p_ii"):
        del old["network"]["connectivity"][name]
    for name in ("init_w_ee", "init_w_ii", "train_w_ee", "train_w_ii"):
        del old[name]
    _check_same_config(old, SMOKE.resolved(), tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match=r"fields \['network'\] differ"):
        blocks = replace(
            SMOKE, network={**SMOKE.network, "connectivity": {**SMOKE.network["connectivity"], "p_ee": 0.1}}
        )
        _check_same_config(old, blocks.resolved(), tmp_path / "checkpoint.pt")


def test_training_the_blocks_and_validating_them_in_brian2(tmp_path):
    """A smoke run that trains w_ee and w_ii (fused engine), its bookkeeping, and Brian2 against its weights."""
    from bridge.training import train
    from bridge.validation import validate

    network = NetworkParams.from_dict(SMOKE.network).replace(connectivity__p_ee=0.2, connectivity__p_ii=0.2)
    config = replace(
        SMOKE,
        epochs=1,
        n_train=8,
        network=network.to_dict(),
        train_w_ee=True,
        train_w_ii=True,
        init_w_ii=2.0,
        engine="fused",
    )
    result = train(config, tmp_path, progress=False)
    assert result.status == "completed" and result.model.matrices == NAMES
    last = result.metrics[-1]
    for name in ("w_ee", "w_ii"):
        assert last[f"grad_norm_{name}"] > 0, name
        for stat in ("mean_abs_stored", "pruned_fraction", "effective_mean"):
            assert np.isfinite(last[f"{name}_{stat}"]), (name, stat)
        assert last[f"{name}_mean_abs_stored"] != result.metrics[0][f"{name}_mean_abs_stored"], f"{name} trained"
    initial = init_weights(network, seed=config.seed, w_ii=2.0)
    loaded = load_weights(tmp_path / "weights.npz", params=network)
    assert not np.array_equal(loaded.stored.w_ee, initial.w_ee)
    report = validate(tmp_path, backend="numpy", progress=False)
    assert report["spike_identity_float64"]["fraction"] == 1.0 and report["verdict"] == "pass", report


def test_dense_propagation_with_the_blocks(trials, stored_weights):
    """The torch path's dense spike products (its default on GPU) carry the blocks too."""
    expected_output, expected = eager_gradients(trials, stored_weights, "fast_sigmoid", "state", "both")
    engine = FusedEngine(chunk_steps=37, implementation="torch", propagation="dense")
    output, actual = bptt(engine, trials, stored_weights, get_surrogate(), loss_fn=recurrent_state_loss)
    assert torch.equal(expected_output.spike_counts_e, output.spike_counts_e)
    assert torch.equal(expected_output.spike_counts_i, output.spike_counts_i)
    assert_gradients_match(expected, actual, NAMES)
