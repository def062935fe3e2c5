"""The reference_ladder figure, rows and Markdown on a small fabricated protocol directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import SMALL_POPULATIONS

from biosim.params import NetworkParams
from biosim.records import write_json
from protocols import registry
from protocols.protocol import Protocol, RunSpec
from protocols.results import RunRecord, load_runs
from protocols.sweep_figures import (
    draw_sweep_figures,
    ladder_rows,
    ladder_table_markdown,
    ladder_trajectories_figure,
    reference_ladder_figure,
    rung_label,
)

SMALL_NETWORK = NetworkParams().replace(**SMALL_POPULATIONS).to_dict()
CONDITIONS = tuple(c.name for c in registry.DEFINITIONS["reference_ladder"].conditions)


def _status(*, rate_i_hz: float, accuracy: float, pruned: float = 0.2, w_ei_nS: float = 1.0) -> dict[str, Any]:
    """A completed, Brian2-validated run's status.json (gamma 40 Hz at 6 x median: PING kept if I >= 5 Hz)."""
    brian = {
        "rate_e_hz": 9.0,
        "rate_i_hz": rate_i_hz,
        "gamma_peak_hz": 40.0,
        "gamma_relative_power": 6.0,
        "accuracy": accuracy,
        "simulator": "brian2:numpy",
    }
    return {
        "status": "completed",
        "final": {
            "epoch": 3,
            "w_ei_pruned_fraction": pruned,
            "w_ie_pruned_fraction": 0.1,
            "w_ei_effective_mean": w_ei_nS * 1e-3,  # uS, as training records it
            "w_ie_effective_mean": 2e-3,
        },
        "validation": {"backend": "numpy", "verdict": "pass", "simulators": {"brian2:numpy": brian}},
    }


def _write(out: Path, spec: RunSpec, status: dict[str, Any] | None, grad_norms_w_ei=()) -> None:
    """One run's files; ``status`` None: started, not finished. Epoch 0 has no gradient norm."""
    run_dir = out / spec.run_id
    write_json(run_dir / "run_spec.json", spec.to_dict())
    if status is None:
        return
    write_json(run_dir / "status.json", {**status, "run_id": spec.run_id, "condition": spec.condition})
    epochs = [{"epoch": 0, "test_accuracy": 0.1, "grad_norm": None}]
    epochs += [
        {"epoch": k, "test_accuracy": 0.5, "grad_norm": 2.0 * norm, "grad_norm_w_ei": norm}
        for k, norm in enumerate(grad_norms_w_ei, start=1)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))


@pytest.fixture
def ladder(tmp_path) -> Path:
    """A reference_ladder directory: two seeds of rung 2, one of rung 0 (no W_EI gradient), the rest missing.

    - ``ladder_2_damping`` seed 42: I 4 Hz (changed), grad norms 2, 7.5, 3; seed 43: I 13.4 Hz (PING kept),
      grad norms 1, 1234.
    - ``ladder_0_project`` seed 42: I 30 Hz, metrics without ``grad_norm_w_ei``.
    - ``reverse_damping`` seed 42: started, not finished; every other condition: not run.
    """
    protocol = Protocol(
        name="reference_ladder",
        conditions=CONDITIONS,
        tier="study",  # the batch rung's 1536 digits do not fit the smoke tier's pool
        seeds=(42, 43),
        overrides={"network": SMALL_NETWORK},
        validation_backend="numpy",
    )
    write_json(tmp_path / "protocol.json", {"protocol": protocol.to_dict()})
    specs = {(s.condition, s.seed): s for s in protocol.runs()}
    _write(tmp_path, specs["ladder_2_damping", 42], _status(rate_i_hz=4.0, accuracy=0.4), (2.0, 7.5, 3.0))
    _write(tmp_path, specs["ladder_2_damping", 43], _status(rate_i_hz=13.4, accuracy=0.6, w_ei_nS=3.0), (1.0, 1234.0))
    _write(tmp_path, specs["ladder_0_project", 42], _status(rate_i_hz=30.0, accuracy=0.7))
    _write(tmp_path, specs["reverse_damping", 42], None)
    return tmp_path


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    return {row["condition"]: row for row in ladder_rows(load_runs(out), CONDITIONS)}


def test_rung_labels():
    assert [rung_label(c) for c in CONDITIONS] == [
        "0 project",
        "1 +constants",
        "2 +damping",
        "3 +clip",
        "4 +readout unit",
        "5 +batch",
        "rev. constants",
        "rev. damping",
        "rev. clip",
    ]
    assert rung_label("trainable_ping_init") == "trainable_ping_init"


