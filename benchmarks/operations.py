"""Kernel launches per time step of the fused engine's torch path: its CUDA path, counted on the CPU.

On CUDA every torch (aten) operation is at least one kernel launch, and the fused engine's torch path
(:mod:`bridge.fast_engine`: the forward pass, the recompute and the adjoint) issues a few dozen per time step.
:func:`count_operations` counts them on the CPU with a :class:`~torch.utils._python_dispatch.TorchDispatchMode`,
forcing the torch path (``FusedEngine(implementation="torch", propagation="dense")``, CUDA's choices) where the
C++ kernels would otherwise run. Each phase is counted on two trial lengths and the difference divided by the
difference in steps, so the per-run costs (setup, losses, per-chunk products amortised over the chunk) fall
out and what remains is the cost of one step. Views and allocations (``empty``) launch nothing and are not
counted.

The same count runs the engine as it is wired for a GPU: with ``triton=True`` its steps on the Triton kernels
(``BIOSIM_CUDA_TRITON=on``), each kernel launch of :mod:`bridge.triton_step` counted as one (the kernels run
uncounted: through Triton's interpreter they call torch themselves), which needs triton and, on the CPU,
``TRITON_INTERPRET=1``; :func:`count_captured` its forward pass replaying captured chunks
(``BIOSIM_CUDA_GRAPHS=on``), the capture simulated on the CPU: the copies into the graph's buffers and one
launch per replay are the host's launches, the graph's own kernels are counted apart. Where triton cannot run,
:func:`fused_launches` gives the Triton step's figures counted from its code.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from biosim.params import NetworkParams
from biosim.weights import init_weights

__all__ = [
    "OperationCounts",
    "count_operations",
    "count_captured",
    "triton_counts_here",
    "fused_launches",
    "operations_record",
]

_ALLOCATIONS = frozenset({"empty", "empty_like", "empty_strided", "new_empty"})
"""Operations that allocate and launch no kernel (the Triton step allocates its outputs)."""


class _Counter(TorchDispatchMode):
    """Counts aten operations by phase; :attr:`phase` names the phase the next operations belong to."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.names: dict[str, Counter[str]] = {}
        self.phase = "forward"
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not (self.paused or func.is_view or name in _ALLOCATIONS):  # views alias memory: no kernel
            self.launch(name)
        return func(*args, **(kwargs or {}))

    def launch(self, name: str) -> None:
        self.counts[self.phase] += 1
        self.names.setdefault(self.phase, Counter())[name] += 1

    @contextmanager
    def pause(self) -> Iterator[None]:
        paused, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = paused


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


@contextmanager
def _triton_launches(counter: _Counter) -> Iterator[None]:
    """``BIOSIM_CUDA_TRITON=on``, each launch of :mod:`bridge.triton_step` counted once (its work uncounted)."""
    from bridge import triton_step

    original, previous = triton_step._launch, os.environ.get("BIOSIM_CUDA_TRITON")

    def launch(kernel, grid, *args, **kwargs):
        counter.launch("triton")
        with counter.pause():
            original(kernel, grid, *args, **kwargs)

    triton_step._launch, os.environ["BIOSIM_CUDA_TRITON"] = launch, "on"
    try:
        yield
    finally:
        triton_step._launch = original
        if previous is None:
            del os.environ["BIOSIM_CUDA_TRITON"]
        else:
            os.environ["BIOSIM_CUDA_TRITON"] = previous


@contextmanager
def _simulated_capture(counter: _Counter) -> Iterator[None]:
    """``BIOSIM_CUDA_GRAPHS=on`` on the CPU: :class:`bridge.cuda_graphs.CapturedChunk` simulated.

    Per replay the host copies the state and the drives into the graph's buffers and launches the graph once
    (counted in the current phase); the graph's kernels run as :func:`bridge.cuda_graphs.run_chunk` runs
    them, counted in the phase ``"<phase> graph"`` (``forward graph``, ``recompute graph``). Making the
    graph (warm-up, capture) is per run and not counted.
    """
    from bridge import cuda_graphs

    class Simulated:
        def __init__(self, step, state, drives, warmup: int = 2) -> None:
            with counter.pause():
                self.step, self.state, self.drives = step, {k: v.clone() for k, v in state.items()}, drives.clone()

        def __call__(self, state, drives):
            for name, buffer in self.state.items():
                buffer.copy_(state[name])
            self.drives.copy_(drives)
            counter.launch("graph replay")
            phase = counter.phase
            counter.phase = f"{phase} graph"
            try:
                return cuda_graphs.run_chunk(self.step, self.state, self.drives)
            finally:
                counter.phase = phase

    original = cuda_graphs.wanted, cuda_graphs.CapturedChunk
    cuda_graphs.wanted, cuda_graphs.CapturedChunk = (lambda device: True), Simulated
    try:
        yield
    finally:
        cuda_graphs.wanted, cuda_graphs.CapturedChunk = original


