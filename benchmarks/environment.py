"""The machine a benchmark ran on: processor, threads, library versions, the fused kernels' path, and its load.

Other processes on the machine slow both engines, so the load average is recorded at the start
and at the end of a run.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_average", "machine_report", "processor_name"]


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages; None where the system has none."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_report(device: str) -> dict[str, Any]:
    """The benchmark record's ``machine`` entry at the start of a run (``load_average_start``)."""
    from bridge import fused_kernels

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": processor_name(),
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "fused_cpu_kernels": fused_kernels.kernels_available() if device == "cpu" else False,
        "fused_product_path": fused_kernels.kernel_info()["product_path"] if device == "cpu" else None,
        "load_average_start": load_average(),
    }
