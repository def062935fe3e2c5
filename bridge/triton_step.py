"""One time step's elementwise work as Triton kernels: one launch per population instead of ~25 torch operations.

:func:`bridge.dynamics.transition` does a population's state update (exponential Euler with the
refractory hold), threshold, reset and conductance decays in about 25 torch operations, each a kernel
launch on CUDA. :func:`population_step` does the same in one Triton kernel, operation for operation in the
order of :func:`bridge.dynamics.exponential_euler`, :func:`~bridge.dynamics.update_membrane`,
:func:`~bridge.dynamics.crossed` and :func:`~bridge.dynamics.reset`, on tensors of any leading shape
(batch, or run x batch). :func:`readout_step` does the readout's decay, increment and accumulation in one
more. The synaptic products stay matrix products (cuBLAS); :func:`fused_transition` is a whole step
(two population kernels, the products, the readout kernel) with the results of
:func:`~bridge.dynamics.transition` under the fused engine's bool threshold; :func:`kernel_transition` is the
same step with the caller's pathways (the fused engine's products or its recompute's precomputed increments)
and, for the recompute, the saved spikes as the threshold's outcome.

The fused engine (:mod:`bridge.fast_engine`) steps on these kernels in its torch path where
``BIOSIM_CUDA_TRITON=on`` (:func:`wanted`): on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (the tests).

Exactness: the constants are loaded from a tensor of the state's dtype (a Python float argument would be
float32 in Triton), so every product and sum rounds as torch's does. ``exp`` is libdevice's on CUDA, the
function torch's CUDA ``exp`` calls; on the CPU (``TRITON_INTERPRET=1``, for the tests) it is numpy's,
which differs from torch's CPU ``exp`` in the last bit for some arguments, so there the states agree to a
few ulps rather than bit for bit (tests/test_triton_step.py).

Triton is optional (a ~190 MB wheel, not in the project's requirements): :data:`AVAILABLE` says whether it
imports; without it nothing here can run, and the tests skip.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from biosim.environment import switch

from .dynamics import PATHWAYS, Constants, NetworkState, PopulationConstants, Synapses, Transition

try:  # optional: see the module's docstring
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - depends on the environment
    triton = tl = libdevice = None

__all__ = [
    "AVAILABLE",
    "BLOCK",
    "wanted",
    "population_step",
    "readout_step",
    "kernel_transition",
    "fused_transition",
    "launches_per_step",
]

AVAILABLE = triton is not None
BLOCK = 1024
"""Elements per Triton program."""

# Order of the per-population coefficients in the constants tensor the kernel loads.
_K_FIELDS = ("e_exc_over_c", "e_inh_over_c", "leak_drive_over_c", "minus_g_leak_over_c", "one_over_c")


if AVAILABLE:  # jitted on first use (_kernels), when TRITON_INTERPRET is as the process has set it

    def _population_kernel(
        v_ptr, ge_ptr, gi_ptr, ready_ptr, drive_ptr, k_ptr,  # inputs (drive only with HAS_DRIVE)
        v_out, ge_out, gi_out, ready_out, fired_out, integrating_out, spikes_out,  # outputs (fired: input if given)
        n, step, step_ptr, refractory_steps, v_threshold_index,
        HAS_DRIVE: tl.constexpr, STEP_IN_MEMORY: tl.constexpr, LIBDEVICE_EXP: tl.constexpr,
        FIRED_GIVEN: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        v = tl.load(v_ptr + offsets, mask=mask)
        ge = tl.load(ge_ptr + offsets, mask=mask)
        gi = tl.load(gi_ptr + offsets, mask=mask)
        ready = tl.load(ready_ptr + offsets, mask=mask)
        if STEP_IN_MEMORY:  # a 0-d tensor: a captured CUDA graph reads the step's index at each replay
            step = tl.load(step_ptr)
        e_exc_over_c = tl.load(k_ptr + 0)
        e_inh_over_c = tl.load(k_ptr + 1)
        leak_drive_over_c = tl.load(k_ptr + 2)
        minus_g_leak_over_c = tl.load(k_ptr + 3)
        one_over_c = tl.load(k_ptr + 4)
        dt = tl.load(k_ptr + 5)
        decay_ampa = tl.load(k_ptr + 6)
        decay_gaba = tl.load(k_ptr + 7)
        v_threshold = tl.load(k_ptr + v_threshold_index)
        v_reset = tl.load(k_ptr + v_threshold_index + 1)
        # 1. exponential Euler as dynamics.exponential_euler writes it, held while refractory
        total = minus_g_leak_over_c - (one_over_c * ge + one_over_c * gi)
        ba = (leak_drive_over_c + (e_exc_over_c * ge + e_inh_over_c * gi)) / total
        if LIBDEVICE_EXP:  # torch's CUDA exp; tl.exp would be the approximate ex2 in float32
            growth = libdevice.exp(dt * total)
        else:  # the interpreter has no libdevice
            growth = tl.exp(dt * total)
        v_new = -ba + (ba + v) * growth
        integrating = ready <= step
        v1 = tl.where(integrating, v_new, v)
        # decays (the synaptic increments are added by the caller; the input drive here, first, as in transition)
        ge1 = ge * decay_ampa
        if HAS_DRIVE:
            ge1 = ge1 + tl.load(drive_ptr + offsets, mask=mask)
        gi1 = gi * decay_gaba
        # 2. threshold (or, replaying, the saved spikes: the recompute's threshold); 4. reset
        if FIRED_GIVEN:
            fired = tl.load(fired_out + offsets, mask=mask, other=0) != 0
        else:
            fired = ((v1 - v_threshold) > 0) & integrating
        tl.store(v_out + offsets, tl.where(fired, v_reset, v1), mask=mask)
        tl.store(ready_out + offsets, tl.where(fired, step + refractory_steps, ready), mask=mask)
        tl.store(ge_out + offsets, ge1, mask=mask)
        tl.store(gi_out + offsets, gi1, mask=mask)
        tl.store(integrating_out + offsets, integrating.to(tl.int8), mask=mask)
        if not FIRED_GIVEN:
            tl.store(fired_out + offsets, fired.to(tl.int8), mask=mask)
            tl.store(spikes_out + offsets, fired.to(v.dtype), mask=mask)  # 0/1 for the products: no cast kernel

    def _readout_kernel(
        u_ptr, increment_ptr, score_ptr, decay_ptr, u_out, score_out, n, n_columns, increment_row_stride,
        HAS_INCREMENT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        u = tl.load(u_ptr + offsets, mask=mask) * tl.load(decay_ptr)
        if HAS_INCREMENT:  # rows with their own stride: the increment may be a column slice of a wider product
            rows = offsets // n_columns
            u = u + tl.load(increment_ptr + rows * increment_row_stride + (offsets - rows * n_columns), mask=mask)
        tl.store(u_out + offsets, u, mask=mask)
        tl.store(score_out + offsets, tl.load(score_ptr + offsets, mask=mask) + u, mask=mask)


@functools.cache
def _kernels() -> tuple[Any, Any, bool]:
    """``(population kernel, readout kernel, interpreted)``, jitted once, in the interpreter where
    ``TRITON_INTERPRET=1`` at the first call (Triton reads it when it jits)."""
    if not AVAILABLE:
        raise RuntimeError("bridge.triton_step needs the optional package triton (pip install triton)")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return triton.jit(_population_kernel), triton.jit(_readout_kernel), interpreted


def _launch(kernel: Any, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    """Every kernel launch of this module goes through here (``benchmarks/operations.py`` counts them)."""
    kernel[grid](*args, **kwargs)


def wanted(device: torch.device | str) -> bool:
    """Whether the fused engine's torch path steps on these kernels: ``BIOSIM_CUDA_TRITON`` (off by default,
    unmeasured on a GPU). Asked for, it is refused without triton, and on a device other than CUDA unless
    ``TRITON_INTERPRET=1`` runs the kernels on the CPU (how the tests run them)."""
    if not switch("BIOSIM_CUDA_TRITON"):
        return False
    device = torch.device(device)
    if not AVAILABLE:
        raise RuntimeError("BIOSIM_CUDA_TRITON=on: the Triton step needs the optional package triton (not installed)")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"BIOSIM_CUDA_TRITON=on: the Triton step runs on CUDA devices (or on the CPU under TRITON_INTERPRET=1), "
            f"not on {device}"
        )
    return True


@functools.cache
def _coefficients(
    k: PopulationConstants, constants: Constants, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The constants a population kernel loads, made once per population, dtype and device: a copy from the
    host at every step would be a transfer per step, and cannot be captured in a CUDA graph."""
    values = [getattr(k, name) for name in _K_FIELDS]
    values += [constants.dt, constants.decay_ampa, constants.decay_gaba, k.v_threshold, k.v_reset]
    return torch.tensor(values, dtype=dtype, device=device)


