"""Lower bounds on the memory a training run or a benchmark needs, checked before any work.

A size that cannot fit (a network of a billion neurons, a trial of a trillion
steps) is refused with the flag or field that asked for it, instead of dying
later with a bare ``MemoryError`` after the run directory has been written.
The estimates count only what must certainly be held (the weights with their
gradient and Adam's two moments, and one batch's dense boolean input raster,
``(batch, n_steps, n_input)`` bytes, :meth:`biosim.inputs.TrialSet.dense`), so
they refuse only sizes that cannot possibly run.
"""

from __future__ import annotations

from biosim.memory import available_memory_bytes, format_bytes
from biosim.params import NetworkParams

from .train_config import ConfigError, TrainConfig

__all__ = [
    "batched_run_bytes",
    "bench_memory_bytes",
    "check_bench_memory",
    "check_training_memory",
    "runs_that_fit",
    "training_memory_bytes",
]

_WEIGHT_COPIES = 4
"""The weights, their gradient and Adam's two moments."""


def _weight_count(params: NetworkParams) -> int:
    c = params.connectivity
    count = c.n_input * c.n_e + 2 * c.n_e * c.n_i + c.n_e * c.n_classes
    count += c.n_e * c.n_e * (c.p_ee > 0) + c.n_i * c.n_i * (c.p_ii > 0)
    return count


def _raster_bytes(params: NetworkParams, batch: int, n_steps: int) -> int:
    """One batch's input raster: a bool per trial, step and input neuron."""
    return batch * n_steps * params.connectivity.n_input


def training_memory_bytes(config: TrainConfig) -> dict[str, int]:
    """At least how many bytes :func:`bridge.training.train` holds: ``{"weights": ..., "batch": ...}``."""
    config = config.resolved()
    params = config.network_params()
    itemsize = 8 if config.dtype == "float64" else 4
    return {
        "weights": _weight_count(params) * itemsize * _WEIGHT_COPIES,
        "batch": _raster_bytes(params, config.batch_size, params.simulation.n_steps),
    }


def check_training_memory(config: TrainConfig, available: int | None = None) -> None:
    """Refuse, naming the field, a config whose :func:`training_memory_bytes` exceed the available memory."""
    needs = training_memory_bytes(config)
    available = available_memory_bytes() if available is None else available
    if sum(needs.values()) <= available:
        return
    c = config.network_params().connectivity
    if needs["weights"] >= needs["batch"]:
        field = (
            f"TrainConfig.network: connectivity n_input {c.n_input}, n_e {c.n_e}, n_i {c.n_i} need "
            f"{format_bytes(needs['weights'])} for the weights and their optimizer state"
        )
    else:
        field = (
            f"TrainConfig.batch_size: {config.resolved().batch_size} trials of "
            f"{config.network_params().simulation.n_steps} steps need {format_bytes(needs['batch'])} "
            "for one batch's input raster"
        )
    raise ConfigError(
        f"{field}, at least {format_bytes(sum(needs.values()))} in all, but this machine has "
        f"{format_bytes(available)} available; give smaller sizes"
    )


def bench_memory_bytes(n_steps: int, batch_size: int) -> int:
    """At least how many bytes ``biosim bench`` holds for ``n_steps`` and ``batch_size`` (default network)."""
    params = NetworkParams()
    return _weight_count(params) * 8 * _WEIGHT_COPIES + _raster_bytes(params, batch_size, n_steps)


def check_bench_memory(n_steps: int, batch_size: int, available: int | None = None) -> None:
    """Refuse, naming ``--n-steps`` and ``--batch-size``, sizes whose :func:`bench_memory_bytes` cannot fit."""
    needs = bench_memory_bytes(n_steps, batch_size)
    available = available_memory_bytes() if available is None else available
    if needs > available:
        raise ValueError(
            f"--n-steps {n_steps} and --batch-size {batch_size}: need at least {format_bytes(needs)} "
            f"(one batch's input raster), but this machine has {format_bytes(available)} available; "
            "give fewer steps or a smaller batch"
        )


# --- many runs as one (bridge.batched_training) ---------------------------------------------------

SAVED_BYTES_PER_NEURON_STEP = {"float32": 37, "float64": 72}
"""What autograd saves per neuron, trial and step of :func:`bridge.batched_engine.run_networks` (the values of
the step's operations and their bool masks): counted with ``torch.autograd.graph.saved_tensors_hooks`` on the
medium network (1024 E, 256 I), 36.65 and 71.5 bytes, rounded up."""

_STATE_VALUES_PER_NEURON = 6
"""A checkpoint's fields per neuron: ``v``, ``ge``, ``gi``, ``ready`` (int32, counted as a value), the spike count
and a spare (the readout's few values are negligible)."""

HEADROOM = 0.8
"""The share of a device's memory the estimate lets the runs fill (allocator fragmentation, the step's
transient gradients, the CUDA context)."""


def batched_run_bytes(config: TrainConfig, chunk_steps: int) -> dict[str, int]:
    """Estimated bytes one run adds to a batched training (:mod:`bridge.batched_training`), by part.

    ``weights``: the stored matrices, their gradient, Adam's two moments, the stacked effective copy and its
    gradient; ``raster``: the batch's input raster and its stacked copy; ``checkpoints``: the state at each
    chunk's start; ``chunk``: what autograd holds for one recomputed chunk of ``chunk_steps`` steps.
    """
    config = config.resolved()
    params = config.network_params()
    itemsize = 8 if config.dtype == "float64" else 4
    n_steps, batch = params.simulation.n_steps, config.batch_size
    neurons = params.connectivity.n_e + params.connectivity.n_i
    n_chunks = -(-n_steps // chunk_steps)
    return {
        "weights": _weight_count(params) * itemsize * (_WEIGHT_COPIES + 2),
        "raster": 2 * _raster_bytes(params, batch, n_steps),
        "checkpoints": n_chunks * batch * neurons * _STATE_VALUES_PER_NEURON * itemsize,
        "chunk": min(chunk_steps, n_steps) * batch * neurons * SAVED_BYTES_PER_NEURON_STEP[config.dtype],
    }


def runs_that_fit(config: TrainConfig, memory_bytes: int, chunk_steps: int) -> int:
    """How many runs of ``config``'s shape :func:`batched_run_bytes` lets train together in ``memory_bytes``."""
    return int(HEADROOM * memory_bytes) // sum(batched_run_bytes(config, chunk_steps).values())
