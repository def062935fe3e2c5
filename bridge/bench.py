"""Benchmarks: fused engine versus a plain eager autograd loop, and Brian2's evaluation speed.

:func:`run_benchmark` measures, in one process and one run, side by side:

(a) training throughput (sample-steps per second, forward + backward through
    all steps, after a warm-up) of :func:`bridge.fast_engine.run_network_fused`
    and of the eager engine :func:`bridge.eager.run_network`, the network
    written the way a snnTorch or Norse user would write it: the step
    function of :mod:`bridge.dynamics` with dense matrix products for the
    input and the recurrent spikes, a surrogate spike function, and autograd
    recording every step. Full size (1024 E, 256 I, 784 inputs, T = 2000),
    batch 32 on CPU and 256 on CUDA. Both run with 1 and with
    ``torch.get_num_threads()`` threads, their timed repetitions alternate
    (so that a change in machine load hits both), and each engine is scored
    by its fastest repetition: on a machine shared with other processes, a
    2-thread fork/join per operation can make either engine several times
    slower, and the minimum is the least disturbed measurement;
(b) peak memory of one BPTT batch of each. On CPU each is measured in a fresh
    subprocess: after setup (imports, weights, inputs, a short warm-up) the
    kernel's peak-RSS counter is reset (``/proc/self/clear_refs``), and the
    peak (``VmHWM``) after one forward + backward minus the resident memory
    at the reset is the batch's memory. Where the counter cannot be reset,
    ``ru_maxrss`` after minus before is used (and said so in the result). On
    CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before;
(c) the largest relative gradient difference between the two in float64,
    ``max over matrices of max|g_fused - g_eager| / max|g_eager|``, on a
    shorter trial (``grad_check_steps``) at full network size;
(d) Brian2's evaluation of ``n_brian2_trials`` test trials on
    ``cpp_standalone`` (one build; build and simulation times separately),
    and on a GPU machine also ``cuda_standalone``.

Example
-------
>>> from bridge.bench import run_benchmark
>>> result = run_benchmark(n_steps=200, include_brian2=False)  # doctest: +SKIP
>>> result["speedup"], result["memory_ratio"], result["grad_max_rel_diff"]  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biosim.data import load_split
from biosim.inputs import TrialSet, make_trials
from biosim.params import NetworkParams
from biosim.records import library_versions
from biosim.weights import NetworkWeights, init_weights

from .torch_settings import flushed_denormals, torch_threads

__all__ = ["run_benchmark"]


# --- shared setup ------------------------------------------------------------------


@dataclass
class _Setup:
    """Inputs and weights of one benchmark problem."""

    params: NetworkParams
    x: torch.Tensor
    v_init_e: torch.Tensor
    v_init_i: torch.Tensor
    labels: torch.Tensor
    weights: dict[str, torch.Tensor]


def _params(n_steps: int) -> NetworkParams:
    base = NetworkParams()
    trial_ms = n_steps * base.simulation.dt_ms
    return base.replace(
        simulation__trial_ms=trial_ms, simulation__transient_ms=min(base.simulation.transient_ms, trial_ms / 4)
    )


def _setup(n_steps: int, batch_size: int, dtype: torch.dtype, device: str, seed: int) -> _Setup:
    params = _params(n_steps)
    effective = init_weights(params, seed=seed).effective()
    weights = {
        name: torch.as_tensor(getattr(effective, name), dtype=dtype, device=device)
        for name in ("w_in", "w_ei", "w_ie", "w_out")
    }
    split = load_split("medium")
    trials = make_trials(split.train.images[:batch_size], split.train.labels[:batch_size], params, seed=seed)
    return _Setup(
        params=params,
        x=torch.from_numpy(trials.dense(slice(None))).to(device),
        v_init_e=torch.as_tensor(trials.v_init_e_mv, dtype=dtype, device=device),
        v_init_i=torch.as_tensor(trials.v_init_i_mv, dtype=dtype, device=device),
        labels=torch.as_tensor(trials.labels, device=device),
        weights=weights,
    )


def _leaf_weights(setup: _Setup) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone().requires_grad_(True) for name, value in setup.weights.items()}


def _bptt(engine: str, setup: _Setup) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward + backward of the cross-entropy on the scores; returns (spike counts E, gradients)."""
    from .dynamics import Weights, make_constants
    from .eager import run_network
    from .fast_engine import run_network_fused
    from .surrogates import get_surrogate

    engines = {"eager": run_network, "fused": run_network_fused}
    if engine not in engines:
        raise ValueError(f"unknown engine {engine!r}; valid: {', '.join(engines)}")
    weights = _leaf_weights(setup)
    output = engines[engine](
        setup.x, setup.v_init_e, setup.v_init_i, Weights(**weights), make_constants(setup.params), get_surrogate()
    )
    torch.nn.functional.cross_entropy(output.scores, setup.labels).backward()
    return output.spike_counts_e.detach(), {name: value.grad for name, value in weights.items()}


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(function: Callable[[], Any], device: str) -> float:
    _synchronize(device)
    start = time.perf_counter()
    function()
    _synchronize(device)
    return time.perf_counter() - start


