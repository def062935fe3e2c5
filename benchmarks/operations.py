"""Torch operations per time step of the fused engine's torch path: the kernel launches of its CUDA path.

On CUDA every torch (aten) operation is at least one kernel launch, and the fused engine's torch path
(:mod:`bridge.fast_engine`: the forward pass, the recompute and the adjoint) issues a few dozen per time step.
:func:`count_operations` counts them on the CPU with a :class:`~torch.utils._python_dispatch.TorchDispatchMode`,
forcing the torch path (``FusedEngine(implementation="torch", propagation="dense")``, CUDA's choices) where the
C++ kernels would otherwise run. Each phase is counted on two trial lengths and the difference divided by the
difference in steps, so the per-run costs (setup, losses, per-chunk products amortised over the chunk) fall
out and what remains is the cost of one step.

:func:`fused_launches` gives the same figures for the fused path (:mod:`bridge.triton_step`): counted from
its code, not measured, and not timed: per forward step its Triton kernels, products, additions and casts
(:func:`bridge.triton_step.launches_per_step`); per backward step the recompute on the population kernels
plus the adjoint's torch operations, which are not fused; and with a captured CUDA graph
(:mod:`bridge.cuda_graphs`) one host launch per chunk of steps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from biosim.params import NetworkParams
from biosim.weights import init_weights

__all__ = ["OperationCounts", "count_operations", "fused_launches", "operations_record"]


class _Counter(TorchDispatchMode):
    """Counts aten operations by phase; :attr:`phase` names the phase the next operations belong to."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.names: dict[str, Counter[str]] = {}
        self.phase = "forward"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view:  # views (slices, transposes, detach) alias memory and launch no kernel
            self.counts[self.phase] += 1
            self.names.setdefault(self.phase, Counter())[name] += 1
        return func(*args, **(kwargs or {}))


class OperationCounts(NamedTuple):
    """Torch operations per time step of the fused engine's torch path (the figures of one network)."""

    forward: float
    recompute: float
    adjoint: float

    @property
    def backward(self) -> float:
        """The backward pass: recompute and adjoint."""
        return self.recompute + self.adjoint


@contextmanager
def _phase(counter: _Counter, engine_module: Any) -> Iterator[None]:
    """Attribute the backward pass's operations to ``recompute`` inside ``_Adjoint._recompute_torch``."""
    original = engine_module._Adjoint._recompute_torch

    def recompute(self, *args, **kwargs):
        counter.phase = "recompute"
        try:
            return original(self, *args, **kwargs)
        finally:
            counter.phase = "adjoint"

    engine_module._Adjoint._recompute_torch = recompute
    try:
        yield
    finally:
        engine_module._Adjoint._recompute_torch = original


def _count_run(params: NetworkParams, n_steps: int, batch: int, chunk_steps: int, seed: int) -> Counter[str]:
    from bridge import fast_engine
    from bridge.dynamics import Weights, make_constants
    from bridge.surrogates import get_surrogate

    generator = torch.Generator().manual_seed(seed)
    effective = init_weights(params, seed=seed).effective()
    weights = Weights(
        **{
            name: torch.as_tensor(getattr(effective, name), dtype=torch.float32).requires_grad_(True)
            for name in Weights.BASE
        }
    )
    n_e, n_i = params.connectivity.n_e, params.connectivity.n_i
    x = torch.rand(batch, n_steps, weights.w_in.shape[0], generator=generator) < 0.02
    v_e = params.membrane_e.v_reset_mv + 10.0 * torch.rand(batch, n_e, generator=generator)
    v_i = params.membrane_i.v_reset_mv + 10.0 * torch.rand(batch, n_i, generator=generator)
    engine = fast_engine.FusedEngine(chunk_steps=chunk_steps, implementation="torch", propagation="dense")
    counter = _Counter()
    with counter, _phase(counter, fast_engine):
        output = engine(x, v_e, v_i, weights, make_constants(params), get_surrogate())
        counter.phase = "adjoint"  # the loss's operations are per run: they cancel in the difference
        output.scores.sum().backward()
    return counter.counts


def count_operations(
    params: NetworkParams | None = None, *, batch: int = 2, chunk_steps: int = 10, seed: int = 0
) -> OperationCounts:
    """Torch operations per step of the torch path, forward, recompute and adjoint, counted on the CPU.

    Runs trials of ``chunk_steps`` and ``2 chunk_steps`` steps (float32, dense propagation: the CUDA
    path's choices) and divides the difference of the counts by ``chunk_steps``. ``params``: the network
    (default: the default network).
    """
    params = params or NetworkParams()
    short = _count_run(params, chunk_steps, batch, chunk_steps, seed)
    long = _count_run(params, 2 * chunk_steps, batch, chunk_steps, seed)
    per_step = {phase: (long[phase] - short[phase]) / chunk_steps for phase in ("forward", "recompute", "adjoint")}
    return OperationCounts(**per_step)


def fused_launches(before: OperationCounts, chunk_steps: int = 50, blocks: tuple[str, ...] = ()) -> dict[str, float]:
    """Kernel launches per step of the fused path (Triton step kernels), counted from the code, not timed.

    ``forward``: :func:`bridge.triton_step.launches_per_step`. ``backward``: the recompute on the two
    population kernels plus the additions of the chunk's precomputed synaptic increments (the recompute's
    three targets besides ``ge_e``, whose input the E kernel adds), and the adjoint as it is
    (``before.adjoint``). ``forward_captured``: host launches per step when a CUDA graph replays a chunk of
    ``chunk_steps`` forward steps (one launch per chunk).
    """
    from bridge.triton_step import launches_per_step

    forward = float(launches_per_step(blocks)["total"])
    recompute = 2.0 + 2 + len(blocks)
    return {
        "forward": forward,
        "backward": recompute + before.adjoint,
        "forward_captured": 1.0 / chunk_steps,
        "kernels_per_step_in_graph": forward,
    }


def operations_record(params: NetworkParams | None = None, chunk_steps: int = 50) -> dict[str, Any]:
    """The ``biosim bench`` record: ``operations_per_step`` with ``before`` (torch path, counted by the
    dispatch mode) and ``after`` (fused path, counted from its code); ``chunk_steps``: the engine's default."""
    before = count_operations(params, chunk_steps=chunk_steps)
    return {
        "operations_per_step": {
            "before": {"forward": before.forward, "backward": before.backward, **before._asdict()},
            "after": fused_launches(before, chunk_steps),
            "after_is": "counted from the code of bridge/triton_step.py and bridge/cuda_graphs.py, not timed",
            "chunk_steps": chunk_steps,
        }
    }
