"""Run a multi-trial simulation on one of Brian2's backends.

====================  ==================================================
backend               what runs
====================  ==================================================
``numpy``             Brian2 runtime, numpy code generation (no compiler)
``cython``            Brian2 runtime, Cython (compiles each new model once)
``cpp_standalone``    one C++ program for all trials (one build)
``cuda_standalone``   brian2cuda: one CUDA program for all trials
====================  ==================================================

The backend is chosen in one place, :func:`run_trials`; every backend runs
the same network (:func:`biosim.network.build_network`, or with
``layout="copies"`` the trials as copies of it, :mod:`biosim.copies`) and
returns the same :class:`~biosim.results.SimulationResult`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .copies import build_copies_network, check_layout, collect_copies
from .inputs import TrialSet
from .network import build_network
from .params import NetworkParams
from .results import SimulationResult, SpikeTrains
from .standalone_build import build_project, project_directory, split_parts
from .weights import NetworkWeights

__all__ = ["BACKENDS", "CUDA_COMPILE_CHECK", "BackendError", "run_trials", "check_backend"]

RUNTIME_BACKENDS = ("numpy", "cython")
STANDALONE_BACKENDS = ("cpp_standalone", "cuda_standalone")
BACKENDS = RUNTIME_BACKENDS + STANDALONE_BACKENDS


class BackendError(ValueError):
    """Unknown or unavailable backend."""


CUDA_COMPILE_CHECK = "bash scripts/test.sh -m cuda_compile"
"""The compile-only check of ``cuda_standalone`` (nvcc, no GPU needed; tests/test_cuda_compile.py)."""


def _gpu_visible() -> bool:
    from .cuda_toolchain import _gpu_visible as visible

    return visible()


def check_backend(backend: str) -> str:
    """``backend`` if it is known and can run here; a :class:`BackendError` that says why not otherwise.

    ``cuda_standalone`` needs a visible NVIDIA GPU (``nvidia-smi -L``) to run:
    without one it fails here, before minutes of nvcc compilation. Compiling
    alone, without a GPU, is the separate check :data:`CUDA_COMPILE_CHECK`.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend == "cuda_standalone" and not _gpu_visible():
        raise BackendError(
            "backend 'cuda_standalone' runs on an NVIDIA GPU, and none is visible here (nvidia-smi lists none); "
            f"run it on a GPU machine (README, 'GPU install'), or, to check only that the network compiles for "
            f"CUDA without a GPU, run `{CUDA_COMPILE_CHECK}` (tests/test_cuda_compile.py)"
        )
    return backend


@contextmanager
def _device(backend: str, build_dir: Path) -> Iterator[None]:
    """Activate ``backend`` for one run and always restore a clean runtime device."""
    import brian2 as b2

    if backend in RUNTIME_BACKENDS:
        b2.set_device("runtime")
        b2.prefs.codegen.target = backend
    elif backend == "cpp_standalone":
        b2.set_device("cpp_standalone", directory=str(build_dir), build_on_run=False)
    else:
        try:
            import brian2cuda  # noqa: F401  (registers the cuda_standalone device)
        except ImportError as error:
            raise BackendError("backend 'cuda_standalone' needs brian2cuda; see README, 'GPU install'") from error
        from .cuda_toolchain import configure_cuda_standalone

        b2.set_device("cuda_standalone", directory=str(build_dir), build_on_run=False)
        configure_cuda_standalone()
    try:
        yield
    finally:
        # A standalone device holds the whole project in memory; reinit so a
        # later run in the same process starts from scratch.
        b2.device.reinit()
        b2.set_device("runtime")
        b2.device.reinit()
        b2.device.activate()


def _report_to_stderr(elapsed, completed, start, duration) -> None:  # pragma: no cover - cosmetic
    print(f"\rsimulated {float(completed) * 100:5.1f} % in {float(elapsed):.0f} s", end="", file=sys.stderr)


