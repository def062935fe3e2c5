"""Faster ``cpp_standalone`` builds (a precompiled header, reused project directories, light setup files,
the longest files first) and a faster simulation (glibc's vector exp).

Where the 400-trial evaluation of the benchmark goes (full-size network,
Brian2 2.8, g++ 12, ``-O3 -ffast-math -march=native``, the 2-core machine;
``scripts/brian2_timing.py``, which times each phase; the machine's load
moves the wall times by a third):

===============================  =============================================
constructing the network         0.3 to 0.4 s
code generation (``run``)        0.25 to 0.4 s
writing the project              0.2 to 0.3 s (44 C++ files, 9 MB of arrays)
precompiled header               2.1 to 2.6 s, alone (every file waits for it)
``make``                         8.3 to 10 s wall with one job per core and the
                                 longest files first (Brian2's ``-j``: 9.2 to
                                 11.6 s; before :data:`EXTRA_MAKEFILE`: 13 to
                                 14.9 s); the compilers' CPU, header included,
                                 19 to 22 s (before: 29.5 to 31.5 s)
simulation (the binary)          11 to 12 s, one thread (scalar exp: 14 to 21 s)
reading the results back         0.2 to 0.6 s
===============================  =============================================

CPU per translation unit (``-O3``, precompiled header; after the arrow at
``-O1``): ``objects.cpp`` 3.3 -> 1.7 s, the four ``before_run_..._push_spikes``
1.0 -> 0.65 s each, ``main.cpp`` 1.0 -> 0.6 s, the four
``synapses_create_array`` 0.4 s either way, Brian2's ``make.deps`` (``g++ -MM``
over all files in one process) 3.2 s -> 0.5 s (:func:`write_extra_makefile`);
the other 30 files 0.2 to 0.46 s each (mostly instantiating brianlib's
templates), linking 0.1 s. A reused directory in which nothing changed (the
same evaluation again) builds in about 1 s: construction, code generation and
writing; ``make`` finds nothing to do. One that last built the same network
with other weights and digits recompiles ``objects.cpp``, ``main.cpp``, the
synapse creation and ``make.deps``: 3.4 to 4.2 s (before: 9.2 to 10.2 s). A
cold build is now 12 to 14 s (before: 16.5 to 18.6 s). Four things make the
build faster, and none changes a bit of the simulation:

1. **A precompiled header** (:data:`PCH_HEADER`). The standard headers the
   generated code includes are compiled once per project into
   ``biosim_pch.h.gch``, with the project's own flags (read from the makefile
   Brian2 wrote), and every file is compiled with ``-include biosim_pch.h``.
   A file then takes about a quarter of the time. The machine code of every
   file that computes anything is the same as without it (checked with
   ``objdump`` on all 44 files: only ``objects.cpp``'s ``_write_arrays``, which
   writes the results to disk, has its registers allocated differently, and
   the empty ``synapses_classes.cpp`` gains a static initialiser). If the
   header cannot be precompiled, or the build fails with it, the build is
   done again without it. ``BIOSIM_BRIAN2_PCH=0`` switches it off.
2. **Reused project directories.** Brian2 writes only the files whose
   content changed, and ``make`` then compiles only those. Between two
   evaluations of the same network structure (other weights, other digits,
   other seeds) only ``objects.cpp``, ``main.cpp`` and the code creating the
   input synapses change, since the array sizes are written into them: 3 of
   44 files. :func:`project_directory` hands out directories under
   ``$BIOSIM_BRIAN2_CACHE`` (default ``~/.cache/biosim/brian2``), one per
   backend, CPU and slot; a slot is locked (``flock``) while a run uses it,
   so parallel runs (protocol workers) take different slots. A directory
   whose last build did not finish is emptied first. ``BIOSIM_BRIAN2_CACHE=off``
   gives a temporary directory per run, removed afterwards.
3. **Light setup files** (:data:`EXTRA_MAKEFILE`, read by ``make`` after
   Brian2's makefile). The files that only set the simulation up
   (:data:`SETUP_OBJECTS`) are compiled at ``-O1``; the numerical kernels keep
   Brian2's flags. Of the weak (inline, template) functions the ``-O1`` files
   share with the others, the linker may take the ``-O1`` copy: in this
   network those are two of ``std::vector<int>``'s (``_M_default_append``,
   ``_M_realloc_insert``: growing a vector of indices), neither of which
   computes with a state variable (``nm`` on all 44 objects). And
   ``make.deps`` is made from the 5 files whose rules apply. The 400 trials
   give the same spikes and scores as before, bit for bit, and as the fused
   engine's float64 forward pass. ``BIOSIM_BRIAN2_SETUP_O1=0`` keeps Brian2's
   flags for all files.
4. **The longest files first, one job per core** (:data:`FIRST_OBJECTS`,
   :func:`_make_arguments`): Brian2's bare ``-j`` started all 44 compilers
   at once, and ``objects.cpp``, listed last, then ran alone at the end.

One thing changes the arithmetic, not the build: :func:`write_vector_math_header`
declares glibc's vector ``exp``, so that GCC vectorises the state updates
(with the refractory rule of :data:`biosim.equations.REFRACTORY`, which
needs no double-to-int64 conversion). The same spikes, and equal to the
mirror's; the simulation about 40 % shorter.

``prefs.devices.cpp_standalone.openmp_threads = 2`` keeps every spike of the
400 trials (the same spikes and scores as one thread, and as the mirror),
but the simulation was slower, not faster: 30 to 50 s in four runs, against
14 to 21 s with one thread (800,000 steps, each with several parallel regions
to join); two processes (:mod:`biosim.split_run`) are the way to use the
second core.

Brian2 2.8 can also change initial values without recompiling
(``device.run(run_args=...)``), but only in the process that built the
project, and only values of arrays whose sizes stay the same; an evaluation
here is one process per run, and the sizes change with the weights' zeros
and the number of input spikes, so the reused directory is what applies.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .environment import check_variable, switch

__all__ = [
    "EXTRA_MAKEFILE",
    "FIRST_OBJECTS",
    "PCH_HEADER",
    "SETUP_OBJECTS",
    "VECTOR_MATH_HEADER",
    "BuildReport",
    "build_project",
    "cache_root",
    "precompile_header",
    "project_directory",
    "split_parts",
    "write_extra_makefile",
    "write_vector_math_header",
]

PCH_HEADER = "biosim_pch.h"
"""Name of the precompiled header in a cpp_standalone project (``PCH_HEADER + ".gch"`` is the compiled one)."""

PCH_STD_HEADERS = (
    "algorithm", "cassert", "climits", "cmath", "cstdlib", "ctime", "fstream", "iostream",
    "iterator", "limits", "map", "random", "set", "string", "tuple", "utility", "vector",
)  # fmt: skip
"""The C++ standard headers Brian2's cpp_standalone templates include; only these go into the header.

