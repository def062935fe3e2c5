"""biosim.standalone_build: the precompiled header and the reused project directories.

The standalone test builds a small network three ways (no precompiled header
in a temporary directory; with it in a fresh cache slot; again in the now
warm slot) and requires the same spikes and scores, bit for bit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from biosim import standalone_build as sb
from biosim.backends import run_trials
from biosim.data import load_split
from biosim.inputs import make_trials
from biosim.weights import init_weights

MAKEFILE = """PROGRAM = main
OPTIMISATIONS = -I"{include}" -w -O2 -std=c++11 -include biosim_pch.h
CXXFLAGS = -c -Wno-write-strings $(OPTIMISATIONS) -I. {extra}
"""


def test_compile_flags_come_from_the_makefile_without_c_and_the_include(tmp_path: Path) -> None:
    (tmp_path / "makefile").write_text(MAKEFILE.format(include="/opt/my dir/include", extra="-fopenmp"))
    assert sb._compile_flags(tmp_path / "makefile") == [
        "-Wno-write-strings", "-I/opt/my dir/include", "-w", "-O2", "-std=c++11", "-I.", "-fopenmp",
    ]  # fmt: skip


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_precompiled_header_is_built_once_per_compiler_and_flags(tmp_path: Path) -> None:
    (tmp_path / "makefile").write_text(MAKEFILE.format(include=tmp_path, extra=""))
    assert sb.precompile_header(tmp_path) == "built"
    compiled = tmp_path / f"{sb.PCH_HEADER}.gch"
    assert compiled.stat().st_size > 0
    header_time = (tmp_path / sb.PCH_HEADER).stat().st_mtime_ns
    assert sb.precompile_header(tmp_path) == "reused"
    assert (tmp_path / sb.PCH_HEADER).stat().st_mtime_ns == header_time  # make sees no change
    (tmp_path / "makefile").write_text(MAKEFILE.format(include=tmp_path, extra="-DOTHER"))
    assert sb.precompile_header(tmp_path) == "built"


def test_a_failed_precompilation_leaves_no_compiled_header(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "makefile").write_text(MAKEFILE.format(include=tmp_path, extra="-fno-such-option-here"))
    (tmp_path / f"{sb.PCH_HEADER}.gch").write_text("stale")
    monkeypatch.setenv("CXX", shutil.which("g++") or "/nonexistent/g++")
    assert sb.precompile_header(tmp_path).startswith("failed")
    assert not (tmp_path / f"{sb.PCH_HEADER}.gch").exists()
    assert (tmp_path / sb.PCH_HEADER).exists()  # the files still compile from its text


def test_project_directories_are_locked_slots_kept_between_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BIOSIM_BRIAN2_CACHE", str(tmp_path / "cache"))
    with sb.project_directory("cpp_standalone") as (first, reused):
        assert not reused and first.parent == tmp_path / "cache"
        (first / "main").write_text("binary")
        with sb.project_directory("cpp_standalone") as (second, _):
            assert second != first  # the first slot is held
    with sb.project_directory("cpp_standalone") as (again, reused):
        assert again == first and reused  # kept, with its build
    with pytest.raises(RuntimeError), sb.project_directory("cpp_standalone") as (failed, _):
        raise RuntimeError("a failed build")
    assert failed == first and not any(failed.iterdir())  # emptied: the next run starts clean
    (first / "main").write_text("binary")
    (first / sb._INCOMPLETE).touch()  # a run that was killed mid-build
    with sb.project_directory("cpp_standalone") as (again, reused):
        assert again == first and not reused and not (again / "main").exists()


def test_cache_off_gives_a_temporary_directory(monkeypatch) -> None:
    monkeypatch.setenv("BIOSIM_BRIAN2_CACHE", "off")
    assert sb.cache_root() is None
    with sb.project_directory("cpp_standalone") as (directory, reused):
        assert directory.is_dir() and not reused
    assert not directory.exists()


@pytest.mark.standalone
def test_precompiled_header_and_reused_directory_change_no_spike(small_params, tmp_path, monkeypatch) -> None:
    test = load_split("smoke").test
    trials = make_trials(test.images[:3], test.labels[:3], small_params, seed=5)
    weights = init_weights(small_params, seed=5).effective()

    def run():
        return run_trials(small_params, weights, trials, backend="cpp_standalone", progress=False)

    monkeypatch.setenv("BIOSIM_BRIAN2_PCH", "0")
    monkeypatch.setenv("BIOSIM_BRIAN2_CACHE", "off")
    plain = run()
    monkeypatch.setenv("BIOSIM_BRIAN2_PCH", "1")
    monkeypatch.setenv("BIOSIM_BRIAN2_CACHE", str(tmp_path / "cache"))
    cold, warm = run(), run()
    assert plain.meta["build"]["precompiled_header"] == "not used"
    assert cold.meta["build"]["precompiled_header"] == "built" and not cold.meta["build"]["reused"]
    assert warm.meta["build"]["precompiled_header"] == "reused" and warm.meta["build"]["reused"]
    assert set(plain.timings_s) >= {"build", "build_codegen", "build_compile", "simulate"}
    for result in (cold, warm):
        for population in ("spikes_e", "spikes_i"):
            a, b = getattr(plain, population), getattr(result, population)
            assert len(a) > 0
            for field in ("trial", "step", "neuron"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        np.testing.assert_array_equal(plain.scores, result.scores)
