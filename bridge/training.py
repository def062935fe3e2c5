"""Surrogate-gradient BPTT training of the PING network (the recipe: docs/training.md).

One run is described by a :class:`~bridge.train_config.TrainConfig` and
lives in a run directory (its files: :mod:`bridge.run_records`); its digits,
batches and input spikes come from :mod:`bridge.feeding`.

Training: Adam (``lr``), cross-entropy on the mem-mean readout scores,
gradient-norm clipping (per matrix by default), backpropagation through all time steps with the
surrogate spike function of :mod:`bridge.surrogates`.

Each line of ``metrics.jsonl`` (epoch 0 = the untrained network, its
training loss and accuracy measured without gradients on the epoch-0 inputs):

==========================================  ===================================================
``epoch``                                   0, 1, ..., epochs
``loss``, ``train_accuracy``                mean cross-entropy and accuracy over the epoch's
                                            training batches (weights change during the epoch)
``test_loss``, ``test_accuracy``            on the test digits after the epoch, no gradients
``rate_e_hz``, ``rate_i_hz``                test-set population rates, transient excluded
``gamma_peak_hz``, ``gamma_relative_power`` E-population spectrum peak in 20-100 Hz
``grad_norm``                               mean global gradient norm before clipping
``grad_norm_{w_in,w_ei,w_ie,w_out}``        mean norm of each trainable matrix's gradient before
                                            clipping (and ``w_ee``, ``w_ii`` where they train)
``adam_eps_dominated_{...}``                mean fraction of the matrix's Adam steps set by eps
                                            (``sqrt(v_hat) < eps``)
``optimizer_steps``                         Adam steps taken by the end of the epoch
``{w_in,w_ei,w_ie}_mean_abs_stored``        :func:`biosim.analysis.weight_stats` of the stored
``{w_in,w_ei,w_ie}_pruned_fraction``        matrix (``w_in`` over its existing edges); effective
``{w_in,w_ei,w_ie}_effective_mean``         mean in uS; likewise ``w_ee_...``, ``w_ii_...`` for the
                                            recurrent blocks the network has
``lr``, ``retries``                         learning rate and retries used so far
``wall_time_s``, ``elapsed_s``              this epoch's and the run's cumulative wall time
==========================================  ===================================================

Undefined values (NaN: no gamma peak in a silent network) are written as ``null``.

Digit streams (``stream_digits > 1``, :mod:`biosim.streams`): loss and
accuracy are over the digits' readout windows (one window per digit, the
readout trace averaged over it), rates and spectra over the streams, and the
metrics add ``test_accuracy_by_position`` (the test accuracy at each position
in a stream).

Resumption: after every epoch the trainer writes an atomic checkpoint (model,
optimizer, epoch, RNG states, retry counter, learning rate, metrics);
``train`` continues from it when the run directory has one, and returns the
stored result without training when ``final.json`` and ``weights.npz`` exist
(a finished run; its checkpoint is not needed then, and a damaged one is
ignored with a warning). A damaged checkpoint of an unfinished run is an
error that names the file and how to recover. A resume must see the run's
own digits: ``config.json`` records their SHA-256 (``data``), and other
digits are refused (:func:`bridge.run_records.check_same_data`). One process
at a time trains in a run directory: ``train`` holds its lock
(:mod:`biosim.locks`), and a second one is refused at once.

Trajectory records (``record_every > 0``, :mod:`bridge.trajectory`): the
effective loop matrices every ``record_every`` Adam steps and loss, rates and
gradient norms at every step, in ``trajectory/``; a resume or a rollback
keeps them consistent with the checkpoint, and they change no number of the run.

Non-finite values (retry policy): at every batch the loss, the network state
at the end of the batch (membrane potentials, conductances, readout), the
gradients, their global norm and the parameters after the optimizer step are
checked. On the
first non-finite value the event is logged (stderr and ``events.jsonl``, with
epoch, batch step and what was non-finite), the run rolls back to the last
good checkpoint (the end of the previous epoch) and retrains from there with
the learning rate multiplied by ``retry_lr_factor`` (so after ``r`` retries it
is ``lr * retry_lr_factor ** r``). At most ``max_retries`` retries are allowed
per run; the next non-finite value marks the run ``diverged`` in
``final.json`` with its epoch and step, and the weights of the last good
checkpoint are kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as functional
from tqdm import tqdm

from biosim.environment import check_environment
from biosim.locks import directory_lock
from biosim.records import check_writable_dir, library_versions, write_json
from biosim.streams import StreamSet
from biosim.weight_files import save_weights
from biosim.weights import init_weights

from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, capture_rng_state, restore_rng_state
from .checkpoint import save_checkpoint as _save_checkpoint_file
from .evaluation import _forward, _nonfinite_state, _weight_metrics, evaluate
from .feeding import TrainingDigits, test_stream_set, test_trial_set
from .memory import check_training_memory
from .model import NetworkOutput, PINGModel
from .regularisers import gamma_shortfall, w_ei_distance
from .run_records import (
    WEIGHTS_NAME,
    TrainResult,
    _append_json_line,
    _check_same_config,
    _finished_result,
    _finite_or_none,
    _load_run_checkpoint,
    _now,
    _write_json_lines,
    check_same_data,
    check_same_environment,
    is_finished,
    run_environment,
)
from .torch_settings import flushed_denormals
from .train_config import ConfigError, TrainConfig, build_model
from .trajectory import TRAJECTORY_DIR, TrajectoryRecorder

__all__ = ["BatchContext", "BatchHook", "train"]


@dataclass
class BatchContext:
    """What a test hook sees after the forward pass of one training batch.

    The hook may replace :attr:`loss` (e.g. with NaN) or raise to simulate a
    crash; it runs before the non-finite checks and the backward pass.
    """

    epoch: int
    """Epoch being trained (1-based)."""
    step: int
    """Batch index within the epoch (0-based)."""
    model: PINGModel
    loss: torch.Tensor
    output: NetworkOutput


BatchHook = Callable[[BatchContext], None]


@dataclass(frozen=True)
class _StepRecord:
    """What one optimizer step reports to its epoch."""

    loss: float
    correct: int
    grad_norms: dict[str, float]
    """Gradient norm of each trainable matrix before clipping."""
    eps_dominated: dict[str, float]
    """Per matrix, the fraction of Adam steps set by eps (:func:`_eps_dominated_fractions`)."""
    penalties: dict[str, float] = field(default_factory=dict)
    """Value of each active regulariser (before its lambda)."""
    rates_hz: tuple[float, float] = (math.nan, math.nan)
    """The batch's E and I population rates over the whole trial (only when trajectories are recorded)."""


