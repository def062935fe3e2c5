"""Tests of biosim.inputs: Poisson input spikes and initial potentials."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from biosim.data import load_split
from biosim.inputs import TrialSet, make_trials
from biosim.params import NetworkParams, ParameterError

PARAMS = NetworkParams()
N_SIGMA = 5.0
"""Tolerance of the rate tests in standard deviations of the spike count. The count is a sum of
independent Bernoulli draws, so its variance is sum p (1 - p); 5 sigma keeps the false-failure
probability of a fresh seed below 1e-6 while still catching a rate wrong by a few percent."""


@pytest.fixture(scope="module")
def digits():
    split = load_split("smoke")
    return split.train.images[:16], split.train.labels[:16]


@pytest.fixture(scope="module")
def trials(digits):
    return make_trials(*digits, PARAMS, seed=7)


def assert_same_trials(first: TrialSet, second: TrialSet) -> None:
    for field in dataclasses.fields(TrialSet):
        a, b = getattr(first, field.name), getattr(second, field.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype, field.name
            assert np.array_equal(a, b), field.name
        else:
            assert a == b, field.name


def test_shapes_and_dtypes(trials, digits):
    connectivity = PARAMS.connectivity
    assert trials.n_trials == 16
    assert trials.n_steps == PARAMS.simulation.n_steps
    assert trials.n_input == connectivity.n_input
    for name in ("input_trial", "input_step", "input_neuron"):
        assert getattr(trials, name).dtype == np.int32
    assert trials.v_init_e_mv.shape == (16, connectivity.n_e)
    assert trials.v_init_e_mv.dtype == np.float64
    assert trials.v_init_i_mv.shape == (16, connectivity.n_i)
    assert np.array_equal(trials.labels, digits[1])
    assert trials.labels.dtype == np.int64
    assert trials.spike_count().sum() == len(trials.input_trial)


def test_same_seed_reproduces_and_other_seed_differs(trials, digits):
    assert_same_trials(trials, make_trials(*digits, PARAMS, seed=7))
    other = make_trials(*digits, PARAMS, seed=8)
    assert not np.array_equal(other.v_init_e_mv, trials.v_init_e_mv)
    assert not np.array_equal(other.spike_count(), trials.spike_count())


def test_a_trial_does_not_depend_on_its_batch(trials, digits):
    images, labels = digits
    for k in (0, 5, 15):
        alone = make_trials(
            images[k : k + 1],
            labels[k : k + 1],
            PARAMS,
            seed=7,
            trial_ids=np.array([k]),
        )
        assert_same_trials(alone, trials.subset(np.array([k])))
    # A reordered batch holds the same trials, reordered.
    order = np.array([3, 9, 1])
    assert_same_trials(
        make_trials(images[order], labels[order], PARAMS, seed=7, trial_ids=order),
        trials.subset(order),
    )


def test_initial_potentials_are_uniform_between_reset_and_threshold(trials):
    for values, membrane in (
        (trials.v_init_e_mv, PARAMS.membrane_e),
        (trials.v_init_i_mv, PARAMS.membrane_i),
    ):
        assert values.min() >= membrane.v_reset_mv
        assert values.max() < membrane.v_threshold_mv
        # Mean of n uniforms: std = width / sqrt(12 n).
        width = membrane.v_threshold_mv - membrane.v_reset_mv
        middle = (membrane.v_reset_mv + membrane.v_threshold_mv) / 2
        assert abs(values.mean() - middle) < N_SIGMA * width / np.sqrt(12 * values.size)


def test_rate_matches_max_rate_times_mean_intensity(trials, digits):
    images = digits[0].astype(np.float64)
    dt_s = PARAMS.simulation.dt_ms * 1e-3
    probability = images / 255 * PARAMS.input.max_rate_hz * dt_s
    expected = trials.n_steps * probability.sum()
    sigma = np.sqrt(trials.n_steps * (probability * (1 - probability)).sum())
    assert abs(len(trials.input_trial) - expected) < N_SIGMA * sigma
    # The same statement as a rate (Hz): max_rate * mean intensity / 255.
    rate_hz = len(trials.input_trial) / (images.size * trials.n_steps * dt_s)
    assert rate_hz == pytest.approx(PARAMS.input.max_rate_hz * images.mean() / 255, rel=N_SIGMA * sigma / expected)


def test_rate_is_proportional_to_intensity():
    # Half the inputs at full intensity, half at 51 / 255 = 0.2: rates of max_rate and 0.2 * max_rate.
    n_input = PARAMS.connectivity.n_input
    images = np.tile(np.where(np.arange(n_input) % 2 == 0, 255, 51), (4, 1))
    result = make_trials(images, np.zeros(4, dtype=np.int64), PARAMS, seed=3)
    counts = np.bincount(result.input_neuron % 2, minlength=2)
    n_draws = 4 * result.n_steps * n_input // 2
    for count, fraction in zip(counts, (1.0, 0.2), strict=True):
        probability = fraction * PARAMS.input.max_rate_hz * PARAMS.simulation.dt_ms * 1e-3
        expected = n_draws * probability
        assert abs(count - expected) < N_SIGMA * np.sqrt(n_draws * probability * (1 - probability))


def test_zero_pixels_never_spike(trials, digits):
    images = digits[0]
    assert np.all(images[trials.input_trial, trials.input_neuron] > 0)
    blank = make_trials(
        np.zeros((2, PARAMS.connectivity.n_input)),
        np.zeros(2, dtype=int),
        PARAMS,
        seed=0,
    )
    assert len(blank.input_trial) == 0
    assert np.array_equal(blank.spike_count(), [0, 0])


def test_spikes_are_sorted_by_trial_step_neuron(trials):
    keys = np.stack([trials.input_trial, trials.input_step, trials.input_neuron])
    assert np.array_equal(np.lexsort(keys[::-1]), np.arange(keys.shape[1]))


def test_dense_matches_the_sparse_arrays(trials):
    raster = trials.dense(slice(None))
    assert raster.dtype == bool
    assert raster.shape == (16, trials.n_steps, trials.n_input)
    trial, step, neuron = np.nonzero(raster)
    assert np.array_equal(trial, trials.input_trial)
    assert np.array_equal(step, trials.input_step)
    assert np.array_equal(neuron, trials.input_neuron)
    order = np.array([4, 2])
    assert np.array_equal(trials.dense(order), raster[order])
    assert np.array_equal(trials.dense(slice(2, 4)), trials.subset(slice(2, 4)).dense(slice(None)))


def test_make_trials_rejects_bad_inputs(digits):
    images, labels = digits
    with pytest.raises(ValueError, match=r"images must be a real-valued array of shape \(n_trials, 784\)"):
        make_trials(images[:, :100], labels, PARAMS, seed=0)
    too_bright = images.astype(np.int64)
    too_bright[3, 100] = 256
    with pytest.raises(ValueError, match=r"images must lie in 0\.\.255, found 0\.\.256"):
        make_trials(too_bright, labels, PARAMS, seed=0)
    with pytest.raises(ValueError, match=r"images must lie in 0\.\.255"):
        make_trials(images - 1.0, labels, PARAMS, seed=0)
    with pytest.raises(ValueError, match=r"labels must be an integer array of shape \(16,\)"):
        make_trials(images, labels[:3], PARAMS, seed=0)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        make_trials(images, labels, PARAMS, seed=-1)
    with pytest.raises(ParameterError, match="max_rate_hz"):
        make_trials(images, labels, PARAMS.replace(input__max_rate_hz=20_000.0), seed=0)


def test_trial_set_rejects_unsorted_spikes(trials):
    order = np.arange(len(trials.input_trial))
    order[[0, 1]] = [1, 0]
    with pytest.raises(ValueError, match="spike rows 0 and 1 are not"):
        dataclasses.replace(
            trials,
            input_step=trials.input_step[order],
            input_neuron=trials.input_neuron[order],
        )
