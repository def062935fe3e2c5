"""Validate a trained network in Brian2 against the PyTorch mirror.

The trained weights (``RUN_DIR/weights.npz``, :mod:`biosim.weight_files`) go
into the Brian2 network and run on the run's test digits (same input spikes
and initial states as the trainer's test evaluation). The mirror runs the same
trials twice: in float64, where it should reproduce Brian2 spike for spike,
and in the run's training dtype, the simulator the weights were trained in.

Pass criteria (Brian2 against the float64 mirror; printed with the verdict):

- accuracy within 1 percentage point;
- E and I rates within 5 % (relative to the mirror);
- gamma peak within 2 Hz, or one frequency bin if the grid is coarser;
- float64 spike identity fraction at least 0.99 (E and I spikes together).

The same numbers against the training-dtype mirror are reported too, for
information: float32 rounding makes individual spike trains diverge over a
trial (the network is chaotic), so only the statistics are expected to agree.

Digit streams (``stream_digits > 1``, :mod:`biosim.streams`): both simulators
run the run's test streams (:func:`bridge.feeding.test_stream_set`), each as
one trial of ``stream_digits x trial_ms`` with the same input spikes and the
same initial potentials at the stream's start, and no reset inside it. Both
record the readout potential after every step; ``accuracy`` is then the
fraction of digits whose readout window is classified right (the criterion
above applies to it), and ``accuracy_by_position`` gives it per position in
the stream. Spike identity, rates and gamma peak are over the streams.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biosim.analysis import gamma_peak, population_spectrum
from biosim.backends import check_backend, run_trials
from biosim.copies import check_layout
from biosim.data import DataError
from biosim.locks import directory_lock
from biosim.records import check_writable_dir, write_json
from biosim.results import SimulationResult
from biosim.simulation import summarize
from biosim.streams import StreamSet, accuracy_by_position, stream_params, window_means
from biosim.weight_files import load_weights

from .crosscheck import compare_spikes
from .feeding import data_record, run_digits, test_stream_set, test_trial_set
from .run_records import check_same_data, finished_run_config, is_finished
from .simulate import run_mirror
from .train_config import ConfigError

__all__ = ["Criteria", "validate", "format_report"]


@dataclass(frozen=True)
class Criteria:
    accuracy_pp: float = 1.0
    rate_relative: float = 0.05
    gamma_hz: float = 2.0
    spike_identity: float = 0.99


def _relative(reference: float, candidate: float) -> float:
    if reference == candidate:  # includes both zero (a silent population in both simulators)
        return 0.0
    return abs(reference - candidate) / abs(candidate) if candidate else math.inf


def _absolute(reference: float, candidate: float) -> float:
    if math.isnan(reference) and math.isnan(candidate):  # no spectral peak in either
        return 0.0
    return abs(reference - candidate)


def _agreement(
    reference: dict[str, float], candidate: dict[str, float], resolution_hz: float, criteria: Criteria
) -> dict:
    """Differences of ``reference`` (Brian2) from ``candidate`` (mirror) and whether each passes."""
    checks = {
        "accuracy_pp": (100 * abs(reference["accuracy"] - candidate["accuracy"]), criteria.accuracy_pp),
        "rate_e_relative": (_relative(reference["rate_e_hz"], candidate["rate_e_hz"]), criteria.rate_relative),
        "rate_i_relative": (_relative(reference["rate_i_hz"], candidate["rate_i_hz"]), criteria.rate_relative),
        "gamma_hz": (
            _absolute(reference["gamma_peak_hz"], candidate["gamma_peak_hz"]),
            max(criteria.gamma_hz, resolution_hz),
        ),
    }
    return {
        name: {"difference": value, "tolerance": tolerance, "pass": bool(value <= tolerance)}
        for name, (value, tolerance) in checks.items()
    }


def validate(
    run_dir: str | Path,
    *,
    backend: str = "cpp_standalone",
    build_dir: str | Path | None = None,
    criteria: Criteria = Criteria(),
    progress: bool = True,
    layout: str = "sequential",
    max_copies: int | None = None,
) -> dict[str, Any]:
    """Run the trained network of ``run_dir`` in Brian2 and in the mirror and compare.

    Returns a JSON-ready report (also written to ``RUN_DIR/validation_<backend>.json``)
    with per-simulator accuracy, E and I rates and gamma peak, the agreement
    checks, the verdict and the digits' record (``data``). The test digits
    must be those the run recorded (checked by digest); the run directory's
    lock (:mod:`biosim.locks`) is held throughout. ``layout`` and ``max_copies``: how
    the Brian2 run lays out the trials (:func:`biosim.backends.run_trials`).

    Raises
    ------
    FileNotFoundError
        ``run_dir`` has no ``config.json`` or ``weights.npz``.
    bridge.train_config.ConfigError
        ``config.json`` is not valid JSON or not a valid config (the message names the file),
        or the digits now differ from those it records (the message names both data).
    biosim.weight_files.WeightFileError
        The weight file is malformed (the message names the matrix), or its
        network parameters differ from ``config.json`` (the message names the
        file and the fields).
    biosim.records.OutputLocationError
        ``run_dir`` (or ``build_dir``) cannot be written; checked before Brian2 runs.
    biosim.backends.BackendError
        Unknown backend, or ``cuda_standalone`` without a GPU.
    biosim.locks.DirectoryLockedError
        Another process trains or validates in ``run_dir`` (the message names it); before any work.
    """
    run_dir = Path(run_dir)
    check_backend(backend)  # an unknown backend, or cuda_standalone without a GPU, before any work
    check_layout(layout)
    layout_options = {"layout": layout, "max_copies": max_copies}
    if not run_dir.is_dir():
        return _validate(run_dir, backend, build_dir, criteria, progress, **layout_options)  # says what is missing
    # The report and views go into the run: not while another process trains or validates it.
    with directory_lock(run_dir, "run directory", f"validation on {backend}"):
        return _validate(run_dir, backend, build_dir, criteria, progress, **layout_options)


def _validate(
    run_dir: Path,
    backend: str,
    build_dir: str | Path | None,
    criteria: Criteria,
    progress: bool,
    *,
    layout: str,
    max_copies: int | None,
) -> dict[str, Any]:
    """:func:`validate` once the run directory is locked."""
    config_path, weights_path = run_dir / "config.json", run_dir / "weights.npz"
    # Finished means what it means to biosim train (final.json and weights.npz): a run train would resume is
    # not validated, and a finished run whose config.json is lost is validated with the config train reads.
    if not is_finished(run_dir):
        missing = [path for path in (config_path, run_dir / "final.json", weights_path) if not path.is_file()]
        raise FileNotFoundError(
            "; ".join(f"{path} not found" for path in missing)
            + f": {run_dir} is not a finished training run (biosim train {run_dir} trains or finishes it)"
        )
    config, config_source = finished_run_config(run_dir)
    # Inputs come from the config, the network from the file: they must describe the same network.
    loaded = load_weights(weights_path, params=config.network_params(), params_from=f"the run's {config_source}")
    params = loaded.params
    # The run's own test digits, or none: the digest its config.json recorded must match.
    try:
        digits = run_digits(config)
    except ConfigError as error:  # n_test beyond the tier: a value of the run's config file
        raise ConfigError(f"{config_source}: {str(error).replace('TrainConfig.', 'config.', 1)}") from None
    except DataError as error:  # the digits the config names cannot be read
        raise ConfigError(
            f"{config_source}: config.idx_directory {config.idx_directory!r} (tier {config.tier!r}): {error}"
        ) from None
    data = data_record(config, *digits)
    check_same_data(config_path, data, action="validate")
    check_writable_dir(run_dir, "run directory")  # the report goes there: fail now, not after Brian2
    if build_dir is not None:
        check_writable_dir(build_dir, "Brian2 build directory")
    # Digit streams (stream_digits > 1): both simulators run each stream as one trial, no reset inside it.
    streams = test_stream_set(config) if config.stream_digits > 1 else None
    trials = streams.trials if streams else test_trial_set(config)
    if streams:
        params = stream_params(params, streams.n_digits)
    readout = streams is not None  # per-digit scores come from the readout trace

    brian = run_trials(
        params,
        loaded.effective,
        trials,
        backend=backend,
        build_dir=build_dir,
        progress=progress,
        record_readout=readout,
        layout=layout,
        max_copies=max_copies,
    )
    mirrors: dict[str, SimulationResult] = {
        "float64": run_mirror(params, loaded.stored, trials, dtype=torch.float64, record_readout=readout)
    }
    if config.dtype != "float64":
        dtype = getattr(torch, config.dtype)
        mirrors[config.dtype] = run_mirror(params, loaded.stored, trials, dtype=dtype, record_readout=readout)

    def summary(result: SimulationResult) -> dict[str, Any]:
        if streams:
            return _stream_summary(result, params, streams)
        return summarize(result, params, trials.labels).as_dict()

    sim = params.simulation
    frequencies, power = population_spectrum(brian.spikes_e, sim.dt_ms, sim.transient_ms)
    resolution_hz = gamma_peak(frequencies, power).resolution_hz  # spacing of the grid peaks are read from
    simulators = {f"brian2:{backend}": summary(brian), **{f"mirror:{k}": summary(v) for k, v in mirrors.items()}}
    reference = simulators[f"brian2:{backend}"]
    identity = [
        compare_spikes(brian.spikes_e, mirrors["float64"].spikes_e, "e"),
        compare_spikes(brian.spikes_i, mirrors["float64"].spikes_i, "i"),
    ]
    identical = sum(c.identical for c in identity)
    total = sum(c.identical + c.missing + c.extra for c in identity)
    identity_fraction = identical / total if total else 1.0
    agreement = {
        name: _agreement(reference, simulators[name], resolution_hz, criteria)
        for name in simulators
        if name.startswith("mirror:")
    }
    checks = agreement["mirror:float64"]
    verdict = all(check["pass"] for check in checks.values()) and identity_fraction >= criteria.spike_identity
    report = {
        "run_dir": str(run_dir),
        "backend": backend,
        "n_trials": trials.n_trials,
        "data": data,
        **({"stream": {**streams.describe(), "dt_ms": sim.dt_ms}} if streams else {}),
        "simulators": simulators,
        "agreement": agreement,
        "spike_identity_float64": {
            "fraction": identity_fraction,
            "identical": identical,
            "missing": sum(c.missing for c in identity),
            "extra": sum(c.extra for c in identity),
            "tolerance": criteria.spike_identity,
            "pass": identity_fraction >= criteria.spike_identity,
        },
        "criteria": criteria.__dict__,
        "verdict": "pass" if verdict else "fail",
        "timings_s": {"brian2": brian.timings_s, **{f"mirror:{k}": v.timings_s for k, v in mirrors.items()}},
    }
    write_json(run_dir / f"validation_{backend}.json", report)
    _save_brian2_views(run_dir, backend, brian, params, digit_steps=streams.digit_steps if streams else None)
    return report


def _stream_summary(result: SimulationResult, params, streams: StreamSet) -> dict[str, Any]:
    """:func:`biosim.simulation.summarize` of a stream run, with the accuracy over digits.

    ``accuracy`` is the fraction of digits (readout windows) classified
    right, ``accuracy_by_position`` the same at each position in a stream;
    rates and spectrum are over the streams (transient at each stream's start).
    """
    scores = window_means(result.traces["readout"], streams.n_digits, streams.settle_steps)
    by_position = accuracy_by_position(scores, streams.digit_labels)
    summary = summarize(result, params).as_dict()
    summary["accuracy"] = float(np.mean(np.argmax(scores, axis=2) == streams.digit_labels))
    summary["accuracy_by_position"] = by_position.tolist()
    summary["n_digits"] = int(streams.digit_labels.size)
    return summary


def _save_brian2_views(
    run_dir: Path, backend: str, result: SimulationResult, params, *, digit_steps: int | None = None
) -> None:
    """What the figures draw from Brian2: the raster of test trial 0 and the trial-averaged E spectrum.

    For digit streams, trial 0 is the first stream and ``digit_steps`` (steps per digit) is stored too.
    """
    sim = params.simulation
    frequencies, power = population_spectrum(result.spikes_e, sim.dt_ms, sim.transient_ms)
    write_json(run_dir / f"spectrum_{backend}.json", {"frequency_hz": frequencies, "power": power})
    e_step, e_neuron = result.spikes_e.of_trial(0)
    i_step, i_neuron = result.spikes_i.of_trial(0)
    path = run_dir / f"raster_{backend}.npz"
    temporary = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(
        temporary,
        e_step=e_step,
        e_neuron=e_neuron,
        i_step=i_step,
        i_neuron=i_neuron,
        dt_ms=sim.dt_ms,
        n_e=result.spikes_e.n_neurons,
        n_i=result.spikes_i.n_neurons,
        n_steps=result.spikes_e.n_steps,
        **({"digit_steps": digit_steps} if digit_steps else {}),
    )
    os.replace(temporary, path)


def format_report(report: dict[str, Any]) -> str:
    """The report as a small table with the verdict."""
    stream = report.get("stream")
    if stream:
        lines = [
            f"validation of {report['run_dir']} on {stream['n_streams'] * stream['n_digits']} test digits "
            f"in {stream['n_streams']} streams of {stream['n_digits']} (no reset between digits)"
        ]
    else:
        lines = [f"validation of {report['run_dir']} on {report['n_trials']} test digits"]
    lines.append(f"{'simulator':<24} {'accuracy':>9} {'E (Hz)':>8} {'I (Hz)':>8} {'gamma (Hz)':>11}")
    for name, s in report["simulators"].items():
        accuracy = f"{100 * s['accuracy']:>8.1f}%"
        lines.append(f"{name:<24} {accuracy} {s['rate_e_hz']:>8.2f} {s['rate_i_hz']:>8.2f} {s['gamma_peak_hz']:>11.1f}")
    if stream:
        for name, s in report["simulators"].items():
            positions = " ".join(f"{100 * a:.1f}%" for a in s["accuracy_by_position"])
            lines.append(f"{name:<24} accuracy by position in the stream: {positions}")
    for name, checks in report["agreement"].items():
        role = "criteria" if name == "mirror:float64" else "information"
        parts = [
            f"{key} {c['difference']:.3g} (<= {c['tolerance']:.3g}: {'ok' if c['pass'] else 'FAIL'})"
            for key, c in checks.items()
        ]
        lines.append(f"Brian2 vs {name} [{role}]: " + ", ".join(parts))
    identity = report["spike_identity_float64"]
    lines.append(
        f"float64 spike identity: {identity['fraction']:.4f} ({identity['identical']} identical, "
        f"{identity['missing']} missing, {identity['extra']} extra; "
        f">= {identity['tolerance']}: {'ok' if identity['pass'] else 'FAIL'})"
    )
    lines.append(f"verdict: {report['verdict'].upper()}")
    return "\n".join(lines)
