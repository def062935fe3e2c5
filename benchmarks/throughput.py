"""Training throughput: the fused engine against the eager loop, where its time goes, and its batch size.

:func:`measure_throughput` times both engines' BPTT batch at each thread count, their repetitions
alternating (so that a change in machine load hits both), and scores each engine by its fastest
repetition: on a machine shared with other processes, a 2-thread fork/join per operation can make
either engine several times slower, and the minimum is the least disturbed measurement.
:func:`roofline` and :func:`measure_phases` (CPU kernels only) say how close the fused engine
comes to the machine's FMA peak and where a batch spends its time; :func:`measure_batch_sweep` where
the batch size stops buying throughput.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from biosim.params import NetworkParams
from bridge.torch_settings import torch_threads

from .problem import ENGINES, bptt, build_problem, timed

__all__ = [
    "BatchSweep",
    "Phases",
    "Roofline",
    "Throughput",
    "measure_batch_sweep",
    "measure_phases",
    "measure_throughput",
    "roofline",
    "useful_flops_per_sample_step",
]


@dataclass(frozen=True)
class Throughput:
    """Seconds per BPTT batch of each engine at each thread count: ``seconds[engine][threads]``."""

    batch_size: int
    n_steps: int
    seconds: dict[str, dict[int, list[float]]]

    def best(self, engine: str) -> tuple[float, int]:
        """(seconds, threads) of the engine's fastest repetition at its faster thread count."""
        return min((min(values), threads) for threads, values in self.seconds[engine].items())

    def sample_steps_per_s(self, engine: str) -> float:
        return self.batch_size * self.n_steps / self.best(engine)[0]

    @property
    def fused_threads(self) -> int:
        return self.best("fused")[1]

    def record(self) -> dict[str, Any]:
        eager, fused = self.best("eager"), self.best("fused")
        return {
            "speedup": self.sample_steps_per_s("fused") / self.sample_steps_per_s("eager"),
            "eager_sample_steps_per_s": self.sample_steps_per_s("eager"),
            "fused_sample_steps_per_s": self.sample_steps_per_s("fused"),
            "eager_seconds_per_sample": eager[0] / self.batch_size,
            "fused_seconds_per_sample": fused[0] / self.batch_size,
            "eager_threads": eager[1],
            "fused_threads": fused[1],
            "speedup_at_threads": {
                str(t): min(self.seconds["eager"][t]) / min(self.seconds["fused"][t]) for t in self.seconds["eager"]
            },
            "seconds_per_batch": {
                engine: {str(t): v for t, v in by_threads.items()} for engine, by_threads in self.seconds.items()
            },
        }


def measure_throughput(
    n_steps: int,
    batch_size: int,
    device: str,
    seed: int,
    n_repeats: int,
    thread_options: list[int],
    say: Callable[[str], None],
) -> Throughput:
    """Both engines' float32 BPTT batch, timed ``n_repeats`` times at each of ``thread_options``.

    One short warm-up per engine and thread count, then ``n_repeats`` rounds; each round times both
    engines at every thread count, alternating. The caller's thread count is restored afterwards.
    """
    problem = build_problem(n_steps, batch_size, torch.float32, device, seed)
    warm = build_problem(min(n_steps, 100), batch_size, torch.float32, device, seed)
    seconds: dict[str, dict[int, list[float]]] = {
        engine: {threads: [] for threads in thread_options} for engine in ENGINES
    }
    initial_threads = torch.get_num_threads()
    try:
        for threads in thread_options:
            torch.set_num_threads(threads)
            for engine in ENGINES:
                timed(lambda engine=engine: bptt(engine, warm), device)
        for repeat in range(n_repeats):
            for threads in thread_options:
                torch.set_num_threads(threads)
                for engine in ENGINES:
                    seconds[engine][threads].append(timed(lambda engine=engine: bptt(engine, problem), device))
                    say(f"  {engine}, {threads} thread(s), repeat {repeat + 1}: {seconds[engine][threads][-1]:.2f} s")
    finally:
        torch.set_num_threads(initial_threads)
    return Throughput(batch_size=batch_size, n_steps=n_steps, seconds=seconds)