Project headers stay out: they change from build to build, and a stale
precompiled copy would not be noticed by ``make``.
"""

VECTOR_MATH_HEADER = "biosim_vector_math.h"
"""Included in every file of a cpp_standalone project after :data:`PCH_HEADER` (:func:`write_vector_math_header`)."""

_VECTOR_MATH_TEXT = """\
// Written by biosim (biosim/standalone_build.py): glibc's vector exp (libmvec) for the loops GCC vectorises.
// glibc's <math.h> declares it only with -ffinite-math-only, which Brian2's -fno-finite-math-only turns off.
#include <cmath>
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__)
extern "C" double exp(double) __attribute__((__simd__("notinbranch")));
#endif
"""

MIN_TRIALS_PER_PROCESS = 50
"""Fewer trials per process than this are not worth a process of their own (start-up, a copy of the build)."""

EXTRA_MAKEFILE = "biosim.mk"
"""Read by ``make`` after Brian2's makefile (:func:`write_extra_makefile`): per-file flags, a short ``make.deps``."""

SETUP_OBJECTS = (
    "objects.o",
    "main.o",
    "code_objects/before_run_%_push_spikes.o",
    "code_objects/%_synapses_create_array_codeobject.o",
)
"""The translation units compiled at ``-O1`` (make patterns): they set the simulation up and compute nothing.

``objects.cpp`` defines the arrays and reads and writes them from and to
disk, ``main.cpp`` calls the code objects in order and copies the initial
values in, the ``synapses_create_array`` code copies the given indices, and the
``before_run_..._push_spikes`` code sorts the synapses into the spike queue
(delays are 0 here). None of them adds or multiplies a state variable; the
numerical kernels keep Brian2's flags and so their machine code.
"""

