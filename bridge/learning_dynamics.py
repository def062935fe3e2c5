"""The learning-dynamics summary of a run with trajectory records (``biosim dynamics RUN``).

Reads ``RUN_DIR/trajectory`` (:mod:`bridge.trajectory`), applies the metrics
of :mod:`biosim.analysis.learning_dynamics` and, for the representation
change, runs the mirror on the run's test digits with the initial and the
trained weights. Definitions: docs/learning_dynamics.md.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biosim.analysis import learning_dynamics as ld
from biosim.records import write_json
from biosim.streams import StreamSet

from .evaluation import _forward
from .feeding import test_stream_set, test_trial_set
from .model import PINGModel
from .run_records import load_model, read_run_config
from .torch_settings import flushed_denormals
from .train_config import TrainConfig, build_model
from .trajectory import load_trajectory

__all__ = ["DYNAMICS_NAME", "dynamics_summary", "e_representations", "write_dynamics_summary"]

DYNAMICS_NAME = "dynamics.json"
TRANSITION_SERIES = ("loss", "rate_i_hz")
"""The per-step series searched for change points."""


@torch.no_grad()
@flushed_denormals()
def e_representations(model: PINGModel, trials, *, batch_size: int) -> np.ndarray:
    """Per-trial E rate vectors (trials x n_e, Hz over the whole trial) of ``model`` on ``trials`` (CPU).

    ``trials``: a :class:`biosim.inputs.TrialSet`, or a :class:`biosim.streams.StreamSet` (one row per stream).
    """
    dtype = model.w_out.dtype
    streams = isinstance(trials, StreamSet)
    n_trials = trials.n_streams if streams else trials.n_trials
    n_steps = trials.trials.n_steps if streams else trials.n_steps
    seconds = n_steps * model.params.simulation.dt_ms / 1000.0
    rows = []
    for start in range(0, n_trials, batch_size):
        positions = np.arange(start, min(start + batch_size, n_trials))
        output, _, _ = _forward(model, trials, positions, dtype, torch.device("cpu"))
        rows.append(output.spike_counts_e.detach().to(torch.float64).numpy() / seconds)
    return np.concatenate(rows)


def _representation_change(run_dir: Path, config: TrainConfig) -> dict[str, Any]:
    """Linear CKA between the E representations of the initial and the trained network on the test digits."""
    cpu = dataclasses.replace(config, device="cpu")
    trials = test_trial_set(cpu) if config.stream_digits == 1 else test_stream_set(cpu)
    batch_size = max(1, config.batch_size // config.stream_digits)
    initial = e_representations(build_model(cpu, cpu.network_params()), trials, batch_size=batch_size)
    trained = e_representations(load_model(run_dir, device="cpu"), trials, batch_size=batch_size)
    return {
        "linear_cka": ld.linear_cka(initial, trained),
        "n_trials": int(initial.shape[0]),
        "rate_e_hz": {"initial": float(initial.mean()), "trained": float(trained.mean())},
    }


def _transitions(scalars: dict[str, np.ndarray], window: int) -> dict[str, Any]:
    """Change points (as Adam steps), plateau lengths and preceding gradient jumps of each transition series."""
    steps = scalars.get("step")
    if steps is None or len(steps) == 0:
        return {}
    grad = scalars["grad_norm"]
    out: dict[str, Any] = {"window_steps": window}
    for name in TRANSITION_SERIES:
        series = scalars[name]
        if not np.isfinite(series).all():
            out[name] = {"skipped": "the series holds null values"}
            continue
        points = ld.change_points(series)
        out[name] = {
            "change_point_steps": [int(steps[p]) for p in points],
            "plateau_lengths": ld.plateau_lengths(points, len(series)),
            "gradient_jump_before": ld.gradient_jumps_before(points, grad, window=window),
        }
    return out


def dynamics_summary(run_dir: str | Path, *, representations: bool = True, window: int = 5) -> dict[str, Any]:
    """All learning-dynamics metrics of a run with trajectory records (JSON-ready; NaN as None).

    Parameters
    ----------
    run_dir : str or Path
        A run trained with ``record_every`` > 0.
    representations : bool
        Also run the mirror on the test digits for the representation change
        (linear CKA between the initial and the trained network; needs a finished run's weights).
    window : int
        Steps before a change point in which a gradient-norm jump counts as preceding it.
    """
    run_dir = Path(run_dir)
    trajectory = load_trajectory(run_dir)
    steps = trajectory.steps.tolist()
    matrices = trajectory.matrices
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "record_steps": steps,
        "racing_w_ei": ld.racing_summary(matrices["w_ei"], steps),
        "w_in_norms": {
            "lottery": ld.spearman(trajectory.w_in_norms[0], trajectory.w_in_norms[-1]),
            "top_share": {
                "initial": ld.top_share(trajectory.w_in_norms[0]),
                "final": ld.top_share(trajectory.w_in_norms[-1]),
            },
        },
        "rank": {
            name: {
                "effective_rank": [ld.effective_rank(m) for m in series],
                "effective_rank_centred": [ld.effective_rank(m, centred=True) for m in series],
                "effective_rank_of_change": ld.effective_rank(series[-1].astype(np.float64) - series[0]),
                "relative_change": ld.relative_change(series[0], series[-1]),
            }
            for name, series in matrices.items()
        },
        "transitions": _transitions(trajectory.scalars, window),
    }
    if representations:
        summary["representation"] = _representation_change(run_dir, read_run_config(run_dir / "config.json"))
    return _jsonable(summary)


def write_dynamics_summary(run_dir: str | Path, out: str | Path | None = None, **options: Any) -> Path:
    """Write :func:`dynamics_summary` to ``out`` (default ``RUN_DIR/dynamics.json``); return the path."""
    path = Path(out) if out is not None else Path(run_dir) / DYNAMICS_NAME
    write_json(path, dynamics_summary(run_dir, **options))
    return path


def _jsonable(value: Any) -> Any:
    """NaN and infinities as None, numpy scalars as Python numbers, all the way down."""
    if isinstance(value, dict):
        return {key: _jsonable(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
