"""Command line: ``biosim <command> ...``; the top of the layers (biosim <- bridge <- protocols <- this module)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from biosim.backends import BACKENDS

__all__ = ["main"]


# --- argument types: a bad value is an argparse error naming the flag (exit status 2) -------------


def _int_at_least(minimum: int, expected: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    parse.__name__ = expected
    return parse


_positive_int = _int_at_least(1, "a positive integer")


def _brian2_processes(text: str) -> int | str:
    return "auto" if text.strip().lower() == "auto" else _int_at_least(1, "a positive integer or 'auto'")(text)


_seed = _int_at_least(0, "a non-negative integer (a seed)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _init_spec(text: str) -> str | float:
    """``canonical``, ``zero`` or a finite multiple >= 0 of the canonical draw."""
    if text in ("canonical", "zero"):
        return text
    expected = "'canonical', 'zero' or a number >= 0 (a multiple of the canonical draw)"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The figure formats, checked against matplotlib's before any work (a ValueError naming --formats)."""
    from matplotlib.backend_bases import FigureCanvasBase

    supported = sorted(FigureCanvasBase.get_supported_filetypes())
    unknown = [f for f in formats if f not in supported]
    if unknown:
        raise ValueError(f"--formats: unknown figure format(s) {unknown}; supported: {', '.join(supported)}")
    return tuple(formats)


def _preset_names() -> tuple[str, ...]:
    from bridge.presets import PRESETS

    return tuple(PRESETS)


def _protocol_names() -> list[str]:
    """The protocols' names without importing them (each is the module of its catalog, protocols.registry)."""
    import pkgutil

    from protocols import catalog

    return [m.name for m in pkgutil.iter_modules(catalog.__path__) if not m.name.startswith("_")]


def _options(args: argparse.Namespace) -> dict:
    """The parsed options as plain data (for run records)."""
    return {key: value for key, value in vars(args).items() if not callable(value)}


def _simulate(args: argparse.Namespace) -> int:
    from biosim.analysis import gamma_peak, population_spectrum
    from biosim.backends import check_backend
    from biosim.plotting import raster_and_spectrum_figure
    from biosim.records import check_writable_dir, write_json, write_run_record
    from biosim.simulation import simulate_test_digits
    from bridge.presets import get_preset

    params = get_preset(args.preset).network
    out = Path(args.out)
    check_backend(args.backend)  # cuda_standalone without a GPU fails here, not after an nvcc build
    check_writable_dir(out, "--out")  # before the simulation, so its results cannot be lost
    if args.build_dir:
        check_writable_dir(args.build_dir, "--build-dir")
    result, summary, _ = simulate_test_digits(
        backend=args.backend,
        n_trials=args.n_trials,
        seed=args.seed,
        params=params,
        tier=args.tier,
        idx_directory=args.idx_dir,
        build_dir=args.build_dir or (out / "build" / args.backend),
        progress=not args.quiet,
        layout=args.trial_layout,
        max_copies=args.max_copies,
    )
    sim = params.simulation
    frequencies, power = population_spectrum(result.spikes_e, sim.dt_ms, sim.transient_ms)
    figure = out / f"simulate_{args.backend}.png"
    metrics = {
        **summary.as_dict(),
        "backend": args.backend,
        "timings_s": result.timings_s,
        "figure": str(figure),
    }
    # The numbers first: a failure while drawing cannot lose the simulation.
    write_json(out / f"spectrum_{args.backend}.json", {"frequency_hz": frequencies, "power": power})
    write_run_record(
        out, command="simulate", config={**_options(args), "network": params.to_dict()}, seed=args.seed, metrics=metrics
    )
    raster_and_spectrum_figure(
        result,
        frequencies,
        power,
        gamma_peak(frequencies, power),
        figure,
        transient_ms=sim.transient_ms,
        title=f"untrained PING network ({args.preset} preset), {args.backend}, {args.n_trials} test digits, "
        f"seed {args.seed}",
    )
    if args.json:
        print(json.dumps(metrics, default=str))
    else:
        print(
            f"{args.backend}: {summary.n_trials} trials  E {summary.rate_e_hz:.2f} Hz  I {summary.rate_i_hz:.2f} Hz  "
            f"gamma peak {summary.gamma_peak_hz:.1f} Hz (x{summary.gamma_relative_power:.1f} over band median)\n"
            f"figure: {figure}\nrecord: {out / 'run.json'}"
        )
    return 0


