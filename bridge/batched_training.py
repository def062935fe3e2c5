"""Many runs of one network shape trained together, as one batched model (docs/gpu.md, "Many runs as one").

:func:`train_batched` trains several runs (:class:`~bridge.train_config.TrainConfig`
and run directory each) in one process. Each run is the single-run trainer
of :mod:`bridge.training` (its own model with its own leaf parameters, its
own ``torch.optim.Adam``, data order, seeds, trainable matrices, gradient
clipping, NaN rollback and run directory with the same records); only the
network's forward and backward pass are shared: the runs' effective weights
are stacked on a leading run axis and simulated at once by
:func:`bridge.batched_engine.run_networks`, and one backward pass of the sum
of the runs' losses gives each run the gradient of its own loss (the runs'
slices never mix, and the sum hands each loss a gradient of exactly 1).

The runs advance in rounds: in a round every unfinished run trains its next
epoch, batch by batch together. A run that meets a non-finite value leaves
the round at once (its later batches are not computed) and, at the round's
end, rolls back to its last checkpoint exactly as alone; the other runs are
not touched. Epoch-end test metrics are measured per run with the run's own
engine, as alone.

What must be shared to stack the runs is every config field but
:data:`PER_RUN_FIELDS` (:func:`group_key`): the network, tier, batch size,
dtype, device, surrogate, regularisers that shape the forward pass.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from biosim.environment import check_environment
from biosim.locks import directory_lock
from biosim.records import check_writable_dir

from .batched_engine import CHUNK_STEPS, run_networks, run_output, stack_weights
from .feeding import _batch_tensors
from .memory import check_training_memory
from .run_records import TrainResult, _finished_result, is_finished
from .torch_settings import flushed_denormals
from .train_config import ConfigError, TrainConfig
from .training import BatchHook, _deterministic_algorithms, _NonFinite, _step_scalars, _StepRecord, _Trainer

__all__ = ["PER_RUN_FIELDS", "group_key", "group_runs", "train_batched"]

PER_RUN_FIELDS = (
    "seed",
    "lr",
    "grad_clip",
    "grad_clip_mode",
    "epochs",
    "max_retries",
    "retry_lr_factor",
    "reg_w_ei_distance",
    "engine",
    *(f"{kind}_{name}" for kind in ("init", "train") for name in ("w_in", "w_ei", "w_ie", "w_ee", "w_ii")),
    "train_w_out",
)
"""Config fields in which the runs of one batch may differ; ``engine`` is the one of the run's evaluations (the
batched engine trains them all)."""


def group_key(config: TrainConfig) -> str:
    """The fields a run shares with every run it can be stacked with, as one JSON string."""
    shared = {key: value for key, value in config.resolved().to_dict().items() if key not in PER_RUN_FIELDS}
    return json.dumps(shared, sort_keys=True)


def group_runs(configs: list[TrainConfig]) -> list[list[int]]:
    """Indices of ``configs`` grouped by :func:`group_key`, groups and members in first-seen order."""
    groups: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(group_key(config), []).append(index)
    return list(groups.values())


class _RoundRun:
    """One run's part of a round: its epoch's batches, step records and first non-finite value."""

    def __init__(self, trainer: _Trainer) -> None:
        self.trainer = trainer
        self.epoch = trainer.epoch + 1
        self.batches = trainer.train_digits.batches(self.epoch)
        self.steps: list[_StepRecord] = []
        self.total_loss = 0.0
        self.correct = 0
        self.problem: _NonFinite | None = None
        self.start = time.perf_counter()
        trainer.model.train()


def _train_step(runs: list[_RoundRun], step: int, chunk_steps: int) -> None:
    """One optimizer step of every run in ``runs`` (no run of which has failed), forward and backward together."""
    first = runs[0].trainer
    dtype, device, config = first.dtype, first.device, first.config
    batches = []
    for run in runs:
        trainer = run.trainer
        trials = trainer.train_digits.trials(run.epoch, run.batches[step])
        batches.append(_batch_tensors(trials, np.arange(trials.n_trials), dtype, device))
    x, v_init_e, v_init_i, labels = (torch.stack(parts) for parts in zip(*batches, strict=True))
    model = first.model
    output = run_networks(
        x,
        v_init_e,
        v_init_i,
        stack_weights([run.trainer.model.effective_weights() for run in runs]),
        model.constants,
        model.spike_fn,
        record_population=config.reg_gamma_power > 0,
        membrane_grad_scale=model.membrane_grad_scale,
        chunk_steps=chunk_steps,
    )
    losses: dict[int, tuple[torch.Tensor, dict[str, float]]] = {}
    for k, run in enumerate(runs):
        trainer, global_step = run.trainer, (run.epoch - 1) * len(run.batches) + step
        own = run_output(output, k)
        try:
            losses[k] = trainer.batch_loss(run.epoch, step, global_step, own, own.scores, labels[k])
        except _NonFinite as problem:
            run.problem = problem
    for k in losses:
        runs[k].trainer.optimizer.zero_grad(set_to_none=True)
    if losses:
        # d(sum)/d(loss_k) = 1: each run's parameters receive the gradient of its own loss only.
        sum(loss for loss, _ in losses.values()).backward()
    for k, (loss, penalties) in losses.items():
        run = runs[k]
        global_step = (run.epoch - 1) * len(run.batches) + step
        try:
            record = run.trainer.update(
                run.epoch, step, global_step, loss, output.scores[k], labels[k], penalties, run_output(output, k)
            )
        except _NonFinite as problem:
            run.problem = problem
            continue
        if run.trainer.trajectory is not None:
            run.trainer.trajectory.after_step(global_step + 1, run.trainer.model, _step_scalars(run.epoch, record))
        run.total_loss += record.loss * len(run.batches[step])
        run.correct += record.correct
        run.steps.append(record)


def _round(trainers: list[_Trainer], progress: bool, chunk_steps: int) -> list[TrainResult | None]:
    """Every trainer's next epoch, trained together; each one's result if it ended (diverged), else None."""
    runs = [_RoundRun(trainer) for trainer in trainers]
    sizes = {tuple(len(b) for b in run.batches) for run in runs}
    if len(sizes) != 1:  # cannot happen within a group (same n_train and batch_size); guard the stacking
        raise ConfigError(f"batched runs: the runs' batches differ in size ({sorted(sizes)}); give one batch_size")
    n_batches = len(runs[0].batches)
    description = f"epochs {sorted({run.epoch for run in runs})} of {len(runs)} runs"
    for step in tqdm(range(n_batches), desc=description, disable=not progress, file=sys.stderr):
        alive = [run for run in runs if run.problem is None]
        if not alive:
            break
        _train_step(alive, step, chunk_steps)
    results: list[TrainResult | None] = []
    for run in runs:
        trainer = run.trainer
        trainer.model.eval()
        if run.problem is None:
            try:
                record = trainer.epoch_record(run.epoch, run.steps, run.total_loss, run.correct, n_batches, run.start)
            except _NonFinite as problem:  # the test evaluation
                run.problem = problem
            else:
                trainer.end_epoch(record)
                results.append(None)
                continue
        results.append(trainer.roll_back(run.problem))
    return results


def train_batched(
    jobs: list[tuple[TrainConfig, str | Path]],
    *,
    progress: bool = False,
    hooks: list[BatchHook | None] | None = None,
    chunk_steps: int = CHUNK_STEPS,
) -> list[TrainResult]:
    """Train ``jobs`` (config and run directory each) together; each run's :class:`TrainResult`, in order.

    Every run behaves as :func:`bridge.training.train` would alone (resume from
    its checkpoint, a finished run returned as stored, its lock held, the same
    records), and gives the weights it would give alone trained by the eager
    engine (docs/gpu.md has the tolerance against the fused engine).

    Raises
    ------
    ConfigError
        The configs differ in a field outside :data:`PER_RUN_FIELDS` (the
        message names it), or use digit streams (not batched yet), or a run's
        checks of :func:`bridge.training.train` refuse it.
    """
    if not jobs:
        return []
    hooks = list(hooks) if hooks is not None else [None] * len(jobs)
    if len(hooks) != len(jobs):
        raise ValueError(f"hooks: expected one per run ({len(jobs)}), got {len(hooks)}")
    configs = [config.resolved() for config, _ in jobs]
    run_dirs = [Path(run_dir) for _, run_dir in jobs]
    if len(set(run_dirs)) != len(run_dirs):
        raise ValueError("train_batched: a run directory is given twice")
    _check_stackable(configs)
    check_environment()
    for config, run_dir in zip(configs, run_dirs, strict=True):
        check_writable_dir(run_dir, "run directory")
        check_training_memory(config)
    results: list[TrainResult | None] = [None] * len(jobs)
    with contextlib.ExitStack() as stack:
        # As train() does: the same float environment before any model is built.
        stack.enter_context(flushed_denormals())
        stack.enter_context(_deterministic_algorithms(configs[0].deterministic))
        active: dict[int, _Trainer] = {}
        for index, (config, run_dir) in enumerate(zip(configs, run_dirs, strict=True)):
            if run_dir.is_dir():
                stack.enter_context(directory_lock(run_dir, "run directory", "training"))
                if is_finished(run_dir):
                    results[index] = _finished_result(config, run_dir)
                    continue
            trainer = _Trainer(config, run_dir, False, hooks[index])
            if not run_dir.is_dir():
                run_dir.mkdir(parents=True)
                stack.enter_context(directory_lock(run_dir, "run directory", "training"))
            active[index] = trainer
        for trainer in active.values():
            trainer.start()
        while active:
            for index in [i for i, t in active.items() if t.epoch >= t.config.epochs]:
                results[index] = active.pop(index).finish()
            if not active:
                break
            indices = list(active)
            ended = _round([active[i] for i in indices], progress, chunk_steps)
            for index, result in zip(indices, ended, strict=True):
                if result is not None:
                    results[index] = result
                    del active[index]
    missing = [str(run_dirs[k]) for k, result in enumerate(results) if result is None]
    if missing:  # every run ends finished, diverged or with an exception; anything else is a bug here
        raise RuntimeError(f"train_batched: no result for {', '.join(missing)}")
    return [result for result in results if result is not None]


def _check_stackable(configs: list[TrainConfig]) -> None:
    for config in configs:
        if config.stream_digits != 1:
            raise ConfigError("TrainConfig.stream_digits: digit streams are not trained batched; train them alone")
        if config.feedback_rank != 0:
            raise ConfigError(
                "TrainConfig.feedback_rank: the batched engine has no feedback matrix (exact BPTT only); "
                "train feedback runs alone"
            )
    first = configs[0].to_dict()
    for config in configs[1:]:
        other = config.to_dict()
        differing = sorted(k for k in first if k not in PER_RUN_FIELDS and first[k] != other[k])
        if differing:
            raise ConfigError(
                f"batched runs: TrainConfig.{differing[0]} differs between runs ({first[differing[0]]!r} and "
                f"{other[differing[0]]!r}); only {', '.join(PER_RUN_FIELDS)} may differ (group_runs groups them)"
            )
