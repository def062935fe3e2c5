"""Run and condition verdicts of the Dale-pruning protocol, and where they show up (table, comparison figure)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import SMALL_POPULATIONS

from biosim.params import NetworkParams
from biosim.records import write_json
from biosim.weight_files import save_weights
from biosim.weights import init_weights
from protocols.definitions import Protocol
from protocols.report import write_report
from protocols.results import RunRecord
from protocols.table import run_verdict_lines
from protocols.verdicts import (
    CHANGED,
    DIVERGED,
    LOOP_DISMANTLED,
    PING_KEPT,
    REWIRED,
    VerdictCriteria,
    condition_verdict,
    describe_criteria,
    run_verdict,
)

SMALL_NETWORK = NetworkParams().replace(**SMALL_POPULATIONS)


def _status(
    *,
    rate_i_hz: float | None = 37.8,
    gamma_peak_hz: float | None = 38.0,
    gamma_relative_power: float | None = 6.0,
    w_ei_pruned_fraction: float | None = 0.0,
    backend: str = "numpy",
) -> dict[str, Any]:
    """A completed run's status.json whose Brian2 summary and final metrics are the given values."""
    brian = {
        "rate_e_hz": 8.8,
        "rate_i_hz": rate_i_hz,
        "gamma_peak_hz": gamma_peak_hz,
        "gamma_relative_power": gamma_relative_power,
        "accuracy": 0.2,
        "n_trials": 8,
        "simulator": f"brian2:{backend}",
    }
    # The mirror disagrees on purpose: the verdict must be read from Brian2.
    mirror = {**brian, "rate_i_hz": 0.0, "simulator": "mirror:float64"}
    return {
        "status": "completed",
        "final": {"epoch": 2, "w_ei_pruned_fraction": w_ei_pruned_fraction, "w_ie_pruned_fraction": 0.0},
        "validation": {
            "backend": backend,
            "verdict": "pass",
            "simulators": {f"brian2:{backend}": brian, "mirror:float64": mirror},
        },
    }


# --- run_verdict at and around each threshold ---------------------------------------------------


def test_a_canonical_ping_run_is_kept():
    assert run_verdict(_status()) == PING_KEPT


@pytest.mark.parametrize(
    ("rate_i_hz", "expected"),
    [(5.0, PING_KEPT), (4.99, CHANGED), (1.0, CHANGED), (0.99, LOOP_DISMANTLED), (0.0, LOOP_DISMANTLED)],
)
def test_inhibitory_rate_thresholds(rate_i_hz, expected):
    assert run_verdict(_status(rate_i_hz=rate_i_hz)) == expected


@pytest.mark.parametrize(
    ("gamma_peak_hz", "expected"),
    [(24.9, CHANGED), (25.0, PING_KEPT), (80.0, PING_KEPT), (80.1, CHANGED), (None, CHANGED), (float("nan"), CHANGED)],
)
def test_gamma_band_bounds_are_included(gamma_peak_hz, expected):
    assert run_verdict(_status(gamma_peak_hz=gamma_peak_hz)) == expected


@pytest.mark.parametrize(
    ("relative_power", "expected"), [(3.0, PING_KEPT), (2.99, CHANGED), (float("inf"), PING_KEPT), (None, CHANGED)]
)
def test_relative_power_threshold(relative_power, expected):
    assert run_verdict(_status(gamma_relative_power=relative_power)) == expected


@pytest.mark.parametrize(
    ("pruned", "expected"),
    [(0.5, PING_KEPT), (0.51, PING_KEPT + REWIRED), (1.0, PING_KEPT + REWIRED), (None, PING_KEPT)],
)
def test_w_ei_pruned_fraction_marks_a_rewired_loop(pruned, expected):
    assert run_verdict(_status(w_ei_pruned_fraction=pruned)) == expected


def test_pruning_alone_never_dismantles_a_loop_that_still_fires():
    # Most E -> I edges pruned, but the interneurons fire in a clear gamma rhythm: rewired, not taken apart.
    assert run_verdict(_status(w_ei_pruned_fraction=0.9)) == "PING kept, rewired"
    assert run_verdict(_status(w_ei_pruned_fraction=0.97, gamma_relative_power=1.2)) == "changed, rewired"
    assert run_verdict(_status(w_ei_pruned_fraction=0.9, rate_i_hz=0.5)) == LOOP_DISMANTLED


