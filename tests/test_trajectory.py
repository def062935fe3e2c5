"""Tests of the trajectory records of a training run (bridge.trajectory, TrainConfig.record_every)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from helpers import SMOKE, run_cli

from bridge.learning_dynamics import e_representations
from bridge.model import MATRICES
from bridge.train_config import ConfigError, TrainConfig, build_model
from bridge.training import BatchContext, train
from bridge.trajectory import STEPS_NAME, TRAJECTORY_DIR, load_trajectory, record_arrays

RECORDED = dataclasses.replace(SMOKE, record_every=1)
"""The smoke run (2 epochs x 2 batches = 4 Adam steps), recorded at every step."""


class Crash(Exception):
    """Stands in for a killed process."""


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    return train(SMOKE, tmp_path_factory.mktemp("plain"), progress=False)


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    return train(RECORDED, tmp_path_factory.mktemp("recorded"), progress=False)


def step_lines(run_dir):
    return [json.loads(line) for line in (run_dir / TRAJECTORY_DIR / STEPS_NAME).read_text().splitlines()]


def test_recording_leaves_the_weights_bit_identical(plain_run, recorded_run):
    for name in MATRICES:
        assert torch.equal(getattr(plain_run.model, name), getattr(recorded_run.model, name)), name
    assert not (plain_run.run_dir / TRAJECTORY_DIR).exists()


def test_records_hold_the_initial_and_every_later_step(recorded_run):
    trajectory = load_trajectory(recorded_run.run_dir)
    assert trajectory.steps.tolist() == [0, 1, 2, 3, 4]
    n_e, n_i = 64, 16
    assert trajectory.matrices["w_ei"].shape == (5, n_e, n_i) and trajectory.matrices["w_ie"].shape == (5, n_i, n_e)
    assert trajectory.matrices["w_ei"].dtype == np.float32 and trajectory.w_in_norms.shape == (5, n_e)
    initial = record_arrays(build_model(RECORDED.resolved(), RECORDED.network_params()))
    final = record_arrays(recorded_run.model)
    for name, value in initial.items():
        first = trajectory.w_in_norms[0] if name == "w_in_norms" else trajectory.matrices[name][0]
        last = trajectory.w_in_norms[-1] if name == "w_in_norms" else trajectory.matrices[name][-1]
        np.testing.assert_array_equal(first, value)
        np.testing.assert_array_equal(last, final[name])
    assert not np.array_equal(trajectory.matrices["w_ei"][0], trajectory.matrices["w_ei"][-1])
    # The W_in norms are the column norms of the effective (clamped, masked) W_in.
    effective = recorded_run.model.effective_weights().w_in.detach().numpy()
    np.testing.assert_allclose(trajectory.w_in_norms[-1], np.linalg.norm(effective, axis=0), rtol=1e-6)
    lines = step_lines(recorded_run.run_dir)
    assert [line["step"] for line in lines] == [1, 2, 3, 4] and [line["epoch"] for line in lines] == [1, 1, 2, 2]
    assert {"loss", "rate_e_hz", "rate_i_hz", "grad_norm", "grad_norm_w_ei", "grad_norm_w_ie"} <= set(lines[0])
    assert all(line["rate_i_hz"] > 0 and line["grad_norm"] > 0 for line in lines)
    np.testing.assert_array_equal(trajectory.scalars["loss"], [line["loss"] for line in lines])


def test_a_resumed_run_has_the_records_of_an_uninterrupted_one(tmp_path, recorded_run):
    def crash(context: BatchContext) -> None:
        if (context.epoch, context.step) == (2, 1):
            raise Crash

    with pytest.raises(Crash):
        train(RECORDED, tmp_path, progress=False, hook=crash)
    # The crash came after step 3 was recorded, beyond the checkpoint (step 2): the resume redoes it.
    assert load_trajectory(tmp_path).steps.tolist() == [0, 1, 2, 3]
    resumed = train(RECORDED, tmp_path, progress=False)
    for name in MATRICES:
        assert torch.equal(getattr(resumed.model, name), getattr(recorded_run.model, name)), name
    expected, actual = load_trajectory(recorded_run.run_dir), load_trajectory(tmp_path)
    assert actual.steps.tolist() == expected.steps.tolist()
    for name in expected.matrices:
        np.testing.assert_array_equal(actual.matrices[name], expected.matrices[name])
    np.testing.assert_array_equal(actual.w_in_norms, expected.w_in_norms)
    assert step_lines(tmp_path) == step_lines(recorded_run.run_dir)


def test_a_rollback_drops_the_records_of_the_abandoned_steps(tmp_path):
    poisoned = []

    def poison_once(context: BatchContext) -> None:
        if (context.epoch, context.step) == (2, 1) and not poisoned:
            poisoned.append(True)
            context.loss = context.loss * float("nan")

    result = train(RECORDED, tmp_path, progress=False, hook=poison_once)
    assert result.retries == 1
    lines = step_lines(tmp_path)
    assert [line["step"] for line in lines] == [1, 2, 3, 4]  # step 3 of the abandoned epoch is gone, redone once
    trajectory = load_trajectory(tmp_path)
    assert trajectory.steps.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(trajectory.matrices["w_ei"][-1], record_arrays(result.model)["w_ei"])


def test_records_every_k_steps_and_the_last(tmp_path):
    train(dataclasses.replace(SMOKE, record_every=3, epochs=1), tmp_path, progress=False)
    assert load_trajectory(tmp_path).steps.tolist() == [0, 2]  # step 0, then the last (2 < 3)
    assert [line["step"] for line in step_lines(tmp_path)] == [1, 2]


def test_record_every_is_checked_and_missing_records_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"TrainConfig.record_every: must be a non-negative int"):
        TrainConfig(record_every=-1)
    with pytest.raises(ConfigError, match=r"TrainConfig.record_every"):
        TrainConfig(record_every=2.0)
    with pytest.raises(FileNotFoundError, match=r"--record-every"):
        load_trajectory(tmp_path)


def test_record_every_flags_reach_the_config():
    from protocols.cli import build_parser
    from protocols.protocol import get_protocol

    parser = build_parser()
    assert parser.parse_args(["train", "run", "--record-every", "5"]).record_every == 5
    assert parser.parse_args(["protocol", "run", "dale_pruning", "--record-every", "7"]).record_every == 7
    assert parser.parse_args(["train", "run"]).record_every is None
    protocol = get_protocol("dale_pruning", tier="smoke", record_every=7)
    assert {spec.config.record_every for spec in protocol.runs()} == {7}


def test_dynamics_command_writes_every_metric(recorded_run, tmp_path, capsys):
    out = tmp_path / "dynamics.json"
    code, err = run_cli(["dynamics", recorded_run.run_dir, "--out", out], capsys)
    assert code == 0, err
    summary = json.loads(out.read_text())
    assert summary["record_steps"] == [0, 1, 2, 3, 4]
    racing = summary["racing_w_ei"]
    assert len(racing["norms"]) == 5 and len(racing["norms"][0]) == 16 and len(racing["unlocking_steps"]) == 16
    assert -1 <= racing["lottery"] <= 1 and 0 < racing["top_share"]["final"] <= 1
    assert set(summary["rank"]) == {"w_ei", "w_ie"}
    assert all(0 < r <= 16 for r in summary["rank"]["w_ei"]["effective_rank"])
    assert summary["rank"]["w_ei"]["relative_change"] > 0
    assert len(summary["rank"]["w_ie"]["effective_rank_centred"]) == 5
    transitions = summary["transitions"]
    assert transitions["window_steps"] == 5 and set(transitions) == {"window_steps", "loss", "rate_i_hz"}
    assert sum(transitions["loss"]["plateau_lengths"]) == 4
    representation = summary["representation"]
    assert representation["n_trials"] == 8 and 0 < representation["linear_cka"] <= 1 + 1e-12
    code, err = run_cli(["dynamics", tmp_path / "none"], capsys)
    assert code == 2 and "--record-every" in err


def test_e_representations_are_the_trials_e_rates(recorded_run):
    from bridge.feeding import test_trial_set

    config = recorded_run.config
    trials = test_trial_set(config)
    rates = e_representations(recorded_run.model, trials, batch_size=3)  # batches of 3, 3, 2 trials
    assert rates.shape == (8, 64)
    whole = e_representations(recorded_run.model, trials, batch_size=8)
    np.testing.assert_array_equal(rates, whole)
    assert rates.mean() > 0
