"""Sweep figures (basin_map, tau_gaba, anti_pruning) on small fabricated protocol directories."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from helpers import SMALL_POPULATIONS

from biosim.params import NetworkParams
from biosim.records import write_json
from bridge.train_config import TrainConfig
from protocols import registry
from protocols.protocol import Protocol, RunSpec
from protocols.report import write_report
from protocols.results import RunRecord, load_runs
from protocols.sweep_figures import (
    basin_grid,
    draw_anti_pruning,
    draw_basin_map,
    draw_reference_ladder,
    draw_sweep_figures,
    draw_tau_gaba,
    frozen_gamma_fit,
    frozen_gamma_points,
    penalty_lambda,
    short_verdict,
    smallest_keeping_lambda,
    smallest_keeping_lambdas,
)

SMALL_NETWORK = NetworkParams().replace(**SMALL_POPULATIONS).to_dict()


def _status(
    *,
    rate_i_hz: float = 37.0,
    gamma_peak_hz: float | None = 40.0,
    relative_power: float = 6.0,
    pruned: float = 0.0,
    accuracy: float = 0.5,
    w_ei_nS: float = 1.0,
    w_ie_nS: float = 2.0,
) -> dict[str, Any]:
    """A completed, Brian2-validated run's status.json with these final values."""
    brian = {
        "rate_e_hz": 9.0,
        "rate_i_hz": rate_i_hz,
        "gamma_peak_hz": gamma_peak_hz,
        "gamma_relative_power": relative_power,
        "accuracy": accuracy,
        "simulator": "brian2:numpy",
    }
    return {
        "status": "completed",
        "final": {
            "epoch": 2,
            "w_ei_pruned_fraction": pruned,
            "w_ie_pruned_fraction": 0.0,
            "w_ei_effective_mean": w_ei_nS * 1e-3,  # uS, as training records it
            "w_ie_effective_mean": w_ie_nS * 1e-3,
        },
        "validation": {"backend": "numpy", "verdict": "pass", "simulators": {"brian2:numpy": brian}},
    }


def _write(out: Path, spec: RunSpec, status: dict[str, Any] | None) -> None:
    """The files of one run that the report reads; ``status`` None: started, not finished."""
    run_dir = out / spec.run_id
    write_json(run_dir / "run_spec.json", spec.to_dict())
    if status is not None:
        write_json(run_dir / "status.json", {**status, "run_id": spec.run_id, "condition": spec.condition})
        epoch = {
            "epoch": 0,
            "test_accuracy": 0.1,
            "rate_e_hz": 9.0,
            "rate_i_hz": 30.0,
            "w_ei_effective_mean": 1e-3,
            "w_ie_effective_mean": 2e-3,
            "w_ei_pruned_fraction": 0.0,
            "w_ie_pruned_fraction": 0.0,
            "w_ei_mean_abs_stored": 1e-3,
            "w_ie_mean_abs_stored": 2e-3,
        }
        (run_dir / "metrics.jsonl").write_text(json.dumps(epoch) + "\n")


def _protocol(name: str, conditions: tuple[str, ...], seeds=(42,)) -> Protocol:
    return Protocol(
        name=name,
        conditions=conditions,
        tier="smoke",
        seeds=seeds,
        overrides={"network": SMALL_NETWORK},
        validation_backend="numpy",
    )


def _records(specs_and_statuses) -> list[RunRecord]:
    return [RunRecord(Path("unused"), spec, status) for spec, status in specs_and_statuses]


def _spec(protocol: Protocol, condition: str, seed: int = 42) -> RunSpec:
    return next(s for s in protocol.runs() if s.condition == condition and s.seed == seed)


# --- basin_map -------------------------------------------------------------------------------------------


def _basin(ei: str, ie: str) -> str:
    return f"basin_init_w_ei_{ei}__init_w_ie_{ie}"


def test_short_verdicts():
    assert short_verdict("PING kept (1/1)") == "kept"
    assert short_verdict("PING kept, rewired (2/3)") == "kept+rw (2/3)"
    assert short_verdict("loop dismantled (1/1)") == "dismantled"
    assert short_verdict("changed 1, PING kept 1 (of 2)") == "changed 1, kept 1 (of 2)"


