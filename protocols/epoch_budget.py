"""How many epochs of a protocol fit in a budget of wall time: a short, timed probe of its runs.

``biosim protocol run --epochs N`` trains every run for N epochs (recorded in
each run's config). The GPU check (``scripts/gpu_check.sh``) has a few minutes
for the protocol, so it picks N here: :func:`probe` trains every run of the
protocol (its own configs, so the same batched shape and the same device) for
one epoch of ``probe_batches`` Adam steps, in a scratch directory, and times

- one Adam step of all the runs together (forward and backward of every time
  step, the optimizer steps): the last step of the epoch, as the first pays
  the warm-up (kernels, allocator);
- the evaluation of one digit by one run, from epoch 0 (each run's untrained
  network on the probe's training digits and one batch of test digits, one run
  after another).

:func:`choose_epochs` then predicts the protocol's own epochs from them,

    epoch 0   = evaluation per digit x runs x (n_train + n_test)
    one epoch = Adam steps per epoch x Adam step + evaluation per digit x runs x n_test

and gives the number of epochs that fit in the budget after a start-up
reserve and epoch 0, each epoch counted with a margin: at least 1, at most the
tier's. The probe's runs are not the protocol's (fewer digits, one epoch) and
are not kept as results.

    python -m protocols.epoch_budget probe dale_pruning --tier medium --preset reference --device cuda \\
        --work DIR --out probe.json
    python -m protocols.epoch_budget choose --probe probe.json --budget-s 150    # prints N
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .protocol import Protocol, get_protocol

__all__ = ["MARGIN", "STARTUP_S", "choose_epochs", "probe"]

MARGIN = 1.15
"""Each predicted epoch is counted 15 % longer than the probe says (the probe's steps are few)."""

STARTUP_S = 30.0
"""Seconds reserved for the protocol process's start: imports, digits, the runs' models, the device's warm-up."""


def probe(protocol: Protocol, work_dir: str | Path, *, probe_batches: int = 3) -> dict[str, Any]:
    """Train every run of ``protocol`` together for one epoch of ``probe_batches`` Adam steps, timed.

    The runs train as the protocol's batched path trains them
    (:func:`bridge.batched_training.train_batched`), in ``work_dir/probe``
    (emptied first). Returns the timings and the sizes they are for.
    """
    import torch

    from bridge.batched_training import train_batched

    if probe_batches < 2:
        raise ValueError(f"probe_batches: expected at least 2 (the first step pays the warm-up), got {probe_batches}")
    specs = protocol.runs()
    first = specs[0].config.resolved()
    n_probe = probe_batches * first.batch_size
    n_probe_test = min(first.n_test, first.batch_size)  # one evaluation batch: the time per digit is the figure
    root = Path(work_dir) / "probe"
    if root.exists():  # a finished probe run would be returned as stored, untimed
        shutil.rmtree(root)
    jobs = [
        (
            dataclasses.replace(spec.config, n_train=n_probe, n_test=n_probe_test, epochs=1),
            root / spec.run_id.replace("/", "_"),
        )
        for spec in specs
    ]
    cuda = first.device == "cuda"
    forward_done: list[float] = []

    def hook(context) -> None:  # after the first run's part of each shared training forward pass
        if cuda:
            torch.cuda.synchronize()
        forward_done.append(time.perf_counter())

    started = time.perf_counter()
    train_batched(jobs, hooks=[hook] + [None] * (len(jobs) - 1))
    total = time.perf_counter() - started
    walls: dict[int, list[float]] = {0: [], 1: []}
    for _, run_dir in jobs:
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            if line.strip():
                epoch = json.loads(line)
                walls.setdefault(int(epoch["epoch"]), []).append(float(epoch["wall_time_s"]))
    steps = [round(b - a, 4) for a, b in zip(forward_done, forward_done[1:], strict=False)]
    if not steps:
        raise RuntimeError(f"probe: {len(forward_done)} training forward passes seen; expected {probe_batches}")
    runs = len(jobs)
    n_steps = first.network_params().simulation.n_steps
    evaluated = runs * (n_probe + n_probe_test)  # epoch 0: each run's untrained network on its digits
    return {
        "runs": runs,
        "device": first.device,
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
        "dtype": first.dtype,
        "batch_size": first.batch_size,
        "n_steps": n_steps,
        "probe_n_train": n_probe,
        "probe_n_test": n_probe_test,
        "probe_batches": probe_batches,
        "protocol_n_train": first.n_train,
        "protocol_n_test": first.n_test,
        "protocol_epochs": first.epochs,
        "adam_steps_per_epoch": -(-first.n_train // first.batch_size),
        "adam_step_s": steps[-1],
        "adam_step_s_each": steps,
        "time_step_ms": 1000.0 * steps[-1] / n_steps,
        "what_a_step_is": (
            f"one Adam step of all {runs} runs together: batch {first.batch_size}, forward and backward through "
            f"{n_steps} time steps, each run's optimizer; time_step_ms is that over the {n_steps} time steps"
        ),
        "epoch0_s": sum(walls[0]),
        "evaluation_s_per_digit_and_run": sum(walls[0]) / evaluated,
        "probe_epoch_s": max(walls[1]) if walls[1] else None,
        "probe_s": total,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def choose_epochs(
    timings: dict[str, Any], budget_s: float, *, margin: float = MARGIN, startup_s: float = STARTUP_S
) -> dict[str, Any]:
    """The protocol's predicted epoch 0 and epoch from :func:`probe`'s ``timings``, and the epochs that fit.

    ``epochs`` is at least 1 (a run with no epoch is no run) and at most the tier's.
    """
    evaluation = float(timings["evaluation_s_per_digit_and_run"]) * int(timings["runs"])
    epoch0 = evaluation * (int(timings["protocol_n_train"]) + int(timings["protocol_n_test"]))
    epoch = int(timings["adam_steps_per_epoch"]) * float(timings["adam_step_s"])
    epoch += evaluation * int(timings["protocol_n_test"])
    room = budget_s - startup_s - epoch0
    fit = math.floor(room / (epoch * margin)) if epoch > 0 else int(timings["protocol_epochs"])
    epochs = max(1, min(int(timings["protocol_epochs"]), fit))
    return {
        "budget_s": budget_s,
        "startup_s": startup_s,
        "margin": margin,
        "predicted_epoch0_s": epoch0,
        "predicted_epoch_s": epoch,
        "predicted_training_s": startup_s + epoch0 + epochs * epoch,
        "epochs": epochs,
        "epochs_that_fit": fit,
        "tier_epochs": int(timings["protocol_epochs"]),
    }


def _probe_command(args: argparse.Namespace) -> int:
    overrides = {"device": args.device} if args.device else {}
    if args.dtype:
        overrides["dtype"] = args.dtype
    protocol = get_protocol(
        args.name,
        tier=args.tier,
        seeds=tuple(args.seeds) if args.seeds else None,
        conditions=tuple(args.conditions) if args.conditions else None,
        preset=args.preset,
        **overrides,
    )
    result = probe(protocol, args.work, probe_batches=args.probe_batches)
    _write(args.out, {"probe": result})
    print(json.dumps(result, indent=2))
    return 0


def _choose_command(args: argparse.Namespace) -> int:
    record = json.loads(Path(args.probe).read_text())
    choice = choose_epochs(record["probe"], args.budget_s)
    _write(args.probe, {**record, "choice": choice})
    print(choice["epochs"])
    return 0


def _write(path: str | Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # two merges at once never share one
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocols.epoch_budget", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("probe", help="time one short epoch of every run of the protocol, trained together")
    p.add_argument("name", help="protocol (biosim protocol list)")
    p.add_argument("--tier")
    p.add_argument("--preset", default="project")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--conditions", nargs="+")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--dtype", choices=("float32", "float64"))
    p.add_argument("--probe-batches", type=int, default=3, help="Adam steps of the probe's epoch (default 3)")
    p.add_argument("--work", required=True, help="scratch directory (the probe's runs go to WORK/probe)")
    p.add_argument("--out", required=True, help="the timings, as JSON")
    p.set_defaults(handler=_probe_command)
    p = commands.add_parser("choose", help="the epochs that fit in --budget-s; printed, and added to the JSON")
    p.add_argument("--probe", required=True, help="the JSON file of the probe")
    p.add_argument("--budget-s", type=float, required=True, help="seconds the protocol's training may take")
    p.set_defaults(handler=_choose_command)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
