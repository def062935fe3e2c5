"""The learning_dynamics protocol: dale_pruning's runs with trajectory records, one figure per condition, a table."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import pytest
from helpers import small_network

from biosim.tiers import TIERS
from bridge.learning_dynamics import DYNAMICS_NAME
from bridge.trajectory import TRAJECTORY_DIR
from protocols.catalog.dale_pruning import CONDITIONS as DALE_PRUNING
from protocols.catalog.learning_dynamics import RECORD_EVERY
from protocols.protocol import get_protocol
from protocols.provenance import protocol_command
from protocols.registry import definition
from protocols.report_page import report_markdown
from protocols.results import load_runs
from protocols.runner import run_protocol
from protocols.sweep_figures.learning_dynamics import COLUMNS, draw_learning_dynamics, mean_and_range
from protocols.table import write_tables

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_CONDITIONS = ("frozen_ping", "trainable_ping_init", "trainable_zero_init")
RECORD_BYTES = 1_787_272
"""One record of the full network with the canonical loop (the largest: pruning and a zero start shrink it)."""


def test_the_protocol_is_the_main_jobs_runs_recorded():
    record = definition("learning_dynamics")
    assert record.conditions is DALE_PRUNING  # the same conditions, one source
    protocol = get_protocol("learning_dynamics")
    assert (protocol.tier, protocol.seeds, protocol.preset) == ("study", (42, 43, 44), "reference")
    main_job = {r.run_id: r.config for r in get_protocol("dale_pruning", preset="reference").runs()}
    runs = protocol.runs()
    assert len(runs) == 12
    for run in runs:
        # Each run is the main job's, with records every RECORD_EVERY Adam steps.
        assert run.config.record_every == RECORD_EVERY
        assert run.config == dataclasses.replace(main_job[run.run_id], record_every=RECORD_EVERY)
    assert {r.config.record_every for r in get_protocol("learning_dynamics", record_every=1).runs()} == {1}
    assert get_protocol("learning_dynamics", preset="project").preset == "project"
    assert get_protocol("dale_pruning").runs()[0].config.record_every == 0  # the others record nothing
    # The command written into protocol.json runs the same protocol again, preset and interval included.
    assert protocol_command(protocol).endswith("--seeds 42 43 44 --preset reference --record-every 3")
    assert "--preset project" in protocol_command(get_protocol("learning_dynamics", preset="project"))
    # One run's records stay under 100 MB: the study tier's Adam steps / K + 1 records of the largest size.
    study = TIERS["study"].protocol
    steps = study.epochs * study.n_train // study.batch_size
    assert steps == 120 and (steps // RECORD_EVERY + 1) * RECORD_BYTES < 100e6


def test_protocol_list_names_the_recipe_and_the_records(capsys):
    from protocols.cli import main

    assert main(["protocol", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("learning_dynamics:"))
    assert line.endswith(f"; reference recipe; trajectory records every {RECORD_EVERY} Adam steps")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """frozen_ping, trainable_ping_init and trainable_zero_init at the smoke tier: 4 Adam steps, all recorded."""
    out = tmp_path_factory.mktemp("learning_dynamics")
    protocol = get_protocol(
        "learning_dynamics",
        tier="smoke",
        seeds=(42,),
        conditions=TINY_CONDITIONS,
        validation_backend="numpy",
        network=small_network(simulation__trial_ms=40.0, simulation__transient_ms=10.0).to_dict(),
        record_every=1,
        epochs=2,
        n_train=16,
    )
    statuses = run_protocol(protocol, out, progress=False)
    assert [s["status"] for s in statuses] == ["completed"] * len(TINY_CONDITIONS)
    records = load_runs(out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero or empty mean left unhandled, no layout collapse
        paths = draw_learning_dynamics(records, out / "figures", ("png",), conditions=TINY_CONDITIONS, title="tiny")
    return out, records, paths


def test_one_figure_per_condition_and_the_table(tiny):
    out, records, paths = tiny
    figures = out / "figures"
    for condition in TINY_CONDITIONS:
        assert (figures / f"{condition}_dynamics.png").stat().st_size > 10_000
    assert {p.name for p in paths} >= {"learning_dynamics.md", "learning_dynamics.json"}
    for record in records:
        assert (record.run_dir / DYNAMICS_NAME).is_file()
    rows = {row["condition"]: row for row in json.loads((figures / "learning_dynamics.json").read_text())}
    assert list(rows) == list(TINY_CONDITIONS)
    frozen = rows["frozen_ping"]["values"]
    # The frozen loop does not move: no change, its rank flat, every I cell aligned (no race to rank).
    assert frozen["relative_change_w_ei"] == [0.0] and frozen["relative_change_w_ie"] == [0.0]
    assert frozen["rank_w_ei_initial"] == frozen["rank_w_ei_final"] and frozen["race"] == [None]
    assert frozen["lottery"] == [1.0]
    moved = rows["trainable_ping_init"]["values"]
    assert moved["relative_change_w_ei"][0] > 0
    zero = rows["trainable_zero_init"]["values"]
    assert zero["rank_w_ei_initial"] == [0.0] and zero["lottery"] == [None]


def test_the_table_holds_dynamics_summarys_numbers(tiny):
    out, records, _ = tiny
    rows = {row["condition"]: row for row in json.loads((out / "figures" / "learning_dynamics.json").read_text())}
    table = (out / "figures" / "learning_dynamics.md").read_text()
    for record in records:
        summary = json.loads((record.run_dir / DYNAMICS_NAME).read_text())
        values = rows[record.condition]["values"]
        racing, rank, transitions = summary["racing_w_ei"], summary["rank"], summary["transitions"]
        expected = {
            "lottery": racing["lottery"],
            "race": racing["race"],
            "top_share_initial": racing["top_share"]["initial"],
            "top_share_final": racing["top_share"]["final"],
            "relative_change_w_ei": rank["w_ei"]["relative_change"],
            "relative_change_w_ie": rank["w_ie"]["relative_change"],
            "rank_w_ei_initial": rank["w_ei"]["effective_rank"][0],
            "rank_w_ei_final": rank["w_ei"]["effective_rank"][-1],
            "rank_w_ie_initial": rank["w_ie"]["effective_rank"][0],
            "rank_w_ie_final": rank["w_ie"]["effective_rank"][-1],
            "cka": summary["representation"]["linear_cka"],
            "loss_change_points": len(transitions["loss"]["change_point_steps"]),
            "rate_i_change_points": len(transitions["rate_i_hz"]["change_point_steps"]),
        }
        assert list(expected) == [c.key for c in COLUMNS]
        assert values == {key: [value] for key, value in expected.items()}, record.condition
        flags = transitions["loss"]["gradient_jump_before"] + transitions["rate_i_hz"]["gradient_jump_before"]
        row = rows[record.condition]
        assert (row["change_points_after_gradient_jump"], row["change_points"]) == (sum(flags), len(flags))
        # The Markdown row shows each number as the table formats it (one seed: the value itself).
        line = next(x for x in table.splitlines() if x.startswith(f"| {record.condition} |"))
        cells = [record.condition, "42", *(mean_and_range([expected[c.key]]) for c in COLUMNS)]
        assert line == "| " + " | ".join([*cells, f"{sum(flags)}/{len(flags)}"]) + " |"
    assert mean_and_range([0.25, None, 0.75]) == "0.5 (0.25 to 0.75) [2/3 seeds]" and mean_and_range([None]) == "n/a"


def test_dynamics_json_is_reused_until_the_trajectory_is_newer(tiny):
    out, records, _ = tiny
    run_dir = records[0].run_dir
    path = run_dir / DYNAMICS_NAME
    os.utime(path, ns=(1, 1))  # older than the records: written again
    draw_learning_dynamics(records[:1], out / "again", ("png",), conditions=TINY_CONDITIONS[:1])
    written = path.stat().st_mtime_ns
    assert written > 1
    newest = max(p.stat().st_mtime_ns for p in (run_dir / TRAJECTORY_DIR).iterdir())
    assert written >= newest
    draw_learning_dynamics(records[:1], out / "again", ("png",), conditions=TINY_CONDITIONS[:1])
    assert path.stat().st_mtime_ns == written  # newer than the records: read, not recomputed


def test_the_report_page_shows_the_dynamics_table_under_the_run_table(tiny):
    out, records, _ = tiny
    write_tables(records, out, title="tiny")
    page = report_markdown(out)
    dynamics = (out / "figures" / "learning_dynamics.md").read_text().strip()
    assert dynamics in page and page.index("| frozen_ping |") < page.index(dynamics.splitlines()[0])
    assert "![trainable_zero_init_dynamics](figures/trainable_zero_init_dynamics.png)" in page


def test_a_run_without_records_is_left_out_with_a_warning(tiny, tmp_path, capsys):
    _, records, _ = tiny
    bare = dataclasses.replace(records[0], run_dir=tmp_path / "bare")
    paths = draw_learning_dynamics([bare], tmp_path / "figures", ("png",), conditions=TINY_CONDITIONS[:1])
    assert [p.name for p in paths] == ["learning_dynamics.json", "learning_dynamics.md"]
    assert "| frozen_ping | none completed |" in (tmp_path / "figures" / "learning_dynamics.md").read_text()
    assert "has no trajectory records" in capsys.readouterr().err