def test_basin_grid_places_cells_and_leaves_missing_ones_missing():
    conditions = (_basin("0", "0"), _basin("0", "1"), _basin("1", "0"), _basin("1", "1"), _basin("2", "1"))
    protocol = _protocol("basin_map", conditions, seeds=(42, 43))
    runs = [
        (_spec(protocol, _basin("1", "1"), 42), _status(rate_i_hz=30.0, accuracy=0.4)),
        (_spec(protocol, _basin("1", "1"), 43), _status(rate_i_hz=40.0, accuracy=0.6)),
        (_spec(protocol, _basin("0", "0"), 42), _status(rate_i_hz=0.0, gamma_peak_hz=None, relative_power=0.0)),
        (_spec(protocol, _basin("1", "0"), 42), {"status": "incomplete"}),
        (_spec(protocol, _basin("2", "1"), 42), {"status": "diverged", "diverged": {"epoch": 1, "step": 2}}),
    ]
    grid = basin_grid(_records(runs), conditions)

    assert grid.w_ei == [0.0, 1.0, 2.0] and grid.w_ie == [0.0, 1.0]
    both = grid.cell(1.0, 1.0)
    assert grid.values["rate_i"][both] == pytest.approx(35.0)  # mean over the two seeds
    assert grid.values["accuracy"][both] == pytest.approx(50.0)
    assert grid.verdicts[both] == "PING kept (2/2)" and grid.completed[both] == 2
    assert grid.final_nS["w_ei"][both] == pytest.approx(1.0) and grid.final_nS["w_ie"][both] == pytest.approx(2.0)
    silent = grid.cell(0.0, 0.0)
    assert grid.verdicts[silent] == "loop dismantled (1/1)" and grid.values["rate_i"][silent] == 0.0
    assert math.isnan(grid.values["gamma_peak"][silent])  # undefined, not zero
    assert grid.initial_nS["w_ei"][silent] == 0.0 and grid.initial_nS["w_ie"][silent] == 0.0
    # Missing cells hold NaN, never 0, and say why.
    for (ei, ie), why in {(1.0, 0.0): "running", (2.0, 1.0): "diverged", (0.0, 1.0): "not run"}.items():
        cell = grid.cell(ei, ie)
        assert grid.verdicts[cell] == why and grid.completed[cell] == 0
        assert all(math.isnan(values[cell]) for values in grid.values.values())
    assert grid.conditions[grid.cell(2.0, 0.0)] == ""  # not part of the grid at all
    # Initial effective means scale with the multiple of canonical.
    ratio = grid.initial_nS["w_ei"][grid.cell(2.0, 1.0)] / grid.initial_nS["w_ei"][grid.cell(1.0, 0.0)]
    assert ratio == pytest.approx(2.0, rel=1e-6)


def test_basin_map_report_draws_heatmaps_arrows_and_cells(tmp_path):
    conditions = (_basin("0", "0p5"), _basin("0", "1"), _basin("1", "0p5"), _basin("1", "1"))
    protocol = _protocol("basin_map", conditions)
    write_json(tmp_path / "protocol.json", {"protocol": protocol.to_dict()})
    _write(tmp_path, _spec(protocol, _basin("1", "1")), _status(pruned=0.7, w_ei_nS=0.8))
    _write(tmp_path, _spec(protocol, _basin("0", "1")), _status(rate_i_hz=3.0, relative_power=1.5))
    _write(tmp_path, _spec(protocol, _basin("1", "0p5")), None)  # started, not finished

    _, figures = write_report(tmp_path)

    for name in ("basin_map.png", "basin_map_arrows.png"):
        assert (figures / name).stat().st_size > 10_000
    summary = json.loads((figures / "basin_map.json").read_text())
    cells = {(c["init_w_ei_multiple"], c["init_w_ie_multiple"]): c for c in summary["cells"]}
    assert len(cells) == 4
    assert cells[(1.0, 1.0)]["verdict"] == "PING kept, rewired (1/1)" and cells[(1.0, 1.0)]["w_ei_pruned"] == 70.0
    assert cells[(1.0, 1.0)]["w_ei_effective_mean_nS_final"] == pytest.approx(0.8)
    assert cells[(0.0, 1.0)]["verdict"] == "changed (1/1)"
    assert cells[(1.0, 0.5)]["verdict"] == "running" and cells[(1.0, 0.5)]["rate_i"] is None
    assert cells[(0.0, 0.5)]["verdict"] == "not run" and cells[(0.0, 0.5)]["runs"] == 0
    assert summary["majority_verdict_counts"] == {"PING kept, rewired": 1, "changed": 1}
    assert not (figures / "tau_gaba.png").exists() and not (figures / "anti_pruning.png").exists()