def _add_trial_layout(p: argparse.ArgumentParser) -> None:
    """``--trial-layout`` and ``--max-copies``: how the Brian2 run lays out its trials (biosim.copies)."""
    from biosim.copies import LAYOUTS

    p.add_argument(
        "--trial-layout",
        default="sequential",
        choices=LAYOUTS,
        help="Brian2 trials back to back in one network (sequential, default) or at once as copies of the "
        "network (copies; the same spikes)",
    )
    p.add_argument(
        "--max-copies",
        type=_positive_int,
        default=None,
        help="with --trial-layout copies: at most this many copies per Brian2 run (default: all trials in one)",
    )


def _add_simulate(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="run test digits through the untrained network in Brian2")
    p.add_argument(
        "--backend", default="cpp_standalone", choices=BACKENDS, help="Brian2 backend (default: %(default)s)"
    )
    p.add_argument("--n-trials", type=_positive_int, default=20, help="number of test digits (default: %(default)s)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of weights, input spikes and initial state")
    p.add_argument(
        "--preset",
        default="project",
        choices=_preset_names(),
        help="network parameters: project (default) or reference (the study's constants and 25 Hz input)",
    )
    p.add_argument("--tier", default="medium", help="data tier whose test digits are used (default: %(default)s)")
    p.add_argument("--idx-dir", default=None, help="directory with the MNIST IDX files (default: embedded digits)")
    p.add_argument("--out", default="results/simulate", help="output directory (default: %(default)s)")
    p.add_argument("--build-dir", default=None, help="standalone project directory (default: OUT/build/BACKEND)")
    _add_trial_layout(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=_simulate)


def _crosscheck(args: argparse.Namespace) -> int:
    from biosim.backends import check_backend
    from biosim.records import check_writable_dir, write_run_record
    from bridge.crosscheck import crosscheck

    for backend in args.backend:
        check_backend(backend)
    check_writable_dir(args.out, "--out")
    reports = []
    for backend in args.backend:
        report = crosscheck(
            backend=backend,
            n_trials=args.n_trials,
            seed=args.seed,
            build_dir=Path(args.out) / "build" / backend,
            progress=not args.quiet,
            layout=args.trial_layout,
            max_copies=args.max_copies,
        )
        reports.append(report)
        if not args.json:
            print(f"{backend} vs mirror (float64), {args.n_trials} trials:")
            for population, counts in report["spikes"].items():
                first = counts["first_divergence_step"]
                where = "none" if first is None else f"step {first} of trial {counts['first_divergence_trial']}"
                print(
                    f"  {population.upper()}: {counts['reference_spikes']} spikes in Brian2, "
                    f"{counts['identical']} identical, {counts['missing']} missing, {counts['extra']} extra; "
                    f"first divergence: {where}"
                )
            print(f"  max relative membrane difference before divergence: {report['max_relative_v_difference']:.2e}")
    write_run_record(
        args.out, command="crosscheck", config=_options(args), seed=args.seed, metrics={"reports": reports}
    )
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports))
    return 0 if all(r["identical"] for r in reports) else 1


def _add_crosscheck(subparsers) -> None:
    p = subparsers.add_parser("crosscheck", help="compare Brian2 and the PyTorch mirror spike for spike (float64)")
    p.add_argument("--backend", nargs="+", default=["cpp_standalone"], choices=BACKENDS, help="Brian2 backend(s)")
    p.add_argument("--n-trials", type=_positive_int, default=20)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", default="results/crosscheck")
    _add_trial_layout(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_crosscheck)