FIRST_OBJECTS = ("objects.o", "main.o", "code_objects/before_run_%_push_spikes.o")
"""Compiled before the others, in this order (make patterns): the longest translation units, 0.55 to 2 s of CPU each."""

_STAMP = "biosim_pch.stamp"
_INCOMPLETE = ".biosim-build-incomplete"
_MAX_SLOTS = 16


@dataclass
class BuildReport:
    """What :func:`build_project` did, with its phases' wall times (seconds)."""

    write_s: float = 0.0
    """``device.build(compile=False)``: writing the project (sources, static arrays, makefile)."""
    pch_s: float = 0.0
    make_s: float = 0.0
    pch: str = "not used"
    """``built``, ``reused`` (same compiler, flags and header as last time), ``not used`` or ``failed: ...``."""
    vector_exp: bool = False
    """Whether the project was compiled with :data:`VECTOR_MATH_HEADER` (``$BIOSIM_BRIAN2_VECTOR_EXP``)."""
    notes: list[str] = field(default_factory=list)


# --- the precompiled header -------------------------------------------------------------


def _write_if_changed(path: Path, text: str) -> None:
    """``path`` holds ``text`` afterwards; rewritten only when it changes, since ``make`` looks at times."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _switched_on(variable: str) -> bool:
    """An on/off environment variable of this module (:func:`biosim.environment.switch`: a typo is refused)."""
    return switch(variable)


def _make_variables(makefile: Path) -> dict[str, str]:
    variables = {}
    for line in makefile.read_text().splitlines():
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", line)
        if match:
            variables[match.group(1)] = match.group(2).strip()
    return variables


def _compile_flags(makefile: Path) -> list[str]:
    """``CXXFLAGS`` of a Brian2 makefile, expanded, without ``-c`` and without the ``-include`` of the header."""
    variables = _make_variables(makefile)
    flags = variables.get("CXXFLAGS", "")
    for _ in range(10):  # $(OPTIMISATIONS) and the like
        expanded = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), ""), flags)
        if expanded == flags:
            break
        flags = expanded
    tokens = shlex.split(flags)
    kept: list[str] = []
    skip = False
    for token in tokens:
        if skip:
            skip = False
            continue
        if token == "-include":
            skip = True
            continue
        if token != "-c":
            kept.append(token)
    return kept


def _compiler() -> str:
    return os.environ.get("CXX") or "g++"  # what make's $(CXX) is


def precompile_header(directory: str | Path, *, timeout_s: float = 300.0) -> str:
    """Write :data:`PCH_HEADER` into the project ``directory`` and compile it with the makefile's flags.

    Returns ``"built"``, ``"reused"`` (the compiled header of the last build
    has the same compiler, flags and content) or ``"failed: ..."``; after a
    failure no compiled header is left, and the files compile from the
    header's text (correct, only slower).
    """
    directory = Path(directory)
    header = directory / PCH_HEADER
    text = "// Precompiled by biosim (biosim/standalone_build.py): the standard headers Brian2's code includes.\n"
    text += "".join(f"#include <{name}>\n" for name in PCH_STD_HEADERS)
    _write_if_changed(header, text)
    compiled = directory / f"{PCH_HEADER}.gch"
    compiler = _compiler()
    flags = _compile_flags(directory / "makefile")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as error:
        compiled.unlink(missing_ok=True)
        return f"failed: {compiler} --version: {error}"
    stamp = hashlib.sha256("\n".join([compiler, version, *flags, text]).encode()).hexdigest()
    stamp_file = directory / _STAMP
    if compiled.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return "reused"
    stamp_file.unlink(missing_ok=True)
    command = [compiler, *flags, "-x", "c++-header", PCH_HEADER, "-o", compiled.name]
    try:
        done = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as error:
        compiled.unlink(missing_ok=True)
        return f"failed: {error}"
    if done.returncode != 0 or not compiled.exists():
        compiled.unlink(missing_ok=True)
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return f"failed: exit status {done.returncode}: {' / '.join(tail)}"
    stamp_file.write_text(stamp)
    return "built"


# --- the vector exp ------------------------------------------------------------------------


def write_vector_math_header(directory: str | Path) -> None:
    """Write :data:`VECTOR_MATH_HEADER` into the project ``directory`` (only if it changes).

    Unlike the rest of this module, this changes arithmetic: the membrane's
    ``exp`` in the state updates (the one loop per population and step that
    is not event-driven) becomes libmvec's, four neurons per call (AVX2), and
    GCC vectorises the whole update (it cannot vectorise a loop around a
    scalar call). libmvec's exp is within 4 ulp, glibc's scalar one within 1;
    neither is the mirror's (torch's), and the spike identity with the mirror
    is what is checked: the 400 trials of the benchmark gave the same spikes,
    bit for bit, with either, and the simulation took 6.4 to 6.9 s instead of
    11.2 to 12.7 s (two processes, 200 trials each). ``BIOSIM_BRIAN2_VECTOR_EXP=0``
    restores glibc's scalar exp.
    """
    _write_if_changed(Path(directory) / VECTOR_MATH_HEADER, _VECTOR_MATH_TEXT)


# --- the extra makefile --------------------------------------------------------------------


def write_extra_makefile(directory: str | Path, *, setup_at_o1: bool | None = None) -> list[str]:
    """Write :data:`EXTRA_MAKEFILE` into ``directory`` (only if it changes); the ``make`` arguments that read it.

    It does two things; neither changes the machine code of a numerical kernel:

    * :data:`SETUP_OBJECTS` are compiled at ``-O1`` instead of Brian2's level
      (unless ``setup_at_o1`` is false, default ``$BIOSIM_BRIAN2_SETUP_O1``,
      on). ``-O1`` keeps ``__OPTIMIZE__`` defined, so the precompiled header
      stays valid (at ``-O0`` GCC would silently ignore it). Every object
      depends on this file, so a change of flags recompiles them all.
    * ``make.deps`` is made from the files outside ``code_objects/`` only.
      Brian2's rule runs ``g++ -MM`` over all 44 sources in one process (2 to
      3 s of CPU, before anything else whenever a source changed), but
      ``-MM`` names each rule after the file's base name (``X.o``, not
      ``code_objects/X.o``), so the rules of the code objects never apply;
      dropping them changes nothing that ``make`` rebuilds.
    * The longest files (:data:`FIRST_OBJECTS`) are compiled first. With one
      job per core (:func:`_make_arguments`) the cores then finish together;
      ``objects.cpp`` alone is a tenth of the compilers' CPU, and started
      last, it ran alone at the end. A cold ``make`` took 8.3 to 9.1 s
      instead of 9.4 to 10.8 s (``-j``, Brian2's order; three rounds each).
    """
    directory = Path(directory)
    setup_at_o1 = _switched_on("BIOSIM_BRIAN2_SETUP_O1") if setup_at_o1 is None else setup_at_o1
    lines = [
        "# Written by biosim (biosim/standalone_build.py); read after Brian2's makefile.",
        f"$(OBJS): {EXTRA_MAKEFILE}",
        "make.deps: $(SRCS) $(H_SRCS)",
        "\t$(CXX) $(CXXFLAGS) -MM $(filter-out code_objects/%,$(SRCS)) > make.deps",
        ".DEFAULT_GOAL := biosim_all",
        ".PHONY: biosim_all",
        "biosim_all: " + " ".join(f"$(filter {pattern},$(OBJS))" for pattern in FIRST_OBJECTS) + " $(PROGRAM)",
    ]
    if setup_at_o1:
        lines += [
            f"BIOSIM_SETUP_OBJS := $(filter {' '.join(SETUP_OBJECTS)},$(OBJS))",
            "$(BIOSIM_SETUP_OBJS): OPTIMISATIONS := $(filter-out -O%,$(OPTIMISATIONS)) -O1",
        ]
    text = "\n".join(lines) + "\n"
    _write_if_changed(directory / EXTRA_MAKEFILE, text)
    return ["-f", "makefile", "-f", EXTRA_MAKEFILE]


@contextmanager
def _make_arguments(extra: list[str]) -> Iterator[None]:
    """Brian2's ``make`` call with ``extra`` arguments, for one compilation.

    Brian2's bare ``-j`` (no limit: all 44 compilers at once) becomes one job
    per core the process may use; a ``-jN`` set in the preferences is kept.
    """
    from brian2 import prefs

    previous = list(prefs.devices.cpp_standalone.extra_make_args_unix)
    jobs = f"-j{len(os.sched_getaffinity(0))}"
    prefs.devices.cpp_standalone.extra_make_args_unix = [jobs if a == "-j" else a for a in previous] + extra
    try:
        yield
    finally:
        prefs.devices.cpp_standalone.extra_make_args_unix = previous


def build_project(
    backend: str, directory: str | Path, *, before_compile: Callable[[Path], None] | None = None
) -> BuildReport:
    """Write and compile the active standalone device's project into ``directory`` (no run).

    For ``cpp_standalone`` with g++: with the precompiled header (unless
    ``BIOSIM_BRIAN2_PCH=0``) and the vector exp (unless
    ``BIOSIM_BRIAN2_VECTOR_EXP=0``); any other backend or compiler is built
    exactly as ``device.build(compile=True, run=False)`` does.
    ``before_compile(directory)`` runs between writing and compiling (for
    another backend or compiler: before both).
    """
    import brian2 as b2
    from brian2.codegen.cpp_prefs import get_compiler_and_args

    directory = Path(directory)
    device = b2.get_device()
    report = BuildReport()
    compiler = get_compiler_and_args()[0]
    gcc = backend == "cpp_standalone" and compiler in ("gcc", "unix")
    pch = gcc and _switched_on("BIOSIM_BRIAN2_PCH")
    report.vector_exp = gcc and _switched_on("BIOSIM_BRIAN2_VECTOR_EXP")
    headers = [PCH_HEADER] * pch + [VECTOR_MATH_HEADER] * report.vector_exp  # the precompiled one first
    for header in headers:
        if header not in device.extra_compile_args:
            device.extra_compile_args = [*device.extra_compile_args, "-include", header]
    if report.vector_exp:
        directory.mkdir(parents=True, exist_ok=True)
        write_vector_math_header(directory)
    if not gcc:
        if before_compile is not None:
            before_compile(directory)
        start = time.perf_counter()
        device.build(directory=str(directory), compile=True, run=False, with_output=False)
        report.make_s = device.timers["compile"]["make"] or 0.0
        report.write_s = time.perf_counter() - start - report.make_s
        return report

    start = time.perf_counter()
    device.build(directory=str(directory), compile=False, run=False, with_output=False)
    report.write_s = time.perf_counter() - start
    if before_compile is not None:
        before_compile(directory)
    if not pch:
        device.compile_source(str(directory), compiler, False, False)
        report.make_s = device.timers["compile"]["make"] or 0.0
        return report
    start = time.perf_counter()
    report.pch = precompile_header(directory)
    report.pch_s = time.perf_counter() - start
    try:
        with _make_arguments(write_extra_makefile(directory)):
            device.compile_source(str(directory), compiler, False, False)
    except RuntimeError as error:
        # Not expected; but a build must not fail for the sake of speed. Once more from scratch, with an
        # empty header (the makefile's -include then adds nothing): if that fails too, the error is real.
        report.notes.append(f"the build with the precompiled header failed ({error}); built again without it")
        report.pch = "failed: the build with it failed"
        (directory / f"{PCH_HEADER}.gch").unlink(missing_ok=True)
        (directory / _STAMP).unlink(missing_ok=True)
        (directory / EXTRA_MAKEFILE).unlink(missing_ok=True)  # the next build writes it anew: all is recompiled
        (directory / PCH_HEADER).write_text("// left empty: the build with the standard headers precompiled failed\n")
        device.compile_source(str(directory), compiler, False, True)
    report.make_s = device.timers["compile"]["make"] or 0.0
    return report


# --- reused project directories ------------------------------------------------------------


def cache_root() -> Path | None:
    """Where project directories are kept (``$BIOSIM_BRIAN2_CACHE``); ``None``: temporary ones."""
    # A set value that cannot be used is refused: falling back to temporary projects would silently make
    # every evaluation a cold build.
    value = check_variable("BIOSIM_BRIAN2_CACHE")
    if value is not None and value.strip().lower() in ("", "0", "off", "no", "none", "false"):
        return None
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "biosim" / "brian2"


def _machine_key() -> str:
    """The CPU (``-march=native`` binaries run only where they were built), as a short hash."""
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                cpu += line
                if line.startswith("flags"):
                    break
    except OSError:
        pass
    return hashlib.sha1(cpu.encode()).hexdigest()[:10]


def _empty(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)


@contextmanager
def project_directory(backend: str) -> Iterator[tuple[Path, bool]]:
    """A project directory for one standalone run: ``(path, reused)``.

    ``reused`` says whether the directory holds an earlier, finished build
    (so that ``make`` can skip files). The directory is locked while the
    context is open; a failed run empties it, so the next run starts clean.
    Without a usable cache (:func:`cache_root` is ``None``, or it cannot be
    written, or all slots are busy) it is a temporary directory, removed
    afterwards.
    """
    root = cache_root()
    if root is not None:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError:
            root = None
    if root is not None:
        key = _machine_key()
        for slot in range(_MAX_SLOTS):
            directory = root / f"{backend}-{key}-{slot}"
            try:
                lock = open(root / f"{directory.name}.lock", "a")  # noqa: SIM115  (held across the yield)
            except OSError:
                break
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                continue  # another run holds this slot
            try:
                marker = directory / _INCOMPLETE
                if marker.exists():
                    _empty(directory)  # the last build there was interrupted: its files cannot be trusted
                directory.mkdir(parents=True, exist_ok=True)
                reused = (directory / "main").exists()
                marker.touch()
                try:
                    yield directory, reused
                except BaseException:
                    _empty(directory)
                    raise
                marker.unlink(missing_ok=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
                lock.close()
            return
    directory = Path(tempfile.mkdtemp(prefix=f"biosim-{backend}-"))
    try:
        yield directory, False
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- how many processes ------------------------------------------------------------------


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def split_parts(backend: str, build_dir: object, n_trials: int, processes: int | str | None) -> int:
    """In how many processes ``run_trials`` simulates ``n_trials`` (1: in this one, as before).

    Only ``cpp_standalone`` without an explicit ``build_dir`` is split.
    ``processes`` (or, when it is ``None``, ``$BIOSIM_BRIAN2_PROCESSES``) is a
    number or ``"auto"`` (the CPUs this process may use); unset means 1: on
    the project's 2-core machine, busy with other work, two processes were no
    faster than one (docs/performance.md). Either way there are at most
    ``n_trials // MIN_TRIALS_PER_PROCESS`` processes (and at least 1).
    """
    if backend != "cpp_standalone" or build_dir is not None:
        return 1
    source = "processes"
    if processes is None:
        processes, source = os.environ.get("BIOSIM_BRIAN2_PROCESSES", "").strip() or 1, "BIOSIM_BRIAN2_PROCESSES"
    if isinstance(processes, str):
        if processes.lower() == "auto":
            processes = _usable_cpus()
        else:
            try:
                processes = int(processes)
            except ValueError:
                raise ValueError(f"{source} must be a positive integer or 'auto', got {processes!r}") from None
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"{source} must be a positive integer or 'auto', got {processes!r}")
    return max(1, min(processes, n_trials // MIN_TRIALS_PER_PROCESS))
