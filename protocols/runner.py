"""Run every (condition, seed) of a protocol: train, validate in Brian2, record.

Executors:

- default: a local process pool (``concurrent.futures``);
- ``workers=N``: a Dask ``LocalCluster`` with N single-threaded worker processes;
- ``scheduler=ADDRESS``: an existing Dask cluster (e.g. one started on SLURM
  with dask-jobqueue, see the README).

Runs are idempotent. A run directory holds ``status.json`` once it has
finished (completed, diverged or failed); a re-run skips completed and
diverged runs and retries failed ones; a damaged ``status.json`` counts as none
(with a warning naming it), and the run's training is not repeated if its
``final.json`` and ``weights.npz`` are intact. Training resumes from its last
checkpoint, so a run interrupted by a crash or a killed worker loses at most
one epoch. A failure in one run is recorded in its ``status.json`` and never
stops the others. Every file is written atomically. One process at a time
runs a protocol in an output directory: :func:`run_protocol` holds its lock
(:mod:`biosim.locks`), and a second one is refused at once. Its
``protocol.json`` records the protocol, the command that runs it again, the
code's commit and the date (:mod:`protocols.provenance`) and the library
versions.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from biosim.locks import directory_lock
from biosim.records import check_writable_dir, library_versions, write_json

from .protocol import Protocol, RunSpec
from .provenance import run_provenance

__all__ = ["run_protocol", "execute_run", "run_status", "FINISHED_STATUSES", "SchedulerError"]

FINISHED_STATUSES = ("completed", "diverged")

SCHEDULER_CONNECT_TIMEOUT_S = 10.0
"""How long :func:`run_protocol` tries to reach a ``scheduler`` before giving up with a :class:`SchedulerError`."""


class SchedulerError(ValueError):
    """The Dask scheduler given as ``scheduler`` cannot be reached; the message names its address."""


# Fault injection for the runner's own tests: when set to a path that does not
# exist yet, the first run to start creates it and kills its worker process.
KILL_ONCE_ENV = "BIOSIM_FAULT_KILL_WORKER_ONCE"


def _maybe_kill_worker() -> None:
    marker = os.environ.get(KILL_ONCE_ENV)
    if marker:
        try:
            with open(marker, "x") as handle:  # exclusive create: exactly one run gets here
                handle.write(str(os.getpid()))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def run_status(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``status.json``, or None if it has none.

    A damaged one (invalid JSON, not an object) counts as none, with a
    warning that names it: the run is then not finished and runs again
    (training recognises a finished run from its own records and is not
    repeated), and its new status replaces the damaged file.
    """
    path = run_dir / "status.json"
    if not path.exists():
        return None
    try:
        status = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        _warn(f"{path}: unreadable run status ({error}); the run counts as not finished and runs again")
        return None
    if not isinstance(status, dict):
        _warn(f"{path}: expected a JSON object, found {type(status).__name__}; the run counts as not finished")
        return None
    return status


def _warn(message: str) -> None:
    print(f"[protocols.runner] warning: {message}", file=sys.stderr)


def _worker_build_dir(out_dir: Path) -> Path:
    """One Brian2 project per worker process, reused across its runs (recompiles only what changed)."""
    return out_dir / "build" / f"{socket.gethostname()}-{os.getpid()}"


def execute_run(spec_data: dict[str, Any], out_dir: str, threads: int = 1, progress: bool = False) -> dict[str, Any]:
    """Train, validate and record one run; the unit of work sent to a pool or Dask worker.

    Never raises for a failure of the run itself: the error is written to the
    run's ``status.json`` and returned.
    """
    from bridge.torch_settings import torch_threads

    with torch_threads(threads):
        return _execute_run(RunSpec.from_dict(spec_data), out_dir, progress)


