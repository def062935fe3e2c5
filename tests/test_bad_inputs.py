"""Bad input never runs silently or loses work.

Every case gives a named error (exit status 2 from the CLI, one line, no
traceback) before any heavy work starts, or the correct behaviour where the
input is fine after all (a finished run with a damaged checkpoint). The CLI
runs in-process; heavy work (Brian2, training epochs) is patched to fail, so
a check that comes too late fails the test instead of taking minutes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time

import numpy as np
import pytest
import torch
from helpers import FROZEN_PING_CONFIG as CONFIG
from helpers import FROZEN_PING_PROTOCOL as PROTOCOL
from helpers import run_cli

from biosim import backends, records
from biosim.params import NetworkParams, ParameterError
from bridge import run_records, training, validation
from bridge.checkpoint import CheckpointError, load_checkpoint
from bridge.run_records import is_finished, load_model
from bridge.train_config import ConfigError, TrainConfig
from bridge.training import train
from protocols import runner
from protocols.cli import build_parser, main
from protocols.definitions import get_protocol
from protocols.results import load_runs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished training run (about 5 s); tests that change it work on a copy."""
    run_dir = tmp_path_factory.mktemp("finished") / "frozen_ping" / "seed_42"
    train(CONFIG, run_dir, progress=False)
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "out" / "frozen_ping" / "seed_42"
    shutil.copytree(finished_run, copy)
    return copy


class HeavyWork(AssertionError):
    """Raised where heavy work would start: the check under test came too late."""


