"""Build time, memory and time per trial of the ``copies`` trial layout (:mod:`biosim.copies`) on cpp_standalone.

The full-size network (default params, canonical weights of seed 42), the first N test digits of
the ``medium`` tier, trials shortened to ``--trial-ms``; each N builds in a new, empty project
directory. Per N it prints one JSON line: synapses, timings (build = codegen + compile, and the
simulation), the project's size on disk, the peak resident memory of the simulation binary (the
built program run once more under ``/usr/bin/time``) and of this process (code generation), and
with ``--sequential`` the same trials back to back in one network, and whether the spikes agree:

    python scripts/trial_layout_cost.py 1 10 50 --trial-ms 20 --sequential

``binary_rerun_s`` is the wall time of that second run of the program (it loads the project's
arrays, builds the synapses and simulates), ``simulate`` that of the first, inside ``run_trials``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def _disk_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _binary_peak_mib(build: Path) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of the built program, run once more."""
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "./main"], cwd=build, capture_output=True, text=True, check=True
    )
    return int(done.stderr.strip().splitlines()[-1]) / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("copies", type=int, nargs="+", help="numbers of copies (trials) to measure")
    parser.add_argument("--trial-ms", type=float, default=20.0)
    parser.add_argument("--sequential", action="store_true", help="also run the trials back to back")
    args = parser.parse_args()

    from biosim.backends import run_trials
    from biosim.params import NetworkParams
    from biosim.simulation import load_test_trials
    from biosim.weights import init_weights

    params = NetworkParams().replace(simulation__trial_ms=args.trial_ms, simulation__transient_ms=0.0)
    weights = init_weights(params, seed=42).effective()
    blocks = [np.where(weights.input_mask, weights.w_in, 0.0), weights.w_ei, weights.w_ie, weights.w_out]
    per_copy = int(sum(np.count_nonzero(b) for b in blocks))
    for n in args.copies:
        trials = load_test_trials(params, n, seed=42)
        row: dict[str, object] = {"copies": n, "trial_ms": args.trial_ms, "synapses": per_copy * n}
        with tempfile.TemporaryDirectory(prefix="biosim-copies-") as directory:
            build = Path(directory) / "copies"
            copies = run_trials(params, weights, trials, layout="copies", build_dir=build, progress=False)
            row["copies_timings_s"] = {k: round(v, 2) for k, v in copies.timings_s.items()}
            row["project_mib"] = round(_disk_mib(build), 1)
            row["static_arrays_mib"] = round(_disk_mib(build / "static_arrays"), 2)
            peak, wall = _binary_peak_mib(build)
            row["binary_peak_rss_mib"] = round(peak, 1)
            row["binary_rerun_s"] = round(wall, 2)
            row["python_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            if args.sequential:
                build = Path(directory) / "sequential"
                sequential = run_trials(params, weights, trials, build_dir=build, progress=False)
                row["sequential_timings_s"] = {k: round(v, 2) for k, v in sequential.timings_s.items()}
                peak, wall = _binary_peak_mib(build)
                row["sequential_binary_peak_rss_mib"] = round(peak, 1)
                row["sequential_binary_rerun_s"] = round(wall, 2)
                row["same_spikes"] = all(
                    np.array_equal(getattr(getattr(copies, p), f), getattr(getattr(sequential, p), f))
                    for p in ("spikes_e", "spikes_i")
                    for f in ("trial", "step", "neuron")
                )
                row["spikes"] = len(copies.spikes_e) + len(copies.spikes_i)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
