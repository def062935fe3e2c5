"""The protocol runner end to end on a tiny tier: local pool and a real Dask LocalCluster."""

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from helpers import small_network

from protocols import registry
from protocols.definitions import (
    CONDITIONS,
    PROTOCOL_DEFAULTS,
    PROTOCOLS,
    Condition,
    Protocol,
    RunSpec,
    estimated_minutes,
    get_protocol,
    grid,
)
from protocols.provenance import code_version
from protocols.report import write_report
from protocols.report_page import report_markdown
from protocols.runner import KILL_ONCE_ENV, run_protocol, run_status

SMALL_NETWORK = small_network(simulation__trial_ms=40.0, simulation__transient_ms=10.0).to_dict()


def _tiny(conditions=("frozen_ping", "trainable_zero_init"), seeds=(42, 43)) -> Protocol:
    return Protocol(
        name="dale_pruning",
        conditions=conditions,
        tier="smoke",
        seeds=seeds,
        overrides={"network": SMALL_NETWORK, "engine": "eager"},
        validation_backend="numpy",
    )


def test_conditions_match_the_spec():
    assert tuple(c.name for c in PROTOCOLS["dale_pruning"]) == (
        "frozen_ping",
        "trainable_ping_init",
        "trainable_zero_init",
        "trainable_small_init",
    )
    runs = get_protocol("dale_pruning", tier="cpu").runs()
    assert len(runs) == 12 and {r.seed for r in runs} == {42, 43, 44}
    by_condition = {r.condition: r.config for r in runs}
    assert not by_condition["frozen_ping"].train_w_ei and not by_condition["frozen_ping"].train_w_ie
    assert by_condition["trainable_zero_init"].init_w_ei == "zero" and by_condition["trainable_zero_init"].train_w_ie
    assert by_condition["trainable_small_init"].init_w_ie == 0.1
    assert all(c.train_w_in and c.train_w_out for c in by_condition.values())


def test_protocol_round_trips_and_rejects_unknown_names():
    protocol = _tiny()
    assert Protocol.from_dict(protocol.to_dict()) == protocol
    with pytest.raises(ValueError, match="valid conditions"):
        Protocol(name="x", conditions=("no_such",), tier="cpu")
    with pytest.raises(ValueError, match="valid tiers"):
        get_protocol("dale_pruning", tier="huge")
    assert {c.name for c in PROTOCOLS["dale_pruning"]} <= set(CONDITIONS)


def test_local_pool_runs_records_and_skips_finished(tmp_path):
    protocol = _tiny(conditions=("frozen_ping",), seeds=(42,))
    statuses = run_protocol(protocol, tmp_path, progress=False)
    assert [s["status"] for s in statuses] == ["completed"]
    run_dir = tmp_path / "frozen_ping" / "seed_42"
    status = run_status(run_dir)
    assert status["validation"]["verdict"] == "pass"
    assert (run_dir / "weights.npz").exists() and (run_dir / "config.json").exists()
    first_mtime = (run_dir / "status.json").stat().st_mtime_ns
    again = run_protocol(protocol, tmp_path, progress=False)
    assert [s["status"] for s in again] == ["completed"]
    assert (run_dir / "status.json").stat().st_mtime_ns == first_mtime, "a finished run was run again"
    # protocol.json says how to run it again and with which code; report.md says all of it.
    record = json.loads((tmp_path / "protocol.json").read_text())
    assert record["protocol"]["name"] == "dale_pruning"  # the page name scripts/publish_results.py uses
    assert record["command"].startswith("biosim protocol run dale_pruning --tier smoke --seeds 42 ")
    assert set(record["code"]) == {"commit", "dirty"} and record["date"] and record["versions"]["torch"]
    write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# dale_pruning\n") and registry.DEFINITIONS["dale_pruning"].question in report
    assert f"`{record['command']}`" in report and record["date"] in report
    assert (tmp_path / "table.md").read_text().strip() in report  # the table and every run's verdict
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert "figures/frozen_ping_diagnostic.png" in links
    assert all(not Path(link).is_absolute() and (tmp_path / link).is_file() for link in links)