_TRAIN_FLAGS = {
    "n_train": "--n-train",
    "n_test": "--n-test",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "engine": "--engine",
    "dtype": "--dtype",
    "device": "--device",
    "surrogate": "--surrogate",
    "surrogate_slope": "--surrogate-slope",
    "surrogate_unit_mv": "--surrogate-unit-mv",
    "grad_clip_mode": "--grad-clip-mode",
    "w_out_unit": "--w-out-unit",
    "stream_digits": "--stream-digits",
    "stream_settle_ms": "--stream-settle-ms",
    "tier": "--tier",
    "seed": "--seed",
    "init_w_ei": "--init-w-ei",
    "init_w_ie": "--init-w-ie",
    "init_rank_w_ei": "--init-rank-w-ei",
    "init_rank_w_ie": "--init-rank-w-ie",
    "init_rank_spectrum": "--init-rank-spectrum",
    "idx_directory": "--idx-dir",
    "record_every": "--record-every",
    "feedback_rank": "--feedback-rank",
}
"""TrainConfig field -> the ``biosim train`` flag that sets it (named in config errors)."""


def _train(args: argparse.Namespace) -> int:
    from bridge.presets import get_preset
    from bridge.train_config import ConfigError, TrainConfig
    from bridge.training import train

    overrides = {
        key: getattr(args, key)
        for key in (
            "n_train",
            "n_test",
            "epochs",
            "batch_size",
            "engine",
            "dtype",
            "device",
            "surrogate",
            "surrogate_slope",
            "surrogate_unit_mv",
            "grad_clip_mode",
            "w_out_unit",
            "stream_digits",
            "stream_settle_ms",
            "record_every",
            "init_rank_w_ei",
            "init_rank_w_ie",
            "init_rank_spectrum",
            "feedback_rank",
        )
        if getattr(args, key) is not None
    }
    preset = get_preset(args.preset or "project")
    try:
        config = TrainConfig(
            **{
                **preset.config_fields(),  # the recipe first; every flag given applies on top
                "tier": args.tier,
                "seed": args.seed,
                "init_w_ei": args.init_w_ei,
                "init_w_ie": args.init_w_ie,
                "train_w_ei": args.train_loop,
                "train_w_ie": args.train_loop,
                "idx_directory": args.idx_dir,
                **overrides,
            }
        )
    except ConfigError as error:
        raise ConfigError(_with_flags(str(error))) from None
    try:
        result = train(config, args.run_dir, progress=not args.quiet)
    except ConfigError as error:
        message = str(error)  # a field that does not fit the data or the machine: name its flag too
        raise ConfigError(_with_flags(message) if message.startswith("TrainConfig.") else message) from None
    final = result.final_metrics
    summary = {
        "status": result.status,
        "run_dir": str(args.run_dir),
        **{k: final.get(k) for k in ("epoch", "test_accuracy", "rate_e_hz", "rate_i_hz", "gamma_peak_hz")},
    }
    print(json.dumps(summary) if args.json else "  ".join(f"{k}={v}" for k, v in summary.items()))
    return 0 if result.status == "completed" else 1


def _with_flags(message: str) -> str:
    """``TrainConfig.surrogate_slope: ...`` -> ``--surrogate-slope (TrainConfig.surrogate_slope): ...``."""
    for field, flag in _TRAIN_FLAGS.items():
        message = message.replace(f"TrainConfig.{field}:", f"{flag} (TrainConfig.{field}):")
        message = message.replace(f"TrainConfig.{field} ", f"{flag} (TrainConfig.{field}) ")
    return message


