"""Advisory locks on output directories: one process at a time trains or validates a run, or runs a protocol.

A lock is ``fcntl.flock`` on the file :data:`LOCK_NAME` inside the
directory. The operating system releases it when the holding process ends,
however it ends (an exception, a crash, ``kill -9``), so no lock is ever left
stuck and there is nothing to clean up. The file itself stays: deleting it
could let two processes hold locks on two different files of the same name.

The holder writes its pid, host, command and start time into the file; a
process refused the lock reads them back for its message, and the holder
empties the file when it lets go. A refusal is immediate: nobody waits.

The locks are advisory (they keep out other biosim processes, not other
programs), taken on a file descriptor that child processes started with
``exec`` do not inherit (Python's default), so a compiler or a worker started
by the holder cannot keep a lock alive after it. A directory inside another
(a run directory inside a protocol folder) has its own lock file, so the two
locks never conflict. On NFS, Linux implements ``flock`` with the server's
byte-range locks, which hold across hosts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .records import OutputLocationError

__all__ = ["LOCK_NAME", "DirectoryLockedError", "directory_lock"]

LOCK_NAME = ".biosim.lock"
"""File name of a directory's lock, inside the directory."""

_NO_LOCKS = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP}
"""``flock`` errors that mean the file system has no locks at all (rather than that one is held)."""


class DirectoryLockedError(OutputLocationError):
    """Another process holds the directory's lock; the message names the directory and the holder."""


@contextlib.contextmanager
def directory_lock(directory: str | Path, what: str, purpose: str) -> Iterator[Path]:
    """Hold the lock of ``directory`` for the ``with`` block, or fail at once if another process holds it.

    On a file system without locks (``flock`` fails with ``ENOSYS``,
    ``ENOLCK`` or ``EOPNOTSUPP``) the block runs without one, after a warning
    on stderr.

    Parameters
    ----------
    directory : str or Path
        An existing directory; its lock file :data:`LOCK_NAME` is created if missing.
    what : str
        What the directory is, for messages (``"run directory"``).
    purpose : str
        What this process does there (``"training"``), recorded for the message of a refused process.

    Yields
    ------
    Path
        The lock file.

    Raises
    ------
    DirectoryLockedError
        Another process (or another ``directory_lock`` of this process) holds the lock; the message
        names ``what``, ``directory`` and the holder's pid, host, purpose, start time and command.
    biosim.records.OutputLocationError
        The lock file cannot be created or locked (the message names it and why).
    """
    directory = Path(directory)
    path = directory / LOCK_NAME
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise OutputLocationError(
            f"{what} {directory}: cannot open its lock file {path} ({error.strerror or type(error).__name__})"
        ) from None
    try:
        supported = True
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(descriptor))
            raise DirectoryLockedError(
                f"{what} {directory} is in use by {holder}; wait until it has finished (or stop it), "
                f"or use another {what}"
            ) from None
        except OSError as error:
            if error.errno not in _NO_LOCKS:
                raise OutputLocationError(
                    f"{what} {directory}: cannot lock {path} ({error.strerror or type(error).__name__})"
                ) from None
            # A file system without flock (Lustre mounted without it, some NFS set-ups): refusing would
            # stop all work there, so the run goes on unguarded, as it did before locks, and says so.
            _warn(
                f"{what} {directory}: the file system cannot lock {path} ({error.strerror}); going on "
                f"without a lock: make sure no other process uses this {what}"
            )
            supported = False
        if not supported:
            yield path
            return
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": purpose,
            "command": shlex.join(sys.argv),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(record, sort_keys=True) + "\n").encode(), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):  # never hide the block's own exception
                os.ftruncate(descriptor, 0)  # a free lock names no holder
    finally:
        os.close(descriptor)  # releases the lock


def _warn(message: str) -> None:
    print(f"[biosim.locks] warning: {message}", file=sys.stderr)


def _read_holder(descriptor: int) -> dict[str, Any] | None:
    try:
        record = json.loads(os.pread(descriptor, 4096, 0).decode())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # empty: the holder has not written it yet
        return None
    return record if isinstance(record, dict) else None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another process (which has not recorded itself yet)"
    return (
        f"another process: {holder.get('purpose', '?')}, pid {holder.get('pid', '?')} on host "
        f"{holder.get('host', '?')} since {holder.get('since', '?')} (command: {holder.get('command', '?')})"
    )
