"""Faults a new user meets: oversized or duplicated weight-file members, weights float32 cannot hold,
settings that do nothing, tracebacks instead of named errors, messages that do not say what is wrong."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from biosim import weight_files
from biosim.params import NetworkParams
from biosim.weight_files import FLOAT32_MAX, WeightFileError, load_weights, save_weights
from biosim.weights import init_weights

PARAMS = NetworkParams().replace(connectivity__n_e=32, connectivity__n_i=8, connectivity__n_input=50)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_weights(tmp_path / "weights.npz", init_weights(PARAMS, seed=1), PARAMS, provenance={"seed": 1})


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _rewrite(path: Path, extra: dict[str, bytes], replace: dict[str, bytes] | None = None) -> Path:
    """The archive at ``path`` with members replaced and extra members appended (duplicates allowed)."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members |= replace or {}
    with pytest.warns(UserWarning, match="Duplicate name") if set(extra) & set(members) else _nothing():
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in [*members.items(), *extra.items()]:
                archive.writestr(name, data)
    return path


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --- the weight loader checks the zip directory and the .npy headers before reading --------------------


def test_a_duplicate_member_is_refused_naming_it(saved: Path) -> None:
    _rewrite(saved, {"stored/w_out.npy": _npy_bytes(np.full((32, 10), 5.0))})
    with pytest.raises(WeightFileError, match=r"weights\.npz: stored/w_out\.npy: expected one member .*found it twice"):
        load_weights(saved)


def test_a_header_declaring_a_huge_shape_is_refused_before_reading(saved: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**7, 10**7)})
    _rewrite(saved, {}, replace={"stored/w_ei.npy": header.getvalue() + bytes(64)})
    with pytest.raises(WeightFileError, match=r"stored/w_ei: expected 8\d{14} bytes .*found \d+ declared"):
        load_weights(saved)


def test_a_wrong_shape_is_refused_from_the_header_without_reading_any_matrix(saved: Path, monkeypatch) -> None:
    _rewrite(saved, {}, replace={"effective/w_ie.npy": _npy_bytes(np.zeros((800, 320)))})
    read = []
    original = weight_files._read_member
    monkeypatch.setattr(
        weight_files,
        "_read_member",
        lambda source, archive, name, members: read.append(name) or original(source, archive, name, members),
    )
    with pytest.raises(
        WeightFileError, match=r"effective/w_ie: expected shape \(8, 32\) \(pre, post\), found \(800, 320\)"
    ):
        load_weights(saved)
    assert read == ["metadata"]


def test_an_unknown_member_is_skipped_unread_with_a_warning(saved: Path, monkeypatch) -> None:
    _rewrite(saved, {"bomb.npy": _npy_bytes(np.zeros(1 << 20))})
    read = []
    original = weight_files._read_member
    monkeypatch.setattr(
        weight_files,
        "_read_member",
        lambda source, archive, name, members: read.append(name) or original(source, archive, name, members),
    )
    with pytest.warns(UserWarning, match=r"weights\.npz: ignoring entries .*'bomb\.npy'"):
        load_weights(saved, params=PARAMS)
    assert "bomb" not in read and "bomb.npy" not in read


def test_entries_larger_than_memory_are_refused(saved: Path, monkeypatch) -> None:
    monkeypatch.setattr(weight_files, "available_memory_bytes", lambda: 1000)
    with pytest.raises(WeightFileError, match=r"weights\.npz: expected entries that fit in memory, found .* declared"):
        load_weights(saved)


