"""One ``cpp_standalone`` evaluation in several processes that share one build.

Trials are independent: each starts from its own reset (a trial alone gives
the same spikes as inside a run, ``tests/test_backends.py``). So the trial set
is cut into contiguous parts, one per process, each simulated by its own copy
of the program, and the results are joined in trial order; nothing of a
trial's simulation changes (``tests/test_split_run.py`` checks the spikes and
scores bit for bit against one process).

One build serves all parts because the parts are made alike: the same number
of trials (a shorter part repeats its last trial) and, in one extra trial at
the end of every part, as many padding input spikes as make the parts' input
spike counts equal. Then every array of the project has the same size in
every part, and the generated code is the same. The extra trial is
simulated (one more trial per part) and thrown away; being the last, nothing
after it can see it. Repeated trials are thrown away too.

This process builds and runs part 0 in its project directory. The other
parts run as ``python -m biosim.split_child JOB`` (plain subprocesses, so that
this also works inside daemonic pool workers), started at once: they
construct their networks and write their projects meanwhile, wait for the
build, copy it (all but ``static_arrays/`` and ``results/``; the generated
files are the same) over their own project, where ``make`` then finds
nothing to do, and run. Brian2 preferences set in this
process (``codegen.*``, ``core.*``, ``devices.cpp_standalone.*``) go with them.
"""

from __future__ import annotations

import filecmp
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

from .inputs import TrialSet
from .params import NetworkParams
from .results import SimulationResult, SpikeTrains
from .standalone_build import project_directory
from .weights import NetworkWeights

__all__ = ["join_parts", "padded_parts", "run_split"]

_BACKEND = "cpp_standalone"
_PREF_PREFIXES = ("codegen.", "core.", "devices.cpp_standalone.")
_WAIT_S = 3600.0