def run_trials(
    params: NetworkParams,
    weights: NetworkWeights,
    trials: TrialSet,
    *,
    backend: str = "cpp_standalone",
    build_dir: str | Path | None = None,
    record_v: dict[str, np.ndarray] | None = None,
    record_readout: bool = False,
    progress: bool = True,
    processes: int | str | None = None,
    layout: str = "sequential",
    max_copies: int | None = None,
) -> SimulationResult:
    """Simulate all ``trials`` in Brian2 on ``backend``.

    Parameters
    ----------
    params : NetworkParams
    weights : NetworkWeights
        Effective weights (use ``weights.effective()`` on trained weights).
    trials : TrialSet
    backend : str
        One of :data:`BACKENDS`.
    build_dir : path, optional
        Project directory of standalone backends. Reusing a directory lets
        the compiler skip unchanged files. Default: a slot of the project
        cache (:func:`biosim.standalone_build.project_directory`, locked while
        in use, kept for the next run; ``BIOSIM_BRIAN2_CACHE=off``: a
        temporary directory, removed afterwards).
    record_v : dict, optional
        Neurons whose membrane potential is recorded, see :func:`build_network`.
    record_readout : bool
        Record the readout potentials after every step: ``traces["readout"]``
        of shape (n_trials, n_steps, n_classes) (digit streams, :mod:`biosim.streams`).
    progress : bool
        Report simulation progress on stderr.
    processes : int or "auto", optional
        ``cpp_standalone`` without ``build_dir``: simulate the trials in this
        many processes at once, one build shared by all
        (:mod:`biosim.split_run`; the same spikes bit for bit), at most one
        per 50 trials; ``"auto"``: the CPUs this process may use. Default:
        ``$BIOSIM_BRIAN2_PROCESSES``, else 1
        (:func:`biosim.standalone_build.split_parts`).
    layout : str
        ``"sequential"``: the trials back to back in one network;
        ``"copies"``: the trials at once, as copies of the network
        (:mod:`biosim.copies`; the same spikes bit for bit).
    max_copies : int, optional
        ``"copies"`` layout: at most this many copies per Brian2 run (bounds
        memory); the trials run in consecutive chunks, each a run of its own in
        the same project directory. Default: all trials in one run.

    Returns
    -------
    SimulationResult
        ``timings_s`` holds ``build`` (network construction, code generation
        and compilation) and ``simulate``; standalone runs split ``build`` into
        ``build_codegen`` (construction, code generation, writing the project)
        and ``build_compile`` (precompiled header and make), and ``meta["build"]``
        says where it was built, whether the directory held an earlier build
        and what became of the precompiled header.

    Raises
    ------
    BackendError
        Unknown backend (the message lists the valid ones), ``cuda_standalone``
        without a GPU (before anything is built) or missing brian2cuda.
    WeightShapeError, DaleLawError
        Bad weights, before anything is built.
    """
    check_backend(backend)
    check_layout(layout)
    weights.check_shapes(params)
    weights.check_dale()
    if layout == "copies":
        return _run_copies(
            params, weights, trials, backend=backend, build_dir=build_dir, record_v=record_v,
            record_readout=record_readout, progress=progress, processes=processes, max_copies=max_copies,
        )  # fmt: skip
    if max_copies is not None:
        raise ValueError(f"max_copies={max_copies} applies to layout 'copies' only, not {layout!r}")
    parts = split_parts(backend, build_dir, trials.n_trials, processes)
    if parts > 1:
        from .split_run import run_split

        return run_split(
            params,
            weights,
            trials,
            parts=parts,
            simulate=_simulate,
            record_v=record_v,
            record_readout=record_readout,
            progress=progress,
        )
    with _project_directory(backend, build_dir) as (build_path, reused):
        return _simulate(
            backend, build_path, reused, params, weights, trials,
            record_v=record_v, record_readout=record_readout, progress=progress,
        )  # fmt: skip


def _run_copies(
    params: NetworkParams,
    weights: NetworkWeights,
    trials: TrialSet,
    *,
    backend: str,
    build_dir: str | Path | None,
    record_v: dict[str, np.ndarray] | None,
    record_readout: bool,
    progress: bool,
    processes: int | str | None,
    max_copies: int | None,
) -> SimulationResult:
    """The ``copies`` layout: chunks of at most ``max_copies`` trials, each one run of as many copies."""
    from .split_run import join_parts

    if processes not in (None, 1):
        raise ValueError(f"processes={processes!r}: the 'copies' layout runs in one process; leave processes unset")
    if max_copies is not None and (isinstance(max_copies, bool) or not isinstance(max_copies, int) or max_copies < 1):
        raise ValueError(f"max_copies must be a positive integer, got {max_copies!r}")
    size = trials.n_trials if max_copies is None else max_copies
    chunks = [np.arange(start, min(start + size, trials.n_trials)) for start in range(0, trials.n_trials, size)]
    pieces = []
    timings: dict[str, float] = {}
    with _project_directory(backend, build_dir) as (build_path, reused):
        for number, chunk in enumerate(chunks):
            result = _simulate(
                backend, build_path, reused or number > 0, params, weights, trials.subset(chunk),
                record_v=record_v, record_readout=record_readout, progress=progress, layout="copies",
            )  # fmt: skip
            for key, value in result.timings_s.items():
                timings[key] = timings.get(key, 0.0) + value
            pieces.append((chunk, result))
    if len(pieces) == 1:
        joined = pieces[0][1]
    else:
        joined = join_parts(params, pieces, trials.n_trials)
        joined.meta = dict(pieces[0][1].meta)
    joined.timings_s = timings
    joined.meta["trial_layout"] = {"layout": "copies", "copies_per_run": [len(chunk) for chunk in chunks]}
    return joined