@functools.cache
def _decay(decay: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor([decay], dtype=dtype, device=device)


def population_step(
    v: torch.Tensor,
    ge: torch.Tensor,
    gi: torch.Tensor,
    ready: torch.Tensor,
    step: int | torch.Tensor,
    k: PopulationConstants,
    constants: Constants,
    drive: torch.Tensor | None = None,
    fired: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """One population's step in one kernel: ``(v, ge, gi, ready, fired, integrating, spikes)`` after the step.

    ``v``, ``ge``, ``gi`` (float) and ``ready`` (int32) share one shape, any leading dimensions. ``ge`` and
    ``gi`` come back decayed (plus ``drive`` on ``ge``, the input of the E population) and without this
    step's synaptic increments, which the caller adds from the spikes (``fired`` as bool, ``spikes`` as 0/1 in
    ``v``'s dtype for the products), as
    :func:`bridge.dynamics.transition` does between its threshold and its reset. ``step``: an int, or a 0-d
    int32 tensor on the states' device (read by the kernel, so that a captured graph can replay it).
    ``fired`` (bool, the states' shape): the spikes the step must make, in place of the threshold (the fused
    engine's recompute replays its saved spikes); it is returned as given, with ``spikes`` None.
    """
    population_kernel, _, interpreted = _kernels()
    tensors = [t.contiguous() for t in (v, ge, gi, ready)]
    if drive is not None:
        drive = drive.contiguous()
    outs = [torch.empty_like(t) for t in tensors]
    given = fired is not None
    integrating = torch.empty(v.shape, dtype=torch.int8, device=v.device)
    if given:
        if fired.shape != v.shape or fired.dtype != torch.bool:
            raise ValueError(f"population_step: fired must be bool of shape {tuple(v.shape)}, got {fired.dtype} "
                             f"{tuple(fired.shape)}")  # fmt: skip
        fired = fired.contiguous()
        fired_bytes, spikes = fired.view(torch.int8), None
    else:
        fired_bytes, spikes = torch.empty(v.shape, dtype=torch.int8, device=v.device), torch.empty_like(tensors[0])
    k_tensor = _coefficients(k, constants, v.dtype, v.device)
    n = v.numel()
    grid = (triton.cdiv(n, BLOCK),)
    in_memory = isinstance(step, torch.Tensor)
    _launch(
        population_kernel, grid, *tensors, drive if drive is not None else tensors[1], k_tensor,
        *outs, fired_bytes, integrating, spikes if spikes is not None else tensors[0],
        n, 0 if in_memory else step, step if in_memory else tensors[3], k.refractory_steps, 8,
        HAS_DRIVE=drive is not None, STEP_IN_MEMORY=in_memory, LIBDEVICE_EXP=not interpreted, FIRED_GIVEN=given,
        BLOCK=BLOCK,
    )  # fmt: skip
    return (*outs, fired if given else fired_bytes.view(torch.bool), integrating.view(torch.bool), spikes)


def readout_step(
    u: torch.Tensor, increment: torch.Tensor | None, score_sum: torch.Tensor, decay: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The readout's step in one kernel: ``u' = u decay + increment``, ``score_sum' = score_sum + u'``.

    ``increment`` (None: nothing added, as :func:`bridge.dynamics.transition` adds nothing) is read in place
    where its rows are evenly spaced (the fused engine's is a column slice of one product with ``[w_ei,
    w_out]``): no copy kernel.
    """
    readout_kernel = _kernels()[1]
    u, score_sum = u.contiguous(), score_sum.contiguous()
    row_stride = u.shape[-1]
    if increment is not None:
        if increment.shape != u.shape:
            raise ValueError(f"readout_step: increment of shape {tuple(increment.shape)}, u {tuple(u.shape)}")
        row_stride = _row_stride(increment)
        if row_stride is None:
            increment, row_stride = increment.contiguous(), u.shape[-1]
    u_out, score_out = torch.empty_like(u), torch.empty_like(score_sum)
    n = u.numel()
    decay_tensor = _decay(decay, u.dtype, u.device)
    grid = (triton.cdiv(n, BLOCK),)
    _launch(
        readout_kernel, grid, u, u if increment is None else increment, score_sum, decay_tensor, u_out, score_out,
        n, u.shape[-1], row_stride, HAS_INCREMENT=increment is not None, BLOCK=BLOCK,
    )  # fmt: skip
    return u_out, score_out


def _row_stride(t: torch.Tensor) -> int | None:
    """The distance between consecutive rows (last dimension) of ``t`` in memory when every row is contiguous
    and the rows are evenly spaced; None when reading it so needs a copy."""
    if t.dim() == 0 or t.stride(-1) != 1:
        return None
    if t.dim() == 1:
        return t.shape[-1]
    for d in range(t.dim() - 2):
        if t.shape[d] != 1 and t.stride(d) != t.stride(d + 1) * t.shape[d + 1]:
            return None
    return t.stride(-2)


def kernel_transition(
    state: NetworkState,
    constants: Constants,
    input_drive: torch.Tensor,
    synapses: Synapses,
    fired: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Transition:
    """:func:`bridge.dynamics.transition` on the kernels above, with the fused engine's bool threshold, or with
    ``fired = (fired_e, fired_i)`` (bool) as the threshold's outcome (the recompute's saved spikes).

    ``synapses`` delivers each pathway of :data:`bridge.dynamics.PATHWAYS` as ``transition``'s does; it gets
    the spikes as 0/1 in the state's dtype (the saved bool masks when ``fired`` is given). Its increments are
    added in the pathway order of ``transition``, the readout's inside the readout kernel (skipped where
    ``state.u`` is None). Returns the same :class:`~bridge.dynamics.Transition`, with the bool masks as spikes.
    """
    t = state.step
    given_e, given_i = (None, None) if fired is None else fired
    v_e, ge_e, gi_e, ready_e, fired_e, integrating_e, spikes_e = population_step(
        state.v_e, state.ge_e, state.gi_e, state.ready_e, t, constants.e, constants, input_drive, given_e
    )
    v_i, ge_i, gi_i, ready_i, fired_i, integrating_i, spikes_i = population_step(
        state.v_i, state.ge_i, state.gi_i, state.ready_i, t, constants.i, constants, None, given_i
    )
    spikes = {"e": fired_e if spikes_e is None else spikes_e, "i": fired_i if spikes_i is None else spikes_i}
    # 3. pathways onto each target, in dynamics.PATHWAYS' order; the readout's goes to its kernel
    targets = {"ge_e": ge_e, "gi_e": gi_e, "ge_i": ge_i, "gi_i": gi_i}
    readout_increment = None
    for pathway in PATHWAYS:
        if pathway.target == "u" and state.u is None:
            continue
        increment = synapses(pathway.weight, spikes[pathway.pre])
        if pathway.target == "u":
            readout_increment = increment
        elif increment is not None:
            targets[pathway.target] = targets[pathway.target] + increment
    u, score_sum = state.u, state.score_sum
    if u is not None:
        u, score_sum = readout_step(u, readout_increment, score_sum, constants.decay_readout)
    ge_e, gi_e, ge_i, gi_i = targets["ge_e"], targets["gi_e"], targets["ge_i"], targets["gi_i"]
    following = NetworkState(v_e, ge_e, gi_e, ready_e, v_i, ge_i, gi_i, ready_i, u, score_sum, t + 1)
    return Transition(fired_e, fired_i, fired_e, fired_i, integrating_e, integrating_i, following)


def fused_transition(
    state: NetworkState, constants: Constants, input_drive: torch.Tensor, weights: dict[str, torch.Tensor | None]
) -> Transition:
    """:func:`kernel_transition` with dense products: ``weights`` maps the names of
    :data:`bridge.dynamics.PATHWAYS` to matrices (None: no such block), each pathway ``spikes @ weight``."""

    def product(name: str, spikes: torch.Tensor) -> torch.Tensor | None:
        weight = weights.get(name)
        return None if weight is None else spikes @ weight

    return kernel_transition(state, constants, input_drive, product)


def launches_per_step(blocks: tuple[str, ...] = ()) -> dict[str, int]:
    """Kernels one :func:`fused_transition` step launches, counted from its code (not timed).

    Two population kernels (which also write the 0/1 spikes the products take) and one readout kernel;
    per pathway one product and, but for the readout's (inside its kernel), one addition: four pathways,
    plus the recurrent ``blocks`` present (``"w_ee"`` / ``"w_ii"``).
    """
    pathways = 4 + len(blocks)
    return {"triton": 3, "matmul": pathways, "add": pathways - 1, "total": 3 + pathways + pathways - 1}
