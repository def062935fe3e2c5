"""One network, every CPU backend: identical spike trains for identical input."""

import numpy as np
import pytest
import torch
from helpers import assert_same_spikes

from biosim.backends import BACKENDS, BackendError, run_trials
from biosim.data import load_split
from biosim.inputs import make_trials
from biosim.weights import DaleLawError, WeightShapeError, init_weights
from bridge.simulate import run_mirror


@pytest.fixture
def small_run(small_params):
    test = load_split("smoke").test
    trials = make_trials(test.images[:3], test.labels[:3], small_params, seed=5)
    weights = init_weights(small_params, seed=5).effective()
    return small_params, weights, trials


@pytest.mark.standalone
def test_runtime_and_cpp_standalone_give_identical_spikes(small_run, tmp_path):
    params, weights, trials = small_run
    numpy_result = run_trials(params, weights, trials, backend="numpy", progress=False)
    cpp_result = run_trials(params, weights, trials, backend="cpp_standalone", build_dir=tmp_path, progress=False)
    assert_same_spikes(numpy_result, cpp_result)
    np.testing.assert_allclose(numpy_result.scores, cpp_result.scores, rtol=1e-9, atol=1e-12)
    # and the float64 mirror reproduces Brian2 spike for spike
    mirror = run_mirror(params, weights, trials, dtype=torch.float64)
    assert_same_spikes(numpy_result, mirror)
    np.testing.assert_allclose(mirror.scores, numpy_result.scores, rtol=1e-9, atol=1e-12)


def test_trials_are_independent(small_params):
    """Each trial gives the same spikes alone as inside a multi-trial run (state is reset).

    The case that matters is a neuron still refractory when the next trial
    starts; the test checks that it occurs, so that it is really exercised.
    """
    # Strong input makes E cells fire near their maximal rate, so some are
    # refractory at every trial boundary.
    params = small_params.replace(init__input_scale_us=0.3)
    test = load_split("smoke").test
    trials = make_trials(test.images[:6], test.labels[:6], params, seed=5)
    weights = init_weights(params, seed=5).effective()
    together = run_trials(params, weights, trials, backend="numpy", progress=False)
    refractory_steps = params.refractory_steps("e")
    boundary_refractory = 0
    for k in range(trials.n_trials):
        alone = run_trials(params, weights, trials.subset(np.array([k])), backend="numpy", progress=False)
        for population in ("spikes_e", "spikes_i"):
            step_together, neuron_together = getattr(together, population).of_trial(k)
            step_alone, neuron_alone = getattr(alone, population).of_trial(0)
            np.testing.assert_array_equal(step_together, step_alone, err_msg=f"trial {k} {population}")
            np.testing.assert_array_equal(neuron_together, neuron_alone, err_msg=f"trial {k} {population}")
        step, _ = together.spikes_e.of_trial(k)
        boundary_refractory += int(np.sum(step >= params.simulation.n_steps - refractory_steps + 1))
    assert boundary_refractory > 0, "no neuron was refractory at a trial boundary: the test exercised nothing"


def test_zero_loop_weights_run_and_match_the_mirror(small_run):
    """A zero-initialised (or fully pruned) E-I loop has no synapses in Brian2 and still runs."""
    params, _, trials = small_run
    weights = init_weights(params, seed=5, w_ei="zero", w_ie="zero").effective()
    brian = run_trials(params, weights, trials, backend="numpy", progress=False)
    mirror = run_mirror(params, weights, trials, dtype=torch.float64)
    assert len(brian.spikes_i) == 0  # nothing drives the interneurons
    for field in ("trial", "step", "neuron"):
        np.testing.assert_array_equal(getattr(brian.spikes_e, field), getattr(mirror.spikes_e, field))


def test_unknown_backend_lists_valid_ones(small_run):
    params, weights, trials = small_run
    with pytest.raises(BackendError) as error:
        run_trials(params, weights, trials, backend="genn")
    for name in BACKENDS:
        assert name in str(error.value)


def test_negative_weight_is_refused(small_run):
    params, weights, trials = small_run
    stored = init_weights(params, seed=1, w_ei=-1.0)  # all E->I weights negative
    with pytest.raises(DaleLawError, match="w_ei"):
        run_trials(params, stored, trials, backend="numpy")


def test_wrong_shape_is_refused(small_run):
    params, weights, trials = small_run
    from dataclasses import replace

    bad = replace(weights, w_ie=weights.w_ie.T)
    with pytest.raises(WeightShapeError, match=r"w_ie: expected shape \(32, 128\).*found \(128, 32\)"):
        run_trials(params, bad, trials, backend="numpy")


@pytest.mark.standalone
def test_trial_boundaries_stay_on_the_step_grid_late_in_long_runs(small_params, tmp_path):
    """Trial 384 of 200 ms starts at t = 76.8 s, where one ulp of t (1.4e-14 s) exceeds the absolute
    tolerance (1e-14 s) that cpp_standalone uses to treat two clocks as simultaneous: a reset on a clock
    of its own would run after the trial's first step there. Trials late in a long run must match the
    mirror as the early ones do."""
    params = small_params.replace(simulation__trial_ms=200.0, simulation__transient_ms=50.0)
    split = load_split("medium")
    n_trials = 385
    images = np.concatenate([split.test.images, split.train.images])[:n_trials]
    labels = np.concatenate([split.test.labels, split.train.labels])[:n_trials]
    trials = make_trials(images, labels, params, seed=5)
    weights = init_weights(params, seed=5).effective()
    late = np.array([0, n_trials - 2, n_trials - 1])
    record = {"e": np.arange(8), "i": np.arange(4)}
    brian = run_trials(
        params, weights, trials, backend="cpp_standalone", build_dir=tmp_path, record_v=record, progress=False
    )
    mirror = run_mirror(params, weights, trials.subset(late), dtype=torch.float64, record_v=record)
    for position, k in enumerate(late):
        for population in ("e", "i"):
            np.testing.assert_allclose(
                brian.traces[f"v_{population}"][k],
                mirror.traces[f"v_{population}"][position],
                rtol=1e-12,
                err_msg=f"trial {k}, v_{population}",
            )
            step_brian, neuron_brian = getattr(brian, f"spikes_{population}").of_trial(k)
            step_mirror, neuron_mirror = getattr(mirror, f"spikes_{population}").of_trial(position)
            np.testing.assert_array_equal(step_brian, step_mirror, err_msg=f"trial {k}, spikes_{population}")
            np.testing.assert_array_equal(neuron_brian, neuron_mirror, err_msg=f"trial {k}, spikes_{population}")
    np.testing.assert_allclose(brian.scores[late], mirror.scores, rtol=1e-9, atol=1e-12)