class _NonFinite(Exception):
    """Raised inside the trainer when a checked quantity is not finite."""

    def __init__(self, epoch: int, step: int | None, global_step: int | None, nonfinite: list[str]) -> None:
        super().__init__(f"non-finite {', '.join(nonfinite)} at epoch {epoch}, step {step}")
        self.record = {"epoch": epoch, "step": step, "global_step": global_step, "nonfinite": nonfinite}


@contextlib.contextmanager
def _deterministic_algorithms(enabled: bool) -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        # cuBLAS is deterministic only with a fixed workspace; read when its handle is created.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


# --- the trainer ----------------------------------------------------------------


class _Trainer:
    """State of one run; :meth:`run` is the whole of :func:`train` after the early exits."""

    def __init__(self, config: TrainConfig, run_dir: Path, progress: bool, hook: BatchHook | None) -> None:
        self.config = config
        self.run_dir = run_dir
        self.progress = progress
        self.hook = hook
        self.params = config.network_params()
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("TrainConfig.device: 'cuda' requested but torch.cuda.is_available() is False")
        self.device = torch.device(config.device)
        self.dtype = config.torch_dtype()
        self.train_digits = TrainingDigits.load(config)
        self.test_trials = test_trial_set(config) if config.stream_digits == 1 else test_stream_set(config)
        self.model = build_model(config, self.params)
        # The anti-pruning reference: the canonical W_EI of the run's seed (the start of a canonical run).
        self.w_ei_reference = None
        if config.reg_w_ei_distance > 0:
            canonical = init_weights(self.params, config.seed).w_ei
            self.w_ei_reference = torch.as_tensor(canonical, dtype=self.dtype, device=self.device)
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=config.lr)
        self.epoch = 0
        self.retries = 0
        self.lr = config.lr
        self.metrics: list[dict[str, Any]] = []
        self.spectrum: dict[str, list[float]] = {}
        self.elapsed_s = 0.0
        self.trajectory = None
        if config.record_every > 0:
            steps_per_epoch = math.ceil(config.n_train / config.batch_size)
            self.trajectory = TrajectoryRecorder(
                run_dir / TRAJECTORY_DIR, config.record_every, config.epochs * steps_per_epoch
            )

    # --- files ---
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def _log_event(self, event: str, **details: Any) -> None:
        record = {"event": event, "time": _now(), **details}
        _append_json_line(self.run_dir / "events.jsonl", record)
        print(f"[bridge.training] {self.run_dir}: {json.dumps(record, sort_keys=True)}", file=sys.stderr)

    def _save_checkpoint(self) -> None:
        _save_checkpoint_file(
            self.checkpoint_path,
            {
                "format": CHECKPOINT_FORMAT,
                "config": self.config.to_dict(),
                "epoch": self.epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": capture_rng_state(),
                "retries": self.retries,
                "lr": self.lr,
                "metrics": self.metrics,
                "spectrum": self.spectrum,
                "elapsed_s": self.elapsed_s,
            },
        )

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        restore_rng_state(checkpoint["rng"])
        self.epoch = checkpoint["epoch"]
        self.retries = checkpoint["retries"]
        self.lr = checkpoint["lr"]
        self.metrics = list(checkpoint["metrics"])
        self.spectrum = dict(checkpoint["spectrum"])
        self.elapsed_s = checkpoint["elapsed_s"]
        self._set_lr(self.lr)

    def _steps_done(self) -> int:
        """Adam steps of the last checkpoint (0 at epoch 0)."""
        return int(self.metrics[-1].get("optimizer_steps") or 0) if self.metrics else 0

    def _trajectory_from_checkpoint(self) -> None:
        """Trajectory records up to the checkpoint's step, and the step-0 record (see :mod:`bridge.trajectory`)."""
        if self.trajectory is None:
            return
        done = self._steps_done()
        self.trajectory.truncate(done)
        if done == 0:
            self.trajectory.record_weights(0, self.model)

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # --- the run ---
    def run(self) -> TrainResult:
        self.start()
        while self.epoch < self.config.epochs:
            try:
                record = self._train_epoch(self.epoch + 1)
            except _NonFinite as problem:
                result = self.roll_back(problem)
                if result is not None:
                    return result
                continue
            self.end_epoch(record)
        return self._finish("completed", None)

    def start(self) -> None:
        """Resume from the checkpoint, or write ``config.json`` and measure epoch 0; then ``metrics.jsonl``."""
        config = self.config
        if self.checkpoint_path.exists():
            checkpoint = _load_run_checkpoint(self.checkpoint_path)
            # The fields first, then the digits by digest (the message names both data), then the data path:
            # other digits under the same path, or the same name in another directory, are never resumed on.
            _check_same_config(checkpoint["config"], config, self.checkpoint_path, ignore=("idx_directory",))
            check_same_data(self.run_dir / "config.json", self.train_digits.data, action="resume")
            _check_same_config(checkpoint["config"], config, self.checkpoint_path)
            self._restore(checkpoint)
            environment = run_environment(config)
            check_same_environment(self.run_dir / "config.json", environment)
            self._log_event("resumed", epoch=self.epoch, retries=self.retries, lr=self.lr, environment=environment)
        else:
            write_json(
                self.run_dir / "config.json",
                {
                    "command": "train",
                    "created": _now(),
                    "seed": config.seed,
                    "config": config.to_dict(),
                    "data": self.train_digits.data,
                    "versions": library_versions(),
                    "environment": run_environment(config),
                },
            )
            self.metrics = [self._epoch_zero()]
            self._save_checkpoint()
        self._trajectory_from_checkpoint()
        # Checkpoint first, metrics file second: after a crash in between, this rewrite repairs it.
        _write_json_lines(self.run_dir / "metrics.jsonl", self.metrics)

    def roll_back(self, problem: _NonFinite) -> TrainResult | None:
        """After a non-finite value: back to the last checkpoint with a smaller lr, or the diverged result."""
        config = self.config
        self._log_event("nonfinite", **problem.record)
        if self.retries >= config.max_retries:
            self._restore(_load_run_checkpoint(self.checkpoint_path))
            self._trajectory_from_checkpoint()
            self._log_event("diverged", **problem.record, retries=self.retries)
            return self._finish("diverged", problem.record)
        retries = self.retries + 1
        self._restore(_load_run_checkpoint(self.checkpoint_path))
        self.retries = retries
        self.lr = config.lr * config.retry_lr_factor**retries
        self._set_lr(self.lr)
        # Persist the spent retry at once, so a crash now cannot grant it again.
        self._save_checkpoint()
        self._trajectory_from_checkpoint()
        self._log_event("rollback", to_epoch=self.epoch, retries=self.retries, lr=self.lr)
        return None

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Record a finished epoch: metrics, checkpoint, ``metrics.jsonl``."""
        self.epoch += 1
        self.metrics.append(record)
        self._save_checkpoint()
        _append_json_line(self.run_dir / "metrics.jsonl", record)

    def finish(self) -> TrainResult:
        """The completed run's records and result."""
        return self._finish("completed", None)

    def _finish(self, status: str, diverged: dict[str, Any] | None) -> TrainResult:
        save_weights(
            self.run_dir / WEIGHTS_NAME,
            self.model.to_network_weights(stored=True),
            self.params,
            provenance={
                "source": "bridge.training",
                "run_dir": str(self.run_dir),
                "status": status,
                "epoch": self.epoch,
                "seed": self.config.seed,
                "config": self.config.to_dict(),
            },
        )
        write_json(self.run_dir / "spectrum.json", self.spectrum)
        write_json(
            self.run_dir / "final.json",
            {
                "status": status,
                "diverged": diverged,
                "epochs_completed": self.epoch,
                "retries": self.retries,
                "lr": self.lr,
                "elapsed_s": self.elapsed_s,
                "final": self.metrics[-1],
            },
        )
        return TrainResult(
            status=status,
            run_dir=self.run_dir,
            config=self.config,
            metrics=self.metrics,
            model=self.model,
            retries=self.retries,
            diverged=diverged,
        )

    def _test_metrics(self, epoch: int) -> dict[str, Any]:
        result = evaluate(self.model, self.test_trials, batch_size=self.config.batch_size, device=self.device)
        if result["nonfinite"]:
            raise _NonFinite(epoch, None, None, [f"test evaluation {name}" for name in result["nonfinite"]])
        self.spectrum = result.pop("spectrum")
        result.pop("nonfinite")
        renamed = ("loss", "accuracy", "accuracy_by_position")
        return {f"test_{key}" if key in renamed else key: value for key, value in result.items()}

    def _train_batch(self, epoch: int, step: int, global_step: int, indices: np.ndarray) -> _StepRecord:
        """One optimizer step: loss, correct predictions and per-matrix gradient diagnostics."""
        trials = self.train_digits.trials(epoch, indices)
        positions = np.arange(trials.n_streams if isinstance(trials, StreamSet) else trials.n_trials)
        output, scores, labels = _forward(
            self.model, trials, positions, self.dtype, self.device, record_population=self.config.reg_gamma_power > 0
        )
        loss, penalties = self.batch_loss(epoch, step, global_step, output, scores, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return self.update(epoch, step, global_step, loss, scores, labels, penalties, output)

    def batch_loss(
        self,
        epoch: int,
        step: int,
        global_step: int,
        output: NetworkOutput,
        scores: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch's loss (the hook may replace it), checked finite with the state; the penalties."""
        cross_entropy = functional.cross_entropy(scores, labels)  # streams: the mean over all digits' windows
        loss, penalties = self._regularised(cross_entropy, output)
        if self.hook is not None:
            context = BatchContext(epoch=epoch, step=step, model=self.model, loss=loss, output=output)
            self.hook(context)
            loss = context.loss

        def check(nonfinite: list[str]) -> None:
            if nonfinite:
                raise _NonFinite(epoch, step, global_step, nonfinite)

        check(([] if bool(torch.isfinite(loss)) else ["loss"]) + _nonfinite_state(output))
        return loss, penalties

    def update(
        self,
        epoch: int,
        step: int,
        global_step: int,
        loss: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor,
        penalties: dict[str, float],
        output: NetworkOutput,
    ) -> _StepRecord:
        """After ``loss.backward()``: check, clip, take the Adam step, check again; the step's record."""

        def check(nonfinite: list[str]) -> None:
            if nonfinite:
                raise _NonFinite(epoch, step, global_step, nonfinite)

        model = self.model
        trainable = {name: getattr(model, name) for name in model.matrices if getattr(model, name).requires_grad}
        check([f"gradient of {name}" for name, p in trainable.items() if not bool(torch.isfinite(p.grad).all())])
        norms = _clip_gradients(trainable, self.config.grad_clip, self.config.grad_clip_mode)
        # Entries finite, but the sum of their squares overflowed.
        check([f"gradient norm of {name}" for name, norm in norms.items() if not math.isfinite(norm)])
        self.optimizer.step()
        check([f"parameter {name}" for name, p in trainable.items() if not bool(torch.isfinite(p).all())])
        return _StepRecord(
            loss=float(loss.detach()),
            correct=int((scores.argmax(dim=1) == labels).sum()),
            grad_norms=norms,
            eps_dominated=_eps_dominated_fractions(self.optimizer, trainable, self.model.input_mask),
            penalties=penalties,
            rates_hz=self._batch_rates(output) if self.trajectory is not None else (math.nan, math.nan),
        )

    def _batch_rates(self, output: NetworkOutput) -> tuple[float, float]:
        """E and I population rates (Hz) of a training batch over its whole trial (streams: the whole stream)."""
        seconds = self.params.simulation.trial_ms * self.config.stream_digits / 1000.0
        counts = (output.spike_counts_e, output.spike_counts_i)
        return tuple(float(c.detach().to(torch.float64).mean()) / seconds for c in counts)

    def _regularised(self, loss: torch.Tensor, output: NetworkOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss with the active regularisers (:mod:`bridge.regularisers`) added; their values."""
        config, penalties = self.config, {}
        if config.reg_w_ei_distance > 0:
            distance = w_ei_distance(self.model.w_ei, self.w_ei_reference)
            loss = loss + config.reg_w_ei_distance * distance
            penalties["w_ei_distance"] = float(distance.detach())
        if config.reg_gamma_power > 0:
            simulation = self.params.simulation
            shortfall = gamma_shortfall(output.population_e, simulation.dt_ms, transient_ms=simulation.transient_ms)
            loss = loss + config.reg_gamma_power * shortfall
            penalties["gamma_shortfall"] = float(shortfall.detach())
        return loss, penalties

    def _epoch_zero(self) -> dict[str, Any]:
        """Metrics of the untrained network: the training digits (epoch-0 inputs) and the test digits."""
        start = time.perf_counter()
        train = evaluate(
            self.model,
            self.train_digits.trials(0, np.arange(self.config.n_train)),
            batch_size=self.config.batch_size,
            device=self.device,
        )
        record = {
            "epoch": 0,
            "loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "grad_norm": None,
            **self._test_metrics(0),
            **_weight_metrics(self.model),
            "lr": self.lr,
            "retries": self.retries,
        }
        wall = time.perf_counter() - start
        self.elapsed_s += wall
        return _finite_or_none({**record, "wall_time_s": wall, "elapsed_s": self.elapsed_s})

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        config = self.config
        start = time.perf_counter()
        batches = self.train_digits.batches(epoch)
        total_loss, correct, steps = 0.0, 0, []
        self.model.train()
        description = f"epoch {epoch}/{config.epochs}"
        with tqdm(batches, desc=description, disable=not self.progress, file=sys.stderr) as bar:
            for step, indices in enumerate(bar):
                global_step = (epoch - 1) * len(batches) + step
                record = self._train_batch(epoch, step, global_step, indices)
                if self.trajectory is not None:
                    self.trajectory.after_step(global_step + 1, self.model, _step_scalars(epoch, record))
                total_loss += record.loss * len(indices)
                correct += record.correct
                steps.append(record)
                bar.set_postfix(loss=f"{record.loss:.4f}")
        self.model.eval()
        return self.epoch_record(epoch, steps, total_loss, correct, len(batches), start)

    def epoch_record(
        self, epoch: int, steps: list[_StepRecord], total_loss: float, correct: int, n_batches: int, start: float
    ) -> dict[str, Any]:
        """The line of ``metrics.jsonl`` of a trained epoch: its steps' means, then the test metrics."""
        config = self.config
        record = {
            "epoch": epoch,
            "loss": total_loss / config.n_train,
            "train_accuracy": correct / config.n_train,
            "grad_norm": float(np.mean([math.sqrt(sum(n * n for n in r.grad_norms.values())) for r in steps])),
            **{
                f"grad_norm_{name}": float(np.mean([r.grad_norms[name] for r in steps])) for name in steps[0].grad_norms
            },
            **{
                f"adam_eps_dominated_{name}": float(np.mean([r.eps_dominated[name] for r in steps]))
                for name in steps[0].eps_dominated
            },
            **{f"penalty_{name}": float(np.mean([r.penalties[name] for r in steps])) for name in steps[0].penalties},
            "optimizer_steps": epoch * n_batches,
            **self._test_metrics(epoch),
            **_weight_metrics(self.model),
            "lr": self.lr,
            "retries": self.retries,
        }
        wall = time.perf_counter() - start
        self.elapsed_s += wall
        return _finite_or_none({**record, "wall_time_s": wall, "elapsed_s": self.elapsed_s})


def _step_scalars(epoch: int, record: _StepRecord) -> dict[str, Any]:
    """One step's line of the trajectory's ``steps.jsonl`` (:mod:`bridge.trajectory`)."""
    return {
        "epoch": epoch,
        "loss": record.loss,
        "rate_e_hz": record.rates_hz[0],
        "rate_i_hz": record.rates_hz[1],
        "grad_norm": math.sqrt(sum(n * n for n in record.grad_norms.values())),
        **{f"grad_norm_{name}": norm for name, norm in record.grad_norms.items()},
    }


def _sum_of_squares(tensor: torch.Tensor) -> float:
    """The sum of squares in float64, in an order that does not depend on the number of threads.

    torch's CPU reduction splits a large tensor between threads (W_in's gradient, 784 x 1024, sums
    one ulp apart on 1 and 2 threads), so on the CPU the sum is numpy's single-threaded pairwise sum.
    """
    squares = tensor.detach().to(torch.float64).square()
    if squares.device.type != "cpu":
        return float(squares.sum())
    return float(squares.numpy().sum())


def _clip_gradients(parameters: dict[str, torch.Tensor], max_norm: float | None, mode: str) -> dict[str, float]:
    """Clip the gradients (``mode`` as in :attr:`TrainConfig.grad_clip_mode`); return each norm before clipping.

    The scaling rule is that of ``torch.nn.utils.clip_grad_norm_`` (factor
    ``max_norm / (norm + 1e-6)`` when below 1), applied to each matrix
    (``"per_matrix"``) or to all together (``"global"``). Norms are summed in
    float64: float32 gradients of surrogate BPTT can be finite while the sum
    of their squares overflows.
    """
    norms = {name: math.sqrt(_sum_of_squares(p.grad)) for name, p in parameters.items()}
    if max_norm is None:
        return norms
    if mode == "global":
        total = math.sqrt(sum(n * n for n in norms.values()))
        groups = [(total, list(parameters.values()))] if math.isfinite(total) else []
    else:
        groups = [(norms[name], [p]) for name, p in parameters.items() if math.isfinite(norms[name])]
    for norm, members in groups:
        factor = max_norm / (norm + 1e-6)
        if factor < 1.0:
            for p in members:
                p.grad.mul_(factor)
    return norms


@torch.no_grad()
def _eps_dominated_fractions(
    optimizer: torch.optim.Adam, parameters: dict[str, torch.Tensor], input_mask: torch.Tensor
) -> dict[str, float]:
    """Per matrix, the fraction of entries whose Adam step is set by ``eps`` rather than the gradient.

    Adam's step is ``lr * m_hat / (sqrt(v_hat) + eps)``; where ``sqrt(v_hat) <
    eps`` the denominator is mostly ``eps`` and the step is shrunk below
    ``lr`` in proportion to the gradient: the scale invariance that makes
    Adam robust to badly scaled gradients is lost there. ``w_in`` counts only
    its existing edges (the others never receive a gradient).
    """
    group = optimizer.param_groups[0]
    beta2, eps = group["betas"][1], group["eps"]
    fractions = {}
    for name, p in parameters.items():
        state = optimizer.state[p]
        v_hat = state["exp_avg_sq"] / (1.0 - beta2 ** float(state["step"]))
        dominated = v_hat.sqrt() < eps
        if name == "w_in":
            dominated = dominated[input_mask]
        fractions[name] = float(dominated.to(torch.float64).mean())
    return fractions


# --- public entry point ------------------------------------------------------------


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    progress: bool = True,
    hook: BatchHook | None = None,
) -> TrainResult:
    """Train the PING network as ``config`` says, in ``run_dir`` (see the module docstring).

    Resumes from ``run_dir/checkpoint.pt`` if present (on the digits the run
    recorded, checked by digest); returns the stored result without training
    if ``run_dir`` holds ``final.json`` and ``weights.npz``
    (:func:`bridge.run_records.is_finished`). The run directory's lock
    (:mod:`biosim.locks`) is held throughout, so no other process trains or
    validates the run meanwhile.

    Parameters
    ----------
    config : TrainConfig
        Resolved here (tier defaults filled in) before anything runs.
    run_dir : str or Path
        Run directory (created if missing).
    progress : bool
        Show a tqdm progress bar over the batches of each epoch (stderr).
    hook : callable, optional
        Called with a :class:`BatchContext` after each training forward pass;
        for tests (inject NaN, simulate a crash by raising).

    Returns
    -------
    TrainResult

    Raises
    ------
    ConfigError
        If the config is invalid for this machine or data, or ``run_dir``
        holds a run of a different config, or of other digits (the message
        names the recorded and the current data). Checked before ``run_dir``
        is created, so a failed config leaves no directory behind.
    ValueError
        An environment variable of :data:`biosim.environment.VARIABLES` has a value its check
        refuses (the message names it); checked before any work.
    biosim.records.OutputLocationError
        ``run_dir`` cannot be created or written (checked before any work).
    biosim.locks.DirectoryLockedError
        Another process trains or validates in ``run_dir`` (the message names
        it); raised before any work when ``run_dir`` exists.
    bridge.checkpoint.CheckpointError
        The checkpoint of an unfinished run is damaged (the message says how to recover).
    """
    config = config.resolved()
    run_dir = Path(run_dir)
    check_environment()  # as the command line does: a misspelt setting is refused before the run directory exists
    check_writable_dir(run_dir, "run directory")  # before any work; creates nothing
    check_training_memory(config)  # a size that cannot fit, named, instead of a bare MemoryError later
    with contextlib.ExitStack() as stack:
        # One process at a time in a run directory: a second training (or a validation) would splice its
        # records into this one's. An existing directory is locked before anything in it is read.
        locked = run_dir.is_dir()
        if locked:
            stack.enter_context(directory_lock(run_dir, "run directory", "training"))
        if is_finished(run_dir):
            return _finished_result(config, run_dir)
        # Decaying conductances reach denormal floats; flushing them keeps float32 CPU math fast.
        stack.enter_context(flushed_denormals())
        stack.enter_context(_deterministic_algorithms(config.deterministic))
        # The trainer checks device and data first; the directory exists only once they pass.
        trainer = _Trainer(config, run_dir, progress, hook)
        if not locked:
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(directory_lock(run_dir, "run directory", "training"))
            if is_finished(run_dir):  # another process trained it while this one was setting up
                return _finished_result(config, run_dir)
        return trainer.run()