_RECORD_EVERY_HELP = (
    "keep trajectory records in RUN_DIR/trajectory: the loop matrices every K Adam steps, loss, rates and "
    "gradient norms every step (docs/learning_dynamics.md; default: none)"
)


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train the mirror with surrogate gradients (resumes if RUN_DIR has a checkpoint)"
    )
    p.add_argument("run_dir", type=Path, help="output directory of the run")
    p.add_argument(
        "--tier",
        default="cpu",
        help="training tier: smoke, cpu, medium (the study's size: 1600 digits, 100 epochs, batch 256), full "
        "(default: %(default)s)",
    )
    p.add_argument("--seed", type=_seed, default=42)
    p.add_argument(
        "--preset",
        choices=_preset_names(),
        help="recipe to start from: project (the default settings) or reference (the study's; docs/reference.md); "
        "the flags below apply on top",
    )
    p.add_argument(
        "--init-w-ei", type=_init_spec, default="canonical", help="canonical, zero or a multiple of canonical"
    )
    p.add_argument(
        "--init-w-ie", type=_init_spec, default="canonical", help="canonical, zero or a multiple of canonical"
    )
    for matrix in ("w-ei", "w-ie"):
        p.add_argument(
            f"--init-rank-{matrix}",
            type=_positive_int,
            help="rank of the initial matrix at the draw's Frobenius norm (default: the full draw; "
            "docs/learning_dynamics.md, Low-rank initialisation)",
        )
    p.add_argument(
        "--init-rank-spectrum",
        choices=("truncated", "flat"),
        help="a rank-r loop keeps the draw's top r singular values (truncated, the default) or r equal ones (flat)",
    )
    p.add_argument("--train-loop", action="store_true", help="let W_EI and W_IE train (default: frozen loop)")
    p.add_argument("--n-train", type=_positive_int)
    p.add_argument("--n-test", type=_positive_int)
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int, help="at most --n-train (default: the tier's)")
    p.add_argument(
        "--engine",
        default="fused",
        choices=("fused", "eager"),
        help="time-loop engine: fused (default, 12 to 25x faster) or eager (the plain autograd loop)",
    )
    p.add_argument("--dtype", choices=("float32", "float64"))
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--surrogate", help="fast_sigmoid (default), sigmoid, atan, triangle")
    p.add_argument("--surrogate-slope", type=_positive_float, help="slope of the surrogate (1/unit, default 1)")
    p.add_argument(
        "--surrogate-unit-mv",
        type=_positive_float,
        help="unit of v - v_threshold for the surrogate, in mV (default 1000)",
    )
    p.add_argument(
        "--grad-clip-mode", choices=("per_matrix", "global"), help="how the norm-1 clip applies (default per_matrix)"
    )
    p.add_argument("--w-out-unit", type=_positive_float, help="unit of the trainable readout parameter (default 10)")
    p.add_argument(
        "--stream-digits",
        type=_positive_int,
        help="digits per trial, back to back without a reset, one readout window each (default 1)",
    )
    p.add_argument(
        "--stream-settle-ms",
        type=float,
        help="start of each digit left out of its readout window, ms (default 0; needs --stream-digits > 1)",
    )
    p.add_argument("--idx-dir", default=None, help="directory with the MNIST IDX files (default: embedded digits)")
    p.add_argument("--record-every", type=_positive_int, help=_RECORD_EVERY_HELP)
    p.add_argument(
        "--feedback-rank",
        type=int,
        help="error feedback into E through a fixed random matrix of this rank instead of W_out "
        "(docs/learning_dynamics.md; default 0: exact BPTT)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_train)


def _validate(args: argparse.Namespace) -> int:
    from bridge.validation import format_report, validate

    report = validate(
        args.run_dir,
        backend=args.backend,
        progress=not args.quiet,
        layout=args.trial_layout,
        max_copies=args.max_copies,
    )
    print(json.dumps(report, default=str) if args.json else format_report(report))
    return 0 if report["verdict"] == "pass" else 1


def _add_validate(subparsers) -> None:
    p = subparsers.add_parser("validate", help="run a trained network in Brian2 and in the mirror and compare")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--backend", default="cpp_standalone", choices=BACKENDS)
    _add_trial_layout(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_validate)


def _dynamics(args: argparse.Namespace) -> int:
    from bridge.learning_dynamics import write_dynamics_summary

    if args.window < 0:
        raise ValueError(f"--window: must be >= 0 steps, got {args.window}")
    path = write_dynamics_summary(
        args.run_dir, args.out, representations=not args.no_representations, window=args.window
    )
    print(path.read_text() if args.json else f"learning-dynamics summary: {path}")
    return 0


def _add_dynamics(subparsers) -> None:
    p = subparsers.add_parser(
        "dynamics",
        help="learning-dynamics metrics of a run trained with --record-every, as JSON (docs/learning_dynamics.md)",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, help="where to write the summary (default: RUN_DIR/dynamics.json)")
    p.add_argument(
        "--no-representations",
        action="store_true",
        help="skip the representation change (it runs the mirror on the test digits twice)",
    )
    p.add_argument(
        "--window", type=int, default=5, help="steps before a change point where a gradient jump counts (default 5)"
    )
    p.add_argument("--json", action="store_true", help="print the summary on stdout")
    p.set_defaults(handler=_dynamics)


def _protocol_run(args: argparse.Namespace) -> int:
    from protocols.protocol import get_protocol
    from protocols.report import write_report
    from protocols.runner import run_protocol, summarize_statuses

    repeated = sorted({s for s in args.seeds or () if args.seeds.count(s) > 1})
    if repeated:  # the same run twice, counted twice in every mean
        raise ValueError(f"--seeds: {', '.join(map(str, repeated))} given more than once; give each seed once")
    formats = _check_formats(args.formats)  # before any run, not after all of them
    overrides = {"dtype": args.dtype} if args.dtype else {}
    if args.record_every:
        overrides["record_every"] = args.record_every
    if args.epochs:  # every run's config records it; the tier's number otherwise
        overrides["epochs"] = args.epochs
    if args.device:
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
        overrides["device"] = args.device
    protocol = get_protocol(
        args.name,
        tier=args.tier,
        seeds=tuple(args.seeds) if args.seeds else None,
        conditions=tuple(args.conditions) if args.conditions else None,
        preset=args.preset,
        **overrides,
    )
    recipe = "" if protocol.preset == "project" else f"_{protocol.preset}"
    # Runs of another length are other runs: a directory of their own, never mixed with the tier's.
    length = f"_{args.epochs}epochs" if args.epochs else ""
    out = Path(args.out or f"results/{args.name}_{protocol.tier}{recipe}{length}")
    statuses = run_protocol(
        protocol,
        out,
        processes=args.processes,
        workers=args.workers,
        scheduler=args.scheduler,
        progress=not args.quiet,
        batch_runs=args.batch_runs,
    )
    table, figures = write_report(out, formats=formats)
    counts = summarize_statuses(statuses)
    print(table.read_text())
    print(f"runs: {counts}\ntable: {table} (and table.csv)\nfigures: {figures}\nreport: {out / 'report.md'}")
    return 0 if counts.get("failed", 0) == 0 else 1


def _protocol_report(args: argparse.Namespace) -> int:
    from protocols.report import write_report

    table, figures = write_report(Path(args.out), formats=_check_formats(args.formats))
    print(table.read_text())
    print(f"table: {table}\nfigures: {figures}\nreport: {Path(args.out) / 'report.md'}")
    return 0


def _protocol_list(args: argparse.Namespace) -> int:
    from biosim.tiers import TIERS
    from protocols.protocol import estimated_minutes
    from protocols.registry import DEFINITIONS

    tiers = [t for t in TIERS if t != "smoke"]  # smoke is the tests' tier, with a scaled-down network
    lines = [
        "Estimated wall time with each protocol's default seeds on 2 CPU cores, two runs at a time "
        "(rough: per-trial costs measured on the project's machine; full needs the IDX files and a GPU):"
    ]
    for name, record in DEFINITIONS.items():
        conditions, defaults = record.conditions, record.defaults
        cost = ", ".join(f"{t} {_duration(estimated_minutes(name, t))}" for t in tiers)
        seeds = " ".join(map(str, defaults.seeds))
        own = "".join(
            (
                f"; {defaults.preset} recipe" if defaults.preset != "project" else "",
                f"; trajectory records every {defaults.record_every} Adam steps" if defaults.record_every else "",
            )
        )
        lines.append(
            f"\n{name}: {len(conditions)} conditions x seeds {seeds}; default tier {defaults.tier}; {cost}{own}"
        )
        lines += [f"  {c.name:<40} {c.description}" for c in conditions]
    print("\n".join(lines))
    return 0


def _duration(minutes: float) -> str:
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.0f} h" if minutes < 48 * 60 else f"{minutes / 1440:.0f} days"


