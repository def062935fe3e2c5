"""A run's digits are its own (issue 22).

A relative ``--idx-dir`` is stored absolute, ``config.json`` records the
SHA-256 of the run's train and test digits, and a resume or a validation on
other digits is refused with both data named; a run directory written before
digests were recorded still resumes and validates (with a warning).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import CONFIG, run_cli
from test_data import STEMS, write_idx_set

import biosim.data
from biosim.data import Dataset, digits_sha256
from bridge import run_records, training, validation
from bridge.feeding import data_record, run_digits
from bridge.train_config import ConfigError, TrainConfig
from bridge.training import BatchContext, train
from bridge.validation import validate


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