def test_the_protocol_record_names_its_sweep_figures():
    figures = {name: record.figure_function() for name, record in registry.DEFINITIONS.items()}
    assert figures["basin_map"] is draw_basin_map and figures["tau_gaba"] is draw_tau_gaba
    assert figures["anti_pruning"] is draw_anti_pruning and figures["reference_ladder"] is draw_reference_ladder
    assert figures["dale_pruning"] is None and figures["streaming"] is None
    assert draw_sweep_figures([], Path("unused"), protocol_name="dale_pruning") == []
    # No guessing from the settings: an unnamed or unknown protocol gets no sweep figures.
    assert draw_sweep_figures([], Path("unused"), protocol_name=None) == []
    assert draw_sweep_figures([], Path("unused"), protocol_name="not_a_protocol") == []


# --- tau_gaba --------------------------------------------------------------------------------------------


def _tau_records(frequency_of_tau, trainable_frequency=45.0, seeds=(42,)) -> list[RunRecord]:
    protocol = _protocol("tau_gaba", tuple(c.name for c in registry.DEFINITIONS["tau_gaba"].conditions), seeds=seeds)
    runs = []
    for spec in protocol.runs():
        tau = spec.config.network_params().synapse.tau_gaba_ms
        trainable = spec.config.train_w_ei
        frequency = trainable_frequency if trainable else frequency_of_tau(tau)
        runs.append((spec, _status(gamma_peak_hz=frequency, pruned=0.6 if trainable else 0.0)))
    return _records(runs)


def test_frozen_gamma_fit_recovers_a_known_power_law():
    records = _tau_records(lambda tau: 200.0 * tau**-0.5, seeds=(42, 43))
    points = frozen_gamma_points(records)
    assert [tau for tau, _ in points] == [4.0, 4.0, 6.0, 6.0, 8.0, 8.0, 12.0, 12.0, 16.0, 16.0]
    assert points[0][1] == pytest.approx(100.0)
    fit = frozen_gamma_fit(records)
    assert fit["loglog"]["slope"] == pytest.approx(-0.5, abs=1e-9)
    assert math.exp(fit["loglog"]["intercept"]) == pytest.approx(200.0)
    assert fit["loglog"]["r2"] == pytest.approx(1.0)
    assert fit["falls_with_tau"] is True
    assert "follows the expected dependence" in fit["note"]
    assert [tau for tau, _ in fit["mean_points"]] == [4.0, 6.0, 8.0, 12.0, 16.0]


def test_frozen_gamma_fit_recovers_a_linear_period():
    fit = frozen_gamma_fit(_tau_records(lambda tau: 1000.0 / (10.0 + 2.0 * tau)))
    assert fit["period_fit"]["a_ms"] == pytest.approx(10.0)
    assert fit["period_fit"]["b"] == pytest.approx(2.0)
    assert fit["period_fit"]["r2"] == pytest.approx(1.0)
    assert fit["falls_with_tau"] is True


def test_frozen_gamma_fit_flags_a_rising_frequency_and_skips_silent_runs():
    records = _tau_records(lambda tau: 20.0 + 2.0 * tau)
    silent = next(r for r in records if not r.spec.config.train_w_ei)
    silent.status["validation"]["simulators"]["brian2:numpy"]["gamma_peak_hz"] = None
    fit = frozen_gamma_fit(records)
    assert len(fit["points"]) == 4  # the silent tau = 4 ms run has no peak
    assert fit["loglog"]["slope"] > 0 and fit["falls_with_tau"] is False
    assert "does NOT follow" in fit["note"]
    assert frozen_gamma_fit(records[:2])["loglog"] is None  # one tau value: no fit


