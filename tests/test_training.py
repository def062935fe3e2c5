"""Tests of training (bridge.training, train_config, feeding, evaluation, run_records) and bridge.checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pytest
import torch
from helpers import SMOKE

from biosim.params import NetworkParams
from biosim.tiers import TIERS
from biosim.weight_files import load_weights
from biosim.weights import init_weights
from bridge import feeding, training
from bridge.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from bridge.evaluation import evaluate, population_spiketrains
from bridge.model import MATRICES
from bridge.run_records import load_model
from bridge.train_config import ConfigError, TrainConfig
from bridge.training import BatchContext, train


class Crash(Exception):
    """Stands in for a killed process."""


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_weights(first, second):
    for name in MATRICES:
        assert torch.equal(getattr(first, name), getattr(second, name)), name


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted smoke run, shared by the tests that compare against it."""
    run_dir = tmp_path_factory.mktemp("reference")
    return train(SMOKE, run_dir, progress=False)


# --- config ------------------------------------------------------------------------


def test_config_json_round_trip():
    config = dataclasses.replace(SMOKE, init_w_ei=0.1, init_w_ie="zero", grad_clip=None, surrogate="atan")
    assert TrainConfig.from_json(config.to_json()) == config
    resolved = TrainConfig(tier="medium").resolved()
    assert (resolved.n_train, resolved.n_test, resolved.epochs, resolved.batch_size) == (1600, 400, 100, 256)
    assert TrainConfig.from_dict(resolved.to_dict()) == resolved
    assert NetworkParams.from_dict(resolved.network) == NetworkParams()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tier", "huge"),
        ("epochs", 0),
        ("batch_size", 2.5),
        ("lr", -1.0),
        ("grad_clip", 0.0),
        ("surrogate", "superspike"),
        ("surrogate_slope", float("nan")),
        ("init_w_ei", "random"),
        ("init_w_ie", -0.5),
        ("train_w_in", "yes"),
        ("seed", -1),
        ("dtype", "float16"),
        ("device", "tpu"),
        ("engine", "jit"),
        ("network", {"synapse": {"tau_gaba": 8.0}}),
        ("max_retries", -1),
        ("retry_lr_factor", 1.5),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