def _throughput(
    n_steps: int,
    batch_size: int,
    device: str,
    seed: int,
    n_repeats: int,
    thread_options: list[int],
    say: Callable[[str], None],
) -> dict[str, dict[int, list[float]]]:
    """Seconds per BPTT batch of each engine at each thread count: ``times[engine][threads]``.

    One short warm-up per engine and thread count, then ``n_repeats`` rounds; each round times both
    engines at every thread count, alternating, so that a change in machine load hits both.
    """
    setup = _setup(n_steps, batch_size, torch.float32, device, seed)
    warm = _setup(min(n_steps, 100), batch_size, torch.float32, device, seed)
    engines = ("eager", "fused")
    times: dict[str, dict[int, list[float]]] = {
        engine: {threads: [] for threads in thread_options} for engine in engines
    }
    for threads in thread_options:
        torch.set_num_threads(threads)
        for engine in engines:
            _timed(lambda engine=engine: _bptt(engine, warm), device)
    for repeat in range(n_repeats):
        for threads in thread_options:
            torch.set_num_threads(threads)
            for engine in engines:
                times[engine][threads].append(_timed(lambda engine=engine: _bptt(engine, setup), device))
                say(f"  {engine}, {threads} thread(s), repeat {repeat + 1}: {times[engine][threads][-1]:.2f} s")
    return times


def _phases(n_steps: int, batch_size: int, seed: int, threads: int, useful_flops: int) -> dict[str, Any]:
    """Where one fused BPTT batch spends its time, and how fast the adjoint's products run alone.

    ``phase_seconds``: the CPU kernels' forward loop and backward pass (wall
    seconds), and the backward's recomputation and adjoint recursion
    (thread-seconds), from :func:`bridge.fused_kernels.record_phase_times`.
    ``product_flops_per_s``: the two products per step alone, on one thread,
    for a block of trials as the backward pass runs them, and
    ``product_fraction_of_peak`` against one thread's FMA peak.
    ``product_share_of_adjoint``: the products' thread-seconds at that rate
    over the adjoint recursion's.
    """
    from . import fused_kernels
    from .fast_engine import TRIALS_PER_BLOCK

    setup = _setup(n_steps, batch_size, torch.float32, "cpu", seed)
    with torch_threads(threads), fused_kernels.record_phase_times() as record:
        _bptt("fused", setup)
    connectivity = setup.params.connectivity
    rows = min(TRIALS_PER_BLOCK, batch_size)
    product = fused_kernels.product_flops(connectivity.n_e, connectivity.n_i, connectivity.n_classes, rows)
    peak_one = fused_kernels.fma_peak_flops(1)
    phases = record.as_dict()
    product_seconds = useful_flops * batch_size * n_steps / product
    return {
        "phase_seconds": phases,
        "product_flops_per_s": product,
        "product_rows": rows,
        "product_fraction_of_peak": product / peak_one,
        "product_share_of_adjoint": product_seconds / phases["adjoint"] if phases["adjoint"] > 0 else None,
    }


