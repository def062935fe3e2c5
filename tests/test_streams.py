"""Digit streams: generation, no reset between digits, the single-digit path, and Brian2 identity."""

import json

import numpy as np
import pytest
import torch
from helpers import assert_same_spikes, small_network

from biosim.backends import run_trials
from biosim.data import load_split
from biosim.inputs import make_trials
from biosim.streams import StreamSet, accuracy_by_position, make_streams, stream_params, window_means
from biosim.weights import init_weights
from bridge import evaluation, feeding
from bridge.dynamics import make_constants, step
from bridge.evaluation import evaluate
from bridge.model import PINGModel, run_network
from bridge.simulate import run_mirror, torch_weights
from bridge.train_config import ConfigError, TrainConfig
from bridge.training import train
from bridge.validation import format_report, validate

SMALL = small_network()  # 64 E, 16 I, 20 ms digits


@pytest.fixture
def digits():
    test = load_split("smoke").test
    return make_trials(test.images[:6], test.labels[:6], SMALL, seed=5)


def test_each_window_holds_its_digits_input(digits):
    streams = make_streams(digits, 3, settle_steps=20)
    d = digits.n_steps
    assert (streams.n_streams, streams.n_digits, streams.trials.n_steps) == (2, 3, 3 * d)
    assert streams.windows() == [(20, d), (d + 20, 2 * d), (2 * d + 20, 3 * d)]
    stream_raster, digit_raster = streams.trials.dense(slice(None)), digits.dense(slice(None))
    for j in range(2):
        for p in range(3):
            np.testing.assert_array_equal(stream_raster[j, p * d : (p + 1) * d], digit_raster[3 * j + p])
    np.testing.assert_array_equal(streams.digit_labels, digits.labels.reshape(2, 3))
    np.testing.assert_array_equal(streams.digit_ids, digits.trial_ids.reshape(2, 3))
    # The stream starts from its first digit's initial state; the others' are never used (no reset).
    np.testing.assert_array_equal(streams.trials.v_init_e_mv, digits.v_init_e_mv[[0, 3]])
    np.testing.assert_array_equal(streams.trials.v_init_i_mv, digits.v_init_i_mv[[0, 3]])
    assert streams.trials.spike_count().sum() == digits.spike_count().sum()
    with pytest.raises(ValueError, match="cannot be cut into streams of 4"):
        make_streams(digits, 4)


def test_a_one_digit_stream_is_the_trial(digits):
    streams = make_streams(digits, 1)
    for name in ("input_trial", "input_step", "input_neuron", "v_init_e_mv", "v_init_i_mv", "labels", "trial_ids"):
        np.testing.assert_array_equal(getattr(streams.trials, name), getattr(digits, name), err_msg=name)
    assert stream_params(SMALL, 1) == SMALL


