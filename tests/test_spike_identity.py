"""The definition of spike identity between simulators, and the causes of divergence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bridge.spike_identity as identity
from biosim.results import SpikeTrains
from biosim.simulation import load_test_trials
from biosim.weights import init_weights
from bridge.dynamics import advance, initial_state, make_constants, update_membrane
from bridge.simulate import input_drive, run_mirror, torch_weights
from bridge.spike_identity import Divergence, first_divergences, identity_report
from tests.helpers import small_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trains(rows, *, n_trials=3, n_steps=50, n_neurons=8) -> SpikeTrains:
    trial, step, neuron = (np.array([r[k] for r in rows], dtype=np.int64) for k in range(3))
    return SpikeTrains.from_arrays(trial, step, neuron, n_neurons=n_neurons, n_trials=n_trials, n_steps=n_steps)


def test_order_does_not_matter_and_identical_trials_are_counted():
    rows_e = [(0, 3, 1), (0, 3, 2), (1, 7, 0), (2, 9, 5)]
    rows_i = [(1, 8, 4)]
    reference = {"e": trains(rows_e), "i": trains(rows_i)}
    candidate = {"e": trains(rows_e[::-1]), "i": trains(rows_i)}
    assert first_divergences(reference, candidate) == []
    report = identity_report(reference, candidate)
    assert report["verdict"] == "identical"
    assert (report["identical_trials"], report["diverged_trials"]) == (3, 0)


def test_first_divergence_is_the_earliest_differing_step_of_each_trial():
    reference = {"e": trains([(0, 3, 1), (0, 10, 2), (2, 4, 0)]), "i": trains([(0, 12, 3)])}
    # trial 0: E neuron 2 at step 10 missing, I neuron 6 extra at step 10, later I difference ignored;
    # trial 2: E neuron 7 extra at step 2, before the spike they share.
    candidate = {"e": trains([(0, 3, 1), (2, 2, 7), (2, 4, 0)]), "i": trains([(0, 10, 6)])}
    assert first_divergences(reference, candidate) == [
        Divergence(0, 10, "e", 2, "reference"),
        Divergence(0, 10, "i", 6, "candidate"),
        Divergence(2, 2, "e", 7, "candidate"),
    ]
    report = identity_report(reference, candidate)
    assert (report["identical_trials"], report["diverged_trials"]) == (1, 2)
    assert report["verdict"] == "differs (causes not computed)"


def test_spike_trains_of_different_shapes_are_refused():
    a = {"e": trains([]), "i": trains([])}
    b = {"e": trains([], n_steps=60), "i": trains([])}
    with pytest.raises(ValueError, match="population 'e'"):
        first_divergences(a, b)


@pytest.fixture(scope="module")
def mirror_run():
    params = small_network(simulation__trial_ms=40.0)
    weights = init_weights(params, seed=3).effective()
    trials = load_test_trials(params, 4, seed=3)
    result = run_mirror(params, weights, trials, dtype=torch.float64)
    assert len(result.spikes_e) > 20 and len(result.spikes_i) > 5  # something to compare
    return params, weights, trials, {"e": result.spikes_e, "i": result.spikes_i}


def _without_spike(spikes: dict[str, SpikeTrains], population: str, k: int) -> dict[str, SpikeTrains]:
    t = spikes[population]
    keep = np.arange(len(t)) != k
    other = SpikeTrains.from_arrays(
        t.trial[keep], t.step[keep], t.neuron[keep], n_neurons=t.n_neurons, n_trials=t.n_trials, n_steps=t.n_steps
    )
    return {**spikes, population: other}


def test_margins_are_the_mirrors_membranes_at_the_divergence(mirror_run):
    params, weights, trials, mirror = mirror_run
    # The mirror's own spike, removed from the candidate: the mirror crossed threshold there (margin > 0).
    k = len(mirror["e"]) // 2
    trial, step, neuron = (int(getattr(mirror["e"], name)[k]) for name in ("trial", "step", "neuron"))
    candidate = _without_spike(mirror, "e", k)
    # ... and a spike the mirror did not fire, added in another trial: margin <= 0 (below threshold or refractory).
    silent_trial = (trial + 1) % trials.n_trials
    steps, neurons = mirror["i"].of_trial(silent_trial)
    spiking = set(zip(steps.tolist(), neurons.tolist(), strict=True))
    extra_step, extra_neuron = next((s, n) for s in range(5, 50) for n in range(4) if (s, n) not in spiking)
    i = candidate["i"]
    candidate["i"] = SpikeTrains.from_arrays(
        np.append(i.trial, silent_trial),
        np.append(i.step, extra_step),
        np.append(i.neuron, extra_neuron),
        n_neurons=i.n_neurons,
        n_trials=i.n_trials,
        n_steps=i.n_steps,
    )
    report = identity_report(mirror, candidate, params=params, weights=weights, trials=trials)
    by_trial = {d["trial"]: d for d in report["first_divergences"]}
    removed, added = by_trial[trial], by_trial[silent_trial]
    if removed["step"] == step:  # no earlier difference in that trial
        assert (removed["population"], removed["neuron"], removed["spiked_in"]) == ("e", neuron, "reference")
        assert removed["margin_mv"] > 0
    assert (added["step"], added["neuron"], added["spiked_in"]) == (extra_step, extra_neuron, "candidate")
    assert added["margin_mv"] <= 0
    assert report["verdict"] == "different dynamics"
    assert report["identical_trials"] == trials.n_trials - 2


def test_margins_equal_the_state_update_of_the_eager_loop(mirror_run):
    """A margin is v1 - v_threshold of the mirror's own state update, read here from the state before the step."""
    params, weights, trials, mirror = mirror_run
    k = len(mirror["i"]) // 2
    trial, step, neuron = (int(getattr(mirror["i"], name)[k]) for name in ("trial", "step", "neuron"))
    [divergence] = identity.threshold_margins(params, weights, trials, [Divergence(trial, step, "i", neuron, "x")])

    constants, w = make_constants(params), torch_weights(weights, dtype=torch.float64)
    index = np.array([trial])
    state = initial_state(
        torch.as_tensor(trials.v_init_e_mv[index]),
        torch.as_tensor(trials.v_init_i_mv[index]),
        params.connectivity.n_classes,
    )
    drive = torch.cat([chunk for _, chunk in input_drive(trials, index, w.w_in)], dim=1)
    for t in range(step):
        _, _, state = advance(drive[:, t], state, constants, w)
    v1, _ = update_membrane(state.v_i, state.ge_i, state.gi_i, state.ready_i, step, constants.i, constants.dt)
    assert divergence.margin_mv == float(v1[0, neuron] - constants.i.v_threshold)
    assert divergence.margin_mv > 0  # the mirror fired there


def test_a_divergence_within_the_tie_margin_is_a_threshold_tie(mirror_run, monkeypatch):
    params, weights, trials, mirror = mirror_run
    k = len(mirror["e"]) // 3
    candidate = _without_spike(mirror, "e", k)
    monkeypatch.setattr(identity, "THRESHOLD_TIE_MV", 1e3)  # every margin is a tie now
    report = identity_report(mirror, candidate, params=params, weights=weights, trials=trials)
    assert report["verdict"] == "identical up to threshold ties"
    assert report["diverged_by_threshold_tie"] == report["diverged_trials"] == 1