def test_dask_local_cluster_survives_a_killed_worker(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))  # inherited by the worker processes
    protocol = _tiny()
    statuses = run_protocol(protocol, tmp_path / "out", workers=2, progress=False)
    assert marker.exists(), "no worker was killed: the test exercised nothing"
    assert sorted(s["run_id"] for s in statuses) == sorted(r.run_id for r in protocol.runs())
    assert all(s["status"] == "completed" for s in statuses), statuses
    assert all(s["validation"]["verdict"] == "pass" for s in statuses)
    table, figures = write_report(tmp_path / "out")
    text = table.read_text()
    assert "frozen_ping" in text and "trainable_zero_init" in text and "2/2 pass" in text
    assert sorted(p.name for p in figures.glob("*.png")) == sorted(
        ["comparison.png"]
        + [f"{c}_{kind}.png" for c in ("frozen_ping", "trainable_zero_init") for kind in ("diagnostic", "weights")]
    )
    assert os.path.getsize(tmp_path / "out" / "table.csv") > 0
    protocol_record = json.loads((tmp_path / "out" / "protocol.json").read_text())
    assert Protocol.from_dict(protocol_record["protocol"]) == protocol


def test_a_failed_run_is_recorded_and_does_not_stop_the_others(tmp_path):
    broken = dict(SMALL_NETWORK)
    protocol = Protocol(
        name="dale_pruning",
        conditions=("frozen_ping",),
        tier="smoke",
        seeds=(42, 43),
        overrides={"network": broken, "engine": "eager", "idx_directory": str(tmp_path / "no_mnist_here")},
        validation_backend="numpy",
    )
    statuses = run_protocol(protocol, tmp_path / "out", progress=False)
    assert [s["status"] for s in statuses] == ["failed", "failed"]
    assert "no_mnist_here" in statuses[0]["error"]


def test_a_subset_of_conditions_and_a_dtype_can_be_chosen():
    protocol = get_protocol(
        "dale_pruning", tier="study", seeds=(45, 46), conditions=("trainable_ping_init",), dtype="float64"
    )
    runs = protocol.runs()
    assert [(r.condition, r.seed) for r in runs] == [("trainable_ping_init", 45), ("trainable_ping_init", 46)]
    assert all(r.config.dtype == "float64" and r.config.train_w_ei for r in runs)
    study = runs[0].config
    assert (study.n_train, study.n_test, study.epochs, study.batch_size) == (640, 400, 3, 16)
    with pytest.raises(ValueError, match="not part of protocol 'frozen_baseline'"):
        get_protocol("frozen_baseline", tier="study", conditions=("trainable_zero_init",))


def test_conditions_are_data_and_grids_expand_into_named_runs():
    conditions = grid("g", "test grid", {"init_w_ei": (0.5, 2.0), "network.synapse.tau_gaba_ms": (4.0, 8.0)})
    assert [c.name for c in conditions] == [
        "g_init_w_ei_0p5__tau_gaba_ms_4",
        "g_init_w_ei_0p5__tau_gaba_ms_8",
        "g_init_w_ei_2__tau_gaba_ms_4",
        "g_init_w_ei_2__tau_gaba_ms_8",
    ]
    fields = conditions[1].apply({"seed": 1, "network": {"connectivity": {"n_e": 64}}})
    assert fields["init_w_ei"] == 0.5
    assert fields["network"] == {"connectivity": {"n_e": 64}, "synapse": {"tau_gaba_ms": 8.0}}
    with pytest.raises(ValueError, match="unknown setting 'init_w_xx'"):
        Condition("bad", "", {"init_w_xx": 1.0})
    with pytest.raises(ValueError, match="network.SECTION.FIELD"):
        Condition("bad", "", {"network.tau_gaba_ms": 1.0})


def test_follow_up_protocols_set_tau_gaba_and_the_loop_start():
    tau = {r.condition: r.config for r in get_protocol("tau_gaba", tier="study", seeds=(42,)).runs()}
    assert len(tau) == 10
    assert tau["tau_gaba_16_trainable"].network_params().synapse.tau_gaba_ms == 16.0
    assert tau["tau_gaba_16_trainable"].train_w_ei and not tau["tau_gaba_4_frozen"].train_w_ie
    basin = {r.condition: r.config for r in get_protocol("basin_map", tier="study", seeds=(42,)).runs()}
    assert len(basin) == 25
    start = basin["basin_init_w_ei_0p25__init_w_ie_2"]
    assert (start.init_w_ei, start.init_w_ie, start.train_w_ei, start.train_w_ie) == (0.25, 2.0, True, True)
    assert RunSpec.from_dict(get_protocol("basin_map", tier="study", seeds=(42,)).runs()[3].to_dict()).config == (
        get_protocol("basin_map", tier="study", seeds=(42,)).runs()[3].config
    )