def _with_padding_trial(subset: TrialSet, n_padding: int) -> TrialSet:
    """``subset`` with one more trial at the end holding ``n_padding`` input spikes, spread over the trial."""
    grid = subset.n_steps * subset.n_input
    if n_padding > grid:
        raise ValueError(f"{n_padding} padding spikes do not fit in one trial ({grid} step x input slots)")
    slots = (np.arange(n_padding, dtype=np.int64) * grid) // max(n_padding, 1)  # strictly increasing
    last = subset.n_trials - 1
    return TrialSet(
        input_trial=np.concatenate([subset.input_trial, np.full(n_padding, subset.n_trials, dtype=np.int32)]),
        input_step=np.concatenate([subset.input_step, (slots // subset.n_input).astype(np.int32)]),
        input_neuron=np.concatenate([subset.input_neuron, (slots % subset.n_input).astype(np.int32)]),
        v_init_e_mv=np.concatenate([subset.v_init_e_mv, subset.v_init_e_mv[last:]]),
        v_init_i_mv=np.concatenate([subset.v_init_i_mv, subset.v_init_i_mv[last:]]),
        labels=np.concatenate([subset.labels, subset.labels[last:]]),
        n_steps=subset.n_steps,
        n_input=subset.n_input,
        seed=subset.seed,
        trial_ids=np.concatenate([subset.trial_ids, subset.trial_ids[last:]]),
    )


def padded_parts(trials: TrialSet, parts: int) -> list[tuple[np.ndarray, TrialSet]]:
    """``(trial positions, padded trial set)`` per part: equal trial and input-spike counts in all parts."""
    chunks = [c for c in np.array_split(np.arange(trials.n_trials), parts) if len(c)]
    size = max(len(c) for c in chunks)
    subsets = [trials.subset(np.concatenate([c, np.repeat(c[-1], size - len(c))])) for c in chunks]
    target = max(len(s.input_trial) for s in subsets)
    return [(c, _with_padding_trial(s, target - len(s.input_trial))) for c, s in zip(chunks, subsets, strict=True)]


def join_parts(
    params: NetworkParams, pieces: list[tuple[np.ndarray, SimulationResult]], n_trials: int
) -> SimulationResult:
    """The parts' results as one, in trial order, without the repeated and padding trials."""
    c, n_steps = params.connectivity, params.simulation.n_steps
    trains = {}
    for name, n_neurons in (("spikes_e", c.n_e), ("spikes_i", c.n_i)):
        arrays: list[list[np.ndarray]] = [[], [], []]
        for positions, result in pieces:
            spikes = getattr(result, name)
            keep = spikes.trial < len(positions)
            arrays[0].append(spikes.trial[keep] + positions[0])
            arrays[1].append(spikes.step[keep])
            arrays[2].append(spikes.neuron[keep])
        trains[name] = SpikeTrains.from_arrays(
            *(np.concatenate(a) for a in arrays), n_neurons=n_neurons, n_trials=n_trials, n_steps=n_steps
        )
    first = pieces[0][1]
    return SimulationResult(
        spikes_e=trains["spikes_e"],
        spikes_i=trains["spikes_i"],
        scores=np.concatenate([r.scores[: len(p)] for p, r in pieces]),
        dt_ms=first.dt_ms,
        simulator=first.simulator,
        traces={key: np.concatenate([r.traces[key][: len(p)] for p, r in pieces]) for key in first.traces},
    )


_NOT_COPIED = ("static_arrays", "results", "*.lock", ".biosim-build-incomplete")  # a part's own data
_BUILD_PRODUCTS = ("*.o", "*.gch", "main", "make.deps", "biosim_pch.stamp")


def _copy_build(source: Path, target: Path) -> None:
    """The build of ``source`` over the project written in ``target``, times kept, not its data.

    Build products are copied, and so are the sources that are the same in both, with their times,
    so that ``make`` finds them up to date. A source this part wrote differently is kept, and made
    newer than the copied objects, so that ``make`` compiles it again.
    """
    for root, directories, files in os.walk(source):
        directories[:] = [d for d in directories if not any(fnmatch(d, p) for p in _NOT_COPIED)]
        into = target / Path(root).relative_to(source)
        into.mkdir(parents=True, exist_ok=True)
        for name in files:
            if any(fnmatch(name, p) for p in _NOT_COPIED):
                continue
            origin, copy = Path(root) / name, into / name
            product = any(fnmatch(name, p) for p in _BUILD_PRODUCTS)
            if not product and copy.exists() and not filecmp.cmp(origin, copy, shallow=False):
                os.utime(copy)
                continue
            shutil.copy2(origin, copy)


def _wait_for_build(job: dict[str, Any]) -> None:
    built, failed, parent = Path(job["built"]), Path(job["failed"]), job["parent_pid"]
    deadline = time.monotonic() + _WAIT_S
    while not built.exists():
        if failed.exists():
            raise RuntimeError("the build of part 0 failed")
        if os.getppid() != parent:
            raise RuntimeError("the parent process is gone")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no build after {_WAIT_S:.0f} s")
        time.sleep(0.05)


def _child_environment() -> dict[str, str]:
    # The child must import biosim (and everything) exactly as this process does.
    path = os.pathsep.join(os.path.abspath(p or os.curdir) for p in sys.path)
    return dict(os.environ, PYTHONPATH=path, BIOSIM_BRIAN2_PROCESSES="1")


def run_split(
    params: NetworkParams,
    weights: NetworkWeights,
    trials: TrialSet,
    *,
    parts: int,
    simulate: Callable[..., SimulationResult],
    record_v: dict[str, np.ndarray] | None = None,
    record_readout: bool = False,
    progress: bool = True,
) -> SimulationResult:
    """Simulate ``trials`` on ``cpp_standalone`` in ``parts`` processes; the result of one run.

    ``simulate`` is :func:`biosim.backends._simulate`, passed in so that this module does not import
    the one that calls it. ``timings_s``: ``build`` (part 0's, the one build), its ``build_codegen``
    and ``build_compile``, and ``simulate`` (from the end of the build until
    every part has finished). ``meta["build"]`` as for one run, plus
    ``processes`` and each part's timings.
    """
    import brian2 as b2

    pieces = padded_parts(trials, parts)
    prefs = {name: b2.prefs[name] for name in b2.prefs.prefs if name.startswith(_PREF_PREFIXES)}
    with (
        tempfile.TemporaryDirectory(prefix="biosim-split-") as work,
        project_directory(_BACKEND) as (directory, reused),
    ):
        work_dir = Path(work)
        built, failed = work_dir / "built", work_dir / "failed"
        children = []
        try:
            for k, (_, subset) in enumerate(pieces[1:], start=1):
                job = {
                    "params": params, "weights": weights, "trials": subset, "record_v": record_v,
                    "record_readout": record_readout, "prefs": prefs, "source": str(directory),
                    "built": str(built), "failed": str(failed), "parent_pid": os.getpid(),
                    "result": str(work_dir / f"result{k}.pkl"),
                }  # fmt: skip
                (work_dir / f"job{k}.pkl").write_bytes(pickle.dumps(job))
                log = (work_dir / f"part{k}.log").open("w")
                children.append(
                    subprocess.Popen(
                        # -P: not the working directory first on sys.path (-m's default), which could
                        # hold another biosim than this process imported; PYTHONPATH alone decides.
                        [sys.executable, "-P", "-m", "biosim.split_child", str(work_dir / f"job{k}.pkl")],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=_child_environment(),
                    )  # fmt: skip
                )
                log.close()
            if progress:
                print(f"building the {_BACKEND} project ...", end="", file=sys.stderr, flush=True)
            build_done: list[float] = []

            def after_build() -> None:
                built.touch()
                build_done.append(time.perf_counter())
                if progress:
                    print(f" done; simulating {trials.n_trials} trials in {len(pieces)} processes ...",
                          end="", file=sys.stderr, flush=True)  # fmt: skip

            first = simulate(
                _BACKEND, directory, reused, params, weights, pieces[0][1],
                record_v=record_v, record_readout=record_readout, progress=False, after_build=after_build,
            )  # fmt: skip
            results = [first]
            for k, child in enumerate(children, start=1):
                child.wait()
                result_file = work_dir / f"result{k}.pkl"
                payload = pickle.loads(result_file.read_bytes()) if result_file.exists() else None
                if not isinstance(payload, SimulationResult):
                    log = (work_dir / f"part{k}.log").read_text(errors="replace").strip().splitlines()[-20:]
                    why = str(payload) if payload is not None else f"exit status {child.returncode}"
                    raise RuntimeError(
                        f"part {k} of {len(pieces)} of the split Brian2 run failed: {why}\n" + "\n".join(log)
                    )
                results.append(payload)
            finished = time.perf_counter()
        except BaseException:
            failed.touch()
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            raise
    result = join_parts(params, [(p, r) for (p, _), r in zip(pieces, results, strict=True)], trials.n_trials)
    timings = {
        key: first.timings_s[key] for key in ("build", "build_codegen", "build_compile") if key in first.timings_s
    }
    timings["simulate"] = finished - build_done[0]
    result.timings_s = timings
    result.meta["build"] = {
        **first.meta.get("build", {}),
        "processes": len(pieces),
        "parts": [
            {"trials": len(p), "padding_input_spikes": int(np.sum(s.input_trial == s.n_trials - 1)), **r.timings_s,
             "directory": r.meta.get("build", {}).get("directory"), "reused": r.meta.get("build", {}).get("reused")}
            for (p, s), r in zip(pieces, results, strict=True)
        ],
    }  # fmt: skip
    if progress:
        print(f" {timings['simulate']:.1f} s", file=sys.stderr)
    return result