def _simulate(
    backend: str,
    build_path: Path,
    reused: bool,
    params: NetworkParams,
    weights: NetworkWeights,
    trials: TrialSet,
    *,
    record_v: dict[str, np.ndarray] | None,
    record_readout: bool,
    progress: bool,
    before_compile: Callable[[Path], None] | None = None,
    after_build: Callable[[], None] | None = None,
    layout: str = "sequential",
) -> SimulationResult:
    """One Brian2 run of ``trials`` in ``build_path``.

    A standalone build calls ``before_compile(build_path)`` once the project is written (see
    :func:`~biosim.standalone_build.build_project`) and ``after_build()`` once it is compiled.
    """
    import brian2 as b2

    timings: dict[str, float] = {}
    build_info: dict[str, object] = {}
    with _device(backend, build_path):
        t0 = time.perf_counter()
        build = build_copies_network if layout == "copies" else build_network
        built = build(params, weights, trials, record_v=record_v, record_readout=record_readout)
        if backend in STANDALONE_BACKENDS:
            # No Brian2 report here: with one, the standalone binary reads a CPU-time clock before
            # every object on every step (Brian2 2.8), which doubled a 400-trial run (12 s -> 26 s).
            if progress:
                print(f"building the {backend} project ...", end="", file=sys.stderr, flush=True)
            built.network.run(built.duration)
            t_codegen = time.perf_counter()
            # cpp_standalone: precompiled standard headers (no bit of the simulation changes) and the vector
            # exp (the state updates' exp is libmvec's; see biosim.standalone_build).
            report = build_project(backend, build_path, before_compile=before_compile)
            timings["build"] = time.perf_counter() - t0
            timings["build_codegen"] = t_codegen - t0 + report.write_s
            timings["build_compile"] = report.pch_s + report.make_s
            build_info = {
                "directory": str(build_path),
                "reused": reused,
                "precompiled_header": report.pch,
                "vector_exp": report.vector_exp,
            }
            if report.notes:
                build_info["notes"] = report.notes
            if after_build is not None:
                after_build()
            if progress:
                print(f" {timings['build']:.1f} s", file=sys.stderr)
                print(f"simulating {trials.n_trials} trials ...", end="", file=sys.stderr, flush=True)
            t1 = time.perf_counter()
            b2.device.run(directory=str(build_path), with_output=False)
            timings["simulate"] = time.perf_counter() - t1
            if progress:
                print(f" {timings['simulate']:.1f} s", file=sys.stderr)
        else:
            timings["build"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            report = _report_to_stderr if progress else None
            built.network.run(built.duration, report=report, report_period=10 * b2.second)
            timings["simulate"] = time.perf_counter() - t1
            if progress:
                print(file=sys.stderr)
        collect = collect_copies if layout == "copies" else _collect
        result = collect(params, trials, built.monitors, backend)
    result.timings_s = timings
    if build_info:
        result.meta["build"] = build_info
    return result


@contextmanager
def _project_directory(backend: str, build_dir: str | Path | None) -> Iterator[tuple[Path, bool]]:
    """``(directory, reused)`` of one run: ``build_dir``, a reused cache slot (standalone), or a temporary one."""
    if build_dir is not None:
        yield Path(build_dir), (Path(build_dir) / "main").exists()
    elif backend in STANDALONE_BACKENDS:
        with project_directory(backend) as slot:
            yield slot
    else:
        path = Path(tempfile.mkdtemp(prefix=f"biosim-{backend}-"))
        try:
            yield path, False
        finally:
            shutil.rmtree(path, ignore_errors=True)


def _spike_trains(monitor, n_neurons: int, n_trials: int, n_steps: int, dt_s: float) -> SpikeTrains:
    global_step = np.round(np.asarray(monitor.t_) / dt_s).astype(np.int64)
    neuron = np.asarray(monitor.i, dtype=np.int64)
    keep = global_step < n_trials * n_steps  # drop the extra boundary step
    global_step, neuron = global_step[keep], neuron[keep]
    return SpikeTrains.from_arrays(
        global_step // n_steps, global_step % n_steps, neuron, n_neurons=n_neurons, n_trials=n_trials, n_steps=n_steps
    )


def _collect(params: NetworkParams, trials: TrialSet, monitors, backend: str) -> SimulationResult:
    c, sim = params.connectivity, params.simulation
    dt_s = sim.dt_ms * 1e-3
    n_trials, n_steps = trials.n_trials, sim.n_steps
    # Sample k is taken at the start of trial k, i.e. the end of trial k - 1.
    scores = monitors["scores"]
    order = np.lexsort((np.asarray(scores.i), np.asarray(scores.t_)))
    score_sum = np.asarray(scores.score_sum)[order].reshape(n_trials + 1, -1)[1:]
    traces = {}
    for key in ("v_e", "v_i"):
        if key in monitors:
            v = np.asarray(monitors[key].v_).T[: n_trials * n_steps] * 1e3  # mV
            traces[key] = v.reshape(n_trials, n_steps, -1)
    if "readout" in monitors:  # dimensionless; the extra boundary step dropped
        u = np.asarray(monitors["readout"].u).T[: n_trials * n_steps]
        traces["readout"] = u.reshape(n_trials, n_steps, c.n_classes)
    return SimulationResult(
        spikes_e=_spike_trains(monitors["spikes_e"], c.n_e, n_trials, n_steps, dt_s),
        spikes_i=_spike_trains(monitors["spikes_i"], c.n_i, n_trials, n_steps, dt_s),
        scores=score_sum / n_steps,
        dt_ms=sim.dt_ms,
        simulator=f"brian2:{backend}",
        traces=traces,
    )
