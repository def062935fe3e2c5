"""Low-dimensional error feedback (bridge.feedback): the readout's error reaches the E spikes through a fixed B."""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pytest
import torch
from helpers import ENGINE_PARAMS as PARAMS
from helpers import ENGINE_TRIALS as N_TRIALS
from helpers import SMOKE, assert_same_forward, bptt, relative_difference, run_cli

from biosim.data import load_split
from biosim.inputs import make_trials
from biosim.weights import init_weights
from bridge.batched_training import train_batched
from bridge.checkpoint import CHECKPOINT_NAME, load_checkpoint
from bridge.dynamics import Weights
from bridge.fast_engine import FusedEngine
from bridge.feedback import feedback_matrix
from bridge.fused_kernels import kernels_available
from bridge.model import MATRICES, run_network
from bridge.simulate import torch_weights
from bridge.surrogates import get_surrogate
from bridge.train_config import ConfigError, TrainConfig
from bridge.training import BatchContext, train
from protocols.definitions import get_protocol

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SURROGATE = get_surrogate("fast_sigmoid")
E_SIDE = ("w_in", "w_ei", "w_ie")
"""The matrices whose gradients pass through the E spikes' adjoint (the readout's gradient does not)."""


@pytest.fixture(scope="module")
def trials():
    split = load_split("smoke")
    return make_trials(split.train.images[:N_TRIALS], split.train.labels[:N_TRIALS], PARAMS, seed=3)


@pytest.fixture(scope="module")
def stored_weights():
    return init_weights(PARAMS, seed=1)


@pytest.fixture(scope="module")
def exact(trials, stored_weights):
    """The eager engine's exact BPTT: (output, gradients)."""
    return bptt(run_network, trials, stored_weights, SURROGATE)


@pytest.fixture(scope="module")
def random_feedback():
    return torch.from_numpy(feedback_matrix(PARAMS, seed=5, rank=2))


def _engines():
    return [("eager", run_network)] + [
        (f"fused-{name}", FusedEngine(chunk_steps=37, implementation=name))
        for name in ("torch", *(["kernels"] if kernels_available() else []))
    ]


def _gradients(name: str, trials, stored_weights, feedback):
    engine = dict(_engines())[name]
    return bptt(functools.partial(engine, feedback=feedback), trials, stored_weights, SURROGATE)


@pytest.mark.parametrize("name", [name for name, _ in _engines()])
def test_feedback_equal_to_the_readout_gives_the_exact_gradients(trials, stored_weights, exact, name):
    w_out = torch_weights(stored_weights, dtype=torch.float64).w_out.detach().clone()
    expected_output, expected = exact
    output, actual = _gradients(name, trials, stored_weights, w_out)
    assert_same_forward(expected_output, output)
    for matrix, a, b in zip(Weights.BASE, expected, actual, strict=True):
        assert float(a.abs().max()) > 0, matrix
        assert relative_difference(a, b) < 1e-6, matrix  # measured: 0 (eager), up to 2e-15 (fused, as without B)
    # The same engine without a feedback matrix: the same bits.
    _, same_engine = bptt(dict(_engines())[name], trials, stored_weights, SURROGATE)
    for matrix, a, b in zip(Weights.BASE, same_engine, actual, strict=True):
        assert torch.equal(a, b), matrix


@pytest.mark.parametrize("name", [name for name, _ in _engines()])
def test_random_feedback_changes_only_the_e_side_gradients(trials, stored_weights, exact, random_feedback, name):
    expected_output, expected = exact
    output, actual = _gradients(name, trials, stored_weights, random_feedback)
    assert_same_forward(expected_output, output)  # the forward pass does not see B
    gradients = dict(zip(Weights.BASE, actual, strict=True))
    exact_gradients = dict(zip(Weights.BASE, expected, strict=True))
    assert relative_difference(exact_gradients["w_out"], gradients["w_out"]) < 1e-12
    for matrix in E_SIDE:
        assert relative_difference(exact_gradients[matrix], gradients[matrix]) > 1e-3, matrix


def test_every_engine_computes_the_same_feedback_gradients(trials, stored_weights, random_feedback):
    results = {name: _gradients(name, trials, stored_weights, random_feedback)[1] for name, _ in _engines()}
    reference = results.pop("eager")
    for name, gradients in results.items():
        for matrix, a, b in zip(Weights.BASE, reference, gradients, strict=True):
            assert float(a.abs().max()) > 0, (name, matrix)
            assert relative_difference(a, b) < 1e-6, (name, matrix)  # measured: up to 2.5e-15


@pytest.mark.skipif(not kernels_available(), reason="CPU kernels cannot be built here")
def test_float32_kernels_use_the_feedback_in_their_packed_products(trials, stored_weights, random_feedback):
    feedback = random_feedback.to(torch.float32)
    _, expected = bptt(
        functools.partial(run_network, feedback=feedback), trials, stored_weights, SURROGATE, dtype=torch.float32
    )
    engine = functools.partial(FusedEngine(implementation="kernels"), feedback=feedback)
    _, actual = bptt(engine, trials, stored_weights, SURROGATE, dtype=torch.float32)
    _, exact32 = bptt(run_network, trials, stored_weights, SURROGATE, dtype=torch.float32)
    for matrix, a, b, c in zip(Weights.BASE, expected, actual, exact32, strict=True):
        assert relative_difference(a, b) < 1e-4, matrix  # float32 rounding, as the exact path's test
        if matrix in E_SIDE:
            assert relative_difference(c, b) > 1e-2, matrix