def _count_run(
    params: NetworkParams, n_steps: int, batch: int, chunk_steps: int, seed: int, triton: bool, captured: bool
) -> Counter[str]:
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
        with (
            _triton_launches(counter) if triton else _nothing(),
            _simulated_capture(counter) if captured else _nothing(),
        ):
            output = engine(x, v_e, v_i, weights, make_constants(params), get_surrogate())
            counter.phase = "adjoint"  # the loss's operations are per run: they cancel in the difference
            output.scores.sum().backward()
    return counter.counts


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _per_step(
    params: NetworkParams | None, batch: int, chunk_steps: int, seed: int, triton: bool, captured: bool
) -> dict[str, float]:
    params = params or NetworkParams()
    short = _count_run(params, chunk_steps, batch, chunk_steps, seed, triton, captured)
    long = _count_run(params, 2 * chunk_steps, batch, chunk_steps, seed, triton, captured)
    phases = ("forward", "recompute", "adjoint", "forward graph", "recompute graph")
    return {phase: (long[phase] - short[phase]) / chunk_steps for phase in phases}


def count_operations(
    params: NetworkParams | None = None, *, batch: int = 2, chunk_steps: int = 10, seed: int = 0, triton: bool = False
) -> OperationCounts:
    """Kernel launches per step of the torch path, forward, recompute and adjoint, counted on the CPU.

    Runs trials of ``chunk_steps`` and ``2 chunk_steps`` steps (float32, dense propagation: the CUDA
    path's choices) and divides the difference of the counts by ``chunk_steps``. ``params``: the network
    (default: the default network). ``triton``: the engine on the Triton step (:func:`triton_counts_here`).
    """
    per_step = _per_step(params, batch, chunk_steps, seed, triton, captured=False)
    return OperationCounts(per_step["forward"], per_step["recompute"], per_step["adjoint"])


def count_captured(
    params: NetworkParams | None = None, *, batch: int = 2, chunk_steps: int = 10, seed: int = 0, triton: bool = False
) -> dict[str, float]:
    """The forward pass and the recompute replaying captured chunks, per step: ``host`` launches (the per-chunk
    copies, products and replay, amortised over the chunk) and the kernels ``in_graph`` of the forward pass,
    ``recompute_host`` and ``recompute_in_graph`` of the recompute; counted as :func:`count_operations`
    counts, the capture simulated on the CPU (``tests/test_fused_triton.py`` checks that path's results)."""
    per_step = _per_step(params, batch, chunk_steps, seed, triton, captured=True)
    return {
        "host": per_step["forward"],
        "in_graph": per_step["forward graph"],
        "recompute_host": per_step["recompute"],
        "recompute_in_graph": per_step["recompute graph"],
    }


def triton_counts_here() -> bool:
    """Whether the Triton step can be counted in this process: triton imports, and on the CPU
    ``TRITON_INTERPRET=1`` (the counts run on CPU tensors)."""
    from bridge import triton_step

    return triton_step.AVAILABLE and os.environ.get("TRITON_INTERPRET") == "1"


def fused_launches(before: OperationCounts, blocks: tuple[str, ...] = ()) -> dict[str, float]:
    """Kernel launches per step of the engine on the Triton step, counted from its code (where triton cannot run).

    ``forward``: the three kernels of :func:`bridge.triton_step.kernel_transition`; the engine's products
    (E spikes times ``[w_ei, w_out]``, I spikes times ``w_ie``, one more per recurrent block in ``blocks``)
    and their additions but the readout's (in its kernel); the three records of a step (its E and I spikes,
    the readout trace). ``backward``: the recompute on the two population kernels, the additions of the
    chunk's precomputed increments (the recompute's targets but ``ge_e``, whose input the E kernel adds) and
    the eight copies of the states it returns, and the adjoint as it is (``before.adjoint``). Per-chunk work
    (the input drive, checkpoints) is left out.
    """
    pathways = 2 + len(blocks)
    forward = 3.0 + pathways + pathways + 3
    recompute = 2.0 + pathways + 8
    return {"forward": forward, "backward": recompute + before.adjoint, "recompute": recompute}


def operations_record(params: NetworkParams | None = None, chunk_steps: int = 50) -> dict[str, Any]:
    """The ``biosim bench`` record: ``operations_per_step`` with ``before`` (the torch path, counted) and
    ``after`` (the engine with ``BIOSIM_CUDA_TRITON`` and ``BIOSIM_CUDA_GRAPHS`` on: counted where triton runs
    here, else its Triton step counted from the code; the captured forward pass's host launches are counted
    either way); ``after_is`` says which. ``chunk_steps``: the engine's default."""
    before = count_operations(params, chunk_steps=chunk_steps)
    triton = triton_counts_here()
    captured = count_captured(params, chunk_steps=chunk_steps, triton=triton)
    if triton:
        counted = count_operations(params, chunk_steps=chunk_steps, triton=True)
        after = {"forward": counted.forward, "backward": counted.backward, **counted._asdict()}
        after_is = "counted, the engine with BIOSIM_CUDA_TRITON=on and BIOSIM_CUDA_GRAPHS=on (capture simulated)"
    else:
        after = {**fused_launches(before), "adjoint": before.adjoint}
        after_is = "Triton step counted from the code (triton cannot run here); captured chunks counted"
    after |= {"forward_captured": captured["host"], "kernels_per_step_in_graph": captured["in_graph"]}
    after |= {
        "recompute_captured": captured["recompute_host"],
        "recompute_kernels_in_graph": captured["recompute_in_graph"],
    }
    return {
        "operations_per_step": {
            "before": {"forward": before.forward, "backward": before.backward, **before._asdict()},
            "after": after,
            "after_is": after_is + "; not timed",
            "chunk_steps": chunk_steps,
        }
    }
