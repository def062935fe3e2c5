"""A run's digits and its directory are its own.

Data: a relative ``--idx-dir`` is stored absolute, ``config.json`` records
the SHA-256 of the run's train and test digits, and a resume or a validation
on other digits is refused with both data named; a run directory written
before digests were recorded still resumes and validates (with a warning).

Locks: a second training, validation or protocol run in a directory that
another process holds is refused at once, naming the directory and the
holder, and goes ahead once the holder has gone (killed here: the operating
system releases the lock). The lock is held from another process
(:func:`held_by_another_process`) or, where that is simpler, from this one
(flock locks of two open files conflict within one process too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FROZEN_PING_CONFIG as CONFIG
from helpers import FROZEN_PING_PROTOCOL as PROTOCOL
from helpers import STEMS, run_cli, write_idx_set

import biosim.data
from biosim.data import Dataset, digits_sha256
from biosim.locks import LOCK_NAME, DirectoryLockedError, directory_lock
from biosim.records import OutputLocationError
from bridge import run_records, training, validation
from bridge.feeding import data_record, run_digits
from bridge.train_config import ConfigError, TrainConfig
from bridge.training import BatchContext, train
from bridge.validation import validate
from protocols import runner
from protocols.runner import run_protocol

REPO = Path(__file__).resolve().parents[1]


class Crash(Exception):
    """Stands in for a killed process."""


class HeavyWork(AssertionError):
    """Raised where Brian2 would start: the checks before it have passed."""


def crash_in_epoch_1(context: BatchContext) -> None:
    raise Crash


def epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def recorded_data(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())["data"]


def idx_folder(path: Path, seed: int) -> dict:
    """Fake MNIST IDX files (enough for the smoke tier) in ``path``; the digits written."""
    path.mkdir(parents=True)
    return write_idx_set(path, n_train=70, n_test=40, seed=seed)


def sha256_of(written: dict, n_train: int = 8, n_test: int = 8) -> str:
    """:func:`digits_sha256` of the first digits of what :func:`idx_folder` wrote, computed apart from the loader."""
    (train_images, train_labels), (test_images, test_labels) = written["train"], written["test"]
    return digits_sha256(
        Dataset(train_images[:n_train], train_labels[:n_train], "written"),
        Dataset(test_images[:n_test], test_labels[:n_test], "written"),
    )


HOLD_LOCK = """
import sys, time
from biosim.locks import directory_lock
with directory_lock(sys.argv[1], sys.argv[2], sys.argv[3]):
    print("locked", flush=True)
    time.sleep(300)
"""


@contextlib.contextmanager
def held_by_another_process(directory: Path, what: str = "run directory", purpose: str = "training"):
    """A child process holds ``directory``'s lock for the block; it is killed (``kill -9``) at the end."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(directory), what, purpose], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout.readline().strip() == "locked"  # "" if the child failed: never hangs
        yield child
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()


