"""Time the benchmark's Brian2 part (``benchmarks/brian2_eval.py``) and say where the time goes.

Runs exactly what ``run_benchmark`` runs for Brian2 (``brian2_trials``, seed 42, the bench's
params and initial weights, ``run_brian2`` on ``cpp_standalone``), with timers wrapped around the
phases of :func:`biosim.backends._simulate` (this process only; the other parts of a split run
report their own ``timings_s``):

    python scripts/brian2_timing.py [--processes N] [--cold] [--trace-cxx] [--check] [--openmp N]

``--cold`` builds in a new, empty ``$BIOSIM_BRIAN2_CACHE`` (removed afterwards); ``--trace-cxx``
runs every compiler call through ``/usr/bin/time`` (per translation unit CPU seconds; the
precompiled header's stamp then names the wrapper, so the first run with it rebuilds the header);
``--check`` compares the spike counts with the fused engine's float64 forward pass as the bench
does. One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _wrap(owner, name, timers, key):
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timers[key] = timers.get(key, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapped)


def _install_timers(timers: dict) -> None:
    import brian2 as b2
    from brian2.devices.cpp_standalone.device import CPPStandaloneDevice

    import biosim.backends as backends
    import biosim.standalone_build as sb

    _wrap(backends, "build_network", timers, "construct_network")
    _wrap(b2.Network, "run", timers, "network_run_codegen")  # standalone: code objects are generated here
    _wrap(CPPStandaloneDevice, "write_static_arrays", timers, "write_static_arrays")
    for name in ("generate_objects_source", "generate_main_source", "generate_codeobj_source",
                 "generate_network_source", "generate_synapses_classes_source", "generate_run_source",
                 "copy_source_files", "generate_makefile"):  # fmt: skip
        _wrap(CPPStandaloneDevice, name, timers, "write_sources")
    _wrap(sb, "precompile_header", timers, "pch")
    _wrap(CPPStandaloneDevice, "compile_source", timers, "make")
    _wrap(CPPStandaloneDevice, "run", timers, "run_binary_and_checks")
    _wrap(backends, "_collect", timers, "read_results")
    build_project = backends.build_project

    def counted(*args, **kwargs):  # CPU of the compiler processes (finished children), less sensitive to load
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            return build_project(*args, **kwargs)
        finally:
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            timers["build_children_cpu"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime

    backends.build_project = counted


def _cxx_wrapper(log: Path) -> Path:
    wrapper = Path(tempfile.mkdtemp(prefix="cxxtime-")) / "g++"
    wrapper.write_text(
        "#!/bin/bash\n"
        'target=""; prev=""; for a in "$@"; do [ "$prev" = -o ] && target=$a; prev=$a; done\n'
        f'exec /usr/bin/time -a -o {log} -f "%e %U %S $target" /usr/bin/g++ "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--trace-cxx", action="store_true")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--openmp", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42, help="weights and input spikes (the bench: 42)")
    parser.add_argument("--label", default="")
    args = parser.parse_args()

    cold_cache = tempfile.mkdtemp(prefix="brian2-cold-") if args.cold else None
    if cold_cache is not None:  # a new, empty cache: nothing of an earlier build is there to reuse
        os.environ["BIOSIM_BRIAN2_CACHE"] = cold_cache
    log = Path(tempfile.mkdtemp(prefix="cxxlog-")) / "cxx.log"
    if args.trace_cxx:
        os.environ["CXX"] = str(_cxx_wrapper(log))

    t_start = time.perf_counter()
    import torch  # noqa: F401  (as in the bench: imported before Brian2)

    from benchmarks.brian2_eval import brian2_trials, fused_evaluation, mismatching_trials, run_brian2
    from benchmarks.problem import problem_params
    from biosim.weights import init_weights

    params = problem_params(2000)  # the bench's default n_steps: 200 ms trials at dt 0.1 ms
    weights = init_weights(params, seed=args.seed).effective()
    trials = brian2_trials(params, args.trials, args.seed)
    t_setup = time.perf_counter() - t_start
    timers: dict[str, float] = {}
    _install_timers(timers)
    begin = time.perf_counter()
    brian = run_brian2("cpp_standalone", params, weights, trials, args.openmp, False, args.processes)
    wall = time.perf_counter() - begin
    result = brian.result
    out = {
        "label": args.label,
        "processes": args.processes,
        "cold": args.cold,
        "openmp": args.openmp,
        "total_s": round(brian.total_s, 2),
        "build_s": round(brian.build_s, 2),
        "simulate_s": round(brian.simulate_s, 2),
        "wall_s": round(wall, 2),
        "setup_s": round(t_setup, 2),
        "timings_s": {k: round(v, 2) for k, v in result.timings_s.items()},
        "phases_s": {k: round(v, 2) for k, v in timers.items()},
        "build_meta": {k: v for k, v in result.meta.get("build", {}).items() if k != "parts"},
        "parts": [
            {k: (round(v, 2) if isinstance(v, float) else v) for k, v in p.items()}
            for p in result.meta.get("build", {}).get("parts", [])
        ],
        "spikes_e": int(result.spikes_e.counts().sum()),
        "spikes_i": int(result.spikes_i.counts().sum()),
    }
    if args.trace_cxx and log.exists():
        rows = [line.split() for line in log.read_text().splitlines() if line.strip()]
        units = sorted(((float(r[1]) + float(r[2]), float(r[0]), r[3] if len(r) > 3 else "?") for r in rows
                        if len(r) >= 3 and r[0][0].isdigit()), reverse=True)  # fmt: skip
        out["cxx"] = {
            "n_calls": len(units),
            "cpu_s_total": round(sum(u[0] for u in units), 2),
            "units": [(name, round(cpu, 2), round(el, 2)) for cpu, el, name in units],
        }
    if args.check:
        evaluation = fused_evaluation(params, weights, trials, torch.float64, "cpu")
        out["mismatching_trials_vs_fused_float64"] = mismatching_trials(result, evaluation)
    counts = np.concatenate([result.spikes_e.counts().ravel(), result.spikes_i.counts().ravel()])
    trains = [result.spikes_e.trial, result.spikes_e.step, result.spikes_e.neuron,
              result.spikes_i.trial, result.spikes_i.step, result.spikes_i.neuron, result.scores]  # fmt: skip
    import hashlib

    digest = hashlib.sha256(counts.tobytes())
    for array in trains:
        digest.update(np.ascontiguousarray(array).tobytes())
    out["spike_digest"] = digest.hexdigest()[:16]
    print(json.dumps(out), flush=True)
    if cold_cache is not None:
        shutil.rmtree(cold_cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