# --- weights float32 cannot hold ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [1e300, -1e39, FLOAT32_MAX * 1.0000001])
def test_weights_beyond_float32_are_refused_naming_the_entry(saved: Path, value: float) -> None:
    with np.load(saved, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["stored/w_ei"][0, 0] = value
    arrays["effective/w_ei"][0, 0] = max(value, 0.0)
    np.savez_compressed(saved, **arrays)
    with pytest.raises(WeightFileError, match=r"stored/w_ei: expected values float32 can hold .*found 1 beyond it"):
        load_weights(saved)


def test_saving_weights_beyond_float32_is_refused(tmp_path: Path) -> None:
    weights = init_weights(PARAMS, seed=1)
    weights.w_ei[0, 0] = 1e300
    with pytest.raises(WeightFileError, match="stored/w_ei: expected values float32 can hold"):
        save_weights(tmp_path / "w.npz", weights, PARAMS)
    assert not (tmp_path / "w.npz").exists()


def test_the_largest_float32_is_accepted(saved: Path) -> None:
    with np.load(saved, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["stored/w_out"][0, 0] = arrays["effective/w_out"][0, 0] = FLOAT32_MAX
    np.savez_compressed(saved, **arrays)
    assert load_weights(saved).stored.w_out[0, 0] == FLOAT32_MAX
    assert json.loads(str(arrays["metadata"]))["format_version"] == 1


# --- named errors instead of tracebacks -----------------------------------------------------------------


def test_an_init_scale_float32_cannot_hold_is_refused_naming_the_flag(tmp_path: Path, capsys) -> None:
    from protocols.cli import main

    run = tmp_path / "run"
    code = main(["train", str(run), "--tier", "smoke", "--init-w-ei", "1e308", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--init-w-ei (TrainConfig.init_w_ei): 1e+308 x the canonical draw" in err and "float32" in err
    assert not run.exists()


def test_bench_sizes_that_cannot_fit_are_refused_naming_the_flags(capsys) -> None:
    from protocols.cli import main

    argv = ["bench", "--no-brian2", "--no-batch-sweep", "--n-steps", "1000000000000", "--batch-size", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--n-steps 1000000000000 and --batch-size 2: need at least" in err and "available" in err
    assert len(err.strip().splitlines()) == 1


def test_bench_memory_estimate_passes_the_default_sizes() -> None:
    from bridge.memory import bench_memory_bytes, check_bench_memory

    check_bench_memory(2000, 32, available=1 << 30)
    assert bench_memory_bytes(2000, 64) > bench_memory_bytes(2000, 32)


def test_a_network_too_large_for_memory_is_refused_naming_the_field(tmp_path: Path) -> None:
    from bridge.train_config import ConfigError, TrainConfig
    from bridge.training import train

    config = TrainConfig(tier="smoke", network={"connectivity": {"n_e": 10**9}})
    with pytest.raises(ConfigError, match=r"TrainConfig.network: connectivity .*n_e 1000000000, .* available"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_batch_too_large_for_memory_is_refused_naming_the_field() -> None:
    from bridge.memory import check_training_memory
    from bridge.train_config import ConfigError, TrainConfig

    config = TrainConfig(tier="smoke", batch_size=32, n_train=32)
    check_training_memory(config, available=1 << 30)
    with pytest.raises(ConfigError, match=r"TrainConfig.batch_size: 32 trials of 2000 steps need"):
        check_training_memory(config, available=40 << 20)


def test_ctrl_c_during_train_prints_one_line_and_exits_130(tmp_path: Path, monkeypatch, capsys) -> None:
    import bridge.training
    from protocols.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bridge.training, "train", interrupted)
    assert main(["train", str(run), "--tier", "smoke", "--quiet"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{run / 'checkpoint.pt'} holds the last finished epoch; the same command resumes" in err


# --- settings that do nothing or come too late -------------------------------------------------------


@pytest.mark.parametrize("value", ["off", "false", "no", "0"])
def test_fused_kernels_off_in_any_spelling_skips_the_kernels(monkeypatch, value: str) -> None:
    from bridge import fused_kernels

    monkeypatch.setenv("BIOSIM_FUSED_KERNELS", value)
    fused_kernels.kernel_library.cache_clear()
    try:
        assert fused_kernels.kernel_library() is None
    finally:
        fused_kernels.kernel_library.cache_clear()


@pytest.mark.parametrize("name", ["BIOSIM_BRIAN2_PCH", "BIOSIM_BRIAN2_VECTOR_EXP", "BIOSIM_BRIAN2_SETUP_O1"])
def test_brian2_switches_read_every_spelling_and_refuse_typos(monkeypatch, name: str) -> None:
    from biosim import standalone_build

    monkeypatch.setenv(name, "False")
    assert standalone_build._switched_on(name) is False
    monkeypatch.setenv(name, "yes")
    assert standalone_build._switched_on(name) is True
    monkeypatch.setenv(name, "of")
    with pytest.raises(ValueError, match=rf"{name}='of'"):
        standalone_build._switched_on(name)


def test_an_unusable_brian2_cache_is_refused(tmp_path: Path, monkeypatch) -> None:
    from biosim.standalone_build import cache_root

    occupied = tmp_path / "a_file"
    occupied.write_text("")
    monkeypatch.setenv("BIOSIM_BRIAN2_CACHE", str(occupied))
    with pytest.raises(ValueError, match=r"BIOSIM_BRIAN2_CACHE=.*cannot be used as a directory"):
        cache_root()
    monkeypatch.setenv("BIOSIM_BRIAN2_CACHE", "off")
    assert cache_root() is None
    monkeypatch.setenv("BIOSIM_BRIAN2_CACHE", str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache"


def test_a_bad_environment_is_refused_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    from protocols.cli import main

    monkeypatch.setenv("BIOSIM_KERNEL_ISA", "avx9000")
    run = tmp_path / "run"
    assert main(["train", str(run), "--tier", "smoke", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "biosim train: error: environment: BIOSIM_KERNEL_ISA='avx9000': expected one of native, avx2"
    assert not run.exists()


# --- messages that say what is wrong, and where -------------------------------------------------------


class _Brian2Reached(Exception):
    """Raised in place of Brian2: every check before it passed."""


@pytest.fixture
def no_brian2(monkeypatch) -> None:
    from bridge import validation

    def brian2(*args, **kwargs):
        raise _Brian2Reached

    monkeypatch.setattr(validation, "run_trials", brian2)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One small finished training run (a few seconds); tests that change it work on a copy."""
    from bridge.train_config import TrainConfig
    from bridge.training import train

    network = NetworkParams().replace(
        connectivity__n_e=64, connectivity__n_i=16, simulation__trial_ms=40.0, simulation__transient_ms=10.0
    )
    config = TrainConfig(tier="smoke", n_train=8, n_test=8, epochs=1, batch_size=8, network=network.to_dict())
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(config, run_dir, progress=False)
    return run_dir


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def _edit_config(run_dir: Path, **fields: object) -> Path:
    path = run_dir / "config.json"
    record = json.loads(path.read_text())
    record["config"].update(fields)
    path.write_text(json.dumps(record))
    return path


@pytest.mark.parametrize(("make", "kind"), [(Path.mkdir, "a directory"), (os.mkfifo, "a FIFO")])
def test_an_idx_path_that_is_not_a_file_is_named_for_what_it_is(tmp_path: Path, make, kind: str) -> None:
    from biosim.data import DataError, load_idx_mnist

    path = tmp_path / "train-images-idx3-ubyte"
    make(path)
    with pytest.raises(DataError, match=rf"train-images-idx3-ubyte: expected an MNIST IDX file, found {kind}"):
        load_idx_mnist(tmp_path)


def test_n_test_beyond_the_tier_in_config_json_names_the_file_and_field(run_copy: Path, no_brian2) -> None:
    from bridge.train_config import ConfigError
    from bridge.validation import validate

    path = _edit_config(run_copy, n_test=99999)
    with pytest.raises(ConfigError, match=rf"{path}: config.n_test: 99999 digits requested"):
        validate(run_copy, backend="numpy", progress=False)


def test_a_bad_idx_directory_in_config_json_names_the_file_and_field(run_copy: Path, no_brian2) -> None:
    from bridge.train_config import ConfigError
    from bridge.validation import validate

    path = _edit_config(run_copy, idx_directory=str(run_copy / "no_idx_here"))
    with pytest.raises(ConfigError, match=rf"{path}: config.idx_directory '.*no_idx_here'.*missing"):
        validate(run_copy, backend="numpy", progress=False)


def test_validate_and_train_agree_a_run_without_final_json_is_unfinished(run_copy: Path, no_brian2) -> None:
    from bridge.run_records import is_finished
    from bridge.validation import validate

    (run_copy / "final.json").unlink()
    assert not is_finished(run_copy)  # train resumes it
    with pytest.raises(FileNotFoundError, match=r"final.json not found: .* is not a finished training run"):
        validate(run_copy, backend="numpy", progress=False)


def test_validate_and_train_agree_a_run_without_config_json_is_finished(run_copy: Path, no_brian2, capsys) -> None:
    from bridge.run_records import is_finished
    from bridge.validation import validate

    (run_copy / "config.json").unlink()
    assert is_finished(run_copy)  # train returns its stored result
    with pytest.raises(_Brian2Reached):  # every check passed with the config recorded in weights.npz
        validate(run_copy, backend="numpy", progress=False)
    assert "config.json is missing: using the config recorded in" in capsys.readouterr().err


# --- what each run records about its computing environment ---------------------------------------------


def test_config_json_records_the_environment(finished_run: Path) -> None:
    import torch

    environment = json.loads((finished_run / "config.json").read_text())["environment"]
    assert environment["engine_path"] == "eager" and environment["kernel_product_path"] is None
    assert environment["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert environment["torch"] == torch.__version__ and environment["mkl"]


def test_the_fused_torch_fallback_is_visible_in_the_records(monkeypatch) -> None:
    from bridge import fused_kernels
    from bridge.run_records import run_environment
    from bridge.train_config import TrainConfig

    config = TrainConfig(tier="smoke", engine="fused")
    monkeypatch.setenv("BIOSIM_FUSED_KERNELS", "off")
    assert run_environment(config)["engine_path"] == "fused torch fallback (BIOSIM_FUSED_KERNELS off)"
    monkeypatch.setenv("BIOSIM_FUSED_KERNELS", "on")
    unavailable = {"available": False, "product_path": None, "description": "torch operations", "library": None}
    monkeypatch.setattr(fused_kernels, "kernel_info", lambda: unavailable)
    assert run_environment(config)["engine_path"] == "fused torch fallback (kernels unavailable)"
    available = {"available": True, "product_path": "avx2", "description": "", "library": "x.so"}
    monkeypatch.setattr(fused_kernels, "kernel_info", lambda: available)
    recorded = run_environment(config)
    assert recorded["engine_path"] == "fused C++ kernels" and recorded["kernel_product_path"] == "avx2"


def test_resuming_on_another_path_warns_naming_both(tmp_path: Path, capsys) -> None:
    from bridge.run_records import check_same_environment

    path = tmp_path / "config.json"
    recorded = {"engine_path": "fused C++ kernels", "kernel_product_path": "avx512", "aten_cpu_capability": "AVX512"}
    path.write_text(json.dumps({"environment": recorded}))
    check_same_environment(path, dict(recorded))
    assert capsys.readouterr().err == ""
    check_same_environment(path, {**recorded, "kernel_product_path": "avx2", "aten_cpu_capability": "AVX2"})
    err = capsys.readouterr().err
    assert "kernel_product_path: recorded 'avx512', now 'avx2'" in err
    assert "aten_cpu_capability: recorded 'AVX512', now 'AVX2'" in err


def test_the_table_gets_one_environment_line() -> None:
    from bridge.run_records import describe_environment

    same = {"torch": "2.13.0", "aten_cpu_capability": "AVX512", "engine_path": "fused C++ kernels"}
    same["kernel_product_path"] = "avx512"
    line = describe_environment([same, dict(same)])
    assert line == "Environment: torch 2.13.0, ATen CPU capability AVX512, fused C++ kernels avx512."
    other = {**same, "aten_cpu_capability": "AVX2", "kernel_product_path": "avx2"}
    assert describe_environment([same, other, None]).startswith("Environment: runs differ: ")
    assert "(1 runs without a record)" in describe_environment([same, other, None])


def test_train_through_the_api_checks_the_environment_before_any_work(tmp_path, monkeypatch):
    """train() refuses a misspelt setting as the command line does, before the run directory exists."""
    from helpers import SMOKE

    from bridge.training import train

    monkeypatch.setenv("BIOSIM_KERNEL_ISA", "avx9000")
    with pytest.raises(ValueError, match=r"BIOSIM_KERNEL_ISA='avx9000': expected one of native, avx2"):
        train(SMOKE, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