def test_protocol_list_prints_every_protocol_with_conditions_and_cost(capsys):
    from protocols.cli import main

    assert main(["protocol", "list"]) == 0
    text = capsys.readouterr().out
    for name, conditions in PROTOCOLS.items():
        defaults = PROTOCOL_DEFAULTS[name]
        seeds = " ".join(map(str, defaults.seeds))
        assert f"{name}: {len(conditions)} conditions x seeds {seeds}; default tier {defaults.tier}; cpu " in text
        assert all(c.name in text for c in conditions)
        # Every protocol's default finishes within the hour on the 2-core machine.
        assert estimated_minutes(name, defaults.tier) < 60, name


def test_protocol_defaults_apply_when_tier_and_seeds_are_not_given():
    sweep = get_protocol("basin_map")
    assert (sweep.tier, sweep.seeds) == ("survey", (42,))
    assert get_protocol("basin_map", tier="study", seeds=(1, 2)).seeds == (1, 2)
    assert get_protocol("dale_pruning").tier == "study"


def test_anti_pruning_sweeps_each_penalty_over_lambda_with_the_loop_trainable():
    runs = {r.condition: r.config for r in get_protocol("anti_pruning").runs()}
    off = runs.pop("anti_pruning_off")
    assert (off.reg_w_ei_distance, off.reg_gamma_power, off.train_w_ei, off.train_w_ie) == (0.0, 0.0, True, True)
    distance = sorted(c.reg_w_ei_distance for c in runs.values() if c.reg_w_ei_distance > 0)
    gamma = sorted(c.reg_gamma_power for c in runs.values() if c.reg_gamma_power > 0)
    assert distance == gamma == [0.1, 1.0, 10.0, 100.0, 1000.0]
    assert all(c.train_w_ei and c.train_w_ie and c.init_w_ei == "canonical" for c in runs.values())
    assert not any(c.reg_w_ei_distance > 0 and c.reg_gamma_power > 0 for c in runs.values())


def test_membrane_damping_pairs_each_dale_condition_with_its_damped_twin():
    runs = {r.condition: r.config for r in get_protocol("membrane_damping").runs()}
    for name in ("frozen_ping", "trainable_ping_init", "trainable_zero_init", "trainable_small_init"):
        exact, damped = runs[name], runs[f"damped_{name}"]
        assert exact.membrane_grad_scale == 1.0 and damped.membrane_grad_scale == 1e-3
        assert dataclasses.replace(damped, membrane_grad_scale=1.0) == exact


def test_streaming_pairs_a_frozen_and_a_trainable_loop_on_four_digit_streams():
    assert {r.seed for r in get_protocol("streaming").runs()} == {42, 43, 44}
    runs = {r.condition: r.config for r in get_protocol("streaming", seeds=(42,)).runs()}
    frozen, trainable = runs["stream_frozen"], runs["stream_trainable"]
    assert frozen.stream_digits == trainable.stream_digits == 4 and frozen.stream_settle_ms == 0.0
    assert not frozen.train_w_ei and trainable.train_w_ei and trainable.train_w_ie
    # Each run is its dale_pruning twin at the same tier and seed, but for the resets between digits.
    dale = {r.condition: r.config for r in get_protocol("dale_pruning", seeds=(42,)).runs()}
    assert dataclasses.replace(frozen, stream_digits=1) == dale["frozen_ping"]
    assert dataclasses.replace(trainable, stream_digits=1) == dale["trainable_ping_init"]
    # The damped stream is the damped single-digit run of membrane_damping, on streams.
    damped = {r.condition: r.config for r in get_protocol("membrane_damping", seeds=(42,)).runs()}
    assert dataclasses.replace(runs["stream_trainable_damped"], stream_digits=1) == dataclasses.replace(
        damped["damped_trainable_ping_init"], tier=trainable.tier, n_train=trainable.n_train, n_test=trainable.n_test
    )
    assert runs["stream_trainable_damped"].membrane_grad_scale == 1e-3 != trainable.membrane_grad_scale


def test_streaming_smoke_protocol_runs_validates_and_reports(tmp_path):
    # The fused engine: the eager one takes about 100x longer through the 4 x 400 steps of a stream.
    protocol = get_protocol(
        "streaming",
        tier="smoke",
        seeds=(42,),
        conditions=("stream_frozen", "stream_trainable"),  # the damped one differs only by a gradient factor
        validation_backend="numpy",
        network=SMALL_NETWORK,
        engine="fused",
    )
    statuses = run_protocol(protocol, tmp_path, progress=False)
    assert [s["status"] for s in statuses] == ["completed", "completed"]
    for status in statuses:
        brian = status["validation"]["simulators"]["brian2:numpy"]
        assert status["validation"]["verdict"] == "pass" and len(brian["accuracy_by_position"]) == 4
        assert len(status["final"]["test_accuracy_by_position"]) == 4
    table, figures = write_report(tmp_path)
    assert "stream_frozen" in table.read_text() and "stream_trainable" in table.read_text()
    assert (figures / "stream_trainable_diagnostic.png").exists()