def test_a_silent_network_is_dismantled_even_without_a_gamma_peak():
    status = _status(rate_i_hz=0.0, gamma_peak_hz=None, gamma_relative_power=0.0)
    assert run_verdict(status) == LOOP_DISMANTLED


def test_diverged_and_unvalidated_runs():
    diverged = {"status": "diverged", "diverged": {"epoch": 2, "step": 3, "nonfinite": ["loss"]}}
    assert run_verdict(diverged) == DIVERGED
    assert run_verdict({"status": "completed", "final": {"w_ei_pruned_fraction": 0.9}}) is None
    assert run_verdict({"status": "failed", "error": "boom"}) is None
    mirror_only = _status()
    del mirror_only["validation"]["simulators"]["brian2:numpy"]
    assert run_verdict(mirror_only) is None


def test_the_brian2_entry_is_found_without_a_backend_field():
    status = _status(backend="cpp_standalone", rate_i_hz=0.5)
    del status["validation"]["backend"]
    assert run_verdict(status) == LOOP_DISMANTLED


def test_criteria_are_changeable_frozen_and_described():
    strict = VerdictCriteria(kept_min_rate_i_hz=40.0, kept_gamma_band_hz=(30.0, 46.0))
    assert run_verdict(_status(), strict) == CHANGED
    with pytest.raises(dataclasses.FrozenInstanceError):
        strict.kept_min_rate_i_hz = 1.0  # type: ignore[misc]
    text = describe_criteria(VerdictCriteria())
    assert "\n" not in text
    for part in ("< 1 Hz", "more than 50 %", ">= 5 Hz", "25-80 Hz", ">= 3 x band median", "trainable_zero_init"):
        assert part in text, part
    assert ">= 40 Hz" in describe_criteria(strict) and "30-46 Hz" in describe_criteria(strict)


# --- condition_verdict -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ([PING_KEPT] * 3, "PING kept (3/3)"),
        ([CHANGED, PING_KEPT, CHANGED], "changed (2/3)"),
        ([CHANGED, PING_KEPT], "changed 1, PING kept 1 (of 2)"),
        ([PING_KEPT, LOOP_DISMANTLED, CHANGED], "changed 1, loop dismantled 1, PING kept 1 (of 3)"),
        ([LOOP_DISMANTLED, None], "loop dismantled (1/2)"),
        ([None, None], "n/a"),
        ([], "n/a"),
    ],
)
def test_condition_verdict_majority_and_ties(verdicts, expected):
    assert condition_verdict(verdicts) == expected


def test_per_run_lines_list_diverged_runs_with_epoch_and_step():
    spec = _protocol().runs()[0]
    records = [
        RunRecord(Path("unused"), spec, {"status": "diverged", "diverged": {"epoch": 2, "step": 5}}),
        RunRecord(Path("unused"), dataclasses.replace(spec, seed=43), {"status": "failed", "error": "boom"}),
    ]
    assert run_verdict_lines(records) == [
        "frozen_ping seed 42: diverged (epoch 2, step 5)",
        "frozen_ping seed 43: no verdict (failed, no Brian2 validation)",
    ]


# --- a whole (fake) protocol directory ---------------------------------------------------------


def _protocol() -> Protocol:
    return Protocol(
        name="dale_pruning",
        conditions=("frozen_ping", "trainable_ping_init"),
        tier="smoke",
        seeds=(42, 43),
        overrides={"network": SMALL_NETWORK.to_dict()},
        validation_backend="numpy",
    )


# Per run: Brian2 I rate (Hz), gamma peak (Hz), relative power, W_EI pruned fraction -> expected verdict.
FAKE_RUNS = {
    ("frozen_ping", 42): (37.8, 38.0, 6.0, 0.0, PING_KEPT),
    ("frozen_ping", 43): (36.9, 40.0, 5.5, 0.0, PING_KEPT),
    ("trainable_ping_init", 42): (0.5, 35.0, 4.0, 0.7, LOOP_DISMANTLED),
    ("trainable_ping_init", 43): (30.0, 91.0, 4.0, 0.2, CHANGED),
}