def assert_names_the_holder(message: str, directory: Path, child: subprocess.Popen, purpose: str) -> None:
    assert f"{directory} is in use by another process: {purpose}, pid {child.pid} on host" in message, message
    assert socket.gethostname() in message and "command: -c" in message, message


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run on the embedded digits; tests that change it work on a copy."""
    run_dir = tmp_path_factory.mktemp("embedded") / "run"
    train(CONFIG, run_dir, progress=False)
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


@pytest.fixture(scope="module")
def idx_run(tmp_path_factory):
    """A finished run on fake IDX digits, trained from ``home`` with ``idx_directory="idx_ok"`` (relative)."""
    home = tmp_path_factory.mktemp("home")
    written = idx_folder(home / "idx_ok", seed=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)
        config = dataclasses.replace(CONFIG, idx_directory="idx_ok")  # made absolute here, against home
        train(config, "run", progress=False)
    return home, written


@pytest.fixture
def no_brian2(monkeypatch):
    """Brian2 raises :class:`HeavyWork`; the trials it was given are kept."""
    seen = {}

    def brian2(params, weights, trials, **kwargs):
        seen["trials"] = trials
        raise HeavyWork

    monkeypatch.setattr(validation, "run_trials", brian2)
    return seen


# --- the data a run trained on ------------------------------------------------------------------


def test_relative_idx_dir_is_stored_absolute(idx_run, tmp_path, capsys, monkeypatch):
    home, written = idx_run
    record = json.loads((home / "run" / "config.json").read_text())
    assert record["config"]["idx_directory"] == str(home / "idx_ok")
    assert record["data"] == {"source": str(home / "idx_ok"), "n_train": 8, "n_test": 8, "sha256": sha256_of(written)}

    monkeypatch.chdir(tmp_path)
    assert TrainConfig(idx_directory="idx_ok").idx_directory == str(tmp_path / "idx_ok")
    assert TrainConfig.from_dict(record["config"]).idx_directory == str(home / "idx_ok")  # absolute stays as is
    seen = {}

    def fake_train(config, run_dir, *, progress=True):
        seen["config"] = config
        return run_records.TrainResult("completed", run_dir, config, [{"epoch": 0}], model=None, retries=0)

    monkeypatch.setattr(training, "train", fake_train)
    code, err = run_cli(["train", "cli_run", "--tier", "smoke", "--idx-dir", "idx_ok", "--quiet"], capsys)
    assert code == 0, err
    assert seen["config"].idx_directory == str(tmp_path / "idx_ok")


def test_embedded_run_records_the_digest_of_its_digits(finished_run):
    split = biosim.data.load_split("smoke")
    expected = digits_sha256(split.train.subset(slice(8)), split.test.subset(slice(8)))
    assert recorded_data(finished_run) == {"source": "embedded", "n_train": 8, "n_test": 8, "sha256": expected}


def test_validate_from_another_directory_uses_the_recorded_digits(idx_run, tmp_path, monkeypatch, no_brian2):
    home, written = idx_run
    other = idx_folder(tmp_path / "idx_ok", seed=1)
    monkeypatch.chdir(tmp_path)  # its idx_ok holds other digits
    with pytest.raises(HeavyWork):
        validate(home / "run", backend="numpy", progress=False)
    labels = no_brian2["trials"].labels
    assert np.array_equal(labels, written["test"][1][:8]) and not np.array_equal(labels, other["test"][1][:8])


def test_validate_on_changed_digits_is_refused_naming_both(idx_run, capsys, no_brian2):
    home, written = idx_run
    files = {stem: (home / "idx_ok" / stem).read_bytes() for stem in STEMS.values()}
    try:
        other = write_idx_set(home / "idx_ok", n_train=70, n_test=40, seed=1)  # same path, other digits
        code, err = run_cli(["validate", home / "run", "--backend", "numpy", "--quiet"], capsys)
    finally:
        for stem, data in files.items():
            (home / "idx_ok" / stem).write_bytes(data)
    assert code == 2 and "Traceback" not in err, err
    recorded, current = sha256_of(written), sha256_of(other)
    assert recorded != current
    assert f"{home / 'run' / 'config.json'}: cannot validate on other digits" in err, err
    assert f"recorded {home / 'idx_ok'} (8 train + 8 test digits, SHA-256 {recorded})" in err, err
    assert f"now are {home / 'idx_ok'} (8 train + 8 test digits, SHA-256 {current})" in err, err
    assert "trials" not in no_brian2 and not list((home / "run").glob("validation_*.json"))


def test_resume_from_another_directory_on_other_digits_is_refused(tmp_path, monkeypatch, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    written = idx_folder(first / "idx_ok", seed=0)
    other = idx_folder(second / "idx_ok", seed=1)
    shutil.copytree(first / "idx_ok", second / "same_digits")
    monkeypatch.chdir(first)
    with pytest.raises(Crash):
        train(dataclasses.replace(CONFIG, idx_directory="idx_ok"), "run", progress=False, hook=crash_in_epoch_1)
    run_dir = first / "run"
    checkpoint = (run_dir / "checkpoint.pt").read_bytes()

    monkeypatch.chdir(second)  # the user's case: the same relative --idx-dir, another directory
    with pytest.raises(ConfigError) as error:
        train(dataclasses.replace(CONFIG, idx_directory="idx_ok"), run_dir, progress=False)
    message = str(error.value)
    assert f"{run_dir / 'config.json'}: cannot resume on other digits" in message, message
    assert f"recorded {first / 'idx_ok'} (8 train + 8 test digits, SHA-256 {sha256_of(written)})" in message
    assert f"now are {second / 'idx_ok'} (8 train + 8 test digits, SHA-256 {sha256_of(other)})" in message
    # The same digits under another path: refused too, as config.json and validation name the path.
    with pytest.raises(ConfigError, match=r"different config \(fields \['idx_directory'\]"):
        train(dataclasses.replace(CONFIG, idx_directory="same_digits"), run_dir, progress=False)
    assert (run_dir / "checkpoint.pt").read_bytes() == checkpoint and epochs(run_dir) == [0]

    resumed = train(dataclasses.replace(CONFIG, idx_directory=str(first / "idx_ok")), run_dir, progress=False)
    assert resumed.status == "completed" and epochs(run_dir) == [0, 1]
    assert "cannot be checked" not in capsys.readouterr().err


def test_cli_resume_on_other_digits_exits_2_naming_both(tmp_path, monkeypatch, capsys):
    """The reported case, through ``biosim train`` (the CLI's full-size network; its epochs are stubbed)."""
    first, second = tmp_path / "first", tmp_path / "second"
    written = idx_folder(first / "idx_ok", seed=0)
    other = idx_folder(second / "idx_ok", seed=1)
    monkeypatch.setattr(training._Trainer, "_epoch_zero", lambda self: {"epoch": 0})
    monkeypatch.setattr(training._Trainer, "_train_epoch", lambda self, epoch: crash_in_epoch_1(None))
    argv = ["train", first / "run", "--tier", "smoke", "--epochs", "1", "--idx-dir", "idx_ok", "--quiet"]
    monkeypatch.chdir(first)
    with pytest.raises(Crash):
        run_cli(argv, capsys)
    monkeypatch.chdir(second)
    code, err = run_cli(argv, capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    recorded, current = sha256_of(written, 16, 8), sha256_of(other, 16, 8)  # the smoke tier's 16 + 8 digits
    assert recorded != current and recorded_data(first / "run")["sha256"] == recorded
    assert f"recorded {first / 'idx_ok'} (16 train + 8 test digits, SHA-256 {recorded})" in err, err
    assert f"now are {second / 'idx_ok'} (16 train + 8 test digits, SHA-256 {current})" in err, err


def test_changed_embedded_split_is_refused(run_copy, monkeypatch, no_brian2):
    recorded = recorded_data(run_copy)["sha256"]
    train_pool, test_pool = biosim.data.embedded_pool_indices()
    monkeypatch.setattr(biosim.data, "embedded_pool_indices", lambda: (train_pool[::-1], test_pool[::-1]))
    current = data_record(CONFIG, *run_digits(CONFIG))["sha256"]
    assert current != recorded
    with pytest.raises(ConfigError, match=f"recorded embedded .*{recorded}.* now are embedded .*{current}"):
        validate(run_copy, backend="numpy", progress=False)
    (run_copy / "final.json").unlink()  # unfinished: train resumes from the checkpoint
    with pytest.raises(ConfigError, match=f"cannot resume on other digits.*{recorded}.*{current}"):
        train(CONFIG, run_copy, progress=False)


def test_run_without_a_recorded_digest_still_resumes_and_validates(tmp_path, capsys):
    run_dir = tmp_path / "old"
    with pytest.raises(Crash):
        train(CONFIG, run_dir, progress=False, hook=crash_in_epoch_1)
    record = json.loads((run_dir / "config.json").read_text())
    del record["data"]  # as written before digests were recorded
    (run_dir / "config.json").write_text(json.dumps(record))
    capsys.readouterr()

    assert train(CONFIG, run_dir, progress=False).status == "completed" and epochs(run_dir) == [0, 1]
    warning = f"{run_dir / 'config.json'} records no digest of the run's digits"
    err = capsys.readouterr().err
    assert warning in err and "resume goes on with embedded (8 train + 8 test digits" in err, err
    report = validate(run_dir, backend="numpy", progress=False)
    assert report["verdict"] == "pass", report
    err = capsys.readouterr().err
    assert warning in err and "validate goes on with embedded" in err, err


# --- one process at a time in a directory --------------------------------------------------------


def test_second_training_is_refused_while_the_first_trains(tmp_path):
    """The reported case in one process: a training started during another's epoch 1 is refused."""
    run_dir = tmp_path / "run"
    refusals = []

    def second_training(context: BatchContext) -> None:
        if not refusals:
            with pytest.raises(DirectoryLockedError) as error:
                train(dataclasses.replace(CONFIG, lr=1e-3), run_dir, progress=False)
            refusals.append(str(error.value))

    result = train(CONFIG, run_dir, progress=False, hook=second_training)
    assert result.status == "completed" and epochs(run_dir) == [0, 1]
    assert f"run directory {run_dir} is in use by another process: training, pid {os.getpid()}" in refusals[0]
    assert (run_dir / LOCK_NAME).read_text() == ""  # released: no holder named


def test_training_in_a_locked_run_directory_is_refused_until_the_holder_dies(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with held_by_another_process(run_dir) as child:
        with pytest.raises(DirectoryLockedError) as error:
            train(CONFIG, run_dir, progress=False)
        assert_names_the_holder(str(error.value), run_dir, child, "training")
        code, err = run_cli(["train", run_dir, "--tier", "smoke", "--quiet"], capsys)
        assert code == 2 and "Traceback" not in err, err
        assert_names_the_holder(err, run_dir, child, "training")
        assert os.listdir(run_dir) == [LOCK_NAME]  # nothing written
    assert train(CONFIG, run_dir, progress=False).status == "completed" and epochs(run_dir) == [0, 1]


def test_validate_is_refused_while_the_run_is_locked_and_holds_the_lock_itself(run_copy, capsys, monkeypatch):
    with held_by_another_process(run_copy, purpose="training") as child:
        with pytest.raises(DirectoryLockedError) as error:
            validate(run_copy, backend="numpy", progress=False)
        assert_names_the_holder(str(error.value), run_copy, child, "training")
        code, err = run_cli(["validate", run_copy, "--backend", "numpy", "--quiet"], capsys)
        assert code == 2 and "Traceback" not in err, err
        assert_names_the_holder(err, run_copy, child, "training")
    assert not list(run_copy.glob("validation_*.json"))

    def brian2(*args, **kwargs):
        # While Brian2 would run, the run directory is the validation's: a training is refused.
        with pytest.raises(
            DirectoryLockedError, match=re.escape(f"{run_copy} is in use by another process: validation")
        ):
            train(CONFIG, run_copy, progress=False)
        raise HeavyWork

    monkeypatch.setattr(validation, "run_trials", brian2)
    with pytest.raises(HeavyWork):
        validate(run_copy, backend="numpy", progress=False)
    assert (run_copy / LOCK_NAME).read_text() == ""  # released after the failure too


def test_protocol_run_is_refused_while_its_output_directory_is_locked(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    purpose = "protocol run dale_pruning (tier smoke)"
    with held_by_another_process(out, "protocol output directory", purpose) as child:
        with pytest.raises(DirectoryLockedError) as error:
            run_protocol(PROTOCOL, out, progress=False)
        assert f"protocol output directory {out} is in use by another process: {purpose}" in str(error.value)
        assert_names_the_holder(str(error.value), out, child, purpose)
        code, err = run_cli(["protocol", "run", "dale_pruning", "--tier", "smoke", "--out", out, "--quiet"], capsys)
        assert code == 2 and "Traceback" not in err, err
        assert_names_the_holder(err, out, child, purpose)
        assert os.listdir(out) == [LOCK_NAME]  # no protocol.json, no run
    started = []

    def run_local(specs, out_dir, processes, on_done):
        started.extend(spec.run_id for spec in specs)
        with pytest.raises(DirectoryLockedError, match=re.escape(f"{out} is in use by another process: {purpose}")):
            run_protocol(PROTOCOL, out, progress=False)

    monkeypatch.setattr(runner, "_run_local", run_local)
    run_protocol(PROTOCOL, out, progress=False)
    assert started == ["frozen_ping/seed_42"] and (out / "protocol.json").exists()


def test_the_output_directory_lock_leaves_its_runs_free(tmp_path):
    """A worker trains and validates a run inside a locked protocol folder: the run's lock is another file."""
    out = tmp_path / "out"
    out.mkdir()
    (spec,) = PROTOCOL.runs()
    with directory_lock(out, "protocol output directory", "protocol run dale_pruning (tier smoke)"):
        status = runner.execute_run(spec.to_dict(), str(out))
    torch.set_num_threads(2)
    assert status["status"] == "completed" and status["validation"]["verdict"] == "pass", status
    assert (out / spec.run_id / LOCK_NAME).is_file() and (out / LOCK_NAME).is_file()


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, capsys, monkeypatch):
    """Lustre without flock answers ENOSYS: the work goes on unguarded, as before locks, with a warning."""

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with directory_lock(tmp_path, "run directory", "training") as path:
        assert path == tmp_path / LOCK_NAME
    err = capsys.readouterr().err
    assert f"run directory {tmp_path}: the file system cannot lock {path} (Function not implemented)" in err, err

    def broken(descriptor, operation):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OutputLocationError, match=re.escape(f"cannot lock {path} (Bad file descriptor)")):
        with directory_lock(tmp_path, "run directory", "training"):
            pass


def test_the_holder_records_itself_and_a_free_lock_names_nobody(tmp_path):
    with directory_lock(tmp_path, "run directory", "training"):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        with pytest.raises(DirectoryLockedError, match=re.escape(f"{tmp_path} is in use by another process")):
            with directory_lock(tmp_path, "run directory", "validation on numpy"):
                pass
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert holder["purpose"] == "training" and holder["command"] == shlex.join(sys.argv)
    assert (tmp_path / LOCK_NAME).read_text() == ""
    with directory_lock(tmp_path, "run directory", "validation on numpy"):  # free again
        assert json.loads((tmp_path / LOCK_NAME).read_text())["purpose"] == "validation on numpy"
