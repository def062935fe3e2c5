"""The steps of ``scripts/gpu_check.sh``, the prepared GPU check (one process per step).

The shell script installs what it can, then runs each step in its own
process under its own timeout, so that one failure or hang loses only that
step's figures. Every step writes one small JSON file; ``merge`` joins them
(and the script's notes on the install and each step's exit, and the
protocol's per-epoch metrics) into the one JSON file the check reports.
The protocol steps run ``protocols.epoch_budget`` and ``biosim protocol
run``; the steps here:

``env``
    Versions and devices as the interpreter that runs the steps sees them.
``train``
    Medium-tier training of one run (1600 digits, batch 256, fused engine,
    float32) through :func:`bridge.training.train`; the seconds of each
    epoch as the trainer records them.
``brian2``
    400 test digits (untrained canonical weights, seed 0, as ``biosim
    crosscheck``) on one Brian2 backend, one build, in one layout
    (back to back or as copies of the network) and over some processes; the
    spikes go to an ``.npz`` file for ``compare``.
``compare``
    The float64 mirror on the same trials (CPU, the reference of
    ``biosim crosscheck`` and ``biosim validate``) against each spike file:
    the spike-identity report (:mod:`bridge.spike_identity`) per file.
``merge``
    The one JSON file: steps, install notes, the protocol's runs (per-epoch
    metrics, validation) and a summary with the speed ratios and the GPU
    targets (medium epoch <= 2 s, ``cuda_standalone`` >= 20x ``cpp_standalone``).

``merge`` uses the standard library only, so it runs with any Python 3. The
no-GPU path of the script needs no Python at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "main", "merge", "summarize"]

TARGETS = {"medium_epoch_s": 2.0, "cuda_standalone_speedup": 20.0}
"""The GPU targets on an H100/H200: a medium epoch in at most 2 s, ``cuda_standalone`` at least 20x."""

STEP_ORDER = (
    "protocol_probe",
    "protocol",
    "protocol_validate",
    "brian2_cuda_copies",
    "brian2_cpp_p16",
    "brian2_cpp_p1",
    "crosscheck",
    "bench",
    "bench_fused",
    "train_epoch",
)
"""The steps in the order the script runs them (and the report lists them)."""

PROTOCOL_EPOCH_FIELDS = (
    "epoch",
    "wall_time_s",
    "elapsed_s",
    "loss",
    "train_accuracy",
    "test_accuracy",
    "rate_e_hz",
    "rate_i_hz",
    "gamma_peak_hz",
    "w_ei_pruned_fraction",
    "w_ie_pruned_fraction",
    "retries",
)
"""What the report keeps of each epoch of each protocol run (``metrics.jsonl`` has more)."""

SEED = 0
"""Seed of the weights, input spikes and initial states of the Brian2 trials (as ``biosim crosscheck``)."""


def _write(path: str | Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # two merges at once never share one
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(temporary, path)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return {"unreadable": f"{path}: {error}"}


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# --- env -----------------------------------------------------------------------


def _env(args: argparse.Namespace) -> int:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    for name in ("torch", "numpy", "brian2", "brian2cuda", "mlxtend", "nvidia-curand", "cython", "sympy"):
        info[f"{name}_version"] = _version(name)
    try:
        import torch

        info["torch_cuda_build"] = torch.version.cuda
        info["torch_cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            info["cuda_device_name"] = torch.cuda.get_device_name(0)
            info["cuda_device_count"] = torch.cuda.device_count()
            properties = torch.cuda.get_device_properties(0)
            info["cuda_device_memory_gib"] = round(properties.total_memory / 2**30, 1)
            info["cuda_compute_capability"] = f"{properties.major}.{properties.minor}"
    except Exception as error:  # noqa: BLE001  (report what the interpreter has, whatever breaks)
        info["torch_error"] = f"{type(error).__name__}: {error}"
    try:
        import brian2cuda  # noqa: F401

        from biosim.cuda_toolchain import find_toolchain

        toolchain = find_toolchain()
        info["cuda_toolchain"] = {k: str(v) for k, v in toolchain.__dict__.items()}
    except Exception as error:  # noqa: BLE001
        info["cuda_toolchain_error"] = f"{type(error).__name__}: {error}"
    _write(args.out, info)
    return 0


# --- train ---------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    import torch

    from biosim.params import NetworkParams
    from bridge.train_config import TrainConfig
    from bridge.training import train

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device")
    sizes = {k: v for k, v in (("n_train", args.n_train), ("n_test", args.n_test)) if v is not None}
    if args.n_train is not None:
        sizes["batch_size"] = min(256, args.n_train)
    config = TrainConfig(
        tier="medium", epochs=args.epochs, device=args.device, engine="fused", dtype="float32", **sizes
    )
    run_dir = Path(args.work) / f"train_medium_{args.device}"
    if run_dir.exists():  # a finished run would be returned without training
        import shutil

        shutil.rmtree(run_dir)
    forward_done: dict[int, list[float]] = {}
    started = time.perf_counter()

    def hook(context) -> None:  # after each training forward pass
        if cuda:
            torch.cuda.synchronize()
        forward_done.setdefault(context.epoch, []).append(round(time.perf_counter() - started, 4))

    result = train(config, run_dir, progress=False, hook=hook)
    total = time.perf_counter() - started
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    walls = {int(e["epoch"]): e["wall_time_s"] for e in epochs}
    trained = [walls[k] for k in sorted(walls) if k > 0]
    resolved = config.resolved()
    _write(
        args.out,
        {
            "status": result.status,
            "config": {k: getattr(resolved, k) for k in ("tier", "n_train", "n_test", "batch_size", "epochs")}
            | {"device": args.device, "engine": "fused", "dtype": "float32"},
            "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
            "torch_version": torch.__version__,
            "seconds_per_epoch": trained[-1] if trained else None,
            "seconds_per_epoch_first": trained[0] if trained else None,
            "epoch_wall_s": trained,
            "epoch0_evaluation_s": walls.get(0),
            "what_an_epoch_includes": (
                f"the trainer's wall_time_s: {-(-resolved.n_train // resolved.batch_size)} Adam steps over "
                f"{resolved.n_train} digits (batch {resolved.batch_size}, forward + backward through all "
                f"{NetworkParams().simulation.n_steps} steps) and the evaluation of the {resolved.n_test} test "
                "digits; the first epoch also pays the warm-up (kernels, allocator)"
            ),
            "forward_done_s": {str(k): v for k, v in forward_done.items()},
            "test_accuracy": [e.get("test_accuracy") for e in epochs],
            "loss": [e.get("loss") for e in epochs],
            "total_s": total,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        },
    )
    return 0 if result.status == "completed" else 1


# --- brian2 --------------------------------------------------------------------


def _trials_and_weights(n_trials: int):
    from biosim.params import NetworkParams
    from biosim.simulation import load_test_trials
    from biosim.weights import init_weights

    params = NetworkParams()
    return params, init_weights(params, seed=SEED).effective(), load_test_trials(params, n_trials, seed=SEED)


def _brian2(args: argparse.Namespace) -> int:
    import brian2
    import numpy as np

    from biosim.backends import run_trials

    params, weights, trials = _trials_and_weights(args.n_trials)
    started = time.perf_counter()
    # The copies layout runs in one process (processes stays unset there).
    processes = args.processes if args.layout == "sequential" else None
    result = run_trials(
        params,
        weights,
        trials,
        backend=args.backend,
        build_dir=args.build_dir,
        progress=True,
        processes=processes,
        layout=args.layout,
        max_copies=args.max_copies,
    )
    wall = time.perf_counter() - started
    arrays = {}
    for population in ("e", "i"):
        trains = getattr(result, f"spikes_{population}")
        for key in ("trial", "step", "neuron"):
            arrays[f"{population}_{key}"] = getattr(trains, key)
        arrays[f"{population}_n_neurons"] = np.int64(trains.n_neurons)
    arrays["n_trials"], arrays["n_steps"] = np.int64(trials.n_trials), np.int64(params.simulation.n_steps)
    arrays["scores"] = result.scores
    Path(args.spikes).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.spikes, **arrays)
    timings = result.timings_s
    _write(
        args.out,
        {
            "backend": args.backend,
            "layout": args.layout,
            "max_copies": args.max_copies,
            "n_trials": trials.n_trials,
            "seed": SEED,
            "build_s": timings.get("build"),
            "simulate_s": timings.get("simulate"),
            "total_s": (timings.get("build") or 0.0) + (timings.get("simulate") or 0.0),
            "wall_s": wall,
            "trials_per_s": trials.n_trials / timings["simulate"] if timings.get("simulate") else None,
            "spikes_e": len(result.spikes_e),
            "spikes_i": len(result.spikes_i),
            "brian2_version": brian2.__version__,
            "openmp_threads": brian2.prefs.devices.cpp_standalone.openmp_threads,
            "processes": result.meta.get("build", {}).get("processes", 1) if processes else 1,
            "precompiled_header": result.meta.get("build", {}).get("precompiled_header"),
            "extra_make_args_unix": list(brian2.prefs.devices.cpp_standalone.extra_make_args_unix),
            "spikes_file": str(args.spikes),
        },
    )
    return 0


# --- compare -------------------------------------------------------------------


def _load_spikes(path: Path):
    import numpy as np

    from biosim.results import SpikeTrains

    data = np.load(path)
    n_trials, n_steps = int(data["n_trials"]), int(data["n_steps"])
    return {
        population: SpikeTrains.from_arrays(
            data[f"{population}_trial"],
            data[f"{population}_step"],
            data[f"{population}_neuron"],
            n_neurons=int(data[f"{population}_n_neurons"]),
            n_trials=n_trials,
            n_steps=n_steps,
        )
        for population in ("e", "i")
    }


def _compare(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import torch

    from bridge.crosscheck import compare_spikes
    from bridge.simulate import run_mirror
    from bridge.spike_identity import identity_report

    params, weights, trials = _trials_and_weights(args.n_trials)
    mirror = run_mirror(params, weights, trials, dtype=torch.float64, device="cpu")
    report: dict[str, Any] = {
        "reference": "mirror float64 on CPU (fused forward pass, bit-identical to the step loop)",
        "n_trials": trials.n_trials,
        "seed": SEED,
        "mirror_simulate_s": mirror.timings_s.get("simulate"),
        "backends": {},
    }
    for path in sorted(Path(args.spikes_dir).glob("spikes_*.npz")):
        backend = path.stem.removeprefix("spikes_")
        spikes = _load_spikes(path)
        comparisons = [compare_spikes(spikes[p], getattr(mirror, f"spikes_{p}"), p) for p in ("e", "i")]
        identical = sum(c.identical for c in comparisons)
        total = sum(c.identical + c.missing + c.extra for c in comparisons)
        report["backends"][backend] = {
            "identical": all(c.missing == 0 and c.extra == 0 for c in comparisons),
            "identity_fraction": identical / total if total else 1.0,
            "spikes": {c.population: {**asdict(c), "identical_fraction": c.identical_fraction} for c in comparisons},
            "trials": identity_report(
                {p: getattr(mirror, f"spikes_{p}") for p in ("e", "i")},
                spikes,
                params=params,
                weights=weights,
                trials=trials,
            ),
        }
    _write(args.out, report)
    return 0


# --- merge ---------------------------------------------------------------------


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _tail(path: Path, lines: int = 25) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line[:600] for line in text.replace("\r", "\n").splitlines() if line.strip()][-lines:]


def _epochs_from_metrics(path: Path) -> dict[str, Any] | None:
    """What a training step that was stopped (timeout) had recorded: its finished epochs."""
    try:
        epochs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    trained = [e["wall_time_s"] for e in epochs if e.get("epoch", 0) > 0 and "wall_time_s" in e]
    if not trained:
        return None
    return {
        "partial": f"the step was stopped; these epochs had finished ({path})",
        "seconds_per_epoch": trained[-1],
        "seconds_per_epoch_first": trained[0],
        "epoch_wall_s": trained,
    }


def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:  # a line being written right now
            continue
    return [record for record in records if isinstance(record, dict)]


def protocol_runs(protocol_dir: Path) -> dict[str, Any]:
    """Each run of the protocol under ``protocol_dir``: its epochs (:data:`PROTOCOL_EPOCH_FIELDS`), status, validation.

    Read while the protocol runs too (a run's ``metrics.jsonl`` gains a line per epoch).
    """
    runs: dict[str, Any] = {}
    for metrics in sorted(protocol_dir.glob("*/seed_*/metrics.jsonl")):
        run_dir = metrics.parent
        run: dict[str, Any] = {
            "epochs": [{k: e.get(k) for k in PROTOCOL_EPOCH_FIELDS if k in e} for e in _jsonl(metrics)]
        }
        status = _read(run_dir / "status.json") if (run_dir / "status.json").exists() else {}
        run["status"] = status.get("status", "running or stopped")
        run["elapsed_s"] = status.get("elapsed_s")
        validation = status.get("validation") or {}
        if validation:
            run["validation"] = {"backend": validation.get("backend"), "verdict": validation.get("verdict")}
            report = run_dir / f"validation_{validation.get('backend')}.json"
            if report.exists():
                record = _read(report)
                run["validation"]["timings_s"] = record.get("timings_s")
                run["validation"]["spike_identity_float64"] = record.get("spike_identity_float64")
                run["validation"]["accuracy"] = {
                    name: (simulator or {}).get("accuracy")
                    for name, simulator in (record.get("simulators") or {}).items()
                }
        if status.get("error"):
            run["error"] = status["error"]
        runs[f"{run_dir.parent.name}/{run_dir.name}"] = run
    return runs


def _protocol_summary(steps: dict[str, Any], runs: dict[str, Any]) -> dict[str, Any]:
    probe = (steps.get("protocol_probe") or {}).get("result") or {}
    timings, choice = probe.get("probe") or {}, probe.get("choice") or {}
    # The runs advance in rounds of one epoch; a run's wall_time_s runs from the round's start to the end of its
    # own evaluation, so the round's time is the largest of them.
    rounds: dict[int, float] = {}
    for run in runs.values():
        for epoch in run["epochs"]:
            number, wall = epoch.get("epoch"), _number(epoch.get("wall_time_s"))
            if isinstance(number, int) and number > 0 and wall is not None:
                rounds[number] = max(rounds.get(number, 0.0), wall)
    each = [round(rounds[k], 3) for k in sorted(rounds)]
    done = [max((e.get("epoch") or 0 for e in run["epochs"]), default=0) for run in runs.values()]
    validated = [run["validation"] for run in runs.values() if run.get("validation")]
    brian2 = [((v.get("timings_s") or {}).get("brian2") or {}) for v in validated]
    brian2_s = [sum(_number(x) or 0.0 for x in t.values()) for t in brian2 if t]
    return {
        "protocol_runs": len(runs),
        "protocol_epochs_chosen": choice.get("epochs"),
        "protocol_tier_epochs": choice.get("tier_epochs"),
        "protocol_epochs_done_min": min(done) if done else None,
        "protocol_epoch_s": each[-1] if each else None,
        "protocol_epoch_s_each": each,
        "protocol_predicted_epoch_s": choice.get("predicted_epoch_s"),
        "protocol_adam_step_s": timings.get("adam_step_s"),
        "protocol_time_step_ms": timings.get("time_step_ms"),
        "protocol_runs_completed": sum(run["status"] == "completed" for run in runs.values()),
        "protocol_runs_validated": len(validated),
        "protocol_validation_pass": sum(v.get("verdict") == "pass" for v in validated),
        "protocol_validation_brian2_s_mean": sum(brian2_s) / len(brian2_s) if brian2_s else None,
    }


def _ratio(numerator: Any, denominator: Any) -> float | None:
    numerator, denominator = _number(numerator), _number(denominator)
    return numerator / denominator if numerator and denominator else None


def summarize(steps: dict[str, Any], runs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The headline figures of the steps' results (and the protocol's ``runs``), with the targets and ratios."""

    def result(name: str) -> dict[str, Any]:
        step = steps.get(name) or {}
        return step.get("result") or {}

    summary: dict[str, Any] = _protocol_summary(steps, runs or {})
    train = result("train_epoch")
    if train:
        epoch = _number(train.get("seconds_per_epoch"))
        summary.update(
            medium_epoch_s=epoch,
            medium_epoch_first_s=_number(train.get("seconds_per_epoch_first")),
            medium_epoch_target_s=TARGETS["medium_epoch_s"],
            medium_epoch_meets_target=None if epoch is None else epoch <= TARGETS["medium_epoch_s"],
        )
    cuda, cpp16, cpp1 = result("brian2_cuda_copies"), result("brian2_cpp_p16"), result("brian2_cpp_p1")
    for key, part in (("cuda_copies", cuda), ("cpp_p16", cpp16), ("cpp_p1", cpp1)):
        summary[f"{key}_backend"] = part.get("backend")
        summary[f"{key}_build_s"] = _number(part.get("build_s"))
        summary[f"{key}_simulate_s"] = _number(part.get("simulate_s"))
    # Speed ratios: how many times faster the first simulates than the second (build included: _with_build).
    for name, fast, slow in (
        ("cuda_copies_vs_cpp_p1", cuda, cpp1),
        ("cuda_copies_vs_cpp_p16", cuda, cpp16),
        ("cpp_p16_vs_cpp_p1", cpp16, cpp1),
    ):
        summary[f"speedup_{name}"] = _ratio(slow.get("simulate_s"), fast.get("simulate_s"))
        summary[f"speedup_{name}_with_build"] = _ratio(slow.get("total_s"), fast.get("total_s"))
    speedup = summary["speedup_cuda_copies_vs_cpp_p1"]
    summary["cuda_standalone_speedup_target"] = TARGETS["cuda_standalone_speedup"]
    summary["cuda_standalone_meets_target"] = (
        None
        if speedup is None or cuda.get("backend") != "cuda_standalone"
        else speedup >= TARGETS["cuda_standalone_speedup"]
    )
    for label, comparison in (result("crosscheck").get("backends") or {}).items():
        summary[f"{label}_spikes_identical_to_mirror_float64"] = comparison.get("identical")
        summary[f"{label}_spike_identity_fraction"] = comparison.get("identity_fraction")
        trials = comparison.get("trials") or {}
        summary[f"{label}_identity_verdict"] = trials.get("verdict")
        summary[f"{label}_identical_trials"] = trials.get("identical_trials")
    for step in ("bench", "bench_fused"):
        bench = result(step)
        for key in ("speedup", "fused_sample_steps_per_s", "memory_ratio", "grad_max_rel_diff"):
            if key in bench:
                summary[f"{step}_{key}"] = bench[key]
    summary["steps_not_ok"] = sorted(name for name, step in steps.items() if (step or {}).get("status") != "ok")
    return summary


def merge(
    parts: Path, out: Path, *, meta: dict[str, Any] | None = None, protocol_dir: Path | None = None
) -> dict[str, Any]:
    """Join the step files under ``parts`` (and the protocol's runs under ``protocol_dir``) into ``out``.

    ``parts`` holds, per step ``NAME``, ``NAME.step.json`` (written by the
    script: status, exit code, timeout, seconds, log) and ``NAME.json`` (the
    step's own result, absent if it failed before writing it), plus
    ``install.json`` and ``env.json``. Returns what was written.
    """
    steps: dict[str, Any] = {}
    order = {name: k for k, name in enumerate(STEP_ORDER)}
    for step_file in sorted(parts.glob("*.step.json"), key=lambda p: (order.get(p.name.split(".")[0], 99), p.name)):
        name = step_file.name.removesuffix(".step.json")
        step = _read(step_file)
        result_file = parts / f"{name}.json"
        if result_file.exists():
            step["result"] = _read(result_file)
        elif step.get("metrics_jsonl"):
            partial = _epochs_from_metrics(Path(step["metrics_jsonl"]))
            if partial:
                step["result"] = partial
        if step.get("log"):
            step["log_tail"] = _tail(Path(step["log"]))
        steps[name] = step
    report: dict[str, Any] = {"gpu": True, **(meta or {})}
    for name in ("install", "env"):
        if (parts / f"{name}.json").exists():
            report[name] = _read(parts / f"{name}.json")
    runs = protocol_runs(protocol_dir) if protocol_dir is not None else {}
    report["steps"] = steps
    if protocol_dir is not None:
        report["protocol"] = {"dir": str(protocol_dir), "runs": runs}
    report["summary"] = summarize(steps, runs)
    _write(out, report)
    return report


def _merge(args: argparse.Namespace) -> int:
    meta = json.loads(args.meta) if args.meta else {}
    protocol_dir = Path(args.protocol_dir) if args.protocol_dir else None
    report = merge(Path(args.parts), Path(args.out), meta=meta, protocol_dir=protocol_dir)
    print(json.dumps(report["summary"], indent=2))
    return 0


# --- command line ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("env")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_env)
    p = commands.add_parser("train")
    p.add_argument("--work", required=True, help="directory for the run")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: only to try the step out")
    p.add_argument("--n-train", type=int, help="default: the medium tier's 1600 (smaller only to try the step out)")
    p.add_argument("--n-test", type=int, help="default: the medium tier's 400")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_train)
    p = commands.add_parser("brian2")
    p.add_argument("--backend", required=True, choices=("cpp_standalone", "cuda_standalone"))
    p.add_argument("--n-trials", type=int, default=400)
    p.add_argument("--build-dir", help="project directory (default: biosim's cache of reused ones)")
    p.add_argument(
        "--processes", type=int, default=1, help="cpp_standalone: processes sharing the build (default 1: one program)"
    )
    p.add_argument("--layout", default="sequential", choices=("sequential", "copies"), help="biosim.copies")
    p.add_argument("--max-copies", type=int, help="copies layout: at most this many trials at once")
    p.add_argument("--spikes", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_brian2)
    p = commands.add_parser("compare")
    p.add_argument("--n-trials", type=int, default=400)
    p.add_argument("--spikes-dir", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_compare)
    p = commands.add_parser("merge")
    p.add_argument("--parts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--meta", help="JSON object of top-level fields")
    p.add_argument("--protocol-dir", help="the protocol's output directory: its runs' epochs and validations")
    p.set_defaults(handler=_merge)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
