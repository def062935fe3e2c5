"""What every run writes next to its outputs: config, seed, versions, metrics.

Files are written atomically (temporary file + rename), so a crash never
leaves a half-written record that a later run would trust.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "OutputLocationError",
    "atomic_output",
    "atomic_write_text",
    "check_writable_dir",
    "jsonable",
    "write_json",
    "library_versions",
    "write_run_record",
]

_LIBRARIES = ("biosim", "numpy", "scipy", "brian2", "brian2cuda", "torch", "matplotlib", "mlxtend", "dask")


class OutputLocationError(ValueError):
    """An output directory cannot be created or written; the message names it and why."""


def _write_probe(directory: Path) -> None:
    """Create and remove a temporary file in ``directory`` (raises ``OSError`` if it cannot be written)."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".biosim-write-check-")
    os.close(fd)
    os.unlink(name)


def check_writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Fail fast, before any work, if ``path`` cannot be used as an output directory.

    Nothing is created: the deepest existing part of ``path`` must be a
    directory in which a file can be written (a real write, so it also holds
    for read-only mounts and for root). Raises :class:`OutputLocationError`
    naming ``what``, ``path`` and the reason.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = "it" if existing == path else f"{existing}"
        raise OutputLocationError(f"{what} {path}: cannot be created, {where} is a file, not a directory")
    try:
        _write_probe(existing)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        where = reason if existing == path else f"in {existing}: {reason}"
        raise OutputLocationError(
            f"{what} {path}: cannot write there ({where}); choose another location or fix its permissions"
        ) from None
    return path


@contextmanager
def atomic_output(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one rename.

    A crash or an exception leaves ``path`` as it was (old content or absent)
    and removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as handle:
        handle.write(text)
    return Path(path)


def jsonable(value: Any) -> Any:
    """``json.dumps`` default for numpy values and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=jsonable) + "\n")


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_run_record(
    out_dir: str | Path, *, command: str, config: dict[str, Any], seed: int, metrics: dict[str, Any]
) -> Path:
    """Write ``run.json``: command, resolved config, seed, library versions, metrics."""
    record = {
        "command": command,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "config": config,
        "versions": library_versions(),
        "metrics": metrics,
    }
    return write_json(Path(out_dir) / "run.json", record)