def _add_protocol(subparsers) -> None:
    p = subparsers.add_parser("protocol", help="run an experiment protocol and draw its figures and table")
    actions = p.add_subparsers(dest="action", required=True)
    run = actions.add_parser("run", help="train, validate in Brian2, draw and tabulate every run")
    run.add_argument(
        "name",
        help=f"protocol (biosim protocol list): {', '.join(_protocol_names())}",
    )
    run.add_argument(
        "--tier",
        help="smoke, cpu (a quick pipeline check), study, study256 (the study tier's Adam steps at batch 256), "
        "survey, medium, full (default: the protocol's, see biosim protocol list)",
    )
    run.add_argument("--seeds", type=_seed, nargs="+", help="each once (default: the protocol's, biosim protocol list)")
    run.add_argument("--conditions", nargs="+", help="a subset of the protocol's conditions (default: all)")
    run.add_argument("--dtype", choices=("float32", "float64"), help="training dtype (default: float32)")
    run.add_argument("--device", choices=("cpu", "cuda"), help="training device (default: cpu)")
    run.add_argument(
        "--record-every",
        type=_positive_int,
        help=_RECORD_EVERY_HELP.replace("default: none", "default: the protocol's, none for most; protocol list"),
    )
    run.add_argument(
        "--epochs",
        type=_positive_int,
        help="epochs of every run, recorded in its config (default: the tier's; biosim protocol list); "
        "the default output directory then ends in _NEPOCHS",
    )
    run.add_argument(
        "--preset",
        choices=_preset_names(),
        help="recipe every run starts from: project or reference (the study's; docs/reference.md); default: the "
        "protocol's (project for most, see biosim protocol list)",
    )
    executor = run.add_mutually_exclusive_group()
    executor.add_argument("--processes", type=_positive_int, help="local process pool size (default: 1)")
    executor.add_argument("--workers", type=_positive_int, help="start a Dask LocalCluster with N workers")
    executor.add_argument("--scheduler", help="join a running Dask cluster at this address")
    run.add_argument(
        "--batch-runs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the runs of one network shape together as one batched model, in this process "
        "(default: on with --device cuda, off on the CPU; docs/gpu.md, Many runs as one)",
    )
    run.add_argument("--out", help="output directory (default: results/NAME_TIER[_PRESET][_NEPOCHS])")
    run.add_argument("--formats", nargs="+", default=["png"], help="figure formats (png, pdf, svg)")
    run.add_argument("--quiet", action="store_true")
    run.set_defaults(handler=_protocol_run)
    report = actions.add_parser("report", help="redraw figures, table and report.md of an existing protocol directory")
    report.add_argument("out")
    report.add_argument("--formats", nargs="+", default=["png"])
    report.set_defaults(handler=_protocol_report)
    listing = actions.add_parser("list", help="every protocol with its conditions and estimated cost per tier")
    listing.set_defaults(handler=_protocol_list)