def test_rows_follow_the_protocol_order(ladder):
    records = load_runs(ladder)
    assert [r.condition for r in records][0] == "ladder_0_project"  # load_runs sorts by name ...
    rows = ladder_rows(records[::-1], CONDITIONS)  # ... and the rows follow the protocol, not the records
    assert [row["condition"] for row in rows] == list(CONDITIONS)
    assert [row["reverse"] for row in rows] == [False] * 6 + [True] * 3
    assert rows[2]["description"] == registry.CONDITIONS["ladder_2_damping"].description
    # Conditions of the records that the protocol does not list come last.
    spec = RunSpec("reference_ladder", "trainable_ping_init", 42, records[0].spec.config, "numpy")
    extra = RunRecord(Path("unused"), spec, records[0].status)
    assert ladder_rows([*records, extra], CONDITIONS[:2])[-1]["condition"] == "trainable_ping_init"


def test_means_max_grad_norm_verdicts_and_margins_of_two_seeds(ladder):
    row = _rows(ladder)["ladder_2_damping"]
    assert (row["completed_seeds"], row["started_seeds"]) == (2, 2)
    assert row["accuracy"] == pytest.approx(50.0)
    assert row["rate_i"] == pytest.approx(8.7)
    assert row["rate_e"] == pytest.approx(9.0)
    assert row["gamma_peak"] == pytest.approx(40.0) and row["gamma_power"] == pytest.approx(6.0)
    assert row["w_ei_pruned"] == pytest.approx(20.0) and row["w_ie_pruned"] == pytest.approx(10.0)
    assert row["w_ei_effective_mean"] == pytest.approx(2.0)  # nS: mean of 1 and 3
    assert [run["max_grad_norm_w_ei"] for run in row["runs"]] == [7.5, 1234.0]
    assert row["max_grad_norm_w_ei"] == 1234.0
    assert [run["accuracy"] for run in row["runs"]] == pytest.approx([40.0, 60.0])
    assert [run["verdict"] for run in row["runs"]] == ["changed", "PING kept"]
    assert row["verdict"] == "changed 1, PING kept 1 (of 2)"
    assert row["runs"][1]["margin"] == "I 13.4 Hz: 12.4 above dismantled (1 Hz), 8.4 above PING (5 Hz)"
    assert row["runs"][0]["margin_dismantled_hz"] == pytest.approx(3.0)
    assert row["runs"][0]["margin_ping_hz"] == pytest.approx(-1.0)
    # Seed 42 sits 1 Hz below the PING threshold: nearer than any other seed to any threshold.
    assert row["closest_margin"] == "seed 42, I 4 Hz: 1 below PING (5 Hz)"
    assert row["closest_margin_hz"] == pytest.approx(-1.0)


def test_missing_values_are_none_not_zero(ladder):
    rows = _rows(ladder)
    project = rows["ladder_0_project"]
    assert project["max_grad_norm_w_ei"] is None and project["runs"][0]["max_grad_norm_w_ei"] is None
    assert project["rate_i"] == pytest.approx(30.0)  # the run itself counts
    keys = ("accuracy", "rate_e", "rate_i", "gamma_peak", "w_ei_pruned", "w_ei_effective_mean", "max_grad_norm_w_ei")
    running, never = rows["reverse_damping"], rows["reverse_global_clip"]
    assert (running["completed_seeds"], running["started_seeds"], running["verdict"]) == (0, 1, "running")
    assert (never["completed_seeds"], never["started_seeds"], never["verdict"]) == (0, 0, "not run")
    for row in (running, never):
        assert all(row[key] is None for key in keys)
        assert row["closest_margin"] is None
    assert running["runs"][0]["rate_i"] is None and running["runs"][0]["margin"] is None


def _points(ax) -> list[tuple[float, float]]:
    """Every finite (x, y) drawn in data coordinates (not the threshold or separator lines) in ``ax``."""
    points = []
    for line in ax.get_lines():
        if line.get_transform() != ax.transData:
            continue
        xs, ys = (np.asarray(v, dtype=float) for v in line.get_data())
        points += [(x, y) for x, y in zip(xs, ys, strict=True) if np.isfinite(x) and np.isfinite(y)]
    return points


