"""Peak memory of one BPTT batch of each engine.

On CPU each engine is measured in a fresh subprocess (:func:`memory_probe`): after setup
(imports, weights, inputs, a short warm-up) the kernel's peak-RSS counter is reset
(``/proc/self/clear_refs``), and the peak (``VmHWM``) after one forward + backward minus the
resident memory at the reset is the batch's memory. Where the counter cannot be reset,
``ru_maxrss`` after minus before is used (and said so in ``method``). On CUDA:
``torch.cuda.max_memory_allocated`` minus the allocation before.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .problem import bptt, build_problem

__all__ = ["MemoryComparison", "MemoryUse", "compare_memory", "measure_memory", "memory_probe"]


@dataclass(frozen=True)
class MemoryUse:
    """Peak extra memory of one BPTT batch, how it was measured, and the batch's seconds."""

    peak_bytes: int
    method: str
    seconds: float


@dataclass(frozen=True)
class MemoryComparison:
    eager: MemoryUse
    fused: MemoryUse

    def record(self) -> dict[str, Any]:
        return {
            "memory_ratio": self.fused.peak_bytes / self.eager.peak_bytes,
            "eager_peak_memory_bytes": self.eager.peak_bytes,
            "fused_peak_memory_bytes": self.fused.peak_bytes,
            "memory_method": self.fused.method,
        }


def _resident_kib() -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of this process in KiB, from /proc; None where unavailable."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def _release_free_memory() -> None:
    gc.collect()
    try:  # give freed heap pages back, so that the baseline is the memory actually in use
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_probe(engine: str, n_steps: int, batch_size: int, dtype_name: str, threads: int, seed: int) -> dict:
    """Peak extra memory of one BPTT batch of ``engine`` in this process, as :class:`MemoryUse`'s fields.

    Meant for a fresh process of its own (:func:`measure_memory` starts one): it sets the process's
    torch threads and denormal mode, and anything allocated before would hide in the baseline.
    """
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    dtype = getattr(torch, dtype_name)
    problem = build_problem(n_steps, batch_size, dtype, "cpu", seed)
    warm = build_problem(min(n_steps, 20), batch_size, dtype, "cpu", seed)
    bptt(engine, warm)  # lazy initialisation (kernels, thread pools) belongs to the setup
    del warm
    _release_free_memory()
    method = "VmHWM after reset minus VmRSS at reset (/proc/self/clear_refs)"
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _resident_kib()
        if before is None:
            raise OSError("no /proc/self/status")
        baseline_kib = before[0]
    except OSError:
        method = "ru_maxrss after minus ru_maxrss before"
        baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    bptt(engine, problem)
    elapsed = time.perf_counter() - start
    if method.startswith("VmHWM"):
        peak_kib = _resident_kib()[1]
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_bytes": (peak_kib - baseline_kib) * 1024, "method": method, "seconds": elapsed}


def _in_subprocess(engine: str, n_steps: int, batch_size: int, threads: int, seed: int) -> MemoryUse:
    arguments = json.dumps([engine, n_steps, batch_size, "float32", threads, seed])
    code = (
        "import json\n"
        "from benchmarks.memory import memory_probe\n"
        f"print(json.dumps(memory_probe(*json.loads({arguments!r}))))\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environment, cwd=root
    )
    return MemoryUse(**json.loads(completed.stdout.strip().splitlines()[-1]))


def _on_cuda(engine: str, n_steps: int, batch_size: int, device: str, seed: int) -> MemoryUse:
    problem = build_problem(n_steps, batch_size, torch.float32, device, seed)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    bptt(engine, problem)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return MemoryUse(
        peak_bytes=torch.cuda.max_memory_allocated() - before,
        method="torch.cuda.max_memory_allocated minus memory_allocated before",
        seconds=elapsed,
    )


def measure_memory(engine: str, n_steps: int, batch_size: int, device: str, seed: int) -> MemoryUse:
    """One float32 BPTT batch of ``engine``: on CPU in a fresh one-thread subprocess, on CUDA in this one."""
    if device == "cpu":
        return _in_subprocess(engine, n_steps, batch_size, 1, seed)
    return _on_cuda(engine, n_steps, batch_size, device, seed)


def compare_memory(
    n_steps: int, batch_size: int, device: str, seed: int, say: Callable[[str], None] = lambda message: None
) -> MemoryComparison:
    """Both engines' :func:`measure_memory`, eager first."""
    memory = {}
    for engine in ("eager", "fused"):
        memory[engine] = measure_memory(engine, n_steps, batch_size, device, seed)
        say(f"  {engine}: {memory[engine].peak_bytes / 2**20:.0f} MiB")
    return MemoryComparison(**memory)