def _bench(args: argparse.Namespace) -> int:
    from biosim.records import write_json, write_run_record
    from bridge.memory import check_bench_memory

    # Sizes that cannot fit are refused, naming the flags, before the benchmark imports or allocates anything.
    check_bench_memory(args.n_steps, args.batch_size or (256 if args.device == "cuda" else 32))
    from benchmarks.bench import run_benchmark

    result = run_benchmark(
        device=args.device,
        batch_size=args.batch_size,
        n_steps=args.n_steps,
        include_brian2=not args.no_brian2,
        n_brian2_trials=args.n_brian2_trials,
        brian2_processes=args.brian2_processes,
        batch_sweep=not args.no_batch_sweep,
        progress=not args.quiet,
    )
    if args.out:
        write_json(Path(args.out) / "bench.json", result)
        headline = ("speedup", "memory_ratio", "grad_max_rel_diff", "brian2_trials_per_s", "brian2_total_s")
        write_run_record(
            args.out,
            command="bench",
            config=result["settings"],
            seed=result["settings"]["seed"],
            metrics={key: result[key] for key in headline if key in result},
        )
    print(json.dumps(result, default=str) if args.json else _bench_summary(result))
    return 0


def _bench_summary(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        f"speedup            {r['speedup']:.1f}x  (fused {r['fused_sample_steps_per_s']:.0f} vs eager "
        f"{r['eager_sample_steps_per_s']:.0f} sample-steps/s; batch {s['batch_size']}, {s['n_steps']} steps, "
        f"threads {r['fused_threads']} / {r['eager_threads']})",
    ]
    if "roofline_fraction" in r:
        lines.append(
            f"roofline_fraction  {r['roofline_fraction']:.2f}  (4 n_e n_i flops per trial-step at "
            f"{r['fused_sample_steps_per_s']:.0f} sample-steps/s, against a measured FMA peak of "
            f"{r['fma_peak_flops'] / 1e9:.0f} GFLOP/s on {r['fused_threads']} threads)"
        )
    if "phase_seconds" in r:
        p = r["phase_seconds"]
        lines.append(
            f"phases             forward {p['forward']:.2f} s + backward {p['backward']:.2f} s per batch (wall); "
            f"backward threads: recompute {p['recompute']:.2f} s + adjoint {p['adjoint']:.2f} s"
        )
        share = r["product_share_of_adjoint"]  # None: the backward pass ran no adjoint kernels
        lines.append(
            f"products alone     {r['product_flops_per_s'] / 1e9:.0f} GFLOP/s on one thread "
            f"({r['product_fraction_of_peak']:.2f} of its FMA peak; {r['product_rows']} trials per block)"
            + (f", {share:.2f} of the adjoint's time" if share is not None else "")
        )
    if "fused_sample_steps_per_s_by_batch" in r:
        by_batch = ", ".join(f"{b}: {rate:.0f}" for b, rate in r["fused_sample_steps_per_s_by_batch"].items())
        lines.append(f"fused by batch     {by_batch}  (sample-steps/s at each batch size, best of 2)")
    path = r.get("machine", {}).get("fused_product_path")
    if path is not None:
        lines.append(f"fused products     {path}  (float32 products with the recurrent weights; BIOSIM_KERNEL_ISA)")
    if "memory_ratio" in r:
        lines.append(
            f"memory_ratio       {r['memory_ratio']:.3f}  (fused {r['fused_peak_memory_bytes'] / 2**20:.0f} MiB vs "
            f"eager {r['eager_peak_memory_bytes'] / 2**20:.0f} MiB for one BPTT batch)"
        )
    lines.append(
        f"grad_max_rel_diff  {r['grad_max_rel_diff']:.1e}  (float64, batch {s['grad_check_batch']}, "
        f"{s['grad_check_steps']} steps)"
    )
    if "operations_per_step" in r:
        counts = r["operations_per_step"]
        before, after = counts["before"], counts["after"]
        lines.append(
            f"operations per step: forward {before['forward']:.1f}, backward {before['backward']:.1f} (torch path, "
            f"counted)\n                   after: forward {after['forward']:.1f}, backward {after['backward']:.1f}, "
            f"captured: forward {after['forward_captured']:.2f}, recompute {after['recompute_captured']:.2f} host "
            f"launches ({counts['after_is']})"
        )
    if "brian2_trials_per_s" in r:
        agree = "yes" if r["brian2_spike_counts_match_fused_float64"] else "NO"
        lines.append(
            f"brian2             {s['n_brian2_trials']} trials on cpp_standalone"
            + (f" in {s['brian2_parts']} processes" if s.get("brian2_parts", 1) > 1 else "")
            + f": build {r['brian2_build_s']:.1f} s"
            f" + simulate {r['brian2_simulate_s']:.1f} s = {r['brian2_total_s']:.1f} s "
            f"({r['brian2_trials_per_s']:.1f} trials/s simulating); spike counts equal to the mirror's: {agree}"
        )
    if "brian2_error" in r:
        lines.append(f"brian2             failed: {r['brian2_error']}")
    if "brian2_cuda_total_s" in r:
        lines.append(
            f"brian2 (cuda)      build {r['brian2_cuda_build_s']:.1f} s + simulate {r['brian2_cuda_simulate_s']:.1f} s"
            + (f" ({r['brian2_cuda_speedup']:.1f}x cpp_standalone's simulation)" if "brian2_cuda_speedup" in r else "")
        )
    if "brian2_cuda_error" in r:
        lines.append(f"brian2 (cuda)      failed: {r['brian2_cuda_error']}")
    return "\n".join(lines)