def useful_flops_per_sample_step(params: NetworkParams) -> int:
    """The work the adjoint cannot avoid: the two dense products with the loop matrices
    (n_e x n_i each, one multiply and one add per entry) per trial-step."""
    return 4 * params.connectivity.n_e * params.connectivity.n_i


@dataclass(frozen=True)
class Roofline:
    """The fused engine's useful flops per second against the measured FMA peak of its threads."""

    fma_peak_flops: float
    useful_flops_per_sample_step: int
    roofline_fraction: float

    def record(self) -> dict[str, Any]:
        return asdict(self)


def roofline(params: NetworkParams, fused_sample_steps_per_s: float, threads: int) -> Roofline | None:
    """None where the machine's FMA peak cannot be measured."""
    from bridge import fused_kernels

    peak = fused_kernels.fma_peak_flops(threads)
    if peak is None:
        return None
    useful = useful_flops_per_sample_step(params)
    return Roofline(
        fma_peak_flops=peak,
        useful_flops_per_sample_step=useful,
        roofline_fraction=fused_sample_steps_per_s * useful / peak,
    )


@dataclass(frozen=True)
class Phases:
    """Where one fused BPTT batch spends its time, and how fast the adjoint's products run alone.

    ``phase_seconds``: the CPU kernels' forward loop and backward pass (wall
    seconds), and the backward's recomputation and adjoint recursion
    (thread-seconds), from :func:`bridge.fused_kernels.record_phase_times`.
    ``product_flops_per_s``: the two products per step alone, on one thread,
    for a block of ``product_rows`` trials as the backward pass runs them, and
    ``product_fraction_of_peak`` against one thread's FMA peak.
    ``product_share_of_adjoint``: the products' thread-seconds at that rate
    over the adjoint recursion's (None: the backward pass ran no adjoint kernels).
    """

    phase_seconds: dict[str, Any]
    product_flops_per_s: float
    product_rows: int
    product_fraction_of_peak: float
    product_share_of_adjoint: float | None

    def record(self) -> dict[str, Any]:
        return asdict(self)


def measure_phases(n_steps: int, batch_size: int, seed: int, threads: int) -> Phases:
    """One fused float32 batch on CPU with the kernels' phase timers on, and the products' rate alone."""
    from bridge import fused_kernels
    from bridge.fast_engine import TRIALS_PER_BLOCK

    problem = build_problem(n_steps, batch_size, torch.float32, "cpu", seed)
    with torch_threads(threads), fused_kernels.record_phase_times() as record:
        bptt("fused", problem)
    connectivity = problem.params.connectivity
    rows = min(TRIALS_PER_BLOCK, batch_size)
    product = fused_kernels.product_flops(connectivity.n_e, connectivity.n_i, connectivity.n_classes, rows)
    peak_one = fused_kernels.fma_peak_flops(1)
    phases = record.as_dict()
    product_seconds = useful_flops_per_sample_step(problem.params) * batch_size * n_steps / product
    return Phases(
        phase_seconds=phases,
        product_flops_per_s=product,
        product_rows=rows,
        product_fraction_of_peak=product / peak_one,
        product_share_of_adjoint=product_seconds / phases["adjoint"] if phases["adjoint"] > 0 else None,
    )


@dataclass(frozen=True)
class BatchSweep:
    """The fused engine's sample-steps per second by batch size (keys: the batch sizes as strings)."""

    rates: dict[str, float]

    def record(self) -> dict[str, Any]:
        return {"fused_sample_steps_per_s_by_batch": dict(self.rates)}


def measure_batch_sweep(n_steps: int, batch_size: int, device: str, seed: int, threads: int) -> BatchSweep:
    """The fused engine's throughput (best of 2 batches) at a quarter, half, one and two times
    ``batch_size``: where the batch size stops buying throughput on this machine."""
    sizes = sorted({max(1, batch_size // 4), max(1, batch_size // 2), batch_size, 2 * batch_size})
    rates = {}
    with torch_threads(threads):
        for size in sizes:
            problem = build_problem(n_steps, size, torch.float32, device, seed)
            seconds = min(timed(lambda problem=problem: bptt("fused", problem), device) for _ in range(2))
            rates[str(size)] = size * n_steps / seconds
    return BatchSweep(rates=rates)