def _batch_sweep(n_steps: int, batch_size: int, device: str, seed: int, threads: int) -> dict[str, float]:
    """The fused engine's throughput (sample-steps/s, best of 2 batches) at a quarter, half, one and two
    times ``batch_size``: where the batch size stops buying throughput on this machine."""
    sizes = sorted({max(1, batch_size // 4), max(1, batch_size // 2), batch_size, 2 * batch_size})
    rates = {}
    with torch_threads(threads):
        for size in sizes:
            setup = _setup(n_steps, size, torch.float32, device, seed)
            seconds = min(_timed(lambda setup=setup: _bptt("fused", setup), device) for _ in range(2))
            rates[str(size)] = size * n_steps / seconds
    return rates


# --- (b) memory ----------------------------------------------------------------------


def _resident_kib() -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of this process in KiB, from /proc; None where unavailable."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def _release_free_memory() -> None:
    gc.collect()
    try:  # give freed heap pages back, so that the baseline is the memory actually in use
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _memory_probe(engine: str, n_steps: int, batch_size: int, dtype_name: str, threads: int, seed: int) -> dict:
    """Peak extra memory (bytes) of one BPTT batch of ``engine`` in this (fresh) process."""
    torch.set_num_threads(threads)  # a fresh process of its own (the caller's settings are not touched)
    torch.set_flush_denormal(True)
    dtype = getattr(torch, dtype_name)
    setup = _setup(n_steps, batch_size, dtype, "cpu", seed)
    warm = _setup(min(n_steps, 20), batch_size, dtype, "cpu", seed)
    _bptt(engine, warm)  # lazy initialisation (kernels, thread pools) belongs to the setup
    del warm
    _release_free_memory()
    method = "VmHWM after reset minus VmRSS at reset (/proc/self/clear_refs)"
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _resident_kib()
        if before is None:
            raise OSError("no /proc/self/status")
        baseline_kib = before[0]
    except OSError:
        method = "ru_maxrss after minus ru_maxrss before"
        baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    _bptt(engine, setup)
    elapsed = time.perf_counter() - start
    if method.startswith("VmHWM"):
        peak_kib = _resident_kib()[1]
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_bytes": (peak_kib - baseline_kib) * 1024, "method": method, "seconds": elapsed}


def _memory_in_subprocess(engine: str, n_steps: int, batch_size: int, threads: int, seed: int) -> dict:
    arguments = json.dumps([engine, n_steps, batch_size, "float32", threads, seed])
    code = (
        "import json, sys\n"
        "from bridge.bench import _memory_probe\n"
        f"print(json.dumps(_memory_probe(*json.loads({arguments!r}))))\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environment, cwd=root
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _memory_cuda(engine: str, setup: _Setup) -> dict:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    _bptt(engine, setup)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "peak_bytes": torch.cuda.max_memory_allocated() - before,
        "method": "torch.cuda.max_memory_allocated minus memory_allocated before",
        "seconds": elapsed,
    }


# --- (c) gradients ---------------------------------------------------------------------


def _gradient_check(n_steps: int, batch_size: int, device: str, seed: int) -> dict:
    setup = _setup(n_steps, batch_size, torch.float64, device, seed)
    counts_eager, eager = _bptt("eager", setup)
    counts_fused, fused = _bptt("fused", setup)
    relative = {}
    for name in eager:
        scale = float(eager[name].abs().max())
        difference = float((fused[name] - eager[name]).abs().max())
        relative[name] = difference / scale if scale > 0 else difference
    return {
        "grad_max_rel_diff": max(relative.values()),
        "grad_rel_diff_per_matrix": relative,
        "grad_check_spike_counts_identical": bool(torch.equal(counts_eager, counts_fused)),
        "grad_check_spikes_e": float(counts_eager.sum()),
    }


# --- (d) Brian2 ---------------------------------------------------------------------------


def _brian2_trials(params: NetworkParams, n_trials: int, seed: int) -> TrialSet:
    split = load_split("medium")
    images = np.concatenate([split.test.images, split.train.images])[:n_trials]
    labels = np.concatenate([split.test.labels, split.train.labels])[:n_trials]
    if len(images) < n_trials:
        raise ValueError(f"n_brian2_trials={n_trials} exceeds the {len(images)} digits of the medium tier")
    return make_trials(images, labels, params, seed=seed)


def _brian2(
    backend: str,
    params: NetworkParams,
    weights: NetworkWeights,
    trials: TrialSet,
    openmp_threads: int,
    progress: bool,
    processes: int = 1,
) -> dict:
    import brian2 as b2

    from biosim.backends import run_trials

    previous = b2.prefs.devices.cpp_standalone.openmp_threads
    b2.prefs.devices.cpp_standalone.openmp_threads = openmp_threads
    try:
        result = run_trials(params, weights, trials, backend=backend, progress=progress, processes=processes)
    finally:
        b2.prefs.devices.cpp_standalone.openmp_threads = previous
    build, simulate = result.timings_s["build"], result.timings_s["simulate"]
    return {
        "result": result,
        "build_s": build,
        "simulate_s": simulate,
        "total_s": build + simulate,
        "trials_per_s": trials.n_trials / simulate,
        "trials_per_s_with_build": trials.n_trials / (build + simulate),
    }


def _fused_evaluation(params: NetworkParams, weights: NetworkWeights, trials: TrialSet, dtype, device: str) -> dict:
    """The fused engine's forward pass (no gradient) on the same trials: time and spike trains."""
    from .dynamics import make_constants
    from .fast_engine import run_network_fused
    from .simulate import torch_weights

    constants, w = make_constants(params), torch_weights(weights, dtype=dtype, device=device)
    counts_e, counts_i, elapsed = [], [], 0.0
    for start in range(0, trials.n_trials, 64):
        index = np.arange(start, min(start + 64, trials.n_trials))
        x = torch.from_numpy(trials.dense(index)).to(device)
        v_e = torch.as_tensor(trials.v_init_e_mv[index], dtype=dtype, device=device)
        v_i = torch.as_tensor(trials.v_init_i_mv[index], dtype=dtype, device=device)
        with torch.no_grad():
            begin = time.perf_counter()
            output = run_network_fused(x, v_e, v_i, w, constants, record_population=True)
            _synchronize(device)
            elapsed += time.perf_counter() - begin
        counts_e.append(output.spike_counts_e.cpu().numpy())
        counts_i.append(output.spike_counts_i.cpu().numpy())
    return {"seconds": elapsed, "counts_e": np.concatenate(counts_e), "counts_i": np.concatenate(counts_i)}


# --- the benchmark ------------------------------------------------------------------------


@flushed_denormals()  # as in training; the caller's mode is restored afterwards
def run_benchmark(
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    n_steps: int = 2000,
    include_brian2: bool = True,
    n_brian2_trials: int = 400,
    n_repeats: int = 2,
    grad_check_steps: int = 500,
    grad_check_batch: int = 4,
    measure_memory: bool = True,
    brian2_openmp_threads: int = 0,
    brian2_processes: int | str | None = None,
    batch_sweep: bool = True,
    threads: int | None = None,
    seed: int = 42,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure the fused engine against the eager baseline, and Brian2's evaluation, in one run.

    Parameters
    ----------
    device : str
        ``"cpu"`` or ``"cuda"`` (the training comparison runs there; Brian2 always on CPU, plus
        ``cuda_standalone`` when a GPU and brian2cuda are present).
    batch_size : int, optional
        Trials per BPTT batch; default 32 on CPU, 256 on CUDA.
    n_steps : int
        Time steps per trial (dt = 0.1 ms), default 2000 (200 ms).
    include_brian2 : bool
        Also time Brian2's evaluation.
    n_brian2_trials : int
        Test trials Brian2 simulates in one build.
    n_repeats : int
        Rounds of timed repetitions (after one short warm-up per engine and thread count).
    grad_check_steps, grad_check_batch : int
        Trial length and batch of the float64 gradient comparison (full network size).
    measure_memory : bool
        Measure the peak memory of one BPTT batch of each engine.
    brian2_openmp_threads : int
        ``prefs.devices.cpp_standalone.openmp_threads`` of the Brian2 run (0: serial, the default).
    brian2_processes : int or "auto", optional
        Processes that share the Brian2 build and simulate parts of the trials
        (:mod:`biosim.split_run`; the same spikes bit for bit). Default:
        ``$BIOSIM_BRIAN2_PROCESSES``, else 1. ``settings["brian2_parts"]`` is
        the number of parts that ran (at most one per 50 trials).
    batch_sweep : bool
        Also time the fused engine at a quarter, half, one and two times ``batch_size``
        (``fused_sample_steps_per_s_by_batch``).
    threads : int, optional
        Torch threads for the training comparison. Default: both 1 and ``torch.get_num_threads()``;
        each engine is scored by its fastest repetition at either (``*_threads`` says which), and
        ``speedup_at_threads`` compares them at equal thread counts.
    seed : int
        Seed of weights and input spikes.
    progress : bool
        Report progress on stderr.

    Returns
    -------
    dict
        ``speedup`` (fused / eager sample-steps per second, each engine's fastest repetition),
        ``memory_ratio`` (fused / eager peak memory), ``grad_max_rel_diff``,
        ``brian2_trials_per_s`` (simulation only; the build is ``brian2_build_s``), the raw
        numbers behind each (``seconds_per_batch[engine][threads]`` lists every repetition),
        ``brian2_trials_mismatching_fused_float64`` (trials whose Brian2 spike counts differ
        from the fused engine's float64 forward pass, which equals the mirror's), machine
        information (with the load average at start and end: other processes on the machine
        slow both engines) and the settings. Keys of parts not run are absent.
    """
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch.cuda.is_available() is False")
    batch_size = batch_size or (256 if device.startswith("cuda") else 32)
    from biosim.standalone_build import split_parts

    # Checked before the long training comparison, so that a bad value costs nothing.
    brian2_parts = split_parts("cpp_standalone", None, n_brian2_trials, brian2_processes) if include_brian2 else 0
    started = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"[bench {time.perf_counter() - started:7.1f} s] {message}", file=sys.stderr, flush=True)

    from . import fused_kernels
    from .surrogates import get_surrogate

    result: dict[str, Any] = {
        "settings": {
            "device": device,
            "batch_size": batch_size,
            "n_steps": n_steps,
            "dtype": "float32",
            "n_repeats": n_repeats,
            "grad_check_steps": grad_check_steps,
            "grad_check_batch": grad_check_batch,
            "grad_check_dtype": "float64",
            "surrogate": repr(get_surrogate()),
            "n_brian2_trials": n_brian2_trials if include_brian2 else 0,
            "brian2_openmp_threads": brian2_openmp_threads,
            "brian2_parts": brian2_parts,
            "threads": threads,
            "seed": seed,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "processor": _processor_name(),
            "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
            "fused_cpu_kernels": fused_kernels.kernels_available() if device == "cpu" else False,
            "fused_product_path": fused_kernels.kernel_info()["product_path"] if device == "cpu" else None,
            "load_average_start": _load_average(),
        },
        "versions": library_versions(),
    }

    # (a) throughput
    say(f"throughput: batch {batch_size}, {n_steps} steps, float32 on {device}")
    initial_threads = torch.get_num_threads()
    thread_options = [threads] if threads else sorted({1, initial_threads})
    try:
        times = _throughput(n_steps, batch_size, device, seed, n_repeats, thread_options, say)
    finally:
        torch.set_num_threads(initial_threads)
    # Each engine's best: the fastest repetition at its faster thread count (least disturbed by other load).
    best = {
        engine: min((min(values), threads) for threads, values in by_threads.items())
        for engine, by_threads in times.items()
    }
    sample_steps = batch_size * n_steps
    rate = {engine: sample_steps / seconds for engine, (seconds, _) in best.items()}
    result.update(
        speedup=rate["fused"] / rate["eager"],
        eager_sample_steps_per_s=rate["eager"],
        fused_sample_steps_per_s=rate["fused"],
        eager_seconds_per_sample=best["eager"][0] / batch_size,
        fused_seconds_per_sample=best["fused"][0] / batch_size,
        eager_threads=best["eager"][1],
        fused_threads=best["fused"][1],
        speedup_at_threads={str(t): min(times["eager"][t]) / min(times["fused"][t]) for t in thread_options},
        seconds_per_batch={engine: {str(t): v for t, v in by_threads.items()} for engine, by_threads in times.items()},
    )
    say(f"  speedup {result['speedup']:.1f}x")
    if device == "cpu":
        # Roofline: only the work the adjoint cannot avoid, the two dense products with the loop
        # matrices (n_e x n_i each, one multiply and one add per entry) per trial-step.
        params = _params(n_steps)
        useful_flops = 4 * params.connectivity.n_e * params.connectivity.n_i
        peak = fused_kernels.fma_peak_flops(result["fused_threads"])
        if peak is not None:
            result.update(
                fma_peak_flops=peak,
                useful_flops_per_sample_step=useful_flops,
                roofline_fraction=rate["fused"] * useful_flops / peak,
            )
            say(f"  roofline fraction {result['roofline_fraction']:.2f} (FMA peak {peak / 1e9:.0f} GFLOP/s)")
        if result["machine"]["fused_cpu_kernels"]:
            result.update(_phases(n_steps, batch_size, seed, result["fused_threads"], useful_flops))
            phases = result["phase_seconds"]
            say(f"  phases: forward {phases['forward']:.2f} s, backward {phases['backward']:.2f} s")
    if batch_sweep:
        result["fused_sample_steps_per_s_by_batch"] = by_batch = _batch_sweep(
            n_steps, batch_size, device, seed, result["fused_threads"]
        )
        say("  fused by batch size: " + ", ".join(f"{b}: {r:.0f}" for b, r in by_batch.items()) + " sample-steps/s")

    # (b) memory
    if measure_memory:
        say("memory: one BPTT batch per engine" + (" in fresh subprocesses" if device == "cpu" else ""))
        memory = {}
        for engine in ("eager", "fused"):
            if device == "cpu":
                memory[engine] = _memory_in_subprocess(engine, n_steps, batch_size, 1, seed)
            else:
                memory[engine] = _memory_cuda(engine, _setup(n_steps, batch_size, torch.float32, device, seed))
            say(f"  {engine}: {memory[engine]['peak_bytes'] / 2**20:.0f} MiB")
        result.update(
            memory_ratio=memory["fused"]["peak_bytes"] / memory["eager"]["peak_bytes"],
            eager_peak_memory_bytes=memory["eager"]["peak_bytes"],
            fused_peak_memory_bytes=memory["fused"]["peak_bytes"],
            memory_method=memory["fused"]["method"],
        )

    # (c) gradients
    say(f"gradients: float64, batch {grad_check_batch}, {grad_check_steps} steps")
    result.update(_gradient_check(grad_check_steps, grad_check_batch, device, seed))
    say(f"  max relative difference {result['grad_max_rel_diff']:.2e}")

    # (d) Brian2
    if include_brian2:
        params = _params(n_steps)
        weights = init_weights(params, seed=seed).effective()
        trials = _brian2_trials(params, n_brian2_trials, seed)
        say(f"Brian2 cpp_standalone: {n_brian2_trials} trials, one build, {brian2_parts} process(es)")
        try:
            brian = _brian2("cpp_standalone", params, weights, trials, brian2_openmp_threads, progress, brian2_parts)
        except Exception as error:  # noqa: BLE001  (report, do not lose the numbers above)
            result["brian2_error"] = f"{type(error).__name__}: {error}"
            say(f"  failed: {result['brian2_error']}")
        else:
            say(f"  build {brian['build_s']:.1f} s, simulate {brian['simulate_s']:.1f} s")
            evaluation = _fused_evaluation(params, weights, trials, torch.float64, device)
            spikes = brian.pop("result")
            mismatching = np.flatnonzero(
                (spikes.spikes_e.counts() != evaluation["counts_e"]).any(axis=1)
                | (spikes.spikes_i.counts() != evaluation["counts_i"]).any(axis=1)
            )
            result.update(
                brian2_trials_per_s=brian["trials_per_s"],
                brian2_trials_per_s_with_build=brian["trials_per_s_with_build"],
                brian2_build_s=brian["build_s"],
                brian2_simulate_s=brian["simulate_s"],
                brian2_total_s=brian["total_s"],
                brian2_spike_counts_match_fused_float64=len(mismatching) == 0,
                brian2_trials_mismatching_fused_float64=mismatching.tolist(),
                fused_eval_float64_trials_per_s=n_brian2_trials / evaluation["seconds"],
            )
        if device.startswith("cuda"):
            try:
                say("Brian2 cuda_standalone")
                cuda = _brian2("cuda_standalone", params, weights, trials, 0, progress)
                cuda.pop("result")
                result.update({f"brian2_cuda_{key}": value for key, value in cuda.items()})
                if "brian2_simulate_s" in result:
                    result["brian2_cuda_speedup"] = result["brian2_simulate_s"] / cuda["simulate_s"]
            except Exception as error:  # noqa: BLE001  (report, do not lose the other numbers)
                result["brian2_cuda_error"] = f"{type(error).__name__}: {error}"

    result["machine"]["load_average_end"] = _load_average()
    result["wall_s"] = time.perf_counter() - started
    say("done")
    return result


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def _processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
