"""Atomic training checkpoints and the random-number state they carry.

A checkpoint is one ``torch.save`` file written to a temporary name in the
target directory, flushed to disk and then renamed over the old one
(``os.replace`` is atomic on POSIX), so a run killed at any moment leaves
either the previous checkpoint or the new one, never a torn file.

Everything in a checkpoint is plain data (tensors, numbers, strings, lists,
dicts), so it loads with ``torch.load(..., weights_only=True)``: the numpy
RNG state's key array is stored as a tensor for that reason.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biosim.records import atomic_output

__all__ = [
    "CHECKPOINT_NAME",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "capture_rng_state",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
"""File name of a run's checkpoint inside its run directory."""
CHECKPOINT_FORMAT = 1
"""Version of the checkpoint layout written by :mod:`bridge.training`."""

RECOVERY = (
    "to recover: if the run has finished (final.json and weights.npz are present) its results do not need "
    "the checkpoint; otherwise delete {path} and run the same command again, which restarts the run from "
    "epoch 0 in the same directory"
)
"""How to recover from a damaged checkpoint (``{path}`` is filled in)."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or is not a checkpoint; the message names the file and how to recover."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: damaged checkpoint ({problem}); {RECOVERY.format(path=path)}")
        self.path = path
        self.problem = problem


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    Parameters
    ----------
    path : str or Path
        Destination; its directory is created if missing.
    payload : dict
        Plain data: tensors, numbers, strings, and lists/tuples/dicts of them.

    Returns
    -------
    Path
        ``path``.
    """
    with atomic_output(path, "wb") as handle:
        torch.save(payload, handle)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU (``weights_only=True``).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    CheckpointError
        ``path`` is empty, truncated, not a torch file, or holds anything but
        plain data (which ``weights_only=True`` refuses: loading it otherwise
        could run arbitrary code). The message names the file and how to
        recover; torch's own message is not repeated, since it suggests
        loading untrusted files unsafely.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(path, "a directory, not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "the file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(path, "not a checkpoint written by biosim: the safe loader refused its content") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as error:
        first = str(error).split(". ")[0].strip()
        detail = "" if not first or "weights_only" in first else f": {first}"
        raise CheckpointError(path, f"truncated or not a torch file, {type(error).__name__}{detail}") from None


def capture_rng_state() -> dict[str, Any]:
    """States of the process-wide generators: torch (CPU and CUDA), numpy's legacy one, Python's ``random``.

    The trainer draws from explicitly seeded generators only; these global
    states are saved so that third-party code drawing from them also resumes
    identically.
    """
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)  # noqa: NPY002 (saved, never drawn from)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (restored, never drawn from)
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(item) for item in value] if isinstance(value, tuple) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(item) for item in value) if isinstance(value, list) else value
