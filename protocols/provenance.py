"""Where a protocol's results come from: the command that reproduces it, the code's commit, the date.

:func:`run_provenance` is written into ``protocol.json`` when a protocol
runs (:func:`protocols.runner.run_protocol`) and read back by its report
page (:mod:`protocols.report_page`). Without git (an unpacked archive, no
``git`` on the PATH) the commit and dirty flag are null, never an error.
"""

from __future__ import annotations

import shlex
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .protocol import Protocol
from .registry import DEFINITIONS

__all__ = ["code_version", "protocol_command", "run_provenance"]

_CODE_ROOT = Path(__file__).resolve().parents[1]
_GIT_TIMEOUT_S = 10.0


def _git(*args: str, root: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_version(root: Path = _CODE_ROOT) -> dict[str, Any]:
    """``{"commit": HEAD's hash, "dirty": uncommitted changes?}`` of the checkout at ``root``; nulls without git.

    Dirty counts modified and untracked files that git does not ignore (a new
    catalog module changes the code as much as an edited one); ignored outputs
    (``results/``) do not.
    """
    commit = _git("rev-parse", "HEAD", root=root)
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", root=root)
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def protocol_command(protocol: Protocol, out_dir: str | Path | None = None) -> str:
    """The ``biosim protocol run`` command, written out in full, that runs ``protocol`` into ``out_dir``.

    Without ``out_dir`` the command has no ``--out``: it runs into the command's default directory.

    Overrides the command line cannot set (a smaller network, another engine, a
    validation backend: the tests' and the examples') stay in ``protocol.json``.
    """
    parts = ["biosim", "protocol", "run", protocol.name, "--tier", protocol.tier, "--seeds", *map(str, protocol.seeds)]
    record = DEFINITIONS.get(protocol.name)
    if record is None or tuple(protocol.conditions) != tuple(c.name for c in record.conditions):
        parts += ["--conditions", *protocol.conditions]
    # The preset whenever it is not the project's, or the protocol's own default is not (then the
    # project's must be named to be run again).
    if protocol.preset != "project" or (record is not None and record.defaults.preset != "project"):
        parts += ["--preset", protocol.preset]
    for key in ("epochs", "dtype", "device", "record_every"):
        if key in protocol.overrides:
            parts += [f"--{key.replace('_', '-')}", str(protocol.overrides[key])]
    if out_dir is not None:
        parts += ["--out", str(out_dir)]
    return shlex.join(parts)


def run_provenance(protocol: Protocol, out_dir: str | Path) -> dict[str, Any]:
    """``command``, ``code`` (commit, dirty) and ``date`` (UTC) of a protocol run now, for ``protocol.json``."""
    return {
        "command": protocol_command(protocol, out_dir),
        "code": code_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