def _execute_run(spec: RunSpec, out_dir: str, progress: bool) -> dict[str, Any]:
    from bridge.training import train

    _maybe_kill_worker()
    out = Path(out_dir)
    run_dir, status = _start_run(spec, out)
    started = time.time()
    try:
        result = train(spec.config, run_dir, progress=progress)
        _record_trained(spec, out, result, status)
    except Exception as error:  # a failed run is recorded, never fatal for the protocol
        _record_failure(status, error)
    return _write_status(run_dir, status, started)


def _start_run(spec: RunSpec, out: Path) -> tuple[Path, dict[str, Any]]:
    """The run's directory with its ``run_spec.json``, and the start of its status."""
    run_dir = out / spec.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "run_spec.json", spec.to_dict())
    status: dict[str, Any] = {
        "run_id": spec.run_id,
        "condition": spec.condition,
        "seed": spec.seed,
        "host": socket.gethostname(),
    }
    return run_dir, status


def _record_trained(spec: RunSpec, out: Path, result, status: dict[str, Any]) -> None:
    """Into ``status``: the training's outcome, and the Brian2 validation of a run that did not diverge."""
    from bridge.validation import validate

    status["status"] = result.status
    status["final"] = result.final_metrics
    if result.status == "diverged":
        status["diverged"] = result.diverged
    else:
        backend = spec.validation_backend
        report = validate(out / spec.run_id, backend=backend, build_dir=_worker_build_dir(out), progress=False)
        status["validation"] = {
            "backend": backend,
            "verdict": report["verdict"],
            "simulators": report["simulators"],
        }


def _record_failure(status: dict[str, Any], error: Exception) -> None:
    status["status"] = "failed"
    status["error"] = f"{type(error).__name__}: {error}"
    status["traceback"] = traceback.format_exc()


def _write_status(run_dir: Path, status: dict[str, Any], started: float) -> dict[str, Any]:
    status["elapsed_s"] = time.time() - started
    write_json(run_dir / "status.json", status)
    return status


def _run_batched(specs: list[RunSpec], out: Path, progress: bool, on_done: Callable[[dict], None]) -> None:
    """Train the runs of each network shape together (:func:`bridge.batched_training.train_batched`), in this
    process, as many at a time as :func:`bridge.memory.runs_that_fit` estimates; then validate and record each
    run as :func:`execute_run` does."""
    from bridge.batched_training import group_runs

    for group in group_runs([spec.config for spec in specs]):
        members = [specs[k] for k in group]
        at_once = _runs_at_once(members)
        for start in range(0, len(members), at_once):
            _train_together(members[start : start + at_once], out, progress, on_done)


def _runs_at_once(members: list[RunSpec]) -> int:
    """How many runs of one shape train together: the memory estimate's, printed with it."""
    from biosim.memory import available_memory_bytes, format_bytes
    from bridge.batched_engine import CHUNK_STEPS
    from bridge.memory import batched_run_bytes, runs_that_fit

    config = members[0].config
    if config.device == "cuda":
        import torch

        memory, where = torch.cuda.get_device_properties(0).total_memory, "of the GPU"
    else:
        memory, where = available_memory_bytes(), "available"
    per_run = sum(batched_run_bytes(config, CHUNK_STEPS).values())
    fit = runs_that_fit(config, memory, CHUNK_STEPS)
    at_once = max(1, min(fit, len(members)))
    print(
        f"[protocols.runner] {len(members)} runs of one shape: about {format_bytes(per_run)} each, "
        f"{fit} fit in {format_bytes(memory)} {where}; training {at_once} at a time",
        file=sys.stderr,
    )
    return at_once


def _train_together(members: list[RunSpec], out: Path, progress: bool, on_done: Callable[[dict], None]) -> None:
    from bridge.batched_training import train_batched

    started = time.time()
    records = [_start_run(spec, out) for spec in members]
    try:
        jobs = [(spec.config, run_dir) for spec, (run_dir, _) in zip(members, records, strict=True)]
        results = train_batched(jobs, progress=progress)
    except Exception as error:  # the batch failed as a whole: every member is recorded failed
        for run_dir, status in records:
            _record_failure(status, error)
            on_done(_write_status(run_dir, status, started))
        return
    for spec, (run_dir, status), result in zip(members, records, results, strict=True):
        try:
            _record_trained(spec, out, result, status)
        except Exception as error:  # a failed validation is recorded, never fatal for the protocol
            _record_failure(status, error)
        on_done(_write_status(run_dir, status, started))


