"""protocols.epoch_budget: the timed probe of a protocol's runs, and the epochs it says fit in a budget."""

from __future__ import annotations

import json

import pytest
from helpers import small_network

from protocols.epoch_budget import MARGIN, STARTUP_S, choose_epochs, main, probe
from protocols.protocol import Protocol

TIMINGS = {
    "runs": 12,
    "protocol_n_train": 1600,
    "protocol_n_test": 400,
    "protocol_epochs": 100,
    "adam_steps_per_epoch": 7,
    "adam_step_s": 2.0,
    "evaluation_s_per_digit_and_run": 0.001,
}


def test_the_epochs_that_fit_follow_the_predicted_epoch_and_stay_within_1_and_the_tier():
    choice = choose_epochs(TIMINGS, 200.0)
    epoch0 = 0.001 * 12 * 2000  # every run's untrained network on its 1600 + 400 digits
    epoch = 7 * 2.0 + 0.001 * 12 * 400
    assert choice["predicted_epoch0_s"] == pytest.approx(epoch0)
    assert choice["predicted_epoch_s"] == pytest.approx(epoch)
    assert choice["epochs"] == int((200.0 - STARTUP_S - epoch0) // (epoch * MARGIN)) == 6
    assert choice["predicted_training_s"] <= 200.0
    assert choose_epochs(TIMINGS, 10.0)["epochs"] == 1  # nothing fits: one epoch, never none
    assert choose_epochs(TIMINGS, 1e6)["epochs"] == 100  # never more than the tier's


def test_the_probe_times_one_short_epoch_of_every_run_together(tmp_path, capsys):
    network = small_network(simulation__trial_ms=20.0).to_dict()
    protocol = Protocol(
        name="dale_pruning",
        conditions=("frozen_ping", "trainable_zero_init"),
        tier="smoke",
        seeds=(42,),
        overrides={"network": network, "engine": "eager"},
    )
    timings = probe(protocol, tmp_path, probe_batches=2)
    assert timings["runs"] == 2 and timings["probe_n_train"] == 16 and timings["device"] == "cpu"
    assert len(timings["adam_step_s_each"]) == 1 and timings["adam_step_s"] > 0
    assert timings["time_step_ms"] == pytest.approx(1000 * timings["adam_step_s"] / timings["n_steps"])
    assert timings["evaluation_s_per_digit_and_run"] > 0
    assert sorted(p.name for p in (tmp_path / "probe").iterdir()) == [
        "frozen_ping_seed_42",
        "trainable_zero_init_seed_42",
    ]
    with pytest.raises(ValueError, match="probe_batches: expected at least 2"):
        probe(protocol, tmp_path, probe_batches=1)
    # choose: the count on stdout, the choice added to the probe's file
    record = tmp_path / "probe.json"
    record.write_text(json.dumps({"probe": TIMINGS}))
    assert main(["choose", "--probe", str(record), "--budget-s", "200"]) == 0
    assert capsys.readouterr().out.strip() == "6"
    assert json.loads(record.read_text())["choice"]["epochs"] == 6