def _write_fake_run(out: Path, spec, rate_i_hz: float, gamma_hz: float, relative: float, pruned: float) -> None:
    """Every file a finished, validated run leaves that the report reads."""
    run_dir = out / spec.run_id
    params = spec.config.network_params()
    write_json(run_dir / "run_spec.json", spec.to_dict())
    weights = init_weights(params, seed=spec.seed)
    # Prune the requested fraction of E -> I edges the way training does: stored value below 0.
    rng = np.random.default_rng(spec.seed)
    w_ei = weights.w_ei.copy()
    w_ei[rng.random(w_ei.shape) < pruned] *= -1.0
    weights = dataclasses.replace(weights, w_ei=w_ei)
    save_weights(run_dir / "weights.npz", weights, params, provenance={"run_id": spec.run_id})
    epochs = []
    for epoch in range(3):
        progress = epoch / 2
        epochs.append(
            {
                "epoch": epoch,
                "test_accuracy": 0.1 + 0.05 * epoch,
                "rate_e_hz": 9.0,
                "rate_i_hz": 37.0 + (rate_i_hz - 37.0) * progress,
                "w_ei_effective_mean": float(np.maximum(weights.w_ei, 0).mean()) * (1 - 0.3 * progress),
                "w_ie_effective_mean": float(np.maximum(weights.w_ie, 0).mean()),
                "w_ei_pruned_fraction": pruned * progress,
                "w_ie_pruned_fraction": 0.0,
                "w_ei_mean_abs_stored": float(np.abs(weights.w_ei).mean()),
                "w_ie_mean_abs_stored": float(np.abs(weights.w_ie).mean()),
            }
        )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in epochs))
    status = _status(
        rate_i_hz=rate_i_hz, gamma_peak_hz=gamma_hz, gamma_relative_power=relative, w_ei_pruned_fraction=pruned
    )
    status.update({"run_id": spec.run_id, "condition": spec.condition, "seed": spec.seed, "final": epochs[-1]})
    write_json(run_dir / "status.json", status)
    # What bridge.validation._save_brian2_views writes: raster of test trial 0 and the E spectrum.
    n_steps, n_e, n_i = 400, params.connectivity.n_e, params.connectivity.n_i
    np.savez_compressed(
        run_dir / "raster_numpy.npz",
        e_step=rng.integers(0, n_steps, 300),
        e_neuron=rng.integers(0, n_e, 300),
        i_step=rng.integers(0, n_steps, 200),
        i_neuron=rng.integers(0, n_i, 200),
        dt_ms=0.1,
        n_e=n_e,
        n_i=n_i,
        n_steps=n_steps,
    )
    frequencies = np.arange(0.0, 501.0)
    power = 1.0 + relative * np.exp(-0.5 * ((frequencies - gamma_hz) / 3.0) ** 2)
    write_json(run_dir / "spectrum_numpy.json", {"frequency_hz": frequencies, "power": power})


def test_report_states_the_verdicts_in_table_and_comparison_figure(tmp_path):
    protocol = _protocol()
    write_json(tmp_path / "protocol.json", {"protocol": protocol.to_dict()})
    for spec in protocol.runs():
        *values, _ = FAKE_RUNS[(spec.condition, spec.seed)]
        _write_fake_run(tmp_path, spec, *values)

    table, figures = write_report(tmp_path)

    assert (figures / "comparison.png").stat().st_size > 0
    text = table.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| condition"))
    assert header.rstrip(" |").endswith("verdict")
    assert "| PING kept (2/2) |" in text
    assert "| changed 1, loop dismantled 1 (of 2) |" in text
    assert describe_criteria(VerdictCriteria()) in text
    assert "Per-run verdicts:" in text
    assert "- frozen_ping seed 42: PING kept (I 37.8 Hz, gamma 38 Hz at 6 x median, W_EI pruned 0 %)" in text
    assert "- trainable_ping_init seed 42: loop dismantled (I 0.5 Hz, gamma 35 Hz at 4 x median, W_EI pruned 70 %)" in (
        text
    )
    assert "- trainable_ping_init seed 43: changed (I 30 Hz, gamma 91 Hz at 4 x median, W_EI pruned 20 %)" in text
    with (tmp_path / "table.csv").open() as handle:
        rows = {row["condition"]: row for row in csv.DictReader(handle)}
    assert rows["frozen_ping"]["verdict"] == "PING kept (2/2)"
    assert rows["trainable_ping_init"]["verdict"] == "changed 1, loop dismantled 1 (of 2)"
    assert [p.name for p in figures.glob("comparison.*")] == ["comparison.png"]  # one file per format
