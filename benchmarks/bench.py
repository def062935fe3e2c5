"""The benchmark of ``biosim bench``: fused engine versus a plain eager autograd loop, and Brian2's evaluation speed.

:func:`run_benchmark` measures, in one process and one run, side by side:

(a) training throughput (sample-steps per second, forward + backward through
    all steps, after a warm-up) of :func:`bridge.fast_engine.run_network_fused`
    and of the eager engine :func:`bridge.eager.run_network`, the network
    written the way a snnTorch or Norse user would write it: the step
    function of :mod:`bridge.dynamics` with dense matrix products for the
    input and the recurrent spikes, a surrogate spike function, and autograd
    recording every step. Full size (1024 E, 256 I, 784 inputs, T = 2000),
    batch 32 on CPU and 256 on CUDA. Both run with 1 and with
    ``torch.get_num_threads()`` threads, each engine scored by its fastest
    repetition (:mod:`benchmarks.throughput`); on CPU also the roofline, the
    phases of a fused batch, and the batch sweep;
(b) peak memory of one BPTT batch of each (:mod:`benchmarks.memory`);
(c) the largest relative gradient difference between the two in float64 on a
    shorter trial (``grad_check_steps``) at full network size
    (:mod:`benchmarks.gradients`);
(d) the torch operations (kernel launches on CUDA) per time step of the fused engine's torch path, forward
    and backward, counted on the CPU, and of the same path with ``BIOSIM_CUDA_TRITON`` and
    ``BIOSIM_CUDA_GRAPHS`` on: counted where triton runs, else its Triton step counted from its code
    (:mod:`benchmarks.operations`);
(e) Brian2's evaluation of ``n_brian2_trials`` test trials on
    ``cpp_standalone`` (one build; build and simulation times separately),
    and on a GPU machine also ``cuda_standalone`` (:mod:`benchmarks.brian2_eval`).

Each measurement returns a small typed result whose ``record()`` gives its keys of the one flat
result dictionary (the JSON record ``biosim bench --json`` prints and ``--out`` writes).

Example
-------
>>> from benchmarks.bench import run_benchmark
>>> result = run_benchmark(n_steps=200, include_brian2=False)  # doctest: +SKIP
>>> result["speedup"], result["memory_ratio"], result["grad_max_rel_diff"]  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from biosim.records import library_versions
from biosim.weights import init_weights
from bridge.torch_settings import flushed_denormals

from .brian2_eval import agreement_record, brian2_trials, fused_evaluation, run_brian2
from .environment import load_average, machine_report
from .gradients import gradient_check
from .memory import compare_memory
from .operations import operations_record
from .problem import problem_params
from .throughput import measure_batch_sweep, measure_phases, measure_throughput, roofline

__all__ = ["run_benchmark"]


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
        ``operations_per_step`` (``before``: the torch path's, counted; ``after``: with the Triton step and
        captured chunks, ``after_is`` says how counted), ``brian2_trials_per_s`` (simulation only; the
        build is ``brian2_build_s``), the raw
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
    from bridge.surrogates import get_surrogate

    # Checked before the long training comparison, so that a bad value costs nothing.
    brian2_parts = split_parts("cpp_standalone", None, n_brian2_trials, brian2_processes) if include_brian2 else 0
    started = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"[bench {time.perf_counter() - started:7.1f} s] {message}", file=sys.stderr, flush=True)

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
        "machine": machine_report(device),
        "versions": library_versions(),
    }

    # (a) throughput
    say(f"throughput: batch {batch_size}, {n_steps} steps, float32 on {device}")
    thread_options = [threads] if threads else sorted({1, torch.get_num_threads()})
    throughput = measure_throughput(n_steps, batch_size, device, seed, n_repeats, thread_options, say)
    result.update(throughput.record())
    say(f"  speedup {result['speedup']:.1f}x")
    if device == "cpu":
        ceiling = roofline(problem_params(n_steps), throughput.sample_steps_per_s("fused"), throughput.fused_threads)
        if ceiling is not None:
            result.update(ceiling.record())
            peak = ceiling.fma_peak_flops
            say(f"  roofline fraction {ceiling.roofline_fraction:.2f} (FMA peak {peak / 1e9:.0f} GFLOP/s)")
        if result["machine"]["fused_cpu_kernels"]:
            phases = measure_phases(n_steps, batch_size, seed, throughput.fused_threads)
            result.update(phases.record())
            seconds = phases.phase_seconds
            say(f"  phases: forward {seconds['forward']:.2f} s, backward {seconds['backward']:.2f} s")
    if batch_sweep:
        sweep = measure_batch_sweep(n_steps, batch_size, device, seed, throughput.fused_threads)
        result.update(sweep.record())
        say("  fused by batch size: " + ", ".join(f"{b}: {r:.0f}" for b, r in sweep.rates.items()) + " sample-steps/s")

    # (b) memory
    if measure_memory:
        say("memory: one BPTT batch per engine" + (" in fresh subprocesses" if device == "cpu" else ""))
        result.update(compare_memory(n_steps, batch_size, device, seed, say).record())

    # (c) gradients
    say(f"gradients: float64, batch {grad_check_batch}, {grad_check_steps} steps")
    result.update(gradient_check(grad_check_steps, grad_check_batch, device, seed).record())
    say(f"  max relative difference {result['grad_max_rel_diff']:.2e}")

    # (d) operations per step
    say("operations per step of the torch path and of the Triton step and captured chunks (counted on the CPU)")
    # The count does not depend on the populations' sizes (tests/test_operations.py): counted on small ones.
    small = problem_params(n_steps).replace(connectivity__n_e=64, connectivity__n_i=16)
    result.update(operations_record(small))
    counts = result["operations_per_step"]
    before, after = counts["before"], counts["after"]
    say(
        f"  forward {before['forward']:.1f} -> {after['forward']:.1f}, backward {before['backward']:.1f} -> "
        f"{after['backward']:.1f}"
    )

    # (e) Brian2
    if include_brian2:
        brian2 = _brian2_figures(
            n_steps, n_brian2_trials, seed, device, brian2_openmp_threads, brian2_parts, progress, say
        )
        result.update(brian2)

    result["machine"]["load_average_end"] = load_average()
    result["wall_s"] = time.perf_counter() - started
    say("done")
    return result


def _brian2_figures(
    n_steps: int,
    n_trials: int,
    seed: int,
    device: str,
    openmp_threads: int,
    parts: int,
    progress: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Brian2 on cpp_standalone against the fused engine's float64 pass, then on cuda_standalone on a GPU.

    A failure is reported under ``brian2_error`` (``brian2_cuda_error``), so that the figures of the
    other parts are not lost.
    """
    params = problem_params(n_steps)
    weights = init_weights(params, seed=seed).effective()
    trials = brian2_trials(params, n_trials, seed)
    figures: dict[str, Any] = {}
    say(f"Brian2 cpp_standalone: {n_trials} trials, one build, {parts} process(es)")
    try:
        cpp = run_brian2("cpp_standalone", params, weights, trials, openmp_threads, progress, parts)
    except Exception as error:  # noqa: BLE001  (report, do not lose the numbers above)
        figures["brian2_error"] = f"{type(error).__name__}: {error}"
        say(f"  failed: {figures['brian2_error']}")
    else:
        say(f"  build {cpp.build_s:.1f} s, simulate {cpp.simulate_s:.1f} s")
        evaluation = fused_evaluation(params, weights, trials, torch.float64, device)
        figures.update(cpp.record("brian2_"))
        figures.update(agreement_record(cpp, evaluation))
    if device.startswith("cuda"):
        try:
            say("Brian2 cuda_standalone")
            cuda = run_brian2("cuda_standalone", params, weights, trials, 0, progress)
            figures.update(cuda.record("brian2_cuda_"))
            if "brian2_simulate_s" in figures:
                figures["brian2_cuda_speedup"] = figures["brian2_simulate_s"] / cuda.simulate_s
        except Exception as error:  # noqa: BLE001  (report, do not lose the other numbers)
            figures["brian2_cuda_error"] = f"{type(error).__name__}: {error}"
    return figures
