"""biosim.standalone_build: the precompiled header and the reused project directories.

The standalone test builds a small network three ways (Brian2's own build,
without the precompiled header and the vector exp, in a temporary directory;
with both in a fresh cache slot; again in the now warm slot) and requires the
same spikes and scores, bit for bit. The cache
builds compile the setup files at ``-O1`` (biosim.mk); the plain one is
Brian2's own build.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
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


FAKE_PROJECT_MAKEFILE = """PROGRAM = main
SRCS = code_objects/neurons_stateupdater_codeobject.cpp \\
    code_objects/syn_synapses_create_array_codeobject.cpp main.cpp objects.cpp
H_SRCS = objects.h
OBJS = ${SRCS:.cpp=.o}
OPTIMISATIONS = -w -O3 -ffast-math -std=c++11
CXXFLAGS = -c $(OPTIMISATIONS) -I.
DEPS = make.deps

all: $(PROGRAM)

$(PROGRAM): $(OBJS) $(DEPS) makefile
\t$(CXX) $(OBJS) -o $(PROGRAM)

make.deps: $(SRCS) $(H_SRCS)
\t$(CXX) $(CXXFLAGS) -MM $(SRCS) > make.deps

%.o : %.cpp makefile
\t$(CXX) $(CXXFLAGS) $< -o $@
"""
"""The shape of the makefile Brian2 2.8 writes for cpp_standalone (its templates/makefile)."""


def _dry_run(directory: Path, arguments: list[str]) -> dict[str, str]:
    """``make -n``: the command that would make each target, by target, in the order make runs them."""
    done = subprocess.run(["make", "-n", *arguments], cwd=directory, capture_output=True, text=True, check=True)
    commands = {}
    for line in done.stdout.splitlines():
        words = line.split()
        if "-o" in words:
            commands[words[words.index("-o") + 1]] = line
        elif "-MM" in line:
            commands["make.deps"] = line
    return commands


def _fake_project(directory: Path) -> list[str]:
    """A project of the shape of FAKE_PROJECT_MAKEFILE with biosim.mk (setup files at -O1); make's arguments."""
    (directory / "makefile").write_text(FAKE_PROJECT_MAKEFILE)
    (directory / "code_objects").mkdir()
    for name in ("objects.h", "main.cpp", "objects.cpp", "code_objects/neurons_stateupdater_codeobject.cpp",
                 "code_objects/syn_synapses_create_array_codeobject.cpp"):  # fmt: skip
        (directory / name).write_text("")
    return sb.write_extra_makefile(directory, setup_at_o1=True)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_extra_makefile_compiles_only_the_setup_files_at_o1(tmp_path: Path) -> None:
    arguments = _fake_project(tmp_path)
    assert arguments == ["-f", "makefile", "-f", sb.EXTRA_MAKEFILE]
    commands = _dry_run(tmp_path, arguments)
    for target in ("main.o", "objects.o", "code_objects/syn_synapses_create_array_codeobject.o"):
        assert " -O1" in commands[target] and "-O3" not in commands[target], commands[target]
        assert "-ffast-math" in commands[target]  # only the level changes
    kernel = commands["code_objects/neurons_stateupdater_codeobject.o"]
    assert "-O3 -ffast-math" in kernel and "-O1" not in kernel  # Brian2's flags, untouched
    # make.deps: -MM over the files outside code_objects/ only (its rules for those never applied).
    assert "main.cpp objects.cpp" in commands["make.deps"] and "code_objects/" not in commands["make.deps"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_extra_makefile_compiles_the_longest_files_first(tmp_path: Path) -> None:
    order = [target for target in _dry_run(tmp_path, _fake_project(tmp_path)) if target != "make.deps"]
    assert order[:2] == ["objects.o", "main.o"], order  # Brian2's order has them last
    assert order[-1] == "main" and len(order) == 5  # then the others, then the link, each once


def test_bare_jobs_flag_becomes_one_job_per_core() -> None:
    from brian2 import prefs

    saved = list(prefs.devices.cpp_standalone.extra_make_args_unix)
    cores = len(os.sched_getaffinity(0))
    try:
        for given, expected in ((["-j"], [f"-j{cores}"]), (["-j8"], ["-j8"]), ([], [])):
            prefs.devices.cpp_standalone.extra_make_args_unix = given
            with sb._make_arguments(["-f", "makefile"]):
                assert prefs.devices.cpp_standalone.extra_make_args_unix == [*expected, "-f", "makefile"]
            assert prefs.devices.cpp_standalone.extra_make_args_unix == given
    finally:
        prefs.devices.cpp_standalone.extra_make_args_unix = saved


def test_extra_makefile_is_rewritten_only_when_it_changes(tmp_path: Path) -> None:
    sb.write_extra_makefile(tmp_path, setup_at_o1=True)
    path = tmp_path / sb.EXTRA_MAKEFILE
    written = path.stat().st_mtime_ns
    sb.write_extra_makefile(tmp_path, setup_at_o1=True)
    assert path.stat().st_mtime_ns == written  # make sees no change, recompiles nothing
    sb.write_extra_makefile(tmp_path, setup_at_o1=False)
    assert "-O1" not in path.read_text() and "$(OBJS): biosim.mk" in path.read_text()  # so all recompile


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
    monkeypatch.setenv("BIOSIM_BRIAN2_VECTOR_EXP", "0")
    monkeypatch.setenv("BIOSIM_BRIAN2_CACHE", "off")
    plain = run()  # Brian2's own build
    monkeypatch.setenv("BIOSIM_BRIAN2_PCH", "1")
    monkeypatch.setenv("BIOSIM_BRIAN2_VECTOR_EXP", "1")
    monkeypatch.setenv("BIOSIM_BRIAN2_CACHE", str(tmp_path / "cache"))
    cold, warm = run(), run()  # with the setup files at -O1 and the short make.deps (biosim.mk)
    assert plain.meta["build"]["precompiled_header"] == "not used" and not plain.meta["build"]["vector_exp"]
    assert cold.meta["build"]["precompiled_header"] == "built" and not cold.meta["build"]["reused"]
    assert warm.meta["build"]["precompiled_header"] == "reused" and warm.meta["build"]["reused"]
    assert warm.meta["build"]["vector_exp"]
    directory = Path(warm.meta["build"]["directory"])
    assert "-O1" in (directory / sb.EXTRA_MAKEFILE).read_text()
    if platform.machine() == "x86_64" and shutil.which("nm"):  # the state update calls the vector exp
        symbols = subprocess.run(
            ["nm", *map(str, directory.glob("code_objects/neurons_e_stateupdater_codeobject*.o"))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert re.search(r"U _ZGV\w+_exp", symbols), symbols
    assert set(plain.timings_s) >= {"build", "build_codegen", "build_compile", "simulate"}
    for result in (cold, warm):
        for population in ("spikes_e", "spikes_i"):
            a, b = getattr(plain, population), getattr(result, population)
            assert len(a) > 0
            for field in ("trial", "step", "neuron"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        np.testing.assert_array_equal(plain.scores, result.scores)