def test_config_unknown_key_lists_valid_fields():
    with pytest.raises(ConfigError, match="unknown field.*learning_rate.*valid fields:.*lr"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_training_tiers():
    assert [name for name, tier in TIERS.items() if tier.training is not None] == ["smoke", "cpu", "medium", "full"]
    medium = TIERS["medium"].training
    assert (medium.n_train, medium.n_test, medium.epochs, medium.batch_size) == (1600, 400, 100, 256)
    full = TIERS["full"].training
    assert (full.n_train, full.n_test) == (60_000, 10_000)


def test_protocol_only_tiers_are_not_training_tiers():
    """``study`` and ``survey`` size protocol runs only; those runs name the medium pool as their tier."""
    assert [TIERS[name].protocol.data_tier for name in ("study", "survey")] == ["medium", "medium"]
    with pytest.raises(ConfigError, match="TrainConfig.tier: must be one of smoke, cpu, medium, full, got 'study'"):
        TrainConfig(tier="study")


# --- helpers -------------------------------------------------------------------------


def test_population_spiketrains_keeps_counts_per_step():
    counts = np.array([[0, 2, 1], [3, 0, 0]])
    trains = population_spiketrains(counts, n_neurons=5)
    assert (trains.n_trials, trains.n_steps, trains.n_neurons) == (2, 3, 5)
    rebuilt = np.zeros_like(counts)
    np.add.at(rebuilt, (trains.trial, trains.step), 1)
    np.testing.assert_array_equal(rebuilt, counts)


def test_checkpoint_is_atomic_and_restores_rng(tmp_path):
    path = tmp_path / "checkpoint.pt"
    state = capture_rng_state()
    first = (torch.rand(3), np.random.random(2), random.random())  # noqa: NPY002
    save_checkpoint(path, {"rng": state, "value": torch.arange(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind
    restore_rng_state(load_checkpoint(path)["rng"])
    second = (torch.rand(3), np.random.random(2), random.random())  # noqa: NPY002
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


# --- a run and its files ------------------------------------------------------------------


def test_run_writes_config_metrics_and_final(reference_run):
    run_dir = reference_run.run_dir
    assert reference_run.status == "completed"
    config = json.loads((run_dir / "config.json").read_text())
    assert TrainConfig.from_dict(config["config"]) == SMOKE.resolved()
    assert "torch" in config["versions"] and config["seed"] == SMOKE.seed

    metrics = read_lines(run_dir / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    assert metrics == reference_run.metrics
    for record in metrics:
        for key in ("loss", "train_accuracy", "test_accuracy", "test_loss", "rate_e_hz", "rate_i_hz", "wall_time_s"):
            assert math.isfinite(record[key]), key
        assert "gamma_peak_hz" in record
        for name in ("w_in", "w_ei", "w_ie"):
            for stat in ("mean_abs_stored", "pruned_fraction", "effective_mean"):
                assert math.isfinite(record[f"{name}_{stat}"]), (name, stat)
    assert metrics[0]["grad_norm"] is None and metrics[1]["grad_norm"] > 0
    assert metrics[1]["w_ei_mean_abs_stored"] != metrics[0]["w_ei_mean_abs_stored"]  # the loop trained

    final = json.loads((run_dir / "final.json").read_text())
    assert final["status"] == "completed" and final["diverged"] is None and final["epochs_completed"] == 2
    assert final["final"] == metrics[-1]
    spectrum = json.loads((run_dir / "spectrum.json").read_text())
    assert len(spectrum["frequency_hz"]) == len(spectrum["power"]) > 0
    assert not (run_dir / "events.jsonl").exists()


def test_final_weights_and_test_set_reproduce_the_final_metrics(reference_run):
    """weights.npz and test_trial_set give Brian2 (bridge.validation) exactly what the trainer measured."""
    loaded = load_weights(reference_run.run_dir / "weights.npz")
    stored = reference_run.model.to_network_weights(stored=True)
    for name in MATRICES:
        np.testing.assert_array_equal(getattr(loaded.stored, name), getattr(stored, name))
    assert loaded.metadata["provenance"]["status"] == "completed"
    trials = feeding.test_trial_set(SMOKE)
    assert trials.n_trials == SMOKE.n_test
    again = evaluate(load_model(reference_run.run_dir), trials, batch_size=4)
    assert again["accuracy"] == reference_run.final_metrics["test_accuracy"]
    assert again["rate_e_hz"] == reference_run.final_metrics["rate_e_hz"]
    assert again["loss"] == pytest.approx(reference_run.final_metrics["test_loss"], rel=1e-12)


def test_frozen_matrices_do_not_change(tmp_path):
    config = dataclasses.replace(SMOKE, epochs=1, train_w_ei=False, train_w_ie=False, n_train=8)
    result = train(config, tmp_path, progress=False)
    initial = init_weights(result.config.network_params(), config.seed)
    for name, changed in (("w_ei", False), ("w_ie", False), ("w_in", True)):
        assert np.array_equal(getattr(result.model, name).detach().numpy(), getattr(initial, name)) != changed, name
    assert not result.model.w_ei.requires_grad


def test_finished_run_is_not_retrained(reference_run):
    def fail(context: BatchContext) -> None:
        raise AssertionError("a finished run was retrained")

    again = train(SMOKE, reference_run.run_dir, progress=False, hook=fail)
    assert again.status == "completed" and again.metrics == reference_run.metrics
    assert_same_weights(again.model, reference_run.model)
    assert_same_weights(load_model(reference_run.run_dir), reference_run.model)


def test_resume_after_crash_gives_identical_weights(tmp_path, reference_run):
    def crash(context: BatchContext) -> None:
        if (context.epoch, context.step) == (2, 1):
            raise Crash

    with pytest.raises(Crash):
        train(SMOKE, tmp_path, progress=False, hook=crash)
    assert not (tmp_path / "final.json").exists()
    assert [m["epoch"] for m in read_lines(tmp_path / "metrics.jsonl")] == [0, 1]

    resumed = train(SMOKE, tmp_path, progress=False)
    assert resumed.status == "completed"
    assert_same_weights(resumed.model, reference_run.model)
    strip = ("wall_time_s", "elapsed_s")

    def stripped(records):
        return [{k: v for k, v in record.items() if k not in strip} for record in records]

    assert stripped(read_lines(tmp_path / "metrics.jsonl")) == stripped(reference_run.metrics)
    assert [e["event"] for e in read_lines(tmp_path / "events.jsonl")] == ["resumed"]


def test_resume_with_another_config_is_refused(tmp_path):
    def crash(context: BatchContext) -> None:
        raise Crash

    with pytest.raises(Crash):
        train(SMOKE, tmp_path, progress=False, hook=crash)
    with pytest.raises(ConfigError, match=r"different config \(fields \['lr'\]"):
        train(dataclasses.replace(SMOKE, lr=1e-3), tmp_path, progress=False)


# --- non-finite values ----------------------------------------------------------------------


def test_nan_loss_rolls_back_and_retries_with_smaller_lr(tmp_path, capsys):
    poisoned = []

    def poison_once(context: BatchContext) -> None:
        if (context.epoch, context.step) == (2, 1) and not poisoned:
            poisoned.append(True)
            context.loss = context.loss * float("nan")

    result = train(SMOKE, tmp_path, progress=False, hook=poison_once)
    assert result.status == "completed" and result.retries == 1
    events = read_lines(tmp_path / "events.jsonl")
    assert [e["event"] for e in events] == ["nonfinite", "rollback"]
    assert events[0]["epoch"] == 2 and events[0]["step"] == 1 and events[0]["nonfinite"] == ["loss"]
    assert events[1]["to_epoch"] == 1 and events[1]["lr"] == pytest.approx(SMOKE.lr * SMOKE.retry_lr_factor)
    assert "nonfinite" in capsys.readouterr().err
    metrics = read_lines(tmp_path / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    assert metrics[1]["lr"] == SMOKE.lr and metrics[2]["lr"] == pytest.approx(SMOKE.lr / 2)
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["status"] == "completed" and final["retries"] == 1


def test_nonfinite_state_is_detected(tmp_path):
    """A NaN membrane never spikes, so the loss stays finite: the state check must catch it."""

    poisoned = []

    def poison_state(context: BatchContext) -> None:
        if (context.epoch, context.step) == (1, 0) and not poisoned:
            poisoned.append(True)
            context.output.final_state.v_i[0, 0] = float("nan")

    config = dataclasses.replace(SMOKE, epochs=1)
    result = train(config, tmp_path, progress=False, hook=poison_state)
    assert result.status == "completed" and result.retries == 1
    assert read_lines(tmp_path / "events.jsonl")[0]["nonfinite"] == ["state.v_i"]


def test_always_poisoned_run_ends_diverged(tmp_path):
    def poison(context: BatchContext) -> None:
        if context.epoch >= 2:
            context.loss = context.loss + float("inf")

    config = dataclasses.replace(SMOKE, max_retries=2)
    result = train(config, tmp_path, progress=False, hook=poison)
    assert result.status == "diverged" and result.retries == 2
    assert result.diverged == {"epoch": 2, "step": 0, "global_step": 2, "nonfinite": ["loss"]}
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["status"] == "diverged" and final["diverged"]["epoch"] == 2 and final["diverged"]["step"] == 0
    assert final["epochs_completed"] == 1
    events = [e["event"] for e in read_lines(tmp_path / "events.jsonl")]
    assert events == ["nonfinite", "rollback", "nonfinite", "rollback", "nonfinite", "diverged"]
    # The weights are those of the last good checkpoint (end of epoch 1), all finite.
    assert all(torch.isfinite(getattr(result.model, name)).all() for name in MATRICES)
    assert [m["epoch"] for m in read_lines(tmp_path / "metrics.jsonl")] == [0, 1]
    # A diverged run is finished too: calling train again does not retrain it.
    assert train(config, tmp_path, progress=False).status == "diverged"


# --- reproducibility and gradient handling ---------------------------------------------


def test_same_config_twice_gives_bit_identical_weights(tmp_path, reference_run):
    """The protocol's set-up (fused engine, float32, default determinism) reproduces itself exactly."""
    config = dataclasses.replace(SMOKE, engine="fused", dtype="float32", deterministic=False)
    first = train(config, tmp_path / "first", progress=False)
    second = train(config, tmp_path / "second", progress=False)
    assert_same_weights(first.model, second.model)
    assert any(not torch.equal(getattr(first.model, n), getattr(reference_run.model, n)) for n in MATRICES)
    strip = ("wall_time_s", "elapsed_s")
    assert [{k: v for k, v in m.items() if k not in strip} for m in first.metrics] == [
        {k: v for k, v in m.items() if k not in strip} for m in second.metrics
    ]


def _with_gradients(**norms: float) -> dict[str, torch.Tensor]:
    parameters = {}
    for name, norm in norms.items():
        p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        p.grad = torch.full((4,), norm / 2.0, dtype=torch.float64)  # |grad| = norm
        parameters[name] = p
    return parameters


def test_per_matrix_clipping_bounds_each_matrix_alone():
    parameters = _with_gradients(w_in=1e6, w_out=0.5)
    norms = training._clip_gradients(parameters, 1.0, "per_matrix")
    assert norms == pytest.approx({"w_in": 1e6, "w_out": 0.5})
    assert float(parameters["w_in"].grad.norm()) == pytest.approx(1.0, rel=1e-5)
    assert float(parameters["w_out"].grad.norm()) == pytest.approx(0.5)  # below the bound: untouched


def test_global_clipping_shrinks_a_small_gradient_with_a_large_one():
    parameters = _with_gradients(w_in=1e6, w_out=0.5)
    training._clip_gradients(parameters, 1.0, "global")
    assert float(parameters["w_out"].grad.norm()) == pytest.approx(0.5 / 1e6, rel=1e-5)


def test_metrics_log_per_matrix_gradient_norms_and_adam_eps_fractions(reference_run):
    record = reference_run.metrics[1]
    for name in MATRICES:  # SMOKE trains all four
        assert record[f"grad_norm_{name}"] > 0
        assert 0.0 <= record[f"adam_eps_dominated_{name}"] <= 1.0
    assert record["optimizer_steps"] == 2  # 16 digits, batches of 8
    with pytest.raises(ConfigError, match="grad_clip_mode"):
        TrainConfig(grad_clip_mode="sometimes")


def test_gradient_norms_do_not_depend_on_the_number_of_threads():
    """W_in's gradient is large enough for torch to split its sum between threads; the recorded norm is not."""
    gradient = torch.randn(784, 1024, generator=torch.Generator().manual_seed(0)) * 1e-3
    threads = torch.get_num_threads()
    try:
        sums = []
        for n in (1, 2):
            torch.set_num_threads(n)
            sums += [training._sum_of_squares(gradient), training._sum_of_squares(gradient.t())]
    finally:
        torch.set_num_threads(threads)
    assert len(set(sums)) == 1, sums
    assert sums[0] == pytest.approx(float((gradient.double() ** 2).sum()), rel=1e-12)