def training_status(result) -> dict[str, Any]:
    """The part of a run's ``status.json`` that comes from :func:`bridge.training.train`."""
    status = {"status": result.status, "final": result.final_metrics}
    if result.status == "diverged":
        status["diverged"] = result.diverged
    return status


def validation_status(report: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's ``status.json`` that comes from :func:`bridge.validation.validate`."""
    return {"backend": report["backend"], "verdict": report["verdict"], "simulators": report["simulators"]}


def _pending(runs: list[RunSpec], out: Path) -> tuple[list[RunSpec], list[dict[str, Any]]]:
    pending, done = [], []
    for spec in runs:
        status = run_status(out / spec.run_id)
        if status and status.get("status") in FINISHED_STATUSES:
            done.append(status)
        else:
            pending.append(spec)
    return pending, done


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="runs", unit="run", file=sys.stderr, disable=not enabled)


def _run_local(specs: list[RunSpec], out: Path, processes: int, on_done: Callable[[dict], None]) -> None:
    threads = max(1, (os.cpu_count() or 1) // processes)
    # spawn, not fork: forking a process whose torch/OpenMP thread pools are
    # running can deadlock the child.
    with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(execute_run, spec.to_dict(), str(out), threads): spec for spec in specs}
        for future in as_completed(futures):
            spec = futures[future]
            try:
                on_done(future.result())
            except Exception as error:  # the worker process itself died
                status = {"run_id": spec.run_id, "status": "failed", "error": f"worker lost: {error!r}"}
                write_json(out / spec.run_id / "status.json", status)
                on_done(status)


def _run_dask(specs: list[RunSpec], out: Path, client, on_done: Callable[[dict], None]) -> None:
    from distributed import as_completed as dask_as_completed

    # pure=False: a re-submitted run must execute again, not reuse a cached result.
    futures = {
        client.submit(
            execute_run,
            spec.to_dict(),
            str(out),
            1,
            pure=False,
            key=f"run-{spec.condition}-{spec.seed}-{time.time_ns()}",
        ): spec
        for spec in specs
    }
    for future in dask_as_completed(list(futures)):
        spec = futures[future]
        try:
            on_done(future.result())
        except Exception as error:  # worker lost more often than the scheduler allows
            status = {"run_id": spec.run_id, "status": "failed", "error": f"dask: {error!r}"}
            write_json(out / spec.run_id / "status.json", status)
            on_done(status)