@pytest.mark.parametrize("rank", [1, 2, 5, 10])
def test_feedback_matrix_has_its_rank_and_the_readout_norm(rank):
    matrix = feedback_matrix(PARAMS, seed=42, rank=rank)
    assert matrix.shape == (PARAMS.connectivity.n_e, PARAMS.connectivity.n_classes)
    assert np.linalg.matrix_rank(matrix) == rank
    assert np.isclose(np.linalg.norm(matrix), np.linalg.norm(init_weights(PARAMS, 42).w_out), rtol=1e-12)
    np.testing.assert_array_equal(matrix, feedback_matrix(PARAMS, seed=42, rank=rank))  # fixed by the seed
    assert not np.array_equal(matrix, feedback_matrix(PARAMS, seed=43, rank=rank))


def test_feedback_matrix_and_engines_refuse_what_does_not_fit(trials, stored_weights):
    with pytest.raises(ValueError, match="min\\(n_e, n_classes\\) = 10"):
        feedback_matrix(PARAMS, seed=1, rank=11)
    with pytest.raises(ValueError, match="min\\(n_e, n_classes\\)"):
        feedback_matrix(PARAMS, seed=1, rank=0)
    wrong = torch.zeros(3, 10, dtype=torch.float64)
    for name, _ in _engines():
        with pytest.raises(ValueError, match="feedback: expected"):
            _gradients(name, trials, stored_weights, wrong)


# --- training -----------------------------------------------------------------------------------------

FEEDBACK_SMOKE = dataclasses.replace(SMOKE, feedback_rank=2, engine="fused")


class Crash(Exception):
    """Stands in for a killed process."""


@pytest.mark.parametrize("value", [-1, 11, 1.5, True])
def test_config_refuses_a_rank_outside_0_to_min_of_n_e_and_n_classes(value):
    with pytest.raises(ConfigError, match=r"TrainConfig.feedback_rank: must be an int in 0 .. min\(n_e, n_classes\)"):
        TrainConfig(feedback_rank=value)
    assert TrainConfig(feedback_rank=10).to_dict()["feedback_rank"] == 10
    assert TrainConfig.from_dict(TrainConfig(feedback_rank=3).to_dict()).feedback_rank == 3


def test_cli_flag_names_itself_in_the_error(tmp_path, capsys):
    code, err = run_cli(["train", tmp_path / "run", "--tier", "smoke", "--feedback-rank", "11"], capsys)
    assert code != 0
    assert "--feedback-rank (TrainConfig.feedback_rank)" in err


def test_batched_training_refuses_feedback(tmp_path):
    with pytest.raises(ConfigError, match="TrainConfig.feedback_rank: the batched engine"):
        train_batched([(FEEDBACK_SMOKE, tmp_path / "a")], progress=False)


def test_smoke_run_with_feedback_trains_resumes_with_the_same_b(tmp_path):
    """A rank-2 run: its model holds the seed's B, config.json records the rank, the checkpoint carries B, and a
    run resumed after a crash has the same B and ends with the uninterrupted run's weights."""
    whole = train(FEEDBACK_SMOKE, tmp_path / "whole", progress=False)
    assert whole.status == "completed"
    expected = torch.from_numpy(feedback_matrix(FEEDBACK_SMOKE.network_params(), FEEDBACK_SMOKE.seed, 2))
    assert torch.equal(whole.model.feedback, expected)
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["config"]["feedback_rank"] == 2

    def crash(context: BatchContext) -> None:
        if (context.epoch, context.step) == (2, 1):
            raise Crash

    with pytest.raises(Crash):
        train(FEEDBACK_SMOKE, tmp_path / "resumed", progress=False, hook=crash)
    stored = load_checkpoint(tmp_path / "resumed" / CHECKPOINT_NAME)["model"]["feedback"]
    assert torch.equal(stored, expected)
    resumed = train(FEEDBACK_SMOKE, tmp_path / "resumed", progress=False)
    assert resumed.status == "completed"
    assert torch.equal(resumed.model.feedback, expected)
    for name in MATRICES:
        assert torch.equal(getattr(resumed.model, name), getattr(whole.model, name)), name
    # The feedback reached the training: the E side learned otherwise than under exact BPTT.
    exact = train(SMOKE, tmp_path / "exact", progress=False)
    assert exact.model.feedback is None
    assert not torch.equal(exact.model.w_in, whole.model.w_in)


# --- the protocol -------------------------------------------------------------------------------------


def test_feedback_rank_protocol_pairs_each_rank_with_exact_bptt_on_the_trainable_canonical_loop():
    protocol = get_protocol("feedback_rank")
    assert protocol.tier == "survey" and protocol.seeds == (42, 43, 44)
    runs = [r for r in protocol.runs() if r.seed == 42]
    configs = {r.condition: r.config for r in runs}
    assert {name: c.feedback_rank for name, c in configs.items()} == {
        "trainable_ping_init": 0,
        "feedback_rank_1": 1,
        "feedback_rank_2": 2,
        "feedback_rank_5": 5,
        "feedback_rank_10": 10,
    }
    # Each feedback run is dale_pruning's trainable canonical loop but for the feedback matrix.
    dale = {r.condition: r.config for r in get_protocol("dale_pruning", tier="survey", seeds=(42,)).runs()}
    exact = configs.pop("trainable_ping_init")
    assert exact == dale["trainable_ping_init"]
    for config in configs.values():
        assert config.train_w_ei and config.train_w_ie and config.init_w_ei == "canonical"
        assert dataclasses.replace(config, feedback_rank=0) == exact
