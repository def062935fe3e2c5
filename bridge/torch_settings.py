"""torch's process-wide settings that the mirror changes, each in a context manager that restores it.

Two settings matter for speed and are global in torch:

- denormal flushing (:func:`flushed_denormals`): decaying float32
  conductances reach denormal numbers, which are about 20x slower on x86;
  flushing them to zero cannot move a spike (Brian2's compiled code does the
  same with ``-ffast-math``). torch can set it but has no getter, so
  :func:`denormals_flushed` reads it by experiment.
- the number of intra-op threads (:func:`torch_threads`).

Every change goes through these, so that a call into the library leaves the
caller's settings as it found them (``tests/test_torch_settings.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["denormals_flushed", "flushed_denormals", "torch_threads"]

_DENORMAL = 1e-310  # below float64's smallest normal number (2.2e-308)


def denormals_flushed() -> bool:
    """Whether torch's CPU arithmetic flushes denormal numbers to zero now."""
    return float(torch.tensor([_DENORMAL], dtype=torch.float64).mul(1.0)[0]) == 0.0


@contextlib.contextmanager
def flushed_denormals() -> Iterator[None]:
    """Run the block with denormal flushing on (where the CPU supports it), then restore the previous mode."""
    previous = denormals_flushed()
    if not previous:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not previous:
            torch.set_flush_denormal(False)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op torch threads, then restore the previous number."""
    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count != previous:
            torch.set_num_threads(previous)
