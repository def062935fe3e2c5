"""A chunk of time steps captured as one CUDA graph: one host launch replays every kernel of the chunk.

The fused engine's torch path launches each step's kernels from Python, a few dozen per step
(``benchmarks/operations.py``). On CUDA, :class:`CapturedChunk` records :func:`run_chunk` (a chunk of
steps of a step function) once into a :class:`torch.cuda.CUDAGraph` over static input and state buffers;
each later chunk copies its state and input into those buffers and replays the graph with one launch.

A step function for capture must not synchronise with the host (dense propagation, no ``nonzero``) and must
not bake the step's index into the graph as a Python number: :func:`transition_step` keeps the index as a
0-d int32 tensor in the state (``"step"``), which :func:`bridge.dynamics.transition` accepts in place of an
int (the same comparisons and additions, so the same results).

The fused engine's torch forward pass and recompute replay their chunks this way where ``BIOSIM_CUDA_GRAPHS=on``
(:func:`wanted`, off by default until measured on a GPU; on a device other than CUDA a request is refused).
Without a GPU only :func:`run_chunk` and :func:`transition_step` are tested (tests/test_cuda_graphs.py, and
the engine's chunk loop with :func:`run_chunk` in place of the capture, tests/test_fused_triton.py); the
capture's test is skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from biosim.environment import switch

from . import triton_step
from .dynamics import Constants, NetworkState, PopulationConstants, Synapses, transition

__all__ = ["enabled", "wanted", "StepFunction", "run_chunk", "transition_step", "CapturedChunk"]

State = dict[str, torch.Tensor]
StepFunction = Callable[[State, torch.Tensor], tuple[State, State]]
"""``(state, drive of the step) -> (next state, what the step records)``, every value a tensor."""

_STATE_FIELDS = ("v_e", "ge_e", "gi_e", "ready_e", "v_i", "ge_i", "gi_i", "ready_i", "u", "score_sum")


def enabled(device: torch.device | str, requested: bool) -> bool:
    """Whether a chunk loop on ``device`` replays captured graphs: only where ``requested`` (off by default in
    every caller until measured on a GPU), and only on CUDA; requested elsewhere it is refused."""
    if requested and torch.device(device).type != "cuda":
        raise ValueError(f"cuda_graphs: captured chunks need a CUDA device, not {torch.device(device)}")
    return bool(requested)


def wanted(device: torch.device | str) -> bool:
    """Whether the fused engine's torch path (forward, recompute) on ``device`` replays captured chunks:
    ``BIOSIM_CUDA_GRAPHS`` (off by default), refused on a device other than CUDA."""
    requested = switch("BIOSIM_CUDA_GRAPHS")
    try:
        return enabled(device, requested)
    except ValueError as error:
        raise ValueError(f"BIOSIM_CUDA_GRAPHS=on: {error}") from None


def run_chunk(step: StepFunction, state: State, drives: torch.Tensor) -> tuple[State, State]:
    """``drives.shape[0]`` steps of ``step`` from ``state``: the final state and each record stacked by step."""
    records: list[State] = []
    for j in range(drives.shape[0]):
        state, record = step(state, drives[j])
        records.append(record)
    return state, {name: torch.stack([record[name] for record in records]) for name in records[0]}


def transition_step(
    constants: Constants,
    weights: dict[str, torch.Tensor | None],
    *,
    triton: bool = False,
    synapses: Synapses | None = None,
) -> StepFunction:
    """:func:`bridge.dynamics.transition` as a :data:`StepFunction`: the fused engine's bool threshold, dense
    products (``weights`` by the names of :data:`bridge.dynamics.PATHWAYS`, None: no such block), and the
    step's index as the 0-d tensor ``state["step"]``. Records ``fired_e``, ``fired_i`` and ``u``. With
    ``triton``, the step is :func:`bridge.triton_step.kernel_transition` (its kernels read the index from the
    tensor too). ``synapses``: the caller's pathways in place of the products of ``weights`` (the fused
    engine's own dense products); for capture they must not synchronise with the host."""

    def threshold(population: str, v1: torch.Tensor, integrating: torch.Tensor, k: PopulationConstants):
        fired = ((v1 - k.v_threshold) > 0) & integrating  # dynamics.crossed
        return fired, fired

    def products(name: str, fired: torch.Tensor) -> torch.Tensor | None:
        weight = weights.get(name)
        return None if weight is None else fired.to(weight.dtype) @ weight

    pathways = products if synapses is None else synapses

    def step(state: State, drive: torch.Tensor) -> tuple[State, State]:
        current = NetworkState(**{name: state[name] for name in _STATE_FIELDS}, step=state["step"])
        if triton:
            made = triton_step.kernel_transition(current, constants, drive, pathways)
        else:
            made = transition(current, constants, drive, threshold, pathways)
        following = {name: getattr(made.state, name) for name in _STATE_FIELDS}
        following["step"] = made.state.step
        return following, {"fired_e": made.fired_e, "fired_i": made.fired_i, "u": made.state.u}

    return step


class CapturedChunk:
    """:func:`run_chunk` of ``step`` captured once as a CUDA graph; calling it replays the graph.

    ``state`` and ``drives`` fix the shapes, dtypes and device of every later call (CUDA tensors). The
    returned state and records are the graph's static outputs: valid until the next call, which
    overwrites them (clone what must outlive it).
    """

    def __init__(self, step: StepFunction, state: State, drives: torch.Tensor, warmup: int = 2) -> None:
        if not (torch.cuda.is_available() and drives.device.type == "cuda"):
            raise RuntimeError("CapturedChunk needs CUDA tensors and a CUDA device (torch.cuda.CUDAGraph)")
        self.state = {name: value.clone() for name, value in state.items()}
        self.drives = drives.clone()
        side = torch.cuda.Stream()  # warm-up off the capturing stream, as torch.cuda.graphs asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                run_chunk(step, self.state, self.drives)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = run_chunk(step, self.state, self.drives)

    def __call__(self, state: State, drives: torch.Tensor) -> tuple[State, State]:
        if drives.shape != self.drives.shape:
            raise ValueError(
                f"CapturedChunk: drives of shape {tuple(drives.shape)}, captured {tuple(self.drives.shape)}"
            )
        for name, buffer in self.state.items():
            if state[name].shape != buffer.shape:
                raise ValueError(f"CapturedChunk: state {name!r} of shape {tuple(state[name].shape)}, captured "
                                 f"{tuple(buffer.shape)}")  # fmt: skip
            buffer.copy_(state[name])
        self.drives.copy_(drives)
        self.graph.replay()
        return self.outputs