def test_figure_draws_seeds_and_means_and_leaves_missing_conditions_out(ladder):
    rows = ladder_rows(load_runs(ladder), CONDITIONS)
    fig = reference_ladder_figure(rows, "test")
    try:
        axes = fig.axes[:6]
        labels = [ax.get_title() for ax in axes]
        assert labels[0].startswith("test accuracy") and labels[5].startswith("max epoch-mean W_EI grad norm")
        assert axes[5].get_yscale() == "log"
        # Rungs one apart, a gap of one before the reverse conditions.
        ticks = list(axes[-1].get_xticks())
        assert ticks == [0, 1, 2, 3, 4, 5, 7, 8, 9]
        tick_text = [t.get_text() for t in axes[-1].get_xticklabels()]
        assert tick_text[2] == "2 +damping: changed 1, kept 1 (of 2)" and tick_text[8] == "rev. clip: not run"
        accuracy = _points(axes[0])
        assert (2.0, pytest.approx(50.0)) in accuracy  # the mean
        assert sum(x == 2.0 for x, _ in accuracy) >= 3  # two seeds and the mean (and the line through means)
        for ax in axes:
            drawn_x = {x for x, _ in _points(ax)}
            missing = [x for x, row in zip(ticks, rows, strict=True) if row["completed_seeds"] == 0]
            assert not drawn_x & set(missing)
        assert not {x for x, _ in _points(axes[5])} & {0.0}  # rung 0 has no gradient norm: nothing drawn
        assert (2.0, pytest.approx(1234.0)) in _points(axes[5])
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_markdown_has_one_line_per_rung(ladder):
    rows = ladder_rows(load_runs(ladder), CONDITIONS)
    text = ladder_table_markdown(rows)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)  # header and one per rung
    assert table[0].startswith("| rung | seeds | accuracy (%) | E rate (Hz) | I rate (Hz) | gamma peak (Hz) |")
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    cells = {line[0]: line for line in split[1:]}
    assert list(cells) == [rung_label(c) for c in CONDITIONS]
    assert split[0][-2:] == ["max grad norm W_EI", "verdict"]
    damping = cells["2 +damping"]
    assert damping[1:4] == ["2/2", "50 (14)", "9 (0)"]  # mean (sample std), as table.md writes it
    assert damping[-2:] == ["1.2e+03", "changed 1, PING kept 1 (of 2)"]  # the max gradient norm in %.2g
    assert cells["0 project"][-2] == "n/a"  # no gradient norm recorded
    assert cells["rev. damping"][1:3] == ["0/1", "n/a"] and cells["rev. damping"][-1] == "running"
    bullets = [line for line in text.splitlines() if line.startswith("- ")]
    assert [b.split(" (`")[0] for b in bullets] == [f"- {rung_label(c)}" for c in CONDITIONS]
    assert "seed 43 (PING kept): I 13.4 Hz: 12.4 above dismantled (1 Hz), 8.4 above PING (5 Hz)" in bullets[2]
    assert bullets[7].endswith("seed 42 (no verdict: incomplete).")
    assert bullets[8].endswith("no run.")


def test_draw_sweep_figures_writes_png_json_and_md(ladder):
    assert registry.DEFINITIONS["reference_ladder"].figures.endswith(":draw_reference_ladder")
    figures = ladder / "figures"
    paths = draw_sweep_figures(
        load_runs(ladder), figures, ("png",), protocol_name="reference_ladder", conditions=CONDITIONS
    )
    assert sorted(p.name for p in paths) == [
        "reference_ladder.json",
        "reference_ladder.md",
        "reference_ladder.png",
        "reference_ladder_trajectories.png",
    ]
    assert (figures / "reference_ladder.png").stat().st_size > 10_000
    saved = json.loads((figures / "reference_ladder.json").read_text())
    assert [row["condition"] for row in saved] == list(CONDITIONS)
    assert saved[2]["max_grad_norm_w_ei"] == 1234.0 and saved[7]["rate_i"] is None
    markdown = (figures / "reference_ladder.md").read_text()
    assert markdown.startswith("### reference_ladder\n")
    assert sum(line.startswith("| ") for line in markdown.splitlines()) == 1 + len(CONDITIONS)


def test_trajectories_are_drawn_against_adam_steps(ladder):
    """Each seed's line runs over its Adam steps (epoch 0 at step 0); a missing value leaves a gap, not a 0."""
    run_dir = ladder / "ladder_2_damping" / "seed_42"
    epochs = [
        {"epoch": 0, "test_accuracy": 0.1, "rate_i_hz": 38.0, "w_ei_pruned_fraction": 0.0},
        {"epoch": 1, "optimizer_steps": 6, "test_accuracy": 0.5, "rate_i_hz": None, "w_ei_pruned_fraction": 0.5},
        {"epoch": 2, "optimizer_steps": 12, "test_accuracy": 0.7, "rate_i_hz": 2.0, "w_ei_pruned_fraction": 0.9},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    figure = ladder_trajectories_figure(load_runs(ladder), CONDITIONS)
    accuracy, _, rate_i, pruned = figure.axes
    line = next(line for line in rate_i.get_lines() if line.get_label() == "2 +damping")
    assert list(line.get_xdata()) == [0.0, 12.0] and list(line.get_ydata()) == [38.0, 2.0]
    line = next(line for line in pruned.get_lines() if line.get_label() == "2 +damping")
    assert list(line.get_ydata()) == [0.0, 50.0, 90.0]
    assert all(line.get_linestyle() == "-" for line in accuracy.get_lines())