def test_window_means_and_accuracy_by_position():
    trace = np.arange(2 * 6 * 1, dtype=float).reshape(2, 6, 1) * np.array([1.0, -1.0])  # 2 classes
    scores = window_means(trace, 3, settle_steps=1)  # windows: steps 1, 3, 5
    np.testing.assert_array_equal(scores[..., 0], [[1, 3, 5], [7, 9, 11]])
    tensor = window_means(torch.as_tensor(trace), 3, settle_steps=1)
    assert isinstance(tensor, torch.Tensor) and np.array_equal(tensor.numpy(), scores)
    labels = np.array([[0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(accuracy_by_position(scores, labels), [1.0, 0.5, 1.0])


def test_the_state_carries_over_between_digits_in_the_mirror(digits):
    """A stream's second digit continues from the state the first left, not from a reset."""
    weights = torch_weights(init_weights(SMALL, seed=5), dtype=torch.float64)
    constants = make_constants(SMALL)
    streams = make_streams(digits.subset(np.array([0, 1])), 2)
    x = torch.from_numpy(streams.trials.dense(slice(None)))
    v_e, v_i = (torch.as_tensor(a) for a in (streams.trials.v_init_e_mv, streams.trials.v_init_i_mv))
    whole = run_network(x, v_e, v_i, weights, constants, record_readout=True, record_population=True)

    d = digits.n_steps
    first = run_network(x[:, :d], v_e, v_i, weights, constants, record_readout=True)
    state, trace = first.final_state, []
    for t in range(d, 2 * d):  # continue from the first digit's final state with the second digit's input
        _, _, state = step(x[:, t].double(), state, constants, weights)
        trace.append(state.u)
    np.testing.assert_array_equal(whole.readout_trace[:, d:].numpy(), torch.stack(trace, dim=1).numpy())
    np.testing.assert_array_equal(whole.final_state.v_e.numpy(), state.v_e.numpy())

    # The second digit alone, from its own initial state, is a different trial: the stream did not reset.
    alone = digits.subset(np.array([1]))
    fresh = run_network(
        torch.from_numpy(alone.dense(slice(None))),
        torch.as_tensor(alone.v_init_e_mv),
        torch.as_tensor(alone.v_init_i_mv),
        weights,
        constants,
        record_readout=True,
    )
    assert not np.array_equal(whole.readout_trace[:, d:].numpy(), fresh.readout_trace.numpy())
    assert float(whole.readout_trace[0, d].abs().sum()) > 0  # the readout did not start the digit at 0


def test_the_single_digit_path_is_unchanged(digits):
    """stream_digits = 1 trains on the mem-mean scores themselves (no window mean in between)."""
    model = PINGModel(SMALL, init_weights(SMALL, seed=5), dtype=torch.float64)
    output, scores, labels = evaluation._forward(model, digits, np.arange(3), torch.float64, torch.device("cpu"))
    assert scores is output.scores and labels.tolist() == digits.labels[:3].tolist()
    # A stream of one digit reads the same scores through its window (up to summation order).
    as_trials = evaluate(model, digits, batch_size=3)
    as_streams = evaluate(model, make_streams(digits, 1), batch_size=3)
    assert as_streams["accuracy"] == as_trials["accuracy"]
    assert as_streams["loss"] == pytest.approx(as_trials["loss"], rel=1e-12)
    assert as_streams["accuracy_by_position"] == [as_trials["accuracy"]]
    assert "accuracy_by_position" not in as_trials
    config = TrainConfig(tier="smoke", network=SMALL.to_dict())
    assert isinstance(feeding.test_trial_set(config), type(digits)) and config.stream_digits == 1


def _brian2_against_mirror(digits, streams: StreamSet, backend: str, build_dir=None) -> None:
    params = stream_params(SMALL, streams.n_digits)
    weights = init_weights(SMALL, seed=5)
    brian = run_trials(
        params,
        weights.effective(),
        streams.trials,
        backend=backend,
        build_dir=build_dir,
        progress=False,
        record_readout=True,
    )
    mirror = run_mirror(params, weights, streams.trials, dtype=torch.float64, record_readout=True)
    assert_same_spikes(brian, mirror)
    np.testing.assert_allclose(brian.traces["readout"], mirror.traces["readout"], rtol=1e-9, atol=1e-12)
    brian_scores = window_means(brian.traces["readout"], streams.n_digits, streams.settle_steps)
    mirror_scores = window_means(mirror.traces["readout"], streams.n_digits, streams.settle_steps)
    np.testing.assert_array_equal(brian_scores.argmax(axis=2), mirror_scores.argmax(axis=2))
    # Brian2 did not reset at the digit boundaries: its second digit differs from the digit run alone.
    d = streams.digit_steps
    steps, _ = brian.spikes_e.of_trial(0)
    inside = steps[(steps >= d) & (steps < 2 * d)] - d
    alone = run_mirror(SMALL, weights, digits.subset(np.array([1])), dtype=torch.float64)
    alone_steps = alone.spikes_e.of_trial(0)[0]
    assert len(inside) + len(alone_steps) > 0 and not np.array_equal(inside, alone_steps)


def test_streams_are_spike_identical_in_brian2_and_the_mirror(digits):
    _brian2_against_mirror(digits, make_streams(digits, 3, settle_steps=20), backend="numpy")


@pytest.mark.standalone
def test_streams_are_spike_identical_on_cpp_standalone(digits, tmp_path):
    _brian2_against_mirror(digits, make_streams(digits, 3), backend="cpp_standalone", build_dir=tmp_path)


def test_stream_config_is_checked():
    network = SMALL.to_dict()
    with pytest.raises(ConfigError, match=r"TrainConfig.n_test: 8 \(the smoke tier's\) digits cannot be cut"):
        TrainConfig(tier="smoke", network=network, stream_digits=3, n_train=12, batch_size=6)
    with pytest.raises(ConfigError, match="TrainConfig.batch_size: 6 digits cannot be cut"):
        TrainConfig(tier="smoke", network=network, stream_digits=4, batch_size=6)
    with pytest.raises(ConfigError, match="TrainConfig.stream_digits: must be a positive int"):
        TrainConfig(tier="smoke", network=network, stream_digits=0)
    with pytest.raises(ConfigError, match="TrainConfig.stream_settle_ms: applies to digit streams only"):
        TrainConfig(tier="smoke", network=network, stream_settle_ms=5.0)
    with pytest.raises(ConfigError, match="less than trial_ms"):
        TrainConfig(tier="smoke", network=network, stream_digits=4, stream_settle_ms=20.0)
    with pytest.raises(ConfigError, match="whole number of steps"):
        TrainConfig(tier="smoke", network=network, stream_digits=4, stream_settle_ms=0.05)
    config = TrainConfig(tier="smoke", network=network, stream_digits=4, stream_settle_ms=5.0)
    assert config.stream_settle_steps() == 50 and TrainConfig.from_json(config.to_json()) == config


def test_streaming_run_trains_and_validates_per_digit_in_brian2(tmp_path):
    """End to end: streams of 4 in training (loss over the windows) and in Brian2 (per-digit accuracy)."""
    config = TrainConfig(
        tier="smoke",
        network=SMALL.to_dict(),
        engine="fused",
        stream_digits=4,
        stream_settle_ms=5.0,
        train_w_ei=True,
        train_w_ie=True,
    )
    result = train(config, tmp_path / "run", progress=False)
    assert result.status == "completed"
    final = result.final_metrics
    assert len(final["test_accuracy_by_position"]) == 4
    assert final["test_accuracy"] == pytest.approx(np.mean(final["test_accuracy_by_position"]))
    streams = feeding.test_stream_set(config)
    assert (streams.n_streams, streams.n_digits, streams.settle_steps) == (2, 4, 50)

    report = validate(tmp_path / "run", backend="numpy", progress=False)
    assert report["verdict"] == "pass", format_report(report)
    assert report["spike_identity_float64"]["fraction"] == 1.0
    assert report["stream"]["n_digits"] == 4 and report["stream"]["n_streams"] == 2
    brian, mirror = report["simulators"]["brian2:numpy"], report["simulators"]["mirror:float64"]
    assert brian["accuracy_by_position"] == mirror["accuracy_by_position"]
    assert brian["n_digits"] == 8
    # The trainer's float32 test accuracy over the same windows is the float32 mirror's.
    assert report["simulators"]["mirror:float32"]["accuracy"] == pytest.approx(final["test_accuracy"])
    assert "accuracy by position in the stream" in format_report(report)
    raster = np.load(tmp_path / "run" / "raster_numpy.npz")
    assert int(raster["n_steps"]) == 4 * int(raster["digit_steps"])
    assert json.loads((tmp_path / "run" / "validation_numpy.json").read_text())["stream"]["digit_steps"] == 200