def _forbidden(*args, **kwargs):
    raise HeavyWork("heavy work started before the bad input was reported")


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Brian2, the mirror and training epochs fail the test if they start."""
    import biosim.simulation

    for module, name in (
        (biosim.simulation, "run_trials"),
        (validation, "run_trials"),
        (validation, "run_mirror"),
        (training._Trainer, "_epoch_zero"),
        (training._Trainer, "_train_epoch"),
    ):
        monkeypatch.setattr(module, name, _forbidden)
    monkeypatch.setattr(backends, "_gpu_visible", lambda: False)  # the same answer on a GPU machine
    monkeypatch.setattr(runner, "SCHEDULER_CONNECT_TIMEOUT_S", 1.0)


def _damage(path, kind: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "random": os.urandom(4096)}[kind])


DAMAGES = ("truncated", "empty", "random")

# --- the CLI: (argv, culprits named in the message, paths that must not exist afterwards) ------------

PROTOCOL_RUN = ["protocol", "run", "dale_pruning", "--tier", "smoke", "--out", "{tmp}/out"]
CLI_CASES = [
    # 1. surrogate flags: accepted ones take effect (test_surrogate_flags_reach_the_config), bad ones are named
    ("train-surrogate-unknown", ["train", "{tmp}/run", "--surrogate", "nosuch"], ["--surrogate", "fast_sigmoid"]),
    ("train-surrogate-slope-negative", ["train", "{tmp}/run", "--surrogate-slope", "-1"], ["--surrogate-slope", "-1"]),
    ("train-surrogate-slope-nan", ["train", "{tmp}/run", "--surrogate-slope", "nan"], ["--surrogate-slope", "nan"]),
    ("train-surrogate-unit-zero", ["train", "{tmp}/run", "--surrogate-unit-mv", "0"], ["--surrogate-unit-mv"]),
    ("train-w-out-unit-negative", ["train", "{tmp}/run", "--w-out-unit", "-10"], ["--w-out-unit"]),
    # 2. executors: no hang
    ("protocol-workers-0", [*PROTOCOL_RUN, "--workers", "0"], ["--workers", "positive integer", "got 0"]),
    ("protocol-workers-negative", [*PROTOCOL_RUN, "--workers", "-1"], ["--workers", "got -1"]),
    # 3. an output location that cannot be written: found before the work
    ("simulate-out-under-a-file", ["simulate", "--backend", "numpy", "--out", "{file}/x"], ["--out", "{file}"]),
    (
        "simulate-build-dir-under-a-file",
        ["simulate", "--backend", "numpy", "--out", "{tmp}/sim", "--build-dir", "{file}/b"],
        ["--build-dir", "{file}"],
    ),
    ("crosscheck-out-under-a-file", ["crosscheck", "--backend", "numpy", "--out", "{file}/x"], ["--out", "{file}"]),
    ("train-run-dir-under-a-file", ["train", "{file}/run", "--tier", "smoke"], ["run directory", "{file}"]),
    ("protocol-out-under-a-file", [*PROTOCOL_RUN[:-1], "{file}/out"], ["protocol output directory", "{file}"]),
    # 6. cuda_standalone without a GPU: before any nvcc compile, pointing to the compile-only check
    (
        "simulate-cuda-without-gpu",
        ["simulate", "--backend", "cuda_standalone", "--out", "{tmp}/sim"],
        ["cuda_standalone", "GPU", "bash scripts/test.sh -m cuda_compile"],
    ),
    (
        "validate-cuda-without-gpu",
        ["validate", "{tmp}/nothing", "--backend", "cuda_standalone"],
        ["cuda_standalone", "bash scripts/test.sh -m cuda_compile"],
    ),
    (
        "crosscheck-cuda-without-gpu",
        ["crosscheck", "--backend", "cuda_standalone", "--out", "{tmp}/x"],
        ["cuda_standalone", "bash scripts/test.sh -m cuda_compile"],
    ),
    # 7. errors that name the input
    ("train-seed-negative", ["train", "{tmp}/run", "--seed", "-5"], ["--seed", "non-negative", "-5"]),
    ("simulate-seed-negative", ["simulate", "--seed", "-5"], ["--seed", "non-negative", "-5"]),
    ("crosscheck-seed-negative", ["crosscheck", "--seed", "-1"], ["--seed", "non-negative"]),
    ("protocol-seeds-negative", [*PROTOCOL_RUN, "--seeds", "42", "-1"], ["--seeds", "non-negative", "-1"]),
    ("train-init-w-ei-banana", ["train", "{tmp}/run", "--init-w-ei", "banana"], ["--init-w-ei", "banana", "canonical"]),
    ("train-init-w-ie-negative", ["train", "{tmp}/run", "--init-w-ie", "-0.5"], ["--init-w-ie", "-0.5"]),
    ("train-init-w-ei-inf", ["train", "{tmp}/run", "--init-w-ei", "inf"], ["--init-w-ei", "inf"]),
    (
        "protocol-scheduler-unreachable",
        [*PROTOCOL_RUN, "--scheduler", "tcp://127.0.0.1:1"],
        ["scheduler", "tcp://127.0.0.1:1", "within 1 s"],
    ),
    ("protocol-scheduler-no-port", [*PROTOCOL_RUN, "--scheduler", "banana"], ["scheduler", "banana"]),
    ("protocol-processes-negative", [*PROTOCOL_RUN, "--processes", "-1"], ["--processes", "got -1"]),
    # 9. minor
    ("protocol-processes-0", [*PROTOCOL_RUN, "--processes", "0"], ["--processes", "got 0"]),
    ("protocol-formats-unknown", [*PROTOCOL_RUN, "--formats", "png", "bmp"], ["--formats", "bmp", "pdf"]),
    ("report-formats-unknown", ["protocol", "report", "{tmp}", "--formats", "bmp"], ["--formats", "bmp"]),
    (
        "train-batch-larger-than-n-train",
        ["train", "{tmp}/run", "--tier", "smoke", "--n-train", "4"],
        ["--batch-size", "TrainConfig.batch_size", "--n-train", "TrainConfig.n_train", "8", "4"],
    ),
    (
        "train-batch-size-flag-too-large",
        ["train", "{tmp}/run", "--tier", "smoke", "--batch-size", "32"],
        ["--batch-size", "32", "n_train", "16"],
    ),
    # cases that were always clean; kept so that they stay so
    ("simulate-unknown-backend", ["simulate", "--backend", "genn"], ["--backend", "genn", "cpp_standalone"]),
    ("simulate-n-trials-0", ["simulate", "--n-trials", "0"], ["--n-trials", "got 0"]),
    (
        "simulate-too-many-trials",
        ["simulate", "--backend", "numpy", "--tier", "smoke", "--n-trials", "1000", "--out", "{tmp}/sim"],
        ["n_trials=1000"],
    ),
    (
        "simulate-missing-idx-dir",
        [
            "simulate",
            "--backend",
            "numpy",
            "--tier",
            "full",
            "--idx-dir",
            "{tmp}/nowhere",
            "--n-trials",
            "1",
            "--out",
            "{tmp}/sim",
        ],
        ["{tmp}/nowhere"],
    ),
    ("train-unknown-tier", ["train", "{tmp}/run", "--tier", "huge"], ["--tier", "huge", "smoke"]),
    ("train-unknown-engine", ["train", "{tmp}/run", "--engine", "jit"], ["--engine", "jit", "fused"]),
    ("train-unknown-dtype", ["train", "{tmp}/run", "--dtype", "float16"], ["--dtype", "float16"]),
    ("train-epochs-0", ["train", "{tmp}/run", "--epochs", "0"], ["--epochs", "got 0"]),
    ("train-n-train-not-a-number", ["train", "{tmp}/run", "--n-train", "many"], ["--n-train", "many"]),
    (
        "train-n-train-beyond-the-data",
        ["train", "{tmp}/run", "--tier", "smoke", "--n-train", "100000", "--batch-size", "8"],
        ["n_train", "100000"],
    ),
    ("train-full-tier-without-idx", ["train", "{tmp}/run", "--tier", "full"], ["full", "idx_directory"]),
    ("protocol-unknown-name", ["protocol", "run", "nosuch", "--out", "{tmp}/out"], ["nosuch", "dale_pruning"]),
    ("protocol-unknown-tier", [*PROTOCOL_RUN[:4], "huge", *PROTOCOL_RUN[5:]], ["huge", "smoke"]),
    ("protocol-unknown-condition", [*PROTOCOL_RUN, "--conditions", "no_such"], ["no_such", "frozen_ping"]),
    (
        "protocol-workers-and-scheduler",
        [*PROTOCOL_RUN, "--workers", "2", "--scheduler", "tcp://x:1"],
        ["--scheduler", "--workers"],
    ),
    ("validate-missing-run", ["validate", "{tmp}/nothing", "--backend", "numpy"], ["{tmp}/nothing/config.json"]),
    ("report-no-runs", ["protocol", "report", "{tmp}"], ["no runs under", "{tmp}"]),
]
# Nothing is created by a command that fails on its input (no empty run or protocol directory).
MUST_NOT_EXIST = ("{tmp}/run", "{tmp}/out", "{tmp}/sim", "{tmp}/x", "{tmp}/nothing")


@pytest.mark.parametrize(("argv", "culprits"), [pytest.param(a, c, id=i) for i, a, c in CLI_CASES])
def test_cli_names_the_bad_input(argv, culprits, tmp_path, capsys, no_heavy_work):
    file = tmp_path / "a_file"
    file.write_text("not a directory")
    fill = {"tmp": tmp_path, "file": file}
    start = time.perf_counter()
    code, err = run_cli([a.format(**fill) for a in argv], capsys)
    assert code == 2, err
    assert "error:" in err and "Traceback" not in err, err
    for culprit in culprits:
        assert culprit.format(**fill) in err, (culprit, err)
    for path in MUST_NOT_EXIST:
        assert not os.path.exists(path.format(**fill)), f"{path} was created: {err}"
    assert time.perf_counter() - start < 10, "the error came late"


def test_surrogate_flags_reach_the_config(tmp_path, capsys, monkeypatch):
    """1. The surrogate flags take effect, and `biosim train` defaults to the fused engine."""
    seen = {}

    def fake_train(config, run_dir, *, progress=True):
        seen["config"] = config
        return run_records.TrainResult("completed", run_dir, config, [{"epoch": 0}], model=None, retries=0)

    monkeypatch.setattr(training, "train", fake_train)
    argv = ["train", tmp_path / "run", "--surrogate", "atan", "--surrogate-slope", "5", "--surrogate-unit-mv", "1"]
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    config = seen["config"]
    assert (config.surrogate, config.surrogate_slope, config.surrogate_unit_mv) == ("atan", 5.0, 1.0)
    assert config.engine == "fused"
    assert build_parser().parse_args(["train", "x"]).engine == "fused"
    assert TrainConfig().engine == "eager"  # the API default stays


@pytest.mark.parametrize(
    ("field", "value"), [("surrogate", "atan"), ("surrogate_slope", 5.0), ("surrogate_unit_mv", 1.0)]
)
def test_resume_guard_sees_the_surrogate_fields(field, value, run_copy):
    """1. A finished run refuses another surrogate instead of returning results trained with the old one."""
    with pytest.raises(
        ConfigError, match=rf"config.json was written by a run with a different config \(fields \['{field}'\]"
    ):
        train(dataclasses.replace(CONFIG, **{field: value}), run_copy, progress=False)


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_checkpoint_of_an_unfinished_run_is_named(damage, run_copy, capsys, no_heavy_work):
    """4. The CLI names the file and how to recover; never torch's weights_only=False advice."""
    (run_copy / "final.json").unlink()  # the run is not finished: it must resume from the checkpoint
    checkpoint = run_copy / "checkpoint.pt"
    _damage(checkpoint, damage)
    code, err = run_cli(["train", run_copy, "--tier", "smoke", "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert f"{checkpoint}: damaged checkpoint" in err and f"delete {checkpoint}" in err, err
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    with pytest.raises(CheckpointError, match="damaged checkpoint") as error:
        load_checkpoint(checkpoint)
    assert "weights_only" not in str(error.value)


@pytest.mark.parametrize("damage", DAMAGES)
def test_finished_run_with_damaged_checkpoint_stays_finished(damage, run_copy, capsys):
    """4. final.json + weights.npz mark the run finished; the weights come from weights.npz, nothing retrains."""
    from biosim.weight_files import load_weights

    _damage(run_copy / "checkpoint.pt", damage)
    weights_before = (run_copy / "weights.npz").read_bytes()
    assert is_finished(run_copy)

    def fail(context):
        raise AssertionError("a finished run was retrained")

    result = train(CONFIG, run_copy, progress=False, hook=fail)
    assert result.status == "completed"
    warning = capsys.readouterr().err
    assert f"{run_copy / 'checkpoint.pt'}: damaged checkpoint" in warning and "ignored" in warning, warning
    assert "delete" not in warning and "weights_only" not in warning
    assert (run_copy / "weights.npz").read_bytes() == weights_before
    stored = load_weights(run_copy / "weights.npz").stored
    for model in (result.model, load_model(run_copy)):
        np.testing.assert_array_equal(model.w_ei.detach().numpy(), stored.w_ei.astype(np.float32))
    assert result.metrics[-1]["epoch"] == 1


def test_damaged_final_json_is_named(run_copy, capsys):
    (run_copy / "final.json").write_text("{not json")
    code, err = run_cli(["train", run_copy, "--tier", "smoke", "--quiet"], capsys)
    assert code == 2 and f"{run_copy / 'final.json'}" in err and "not valid JSON" in err, err


def _edit_weight_metadata(path, edit) -> None:
    entries = dict(np.load(path, allow_pickle=False))
    meta = json.loads(str(entries["metadata"]))
    edit(meta)
    entries["metadata"] = np.array(json.dumps(meta))
    np.savez_compressed(path, **entries)


def _set_param(section, name, value):
    def edit(meta):
        meta["network_params"][section][name] = value
        meta["connectivity"] = meta["network_params"]["connectivity"]

    return edit


def _config_text(text):
    return lambda run_dir: (run_dir / "config.json").write_text(text)


def _config_field(name, value):
    def change(run_dir):
        record = json.loads((run_dir / "config.json").read_text())
        record["config"][name] = value
        (run_dir / "config.json").write_text(json.dumps(record))

    return change


def _weights(edit):
    return lambda run_dir: _edit_weight_metadata(run_dir / "weights.npz", edit)


def _weights_bytes(run_dir):
    (run_dir / "weights.npz").write_bytes(os.urandom(1000))


def _wrong_shape(run_dir):
    path = run_dir / "weights.npz"
    entries = dict(np.load(path, allow_pickle=False))
    entries["effective/w_ie"] = entries["effective/w_ie"][:, :-1]
    np.savez_compressed(path, **entries)


VALIDATE_CASES = [
    # 5. weights of another network: named with the file and the fields, never a PASS
    (
        "weights-other-tau-gaba",
        _weights(_set_param("synapse", "tau_gaba_ms", 30.0)),
        [
            "{run}/weights.npz",
            "differ from the run's {run}/config.json",
            "synapse.tau_gaba_ms: expected 8.0, found 30.0",
        ],
    ),
    (
        "weights-other-trial-ms",
        _weights(_set_param("simulation", "trial_ms", 40.0)),
        ["{run}/weights.npz", "simulation.trial_ms", "40.0"],
    ),
    (
        "weights-other-n-e",
        _weights(_set_param("connectivity", "n_e", 32)),
        ["{run}/weights.npz", "connectivity.n_e", "32"],
    ),
    (
        "weights-nan-param",
        _weights(_set_param("synapse", "tau_gaba_ms", math.nan)),
        ["{run}/weights.npz", "synapse.tau_gaba_ms", "finite"],
    ),
    ("weights-wrong-shape", _wrong_shape, ["{run}/weights.npz", "w_ie", "expected"]),
    ("weights-not-npz", _weights_bytes, ["{run}/weights.npz", "expected an .npz archive"]),
    # 7. an invalid config.json names the file
    ("config-not-json", _config_text("{oops"), ["{run}/config.json", "invalid JSON"]),
    ("config-no-config-entry", _config_text("[]"), ["{run}/config.json", "'config'"]),
    ("config-bad-field", _config_field("batch_size", "eight"), ["{run}/config.json", "TrainConfig.batch_size"]),
    ("config-unknown-field", _config_field("learning_rate", 1), ["{run}/config.json", "learning_rate"]),
]


@pytest.mark.parametrize(("change", "culprits"), [pytest.param(c, m, id=i) for i, c, m in VALIDATE_CASES])
def test_validate_names_the_bad_file(change, culprits, run_copy, capsys, no_heavy_work):
    change(run_copy)
    code, err = run_cli(["validate", run_copy, "--backend", "numpy", "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err, err
    for culprit in culprits:
        assert culprit.format(run=run_copy) in err, (culprit, err)
    assert "allow_pickle" not in err and "weights_only" not in err  # never advice to load unsafely
    assert not list(run_copy.glob("validation_*.json"))


def test_validate_unwritable_run_dir_fails_before_brian2(run_copy, capsys, monkeypatch, no_heavy_work):
    """3. A read-only run directory is found before Brian2 runs (root ignores chmod: the probe is made to fail)."""

    def refuse(directory):
        raise PermissionError(13, "Permission denied", str(directory))

    monkeypatch.setattr(records, "_write_probe", refuse)
    code, err = run_cli(["validate", run_copy, "--backend", "numpy", "--quiet"], capsys)
    assert code == 2 and f"run directory {run_copy}" in err and "Permission denied" in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_found_by_the_probe(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(records.OutputLocationError, match="locked"):
            records.check_writable_dir(locked / "run")
    finally:
        locked.chmod(0o700)


def test_corrupt_status_json_does_not_block_the_protocol(run_copy, capsys):
    """7. A damaged status.json: the run counts as not finished (warning names it), reruns, keeps its training."""
    status_path = run_copy / "status.json"
    status_path.write_text('{"status": "compl')
    out = run_copy.parent.parent
    assert runner.run_status(run_copy) is None
    pending, done = runner._pending(PROTOCOL.runs(), out)
    assert [spec.run_id for spec in pending] == ["frozen_ping/seed_42"] and not done
    assert str(status_path) in capsys.readouterr().err
    (spec,) = PROTOCOL.runs()
    assert spec.config.resolved() == CONFIG.resolved()
    (run_copy / "run_spec.json").write_text(json.dumps(spec.to_dict()))
    records_ = load_runs(out)
    assert [r.status["status"] for r in records_] == ["incomplete"]
    assert str(status_path) in capsys.readouterr().err

    weights_before = (run_copy / "weights.npz").stat().st_mtime_ns
    status = runner.execute_run(spec.to_dict(), str(out))
    torch.set_num_threads(2)
    assert status["status"] == "completed" and status["validation"]["verdict"] == "pass", status
    assert runner.run_status(run_copy)["status"] == "completed"
    assert (run_copy / "weights.npz").stat().st_mtime_ns == weights_before, "a finished run was retrained"


# --- the Python API ----------------------------------------------------------------------------------

PARAM_CASES = [
    # non-finite or mistyped values, once accepted silently
    ({"synapse__tau_gaba_ms": math.inf}, "synapse.tau_gaba_ms: expected a finite number, got inf"),
    ({"membrane_e__e_leak_mv": math.nan}, "membrane_e.e_leak_mv: expected a finite number, got nan"),
    ({"membrane_i__v_reset_mv": -math.inf}, "membrane_i.v_reset_mv: expected a finite number, got -inf"),
    ({"connectivity__n_e": True}, "connectivity.n_e: expected an int, got True"),
    ({"connectivity__n_i": 16.0}, "connectivity.n_i: expected an int, got 16.0"),
    ({"init__w_ei_mean_us": -1.0}, "init.w_ei_mean_us: must be >= 0, got -1.0"),
    ({"init__w_ie_mean_us": -2.0}, "init.w_ie_mean_us: must be >= 0"),
    ({"init__w_in_mean": -0.1}, "init.w_in_mean: must be >= 0"),
    ({"simulation__trial_ms": -20.0}, "simulation.trial_ms: must be > 0"),
    # errors that once named the wrong field
    ({"synapse__tau_gaba_ms": "8"}, "synapse.tau_gaba_ms: expected a number, got '8' (str)"),
    ({"membrane_i__c_m_nf": None}, "membrane_i.c_m_nf: expected a number, got None"),
    ({"synapse": {"tau_gaba_ms": 30.0}}, "NetworkParams.synapse: expected a SynapseParams, got dict"),
    ({"synapse__tau_gabba_ms": 3.0}, "unknown field(s) ['tau_gabba_ms'] in section 'synapse'"),
    ({"synapses__tau_gaba_ms": 3.0}, "no section(s) ['synapses']"),
    # clean before; the section is now named rather than the class
    ({"membrane_i__c_m_nf": -1.0}, "membrane_i.c_m_nf: must be > 0, got -1.0"),
    ({"membrane_e__v_reset_mv": -40.0}, "membrane_e.v_reset_mv: must lie below v_threshold_mv"),
    ({"connectivity__p_input": 1.5}, "connectivity.p_input: must lie in (0, 1]"),
    ({"membrane_i__refractory_ms": 0.25}, "membrane_i.refractory_ms: 0.25 is not a whole number of time steps"),
]


def _as_dict(change):
    data = {}
    for key, value in change.items():
        section, _, name = key.partition("__")
        data[section] = value if not name else {**data.get(section, {}), name: value}
    return data


@pytest.mark.parametrize(("change", "message"), PARAM_CASES, ids=[m.split(":")[0] for _, m in PARAM_CASES])
def test_network_params_refuse_and_name_the_field(change, message):
    with pytest.raises(ParameterError) as error:
        NetworkParams().replace(**change)
    assert message in str(error.value)
    if "section(s)" in message or "NetworkParams.synapse" in message:
        return  # from_dict refuses these for its own reasons (unknown key, a mapping is its input)
    with pytest.raises(ParameterError) as error:
        NetworkParams.from_dict(_as_dict(change))
    assert message in str(error.value)
    with pytest.raises(ConfigError) as error:
        TrainConfig(network=_as_dict(change))
    assert f"TrainConfig.network: {message}" in str(error.value)


def test_nan_parameter_never_reaches_a_weight_file(tmp_path):
    """8. Refused where it is made, not later as an unrelated JSON error in save_weights."""
    with pytest.raises(ParameterError, match="synapse.tau_gaba_ms"):
        NetworkParams().replace(synapse__tau_gaba_ms=float("nan"))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n_train": 8, "batch_size": 16}, "TrainConfig.batch_size: 16 is larger than TrainConfig.n_train 8"),
        (
            {"tier": "smoke", "n_train": 4},
            "TrainConfig.batch_size: 8 (the smoke tier's) is larger than TrainConfig.n_train 4",
        ),
        ({"tier": "smoke", "batch_size": 32}, "TrainConfig.n_train 16 (the smoke tier's)"),
    ],
)
def test_batch_larger_than_n_train_is_refused(fields, message):
    """9. Not clamped without a word."""
    with pytest.raises(ConfigError) as error:
        TrainConfig(**fields)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("executor", "message"),
    [
        ({"processes": 0}, "processes: expected a positive number of local processes, got 0"),
        ({"processes": -1}, "processes: expected a positive number of local processes, got -1"),
        ({"processes": True}, "processes: expected a positive number of local processes, got True"),
        ({"workers": 0}, "workers: expected a positive number of Dask workers, got 0"),
        ({"workers": -1}, "workers: expected a positive number of Dask workers, got -1"),
    ],
)
def test_run_protocol_refuses_bad_executor_sizes(executor, message, tmp_path):
    """2, 9. No hang and no silent 1: a named error, and nothing is written."""
    with pytest.raises(ValueError) as error:
        runner.run_protocol(PROTOCOL, tmp_path / "out", progress=False, **executor)
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()


def test_failed_config_leaves_no_protocol_directory(tmp_path):
    """9. A protocol whose runs cannot be configured writes nothing (no protocol.json)."""
    protocol = get_protocol("dale_pruning", tier="smoke", seeds=(-1,))
    with pytest.raises(ConfigError, match="TrainConfig.seed"):
        runner.run_protocol(protocol, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_unreachable_scheduler_is_named_quickly(tmp_path, monkeypatch):
    """7. A short connect timeout and the address in the message; nothing is written."""
    pytest.importorskip("distributed")
    monkeypatch.setattr(runner, "SCHEDULER_CONNECT_TIMEOUT_S", 1.0)
    start = time.perf_counter()
    with pytest.raises(runner.SchedulerError, match=r"scheduler 'tcp://127.0.0.1:1'.*within 1 s"):
        runner.run_protocol(PROTOCOL, tmp_path / "out", scheduler="tcp://127.0.0.1:1", progress=False)
    assert time.perf_counter() - start < 8
    assert not (tmp_path / "out").exists()
    assert runner.SCHEDULER_CONNECT_TIMEOUT_S <= 30


def test_cuda_standalone_without_gpu_fails_before_building(monkeypatch):
    """6. check_backend answers at once; the compile-only check does not go through it."""
    monkeypatch.setattr(backends, "_gpu_visible", lambda: False)
    with pytest.raises(backends.BackendError, match="bash scripts/test.sh -m cuda_compile"):
        backends.check_backend("cuda_standalone")
    monkeypatch.setattr(backends, "_gpu_visible", lambda: True)
    assert backends.check_backend("cuda_standalone") == "cuda_standalone"


def test_protocol_tier_help_lists_smoke(capsys):
    """9. `protocol run --tier` help names every tier."""
    with pytest.raises(SystemExit):
        main(["protocol", "run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "smoke, cpu (a quick pipeline check), study, study256" in help_text
    from biosim.tiers import TIERS

    assert all(f" {name}" in help_text for name in TIERS)