def run_protocol(
    protocol: Protocol,
    out_dir: str | Path,
    *,
    processes: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    batch_runs: bool | None = None,
) -> list[dict[str, Any]]:
    """Run all pending runs of ``protocol`` under ``out_dir``; returns every run's status.

    Parameters
    ----------
    processes : int, optional
        Local process pool size (default: 1 process using all cores; the
        trainer's tensor operations already use the cores).
    workers : int, optional
        Start a Dask ``LocalCluster`` with this many single-threaded workers.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); one that
        cannot be reached within :data:`SCHEDULER_CONNECT_TIMEOUT_S` is a
        :class:`SchedulerError`.
    batch_runs : bool, optional
        Train the runs of one network shape together as one batched model, in
        this process (:mod:`bridge.batched_training`; docs/gpu.md, "Many runs as
        one"). Default: on where the runs train on CUDA, off on the CPU.

    Raises
    ------
    ValueError
        ``processes`` or ``workers`` is not a positive int, or both
        ``workers`` and ``scheduler`` are given, or ``batch_runs`` with an executor
        (``processes``, ``workers``, ``scheduler``).
    bridge.train_config.ConfigError
        A run's config is invalid.
    biosim.records.OutputLocationError
        ``out_dir`` cannot be created or written.
    SchedulerError
        ``scheduler`` cannot be reached.
    biosim.locks.DirectoryLockedError
        Another process runs a protocol in ``out_dir`` (the message names it).

    All of these are raised before anything is written under ``out_dir``
    (but the lock file, in an ``out_dir`` that exists). The lock of
    ``out_dir`` (:mod:`biosim.locks`) is held until every run has ended.
    """
    if workers is not None and scheduler is not None:
        raise ValueError("give either workers (a local Dask cluster) or scheduler (an existing one), not both")
    for name, value, what in (("processes", processes, "local processes"), ("workers", workers, "Dask workers")):
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"{name}: expected a positive number of {what}, got {value!r}")
    # Every run's TrainConfig is built (and checked) here, before anything is written.
    runs = protocol.runs()
    if batch_runs is None:
        batch_runs = bool(runs) and all(spec.config.device == "cuda" for spec in runs)
    if batch_runs:
        executors = (("processes", processes), ("workers", workers), ("scheduler", scheduler))
        given = [name for name, value in executors if value is not None]
        if given:
            raise ValueError(
                f"{given[0]}: batched runs train together in this process; give no executor, or train the runs "
                "one by one (batch_runs=False, --no-batch-runs)"
            )
    out = Path(out_dir)
    check_writable_dir(out, "protocol output directory")
    what, purpose = "protocol output directory", f"protocol run {protocol.name} (tier {protocol.tier})"
    with contextlib.ExitStack() as stack:
        # One protocol process per output directory, or two would train the same pending runs. An existing
        # one is locked before its run statuses are read; a new one once created. The workers lock each run
        # directory too (bridge.training): another lock file, so the two never conflict.
        locked = out.is_dir()
        if locked:
            stack.enter_context(directory_lock(out, what, purpose))
        pending, statuses = _pending(runs, out)
        client = None
        if pending and scheduler is not None:
            client = stack.enter_context(_connect(scheduler))  # an unreachable scheduler fails before any write
        out.mkdir(parents=True, exist_ok=True)
        if not locked:
            stack.enter_context(directory_lock(out, what, purpose))
            pending, statuses = _pending(runs, out)  # as another process may have left them meanwhile
        # What ran, how to run it again, with which code and libraries: the report page's header.
        record = {"protocol": protocol.to_dict(), **run_provenance(protocol, out), "versions": library_versions()}
        write_json(out / "protocol.json", record)
        bar = stack.enter_context(
            contextlib.closing(_progress_bar(len(pending) + len(statuses), len(statuses), progress))
        )

        def on_done(status: dict[str, Any]) -> None:
            statuses.append(status)
            bar.update(1)
            bar.set_postfix_str(f"{status.get('run_id')}: {status.get('status')}")

        if not pending:
            pass
        elif batch_runs:
            _run_batched(pending, out, False, on_done)
        elif client is not None:
            _run_dask(pending, out, client, on_done)
        elif workers is not None:
            from distributed import Client, LocalCluster

            with (
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                ) as cluster,
                Client(cluster) as local_client,
            ):
                _run_dask(pending, out, local_client, on_done)
        else:
            _run_local(pending, out, processes or 1, on_done)
    order = {spec.run_id: k for k, spec in enumerate(runs)}
    return sorted(statuses, key=lambda s: order.get(s.get("run_id"), len(order)))


def _connect(scheduler: str):
    """A Dask ``Client`` of the running cluster at ``scheduler``, or a :class:`SchedulerError` within the timeout."""
    from distributed import Client

    timeout = SCHEDULER_CONNECT_TIMEOUT_S
    try:
        return Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError, TypeError) as error:
        raise SchedulerError(
            f"scheduler {scheduler!r}: no Dask scheduler could be reached there within {timeout:g} s "
            f"({type(error).__name__}: {error}); start the cluster first (README, SLURM) and pass its "
            "address, e.g. tcp://HOST:8786"
        ) from None


def summarize_statuses(statuses: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status.get("status", "unknown")] = counts.get(status.get("status", "unknown"), 0) + 1
    return counts