def test_tau_gaba_figure_and_fit_file(tmp_path):
    records = _tau_records(lambda tau: 200.0 * tau**-0.5)
    paths = draw_sweep_figures(records, tmp_path, ("png", "svg"), protocol_name="tau_gaba")
    assert sorted(p.name for p in paths) == ["tau_gaba.png", "tau_gaba.svg", "tau_gaba_fit.json"]
    assert (tmp_path / "tau_gaba.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "tau_gaba_fit.json").read_text())
    assert saved["loglog"]["slope"] == pytest.approx(-0.5)


# --- anti_pruning ----------------------------------------------------------------------------------------

# condition -> (settings, [(I rate, gamma Hz, relative power, pruned) per seed])
ANTI = {
    "anti_none": ({}, [(30.0, 40.0, 6.0, 0.8)]),  # lambda = 0 control: PING kept, rewired
    "anti_dist_0p01": ({"reg_w_ei_distance": 0.01}, [(30.0, 40.0, 6.0, 0.7)]),  # kept, rewired
    "anti_dist_0p1": ({"reg_w_ei_distance": 0.1}, [(30.0, 40.0, 6.0, 0.2), (30.0, 40.0, 2.0, 0.2)]),  # tie
    "anti_dist_1": ({"reg_w_ei_distance": 1.0}, [(30.0, 40.0, 6.0, 0.1), (30.0, 40.0, 6.0, 0.1)]),  # kept 2/2
    "anti_dist_10": ({"reg_w_ei_distance": 10.0}, [(30.0, 40.0, 6.0, 0.0)]),  # kept
    "anti_gamma_0p1": ({"reg_gamma_power": 0.1}, [(0.5, 30.0, 2.0, 0.9)]),  # dismantled
    "anti_gamma_1": ({"reg_gamma_power": 1.0, "reg_w_ei_distance": 0.0}, [(10.0, 90.0, 6.0, 0.9)]),  # changed
}


@pytest.fixture
def anti_records(monkeypatch) -> list[RunRecord]:
    """Runs of a made-up anti_pruning protocol (its penalties may not be TrainConfig fields yet)."""
    runs = []
    for name, (settings, seeds) in ANTI.items():
        monkeypatch.setitem(registry.CONDITIONS, name, SimpleNamespace(name=name, settings=settings))
        for k, (rate, gamma, power, pruned) in enumerate(seeds):
            config = TrainConfig(tier="smoke", network=SMALL_NETWORK, train_w_ei=True, train_w_ie=True, seed=42 + k)
            spec = RunSpec("anti_pruning", name, 42 + k, config, "numpy")
            status = _status(rate_i_hz=rate, gamma_peak_hz=gamma, relative_power=power, pruned=pruned)
            runs.append((spec, status))
    return _records(runs)


def test_penalty_and_lambda_of_each_condition(anti_records):
    assert penalty_lambda("anti_none") == (None, 0.0)
    assert penalty_lambda("anti_dist_0p1") == ("reg_w_ei_distance", 0.1)
    assert penalty_lambda("anti_gamma_1") == ("reg_gamma_power", 1.0)  # the other penalty at 0 is off


def test_smallest_keeping_lambda(anti_records):
    # 0.1 is a tie (kept 1, changed 1), so the first lambda with a majority "PING kept" is 1.
    assert smallest_keeping_lambda(anti_records, "reg_w_ei_distance") == 1.0
    assert smallest_keeping_lambda(anti_records, "reg_gamma_power") is None
    # Counting a rewired loop as kept, the lambda = 0 control already keeps it.
    assert smallest_keeping_lambda(anti_records, "reg_w_ei_distance", allow_rewired=True) == 0.0
    assert smallest_keeping_lambdas(anti_records) == {"reg_w_ei_distance": 1.0, "reg_gamma_power": None}


def test_anti_pruning_figure_and_lambda_file(tmp_path, anti_records):
    paths = draw_sweep_figures(anti_records, tmp_path, protocol_name="anti_pruning")
    assert sorted(p.name for p in paths) == ["anti_pruning.png", "anti_pruning_lambda.json"]
    assert (tmp_path / "anti_pruning.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "anti_pruning_lambda.json").read_text())
    assert saved["smallest_keeping_lambda"] == {"reg_w_ei_distance": 1.0, "reg_gamma_power": None}
    distance = saved["conditions"]["reg_w_ei_distance"]
    assert [row["lambda"] for row in distance] == [0.0, 0.01, 0.1, 1.0, 10.0]
    assert distance[0]["conditions"] == ["anti_none"]  # the control sits on every penalty's line
    assert distance[2]["gamma_power"] == pytest.approx(4.0)  # mean over the two seeds
    assert [row["lambda"] for row in saved["conditions"]["reg_gamma_power"]] == [0.0, 0.1, 1.0]
    assert np.isclose(saved["conditions"]["reg_gamma_power"][1]["rate_i"], 0.5)


def test_load_runs_reads_what_the_tests_write(tmp_path):
    protocol = _protocol("basin_map", (_basin("1", "1"),))
    _write(tmp_path, _spec(protocol, _basin("1", "1")), _status())
    assert [r.condition for r in load_runs(tmp_path)] == [_basin("1", "1")]


def test_a_value_axis_spanning_orders_of_magnitude_goes_symlog():
    from protocols.sweep_figures.common import _wide_range

    assert _wide_range(np.array([0.0, 46.3, 51.1, 33.4, 30.7, 888.0, 81.8, np.nan]))  # one runaway I population
    assert not _wide_range(np.array([0.0, 30.0, 45.0, 80.0]))
    assert not _wide_range(np.array([np.nan, 500.0]))
