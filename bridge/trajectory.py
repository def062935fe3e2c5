"""Trajectory records of a training run: the loop matrices every K Adam steps, scalars every step.

With ``TrainConfig.record_every = K > 0`` the trainer (:mod:`bridge.training`)
keeps, in ``RUN_DIR/trajectory/``:

- ``step_SSSSSSS.npz`` (``np.savez_compressed``, float32), one per record,
  at Adam step 0 (the initialised network), K, 2K, ... and the run's last
  step: ``step`` (int), the effective loop matrices ``w_ei`` (n_e, n_i) and
  ``w_ie`` (n_i, n_e) (and ``w_ee``, ``w_ii`` where the network has them),
  and ``w_in_norms`` (n_e,): per E cell, the norm of its incoming effective
  W_in column. Effective = what the dynamics see (Dale clamp at 0, W_in
  masked); float32 halves the size, and the metrics need no more.
- ``steps.jsonl``, one line per Adam step ``s`` (1, 2, ...): ``step``,
  ``epoch``, ``loss`` (the batch's training loss as minimised, active
  regularisers included), ``rate_e_hz`` and
  ``rate_i_hz`` (the training batch's population rates over the whole trial,
  transient included: they come free with the forward pass), ``grad_norm``
  (global, before clipping) and ``grad_norm_{matrix}`` per trainable matrix.

Resume-safe: records are written as the steps happen, before the epoch's
checkpoint; on a resume or a rollback :meth:`TrajectoryRecorder.truncate`
drops whatever lies beyond the checkpoint's step, and the steps trained again
write the same records again (training is deterministic), so a resumed run
has exactly the records of an uninterrupted one. Recording reads the weights
and the forward pass's spike counts only: it draws no random numbers and
changes no tensor.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biosim.records import atomic_output, atomic_write_text

from .model import RECURRENT_BLOCKS, PINGModel

__all__ = ["STEPS_NAME", "TRAJECTORY_DIR", "Trajectory", "TrajectoryRecorder", "load_trajectory", "record_arrays"]

TRAJECTORY_DIR = "trajectory"
STEPS_NAME = "steps.jsonl"
_RECORD = re.compile(r"^step_(\d+)\.npz$")


def _record_name(step: int) -> str:
    return f"step_{step:07d}.npz"


@torch.no_grad()
def record_arrays(model: PINGModel) -> dict[str, np.ndarray]:
    """The arrays of one record (float32): effective loop matrices and per-E-cell W_in norms."""
    effective = model.effective_weights()
    arrays = {"w_ei": effective.w_ei, "w_ie": effective.w_ie}
    for name in RECURRENT_BLOCKS:
        if name in model.matrices:
            arrays[name] = getattr(effective, name)
    # The norm in float64 of the stored dtype's values, then float32 like the rest.
    w_in = effective.w_in.detach().cpu().to(torch.float64).numpy()
    out = {name: value.detach().cpu().to(torch.float32).numpy() for name, value in arrays.items()}
    out["w_in_norms"] = np.sqrt(np.square(w_in).sum(axis=0)).astype(np.float32)
    return out


class TrajectoryRecorder:
    """Writes a run's trajectory records (see the module docstring).

    Parameters
    ----------
    directory : Path
        ``RUN_DIR/trajectory``.
    every : int
        K: a weight record every K Adam steps (> 0).
    last_step : int
        The run's last Adam step (epochs x batches per epoch); always recorded.
    """

    def __init__(self, directory: Path, every: int, last_step: int) -> None:
        if not (isinstance(every, int) and every > 0):
            raise ValueError(f"record_every must be a positive int, got {every!r}")
        self.directory = Path(directory)
        self.every = every
        self.last_step = last_step

    def truncate(self, done: int) -> None:
        """Drop the records and step lines beyond Adam step ``done`` (the checkpoint's): they are redone."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self.directory.iterdir():
            match = _RECORD.match(path.name)
            if match and int(match.group(1)) > done:
                path.unlink()
        steps = self.directory / STEPS_NAME
        if steps.is_file():
            kept = []
            for line in steps.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash; its step is redone
                if record["step"] <= done:
                    kept.append(line + "\n")
            atomic_write_text(steps, "".join(kept))

    def wants(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last_step

    def record_weights(self, step: int, model: PINGModel) -> None:
        """Write the record of Adam step ``step`` (atomically: a crash leaves no half file)."""
        with atomic_output(self.directory / _record_name(step), "wb") as handle:
            np.savez_compressed(handle, step=np.int64(step), **record_arrays(model))

    def after_step(self, step: int, model: PINGModel, scalars: dict[str, Any]) -> None:
        """After Adam step ``step``: its line in ``steps.jsonl``, and its record if ``step`` is one to keep."""
        finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in scalars.items()}
        line = {"step": step, **finite}
        with open(self.directory / STEPS_NAME, "a") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")
        if self.wants(step):
            self.record_weights(step, model)


@dataclass(frozen=True)
class Trajectory:
    """A run's trajectory records, read back (:func:`load_trajectory`)."""

    steps: np.ndarray
    """Adam step of each weight record, increasing (0 = initialisation)."""
    matrices: dict[str, np.ndarray]
    """``w_ei``, ``w_ie`` (and ``w_ee``, ``w_ii``): (n_records, rows, columns), float32."""
    w_in_norms: np.ndarray
    """(n_records, n_e): per E cell, the norm of its incoming W_in column."""
    scalars: dict[str, np.ndarray]
    """Per-step series of ``steps.jsonl`` (``step``, ``loss``, ``rate_i_hz``, ``grad_norm``, ...); NaN for null."""


def load_trajectory(run_dir: str | Path) -> Trajectory:
    """The trajectory records of ``run_dir`` (trained with ``record_every`` > 0).

    Raises
    ------
    FileNotFoundError
        ``run_dir/trajectory`` holds no record (the run was trained without ``--record-every``).
    """
    directory = Path(run_dir) / TRAJECTORY_DIR
    paths = sorted(p for p in directory.iterdir() if _RECORD.match(p.name)) if directory.is_dir() else []
    if not paths:
        raise FileNotFoundError(
            f"{directory}: no trajectory records; train the run with --record-every K (TrainConfig.record_every)"
        )
    records = []
    for path in paths:
        with np.load(path) as data:
            records.append({name: data[name] for name in data.files})
    steps = np.array([int(r["step"]) for r in records])
    names = [name for name in ("w_ei", "w_ie", *RECURRENT_BLOCKS) if name in records[0]]
    lines = []
    steps_path = directory / STEPS_NAME
    if steps_path.is_file():
        lines = [json.loads(line) for line in steps_path.read_text().splitlines() if line.strip()]
    keys = sorted({key for line in lines for key in line})
    scalars = {key: np.array([np.nan if line.get(key) is None else float(line[key]) for line in lines]) for key in keys}
    return Trajectory(
        steps=steps,
        matrices={name: np.stack([r[name] for r in records]) for name in names},
        w_in_norms=np.stack([r["w_in_norms"] for r in records]),
        scalars=scalars,
    )
