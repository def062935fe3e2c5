"""biosim.split_run: one cpp_standalone evaluation in several processes, one build, the same spikes."""

from __future__ import annotations

import numpy as np
import pytest

from biosim import backends
from biosim.backends import run_trials
from biosim.data import load_split
from biosim.inputs import make_trials
from biosim.split_run import padded_parts, run_split
from biosim.standalone_build import MIN_TRIALS_PER_PROCESS, split_parts
from biosim.weights import init_weights


@pytest.fixture
def five_trials(small_params):
    test = load_split("smoke").test
    trials = make_trials(test.images[:5], test.labels[:5], small_params, seed=5)
    return small_params, init_weights(small_params, seed=5).effective(), trials


def test_parts_have_equal_trial_and_spike_counts(five_trials) -> None:
    _, _, trials = five_trials
    parts = padded_parts(trials, 2)
    assert [len(positions) for positions, _ in parts] == [3, 2]
    assert [list(positions) for positions, _ in parts] == [[0, 1, 2], [3, 4]]
    assert len({s.n_trials for _, s in parts}) == 1 and parts[0][1].n_trials == 4  # 3 slots + the padding trial
    assert len({len(s.input_trial) for _, s in parts}) == 1
    for positions, subset in parts:  # the real trials are unchanged
        for k, position in enumerate(positions):
            original, copy = trials.subset(np.array([position])), subset.subset(np.array([k]))
            np.testing.assert_array_equal(original.input_step, copy.input_step)
            np.testing.assert_array_equal(original.input_neuron, copy.input_neuron)
            np.testing.assert_array_equal(original.v_init_e_mv, copy.v_init_e_mv)


def test_split_parts_only_for_cpp_standalone_without_build_dir(monkeypatch) -> None:
    monkeypatch.delenv("BIOSIM_BRIAN2_PROCESSES", raising=False)
    many = 10 * MIN_TRIALS_PER_PROCESS
    assert split_parts("cpp_standalone", None, many, 4) == 4
    assert split_parts("cpp_standalone", None, 2 * MIN_TRIALS_PER_PROCESS - 1, 4) == 1
    assert split_parts("cpp_standalone", "some/dir", many, 4) == 1
    assert split_parts("numpy", None, many, 4) == 1
    assert split_parts("cpp_standalone", None, many, None) == 1  # the default: one process
    assert split_parts("cpp_standalone", None, many, "auto") >= 1
    monkeypatch.setenv("BIOSIM_BRIAN2_PROCESSES", "3")
    assert split_parts("cpp_standalone", None, many, None) == 3
    monkeypatch.setenv("BIOSIM_BRIAN2_PROCESSES", "two")
    with pytest.raises(ValueError, match="BIOSIM_BRIAN2_PROCESSES"):
        split_parts("cpp_standalone", None, many, None)
    with pytest.raises(ValueError, match="processes"):
        split_parts("cpp_standalone", None, many, 0)


@pytest.mark.standalone
def test_split_run_gives_the_spikes_scores_and_traces_of_one_run(five_trials, tmp_path, monkeypatch) -> None:
    params, weights, trials = five_trials
    monkeypatch.setenv("BIOSIM_BRIAN2_CACHE", str(tmp_path / "cache"))
    record = {"e": np.array([0, 7, 100]), "i": np.array([3])}
    one = run_trials(params, weights, trials, backend="cpp_standalone", record_v=record, progress=False, processes=1)
    split = run_split(params, weights, trials, parts=2, simulate=backends._simulate, record_v=record, progress=False)
    for population in ("spikes_e", "spikes_i"):
        a, b = getattr(one, population), getattr(split, population)
        assert len(a) > 0 and (a.n_trials, a.n_steps) == (b.n_trials, b.n_steps)
        for field in ("trial", "step", "neuron"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(one.scores, split.scores)
    assert set(one.traces) == set(split.traces) == {"v_e", "v_i"}
    for key in one.traces:
        np.testing.assert_array_equal(one.traces[key], split.traces[key])
    build = split.meta["build"]
    assert build["processes"] == 2 and [p["trials"] for p in build["parts"]] == [3, 2]
    assert build["parts"][1]["directory"] != build["parts"][0]["directory"]
    assert set(split.timings_s) >= {"build", "simulate"}
