"""Measurement tools that sit on top of the model: the benchmark and the GPU check.

Not part of the model: nothing in :mod:`biosim`, :mod:`bridge` or :mod:`protocols` imports this
package; it imports :mod:`biosim` and :mod:`bridge` only, and the command line (``biosim bench``)
imports it when that subcommand runs.

:mod:`benchmarks.bench`
    :func:`~benchmarks.bench.run_benchmark`, the orchestrator of ``biosim bench``, composed of
    :mod:`~benchmarks.problem` (the benchmark problem and its BPTT batch),
    :mod:`~benchmarks.throughput` (fused vs eager timings, phases, batch sweep),
    :mod:`~benchmarks.memory` (peak memory of one batch), :mod:`~benchmarks.gradients`
    (gradient agreement), :mod:`~benchmarks.brian2_eval` (Brian2's evaluation) and
    :mod:`~benchmarks.environment` (the machine and its load).
:mod:`benchmarks.gpu_check`
    The steps of ``scripts/gpu_check.sh`` (``python -m benchmarks.gpu_check``).

This file imports nothing, so that ``python -m benchmarks.gpu_check merge`` runs on the standard
library alone.
"""
