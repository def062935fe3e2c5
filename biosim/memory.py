"""How much memory this machine can still give a process: the bound that sizes are checked against.

A request that cannot fit is refused before any work, with the flag or field
that asked for it, instead of dying later with a bare ``MemoryError``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["available_memory_bytes", "format_bytes"]


def available_memory_bytes() -> int:
    """``MemAvailable`` of ``/proc/meminfo`` (what can be allocated without swapping), else physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return 1 << 62  # unknown: do not refuse on a guess


def format_bytes(count: float) -> str:
    """``count`` bytes in the largest binary unit that keeps it at least 1 (``"1.5 GiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(count) < 1024 or unit == "PiB":
            return f"{count:.3g} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError("unreachable")