def test_protocol_run_help_names_every_protocol(capsys):
    from protocols.cli import main

    with pytest.raises(SystemExit):
        main(["protocol", "run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in PROTOCOLS)


# --- the registry -----------------------------------------------------------------------------------------

# Pages the main job publishes (scripts/publish_results.py) rather than this repository's history.
PUBLISHED_BY_THE_MAIN_JOB = {"dale_pruning", "reference_ladder"}
REPO = Path(__file__).resolve().parents[1]


def test_each_catalog_module_registers_its_protocol_once():
    import pkgutil

    from protocols import catalog

    modules = [m.name for m in pkgutil.iter_modules(catalog.__path__) if not m.name.startswith("_")]
    assert sorted(registry.DEFINITIONS) == sorted(modules)
    assert list(registry.DEFINITIONS) == list(PROTOCOLS)  # the view reads the registry, in listing order
    for name, record in registry.DEFINITIONS.items():
        assert record.name == name and PROTOCOLS[name] is record.conditions
        assert PROTOCOL_DEFAULTS[name] is record.defaults
        assert all(registry.CONDITIONS[c.name] == c for c in record.conditions)
        assert len(record.question) > 40 and "\n\n" not in record.question  # one paragraph


def test_each_protocol_names_its_results_page():
    for name, record in registry.DEFINITIONS.items():
        page = record.results_page
        assert page.parent == Path("docs/results") and page.suffix == ".md", name
        assert (REPO / page).is_file() or page.stem in PUBLISHED_BY_THE_MAIN_JOB, f"{name}: {page} missing"


def _catalog(root: Path, package: str, modules: dict[str, str]) -> str:
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    head = "from protocols.conditions import loop\nfrom protocols.record import ProtocolDefaults, ProtocolDefinition\n"
    for module, body in modules.items():
        (root / package / f"{module}.py").write_text(head + body)
    return package


def _record(name: str, order: int, condition: str = "c") -> str:
    return (
        f"PROTOCOL = ProtocolDefinition(name={name!r}, question='q', order={order}, "
        f"conditions=(loop({condition!r}, 'd', 'canonical', True),), defaults=ProtocolDefaults('cpu'))\n"
    )


@pytest.mark.parametrize(
    ("modules", "error"),
    [
        ({"a": _record("a", 0), "b": _record("a", 1)}, "defines protocol 'a'; name the module after it"),
        ({"a": _record("a", 0), "b": _record("b", 0, "d")}, "protocols share a order: \\[0\\]"),
        ({"a": "X = 1\n"}, "defines PROTOCOL, a ProtocolDefinition"),
        ({"a": _record("a", 0), "b": _record("b", 1).replace("True", "False")}, "two different conditions"),
    ],
)
def test_discover_refuses_a_catalog_that_registers_twice_or_not_at_all(tmp_path, monkeypatch, modules, error):
    monkeypatch.syspath_prepend(str(tmp_path))
    package = _catalog(tmp_path, f"catalog_{tmp_path.name}", modules)
    with pytest.raises(ValueError, match=error):
        registry.discover(package)


def test_discover_finds_each_module_once_in_order(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    package = _catalog(tmp_path, "catalog_ok", {"zeta": _record("zeta", 0, "z"), "alpha": _record("alpha", 1)})
    assert list(registry.discover(package)) == ["zeta", "alpha"]


def test_duplicate_seeds_are_refused_before_any_work(tmp_path, capsys):
    from protocols.cli import main

    out = tmp_path / "out"
    assert (
        main(["protocol", "run", "dale_pruning", "--tier", "cpu", "--seeds", "42", "43", "42", "--out", str(out)]) == 2
    )
    assert "--seeds: 42 given more than once" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match="seeds: 42 given more than once"):
        get_protocol("dale_pruning", seeds=(42, 42))


def _protocol_dir(tmp_path: Path, record: dict) -> Path:
    (tmp_path / "figures").mkdir(parents=True)
    for name in ("frozen_ping_diagnostic.png", "comparison.png", "comparison.pdf"):
        (tmp_path / "figures" / name).write_bytes(b"png")
    (tmp_path / "table.md").write_text("### dale_pruning\n\n| condition |\n|---|\n\nPer-run verdicts:\n- x\n")
    (tmp_path / "protocol.json").write_text(json.dumps(record))
    return tmp_path


def test_report_page_from_a_protocol_json_with_and_without_provenance(tmp_path):
    protocol = get_protocol("dale_pruning", tier="cpu", seeds=(42,), preset="reference")
    record = {
        "protocol": protocol.to_dict(),
        "command": "biosim protocol run dale_pruning --tier cpu --seeds 42 --preset reference --out X",
        "code": {"commit": "abc123", "dirty": False},
        "date": "2026-01-02T03:04:05+00:00",
        "versions": {"python": "3.11.7", "torch": "2.9.0"},
    }
    text = report_markdown(_protocol_dir(tmp_path / "new", record))
    assert "- Command: `biosim protocol run dale_pruning --tier cpu --seeds 42 --preset reference --out X`" in text
    assert "- Code: `abc123`\n" in text and "- Date: 2026-01-02T03:04:05+00:00" in text
    assert "- Libraries: python 3.11.7, torch 2.9.0" in text and "preset reference, seeds 42" in text
    assert text.index("figures/comparison.png") < text.index("figures/frozen_ping_diagnostic.png")
    assert "[comparison.pdf](figures/comparison.pdf)" in text and "Per-run verdicts:" in text
    # A protocol.json of older code has no provenance: the command is rebuilt, the commit is not guessed.
    old = report_markdown(_protocol_dir(tmp_path / "old", {"protocol": protocol.to_dict()}))
    rebuilt = "- Command: `biosim protocol run dale_pruning --tier cpu --seeds 42 --preset reference`"
    assert f"{rebuilt} (rebuilt from protocol.json)" in old
    assert "- Code: not recorded\n" in old and "- Date: not recorded" in old


def test_code_version_without_git_is_null_not_an_error(tmp_path, monkeypatch):
    assert code_version(tmp_path) == {"commit": None, "dirty": None}  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert code_version(REPO) == {"commit": None, "dirty": None}
    monkeypatch.undo()
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode == 0:
        assert len(code_version(REPO)["commit"]) == 40


def test_an_epochs_override_sets_every_runs_length_and_the_run_is_validated(tmp_path):
    """``--epochs N`` (overrides["epochs"]): recorded in each run's config and in the command that runs it again."""
    tiny = _tiny(conditions=("frozen_ping",), seeds=(42,))
    protocol = dataclasses.replace(tiny, overrides={**tiny.overrides, "epochs": 2})
    assert [spec.config.epochs for spec in protocol.runs()] == [2]  # the smoke tier's own is 1
    statuses = run_protocol(protocol, tmp_path, progress=False)
    assert [s["status"] for s in statuses] == ["completed"]
    assert statuses[0]["validation"]["verdict"] == "pass"
    run_dir = tmp_path / "frozen_ping" / "seed_42"
    assert json.loads((run_dir / "config.json").read_text())["config"]["epochs"] == 2
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]
    record = json.loads((tmp_path / "protocol.json").read_text())
    assert record["protocol"]["overrides"]["epochs"] == 2
    assert "--epochs 2" in record["command"]


def test_the_epochs_flag_reaches_every_run_and_names_the_default_directory(tmp_path, monkeypatch, capsys):
    import protocols.report
    import protocols.runner
    from protocols.cli import main

    seen = {}

    def fake_run(protocol, out, **options):
        seen.update(protocol=protocol, out=out)
        return []

    monkeypatch.setattr(protocols.runner, "run_protocol", fake_run)
    monkeypatch.setattr(protocols.report, "write_report", lambda out, formats: (tmp_path / "table.md", []))
    (tmp_path / "table.md").write_text("table\n")
    monkeypatch.chdir(tmp_path)
    arguments = ["protocol", "run", "dale_pruning", "--tier", "cpu", "--preset", "reference", "--seeds", "42"]
    assert main([*arguments, "--epochs", "3"]) == 0
    assert seen["out"] == Path("results/dale_pruning_cpu_reference_3epochs")
    assert {spec.config.epochs for spec in seen["protocol"].runs()} == {3}
    assert main(arguments) == 0
    assert seen["out"] == Path("results/dale_pruning_cpu_reference")
    assert {spec.config.epochs for spec in seen["protocol"].runs()} == {2}  # the cpu tier's
    with pytest.raises(SystemExit):
        main([*arguments, "--epochs", "0"])
    assert "--epochs" in capsys.readouterr().err
