"""Gradient agreement: the fused engine's gradients against the eager loop's, in float64.

The largest relative difference over the four weight matrices,
``max over matrices of max|g_fused - g_eager| / max|g_eager|``, on the benchmark problem at full
network size (usually a shorter trial than the timed one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .problem import bptt, build_problem

__all__ = ["GradientAgreement", "gradient_check"]


@dataclass(frozen=True)
class GradientAgreement:
    max_rel_diff: float
    rel_diff_per_matrix: dict[str, float]
    spike_counts_identical: bool
    """Both engines' excitatory spike counts equal (the same forward pass)."""
    spikes_e: float
    """Excitatory spikes of the checked batch (zero would make the check vacuous)."""

    def record(self) -> dict[str, Any]:
        return {
            "grad_max_rel_diff": self.max_rel_diff,
            "grad_rel_diff_per_matrix": dict(self.rel_diff_per_matrix),
            "grad_check_spike_counts_identical": self.spike_counts_identical,
            "grad_check_spikes_e": self.spikes_e,
        }


def gradient_check(n_steps: int, batch_size: int, device: str, seed: int) -> GradientAgreement:
    problem = build_problem(n_steps, batch_size, torch.float64, device, seed)
    counts_eager, eager = bptt("eager", problem)
    counts_fused, fused = bptt("fused", problem)
    relative = {}
    for name in eager:
        scale = float(eager[name].abs().max())
        difference = float((fused[name] - eager[name]).abs().max())
        relative[name] = difference / scale if scale > 0 else difference
    return GradientAgreement(
        max_rel_diff=max(relative.values()),
        rel_diff_per_matrix=relative,
        spike_counts_identical=bool(torch.equal(counts_eager, counts_fused)),
        spikes_e=float(counts_eager.sum()),
    )
