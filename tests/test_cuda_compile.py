"""Tests of biosim.cuda_toolchain: the cuda_standalone build on CUDA 13.

The ``cuda_compile`` test compiles a network with nvcc (minutes; no GPU needed)
and is excluded from the default run: ``pytest -m cuda_compile``. The others
are fast and always run.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from biosim import cuda_toolchain as ct


def _toolchain_or_skip() -> ct.CudaToolchain:
    try:
        return ct.find_toolchain(compile_only=True)
    except ct.CudaToolchainError as error:
        if "nvcc not found" in str(error):
            pytest.skip(f"no CUDA toolkit: {error}")
        raise


@pytest.mark.cuda_compile
def test_compile_check_builds_binary(tmp_path: Path) -> None:
    _toolchain_or_skip()
    result = ct.compile_check(tmp_path / "cuda_project", compute_capability=9.0)
    binary = Path(result["binary"])
    assert binary.is_file() and binary.stat().st_size > 0
    nvcc_flags = result["makefile"]["NVCCFLAGS"].split("-Xcompiler")[0].split()
    assert [f for f in nvcc_flags if f.startswith("-std=")][-1] == "-std=c++17"  # nvcc uses the last one
    assert "-arch=sm_90" in result["makefile"]["NVCCFLAGS"]


def full_network() -> None:
    """The project's own network at its default size, on four test digits (returns a ``brian2.Network``).

    What ``biosim simulate --backend cuda_standalone`` builds (canonical weights, seed 0): the
    compile check of the real model rather than of the toy network's features. Module level: the
    compile check's child process imports it by name.
    """
    from biosim.network import build_network
    from biosim.params import NetworkParams
    from biosim.simulation import load_test_trials
    from biosim.weights import init_weights

    params = NetworkParams()
    trials = load_test_trials(params, 4, seed=0)
    built = build_network(params, init_weights(params, seed=0).effective(), trials)
    built.network.run(built.duration)
    return None


@pytest.mark.cuda_compile
def test_the_full_network_compiles_for_sm_90(tmp_path: Path) -> None:
    """The real model (1024 E, 256 I, 784 inputs, four digits), not only the toy network's features."""
    _toolchain_or_skip()
    result = ct.compile_check(tmp_path / "full_network", compute_capability=9.0, build_network=full_network)
    assert Path(result["binary"]).stat().st_size > 0
    assert "-arch=sm_90" in result["makefile"]["NVCCFLAGS"]


def test_missing_curand_wheel_names_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(ct.importlib.metadata, "distribution", not_installed)
    with pytest.raises(ct.CudaToolchainError) as error:
        ct._find_curand(tmp_path)  # an empty "toolkit": no curand.h, no libcurand.so
    message = str(error.value)
    assert "nvidia-curand" in message and "pip install" in message and str(tmp_path) in message


def test_missing_nvcc_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CUDA_PATH", str(tmp_path / "cuda"))
    monkeypatch.setattr(ct, "_DEFAULT_NVCC", tmp_path / "default" / "nvcc")
    with pytest.raises(ct.CudaToolchainError, match="nvcc not found") as error:
        ct._find_nvcc(str(tmp_path / "pref"))
    message = str(error.value)
    assert str(tmp_path / "pref" / "bin" / "nvcc") in message and "$CUDA_PATH" in message


def test_configure_is_idempotent() -> None:
    _toolchain_or_skip()
    from brian2 import prefs

    prefs._backup()
    try:
        first = ct.configure_cuda_standalone(compute_capability=8.0, compile_only=True)
        snapshot = {name: prefs[name] for name in prefs if name.startswith(("codegen.cpp", "devices.cuda_standalone"))}
        second = ct.configure_cuda_standalone(compute_capability=8.0, compile_only=True)
        assert first == second
        assert snapshot == {name: prefs[name] for name in snapshot}
        assert prefs["codegen.cpp.extra_compile_args_gcc"].count("-std=c++17") == 1
        assert not any(f == "-std=c++11" for f in prefs["codegen.cpp.extra_compile_args_gcc"])
        assert (first.link_dir / "libcurand.so").exists()
        assert prefs["devices.cuda_standalone.cuda_backend.compute_capability"] == 8.0
    finally:
        prefs._restore()


def test_unsupported_compute_capability_is_rejected() -> None:
    _toolchain_or_skip()
    with pytest.raises(ct.CudaToolchainError, match="supports"):
        ct.find_toolchain(compute_capability=3.5, compile_only=True)


def _broken_network() -> None:
    raise RuntimeError("network builder exploded")


def test_compile_check_reports_child_failure(tmp_path: Path) -> None:
    _toolchain_or_skip()
    with pytest.raises(ct.CudaToolchainError, match="network builder exploded"):
        ct.compile_check(tmp_path, build_network=_broken_network)
    with pytest.raises(ValueError, match="module-level"):
        ct.compile_check(tmp_path, build_network=lambda: None)


def test_the_exact_mode_compiles_without_fast_math_or_fmas(monkeypatch: pytest.MonkeyPatch) -> None:
    """BIOSIM_CUDA_EXACT=on swaps brian2cuda's -use_fast_math for IEEE flags; off puts it back (idempotent)."""
    _toolchain_or_skip()
    from brian2 import prefs

    name = "devices.cuda_standalone.cuda_backend.extra_compile_args_nvcc"
    prefs._backup()
    try:
        ct.configure_cuda_standalone(compute_capability=8.0, compile_only=True)
        assert ct.FAST_MATH in prefs[name]  # brian2cuda's default
        monkeypatch.setenv("BIOSIM_CUDA_EXACT", "on")
        for _ in range(2):
            ct.configure_cuda_standalone(compute_capability=8.0, compile_only=True)
            flags = prefs[name]
            assert ct.FAST_MATH not in flags
            assert all(flags.count(flag) == 1 for flag in ct.EXACT_NVCC_FLAGS), flags
        monkeypatch.setenv("BIOSIM_CUDA_EXACT", "off")
        ct.configure_cuda_standalone(compute_capability=8.0, compile_only=True)
        assert ct.FAST_MATH in prefs[name] and not set(ct.EXACT_NVCC_FLAGS) & set(prefs[name])
        assert prefs[name].count("-std=c++17") == 1
    finally:
        prefs._restore()