def _add_bench(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="fused vs eager BPTT throughput and memory, gradient agreement, Brian2 trials/s"
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--batch-size", type=_positive_int, help="default 32 on CPU, 256 on CUDA")
    p.add_argument("--n-steps", type=_positive_int, default=2000)
    p.add_argument("--n-brian2-trials", type=_positive_int, default=400)
    p.add_argument("--no-brian2", action="store_true", help="skip the Brian2 evaluation")
    p.add_argument(
        "--no-batch-sweep", action="store_true", help="skip timing the fused engine at 1/4, 1/2, 1 and 2x the batch"
    )
    p.add_argument(
        "--brian2-processes",
        type=_brian2_processes,
        help="processes sharing the Brian2 build, each simulating part of the trials: N or auto "
        "(default: $BIOSIM_BRIAN2_PROCESSES, else 1)",
    )
    p.add_argument("--out", help="also write bench.json here")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_bench)


COMMANDS: list[Callable] = [
    _add_simulate,
    _add_crosscheck,
    _add_train,
    _add_validate,
    _add_dynamics,
    _add_protocol,
    _add_bench,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biosim", description="COBA PING networks in Brian2 and PyTorch.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from biosim.environment import check_environment

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # A misspelt or unusable setting is refused before any work (before a run directory is written).
        check_environment()
        return args.handler(args)
    except (ValueError, OSError) as error:
        # Bad input (a value, a file, a location that cannot be written): one clear line, no traceback.
        print(f"biosim {args.command}: error: {_describe(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"biosim {args.command}: interrupted; {_interrupted(args)}", file=sys.stderr)
        return 130


def _interrupted(args: argparse.Namespace) -> str:
    """What an interrupted command kept, and how to go on."""
    if args.command != "train":
        return "what was already written is kept"
    checkpoint = Path(args.run_dir) / "checkpoint.pt"
    if checkpoint.is_file():
        return (
            f"{checkpoint} holds the last finished epoch; the same command resumes from it "
            "(the epoch under way is trained again, with the same result)"
        )
    return f"no epoch was finished in {args.run_dir}; the same command starts the run again"


def _describe(error: BaseException) -> str:
    """The message of a user error; an ``OSError`` with the path it concerns."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        return f"{error.filename}: {error.strerror}"
    return str(error) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
