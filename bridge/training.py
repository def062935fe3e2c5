"""Surrogate-gradient BPTT training of the PING network (SPEC section 3).

One run is described by a :class:`TrainConfig` and lives in a run directory:

=====================  ==========================================================
``config.json``        resolved config, network parameters, library versions
``metrics.jsonl``      one JSON line per epoch, starting with epoch 0 (untrained)
``events.jsonl``       resumptions, non-finite values, rollbacks, divergence
``checkpoint.pt``      last good state (atomic; see :mod:`bridge.checkpoint`)
``spectrum.json``      final E-population power spectrum on the test set
``weights.npz``        final stored weights (:mod:`biosim.weight_files`), for Brian2
``final.json``         status (``completed`` or ``diverged``) and final metrics;
                       written last, it marks the run finished
=====================  ==========================================================

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
                                            clipping
``adam_eps_dominated_{...}``                mean fraction of the matrix's Adam steps set by eps
                                            (``sqrt(v_hat) < eps``)
``optimizer_steps``                         Adam steps taken by the end of the epoch
``{w_in,w_ei,w_ie}_mean_abs_stored``        :func:`biosim.analysis.weight_stats` of the stored
``{w_in,w_ei,w_ie}_pruned_fraction``        matrix (``w_in`` over its existing edges); effective
``{w_in,w_ei,w_ie}_effective_mean``         mean in uS
``lr``, ``retries``                         learning rate and retries used so far
``wall_time_s``, ``elapsed_s``              this epoch's and the run's cumulative wall time
==========================================  ===================================================

Undefined values (NaN: no gamma peak in a silent network) are written as ``null``.

Randomness is explicit. Weights come from ``init_weights(params, seed)``. The
training inputs of epoch ``e`` are ``make_trials(..., seed=derived(seed, 1,
e), trial_ids=global sample index)`` and the test inputs are fixed for the
run (``derived(seed, 2)``), so a sample's spikes never depend on the batch it
lands in. The sample order of epoch ``e`` is ``torch.randperm`` with a
generator seeded from ``derived(seed, 3, e)``. ``derived`` is
``numpy.random.SeedSequence``. Nothing draws from a global generator.

Digit streams (``stream_digits > 1``, :mod:`biosim.streams`): the digits are
drawn, batched and given input spikes exactly as above; then each batch's
digits, in batch order, are joined into streams of ``stream_digits`` without a
reset between them (the test digits, in order, likewise). Loss and accuracy
are over the digits' readout windows (one window per digit, the readout trace
averaged over it), rates and spectra over the streams, and the metrics add
``test_accuracy_by_position`` (the test accuracy at each position in a stream).

Resumption: after every epoch the trainer writes an atomic checkpoint (model,
optimizer, epoch, RNG states, retry counter, learning rate, metrics);
``train`` continues from it when the run directory has one, and returns the
stored result without training when ``final.json`` and ``weights.npz`` exist
(a finished run; its checkpoint is not needed then, and a damaged one is
ignored with a warning). A damaged checkpoint of an unfinished run is an
error that names the file and how to recover.

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
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as functional
from tqdm import tqdm

from biosim.analysis import gamma_peak, population_rates, population_spectrum, weight_stats
from biosim.data import TIERS, load_split
from biosim.inputs import TrialSet, make_trials
from biosim.params import NetworkParams, ParameterError
from biosim.records import atomic_write_text, check_writable_dir, library_versions, write_json
from biosim.results import SpikeTrains
from biosim.streams import StreamSet, accuracy_by_position, make_streams, window_means
from biosim.weight_files import WeightFileError, load_weights, save_weights
from biosim.weights import CONDUCTANCE_MATRICES, init_weights

from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from .checkpoint import save_checkpoint as _save_checkpoint_file
from .model import ENGINES, MATRICES, NetworkOutput, PINGModel
from .regularisers import gamma_shortfall, w_ei_distance
from .surrogates import SURROGATES, get_surrogate
from .torch_settings import flushed_denormals

__all__ = [
    "TRAINING_TIERS",
    "WEIGHTS_NAME",
    "BatchContext",
    "ConfigError",
    "TrainConfig",
    "derived_seed",
    "TrainResult",
    "TrainingTier",
    "evaluate",
    "is_finished",
    "load_model",
    "population_spiketrains",
    "read_run_config",
    "test_stream_set",
    "test_trial_set",
    "train",
]

WEIGHTS_NAME = "weights.npz"
"""Final stored weights of a run (:func:`biosim.weight_files.save_weights` format)."""

# Stream tags of the seeds derived from TrainConfig.seed.
_TRAIN_INPUT_STREAM = 1
_TEST_INPUT_STREAM = 2
_SHUFFLE_STREAM = 3


class ConfigError(ValueError):
    """A training configuration field is invalid; the message names the field."""


@dataclass(frozen=True)
class TrainingTier:
    """Samples, epochs and batch size of a named training size.

    The digits are the first ``n_train`` / ``n_test`` of the data tier of the
    same name (:data:`biosim.data.TIERS`), whose prefixes are class-balanced.
    """

    name: str
    n_train: int
    n_test: int
    epochs: int
    batch_size: int


TRAINING_TIERS: dict[str, TrainingTier] = {
    tier.name: tier
    for tier in (
        # Tests: a handful of digits, with a small network supplied through TrainConfig.network.
        TrainingTier("smoke", n_train=16, n_test=8, epochs=2, batch_size=8),
        # The full-size network on a 2-core CPU with the eager engine: measured 77 s per run in
        # float32 (about 29 s per epoch) and 154 s in float64. It checks the pipeline, not accuracy.
        TrainingTier("cpu", n_train=32, n_test=16, epochs=2, batch_size=16),
        TrainingTier("medium", n_train=1600, n_test=400, epochs=100, batch_size=256),
        TrainingTier("full", n_train=60_000, n_test=10_000, epochs=20, batch_size=256),  # needs the IDX files
    )
}
"""Training tiers by name; every field can be overridden in :class:`TrainConfig`."""

_INIT_NAMES = ("canonical", "zero")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_DEVICES = ("cpu", "cuda")
_CLIP_MODES = ("per_matrix", "global")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; rebuildable from its JSON.

    Fields left ``None`` take the value of the training tier; :meth:`resolved`
    fills them in (the run directory stores the resolved config).

    Attributes
    ----------
    tier : str
        Key of :data:`TRAINING_TIERS` (and of :data:`biosim.data.TIERS`).
    n_train, n_test : int, optional
        Training / test digits (default: the tier's).
    epochs : int, optional
        Passes over the training digits (default: the tier's).
    batch_size : int, optional
        Digits per optimizer step, also the evaluation batch (default: the tier's).
    lr : float
        Adam learning rate.
    grad_clip : float, optional
        Maximum gradient norm; ``None`` disables clipping.
    grad_clip_mode : {"per_matrix", "global"}
        How ``grad_clip`` applies: ``"per_matrix"`` bounds the norm of each
        trainable matrix's gradient separately; ``"global"`` bounds the norm
        of all of them together (``torch.nn.utils.clip_grad_norm_``). Why
        per matrix is the default: docs/training.md, "Gradient clipping".
    surrogate : str
        Surrogate derivative (:data:`bridge.surrogates.SURROGATES`).
    surrogate_slope : float
        Its slope (1/unit).
    w_out_unit : float
        Unit of the trainable readout parameter (:class:`bridge.model.PINGModel`):
        the optimizer sees ``w_out / w_out_unit``. Weight files, Brian2 and
        the initial draw hold the readout weights themselves. Why 10:
        docs/training.md, "The readout's scale".
    surrogate_unit_mv : float
        Unit of the surrogate's argument ``v - v_threshold`` in mV (1000:
        volts, the default; see :mod:`bridge.surrogates` for why).
    init_w_in, init_w_ei, init_w_ie : "canonical", "zero" or float
        Initialisation of each conductance matrix; a float is a multiple of
        the canonical draw (``0.1`` = 0.1 x canonical).
    train_w_in, train_w_ei, train_w_ie, train_w_out : bool
        Trainable flag of each matrix. The defaults are the frozen-loop
        control: input and readout train, the E-I loop does not.
    membrane_grad_scale : float
        Factor on the membrane-potential gradient at every step, in (0, 1]
        (:func:`bridge.model.run_network`); 1 = exact BPTT, 1e-3 = the
        reference study's "v-grad dampen 1000". See docs/training.md.
    reg_w_ei_distance : float
        Strength lambda of the anti-pruning penalty on the stored W_EI's
        distance from the canonical draw (:func:`bridge.regularisers.w_ei_distance`);
        0 = off. Needs ``train_w_ei``.
    reg_gamma_power : float
        Strength lambda of the penalty on low gamma-band power of the E
        population (:func:`bridge.regularisers.gamma_shortfall`); 0 = off.
    stream_digits : int
        Digits per trial (:mod:`biosim.streams`): with more than one, the
        digits of a batch are presented back to back in streams of this
        many, without a reset between them, and the loss is the mean
        cross-entropy over the digits' readout windows. 1 = one digit per
        trial (the single-digit path, unchanged). ``n_train``, ``n_test``
        and ``batch_size`` count digits and must be multiples of it.
    stream_settle_ms : float
        Start of each digit's presentation left out of its readout window
        (ms, a whole number of steps, less than ``trial_ms``); 0 = the whole
        presentation. Needs ``stream_digits > 1``.
    seed : int
        Seed of the weights, the input spikes and the sample order.
    dtype : str
        ``"float32"`` or ``"float64"``.
    device : str
        ``"cpu"`` or ``"cuda"``.
    deterministic : bool
        Use ``torch.use_deterministic_algorithms(True)`` during the run.
    engine : str
        Time-loop engine (:data:`bridge.model.ENGINES`).
    network : dict
        :meth:`biosim.params.NetworkParams.to_dict` output, or part of it
        (missing sections and fields keep their defaults).
    max_retries : int
        Rollbacks allowed per run after a non-finite value.
    retry_lr_factor : float
        Learning-rate multiplier applied at each retry, in (0, 1].
    idx_directory : str, optional
        Folder with the MNIST IDX files (needed by the ``full`` tier).
    """

    tier: str = "cpu"
    n_train: int | None = None
    n_test: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 4e-4
    grad_clip: float | None = 1.0
    grad_clip_mode: str = "per_matrix"
    surrogate: str = "fast_sigmoid"
    surrogate_slope: float = 1.0
    surrogate_unit_mv: float = 1000.0
    w_out_unit: float = 10.0
    membrane_grad_scale: float = 1.0
    init_w_in: str | float = "canonical"
    init_w_ei: str | float = "canonical"
    init_w_ie: str | float = "canonical"
    train_w_in: bool = True
    train_w_ei: bool = False
    train_w_ie: bool = False
    train_w_out: bool = True
    reg_w_ei_distance: float = 0.0
    reg_gamma_power: float = 0.0
    stream_digits: int = 1
    stream_settle_ms: float = 0.0
    seed: int = 42
    dtype: str = "float32"
    device: str = "cpu"
    deterministic: bool = False
    engine: str = "eager"
    network: dict[str, Any] = field(default_factory=dict)
    max_retries: int = 3
    retry_lr_factor: float = 0.5
    idx_directory: str | None = None

    def __post_init__(self) -> None:
        def fail(name: str, message: str) -> None:
            raise ConfigError(f"TrainConfig.{name}: {message}, got {getattr(self, name)!r}")

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if self.tier not in TRAINING_TIERS or self.tier not in TIERS:
            fail("tier", f"must be one of {', '.join(TRAINING_TIERS)}")
        for name in ("n_train", "n_test", "epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and not (is_int(value) and value > 0):
                fail(name, "must be a positive int or None (the tier's value)")
        if not (is_number(self.lr) and self.lr > 0):
            fail("lr", "must be a finite number > 0")
        if self.grad_clip is not None and not (is_number(self.grad_clip) and self.grad_clip > 0):
            fail("grad_clip", "must be a finite number > 0 or None (no clipping)")
        if self.grad_clip_mode not in _CLIP_MODES:
            fail("grad_clip_mode", f"must be one of {', '.join(_CLIP_MODES)}")
        if self.surrogate not in SURROGATES:
            fail("surrogate", f"must be one of {', '.join(SURROGATES)}")
        if not (is_number(self.surrogate_slope) and self.surrogate_slope > 0):
            fail("surrogate_slope", "must be a finite number > 0 (1/unit)")
        if not (is_number(self.surrogate_unit_mv) and self.surrogate_unit_mv > 0):
            fail("surrogate_unit_mv", "must be a finite number > 0 (mV; 1000 = volts)")
        if not (is_number(self.w_out_unit) and self.w_out_unit > 0):
            fail("w_out_unit", "must be a finite number > 0")
        if not (is_number(self.membrane_grad_scale) and 0 < self.membrane_grad_scale <= 1):
            fail("membrane_grad_scale", "must lie in (0, 1] (1 = exact BPTT)")
        for name in ("init_w_in", "init_w_ei", "init_w_ie"):
            value = getattr(self, name)
            if not (value in _INIT_NAMES if isinstance(value, str) else is_number(value) and value >= 0):
                fail(name, "must be 'canonical', 'zero' or a finite number >= 0 (a multiple of canonical)")
        for name in ("train_w_in", "train_w_ei", "train_w_ie", "train_w_out", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be a bool")
        for name in ("reg_w_ei_distance", "reg_gamma_power"):
            if not (is_number(getattr(self, name)) and getattr(self, name) >= 0):
                fail(name, "must be a finite number >= 0 (0 = off)")
        if self.reg_w_ei_distance > 0 and not self.train_w_ei:
            fail("reg_w_ei_distance", "penalises W_EI, which does not train (train_w_ei is False)")
        if not (is_int(self.seed) and self.seed >= 0):
            fail("seed", "must be a non-negative int")
        if self.dtype not in _DTYPES:
            fail("dtype", f"must be one of {', '.join(_DTYPES)}")
        if self.device not in _DEVICES:
            fail("device", f"must be one of {', '.join(_DEVICES)}")
        if self.engine not in ENGINES:
            fail("engine", f"must be one of {', '.join(ENGINES)}")
        try:
            NetworkParams.from_dict(self.network)
        except (ParameterError, TypeError) as error:
            raise ConfigError(f"TrainConfig.network: {error}") from error
        if not (is_int(self.max_retries) and self.max_retries >= 0):
            fail("max_retries", "must be a non-negative int")
        if not (is_number(self.retry_lr_factor) and 0 < self.retry_lr_factor <= 1):
            fail("retry_lr_factor", "must lie in (0, 1]")
        if self.idx_directory is not None and not isinstance(self.idx_directory, str):
            fail("idx_directory", "must be a path string or None")
        tier = TRAINING_TIERS[self.tier]
        n_train = tier.n_train if self.n_train is None else self.n_train
        batch_size = tier.batch_size if self.batch_size is None else self.batch_size
        if batch_size > n_train:

            def source(name: str) -> str:
                return f" (the {self.tier} tier's)" if getattr(self, name) is None else ""

            raise ConfigError(
                f"TrainConfig.batch_size: {batch_size}{source('batch_size')} is larger than TrainConfig.n_train "
                f"{n_train}{source('n_train')}: an epoch could not hold one full batch; "
                "give a batch_size <= n_train"
            )
        self._check_stream(fail, is_int, is_number)

    def _check_stream(self, fail: Callable[[str, str], None], is_int, is_number) -> None:
        """``stream_digits`` and ``stream_settle_ms`` (:mod:`biosim.streams`) fit the tier and the trial."""
        if not (is_int(self.stream_digits) and self.stream_digits >= 1):
            fail("stream_digits", "must be a positive int (1 = one digit per trial)")
        if not (is_number(self.stream_settle_ms) and self.stream_settle_ms >= 0):
            fail("stream_settle_ms", "must be a finite number >= 0 (ms)")
        simulation = self.network_params().simulation
        settle_steps = self.stream_settle_ms / simulation.dt_ms
        if abs(settle_steps - round(settle_steps)) > 1e-9 or self.stream_settle_ms >= simulation.trial_ms:
            fail(
                "stream_settle_ms",
                f"must be a whole number of steps of dt_ms ({simulation.dt_ms}) and less than "
                f"trial_ms ({simulation.trial_ms})",
            )
        if self.stream_digits == 1:
            if self.stream_settle_ms > 0:
                fail("stream_settle_ms", "applies to digit streams only: set stream_digits > 1, or leave it at 0")
            return
        tier = TRAINING_TIERS[self.tier]
        for name in ("n_train", "n_test", "batch_size"):
            value = getattr(tier, name) if getattr(self, name) is None else getattr(self, name)
            if value % self.stream_digits:
                source = f" (the {self.tier} tier's)" if getattr(self, name) is None else ""
                raise ConfigError(
                    f"TrainConfig.{name}: {value}{source} digits cannot be cut into streams of "
                    f"stream_digits = {self.stream_digits}; give a multiple of {self.stream_digits}"
                )

    def stream_settle_steps(self) -> int:
        """:attr:`stream_settle_ms` in time steps."""
        return round(self.stream_settle_ms / self.network_params().simulation.dt_ms)

    # --- derived values ------------------------------------------------------
    def resolved(self) -> TrainConfig:
        """A copy with the tier's values filled in and the full network parameters."""
        tier = TRAINING_TIERS[self.tier]
        return dataclasses.replace(
            self,
            n_train=tier.n_train if self.n_train is None else self.n_train,
            n_test=tier.n_test if self.n_test is None else self.n_test,
            epochs=tier.epochs if self.epochs is None else self.epochs,
            batch_size=tier.batch_size if self.batch_size is None else self.batch_size,
            network=self.network_params().to_dict(),
        )

    def network_params(self) -> NetworkParams:
        """The network parameters (defaults where :attr:`network` is silent)."""
        return NetworkParams.from_dict(self.network)

    def trainable(self) -> dict[str, bool]:
        """Trainable flag per matrix, keyed as in :data:`bridge.model.MATRICES`."""
        return {name: getattr(self, f"train_{name}") for name in MATRICES}

    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    # --- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-ready)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error that lists the valid ones."""
        if not isinstance(data, dict):
            raise ConfigError(f"TrainConfig: expected a mapping, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"TrainConfig: unknown field(s) {unknown}; valid fields: {', '.join(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))


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


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    status : str
        ``"completed"`` or ``"diverged"``.
    run_dir : Path
    config : TrainConfig
        The resolved config.
    metrics : list of dict
        One record per epoch, epoch 0 first (as in ``metrics.jsonl``).
    model : PINGModel
        Final weights (for a diverged run: those of the last good checkpoint).
    retries : int
        Rollbacks used.
    diverged : dict or None
        ``{"epoch", "step", "global_step", "nonfinite"}`` of the failure that ended a diverged run.
    """

    status: str
    run_dir: Path
    config: TrainConfig
    metrics: list[dict[str, Any]]
    model: PINGModel
    retries: int
    diverged: dict[str, Any] | None = None

    @property
    def final_metrics(self) -> dict[str, Any]:
        return self.metrics[-1]


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


class _NonFinite(Exception):
    """Raised inside the trainer when a checked quantity is not finite."""

    def __init__(self, epoch: int, step: int | None, global_step: int | None, nonfinite: list[str]) -> None:
        super().__init__(f"non-finite {', '.join(nonfinite)} at epoch {epoch}, step {step}")
        self.record = {"epoch": epoch, "step": step, "global_step": global_step, "nonfinite": nonfinite}


# --- helpers -------------------------------------------------------------------


def derived_seed(seed: int, *stream: int) -> int:
    """A 32-bit seed for one random stream of a run: ``SeedSequence([seed, *stream])``."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1, np.uint32)[0])


def test_trial_set(config: TrainConfig) -> TrialSet:
    """The test digits of a run as input spikes: fixed for the run, seed ``derived(seed, 2)``.

    Parameters
    ----------
    config : TrainConfig
        Resolved here; the first ``n_test`` test digits of its tier.

    Returns
    -------
    TrialSet
        Trial ``k`` is test digit ``k``; the same set every epoch and in
        :mod:`bridge.validation`, so Brian2 sees the trainer's exact inputs.
    """
    config = config.resolved()
    test = load_split(config.tier, idx_directory=config.idx_directory).test
    if config.n_test > len(test):
        raise ConfigError(
            f"TrainConfig.n_test: {config.n_test} digits requested, but data tier {config.tier!r} holds {len(test)}"
        )
    test = test.subset(slice(config.n_test))
    return make_trials(
        test.images, test.labels, config.network_params(), seed=derived_seed(config.seed, _TEST_INPUT_STREAM)
    )


test_trial_set.__test__ = False  # not a pytest test, whatever module imports it


def test_stream_set(config: TrainConfig) -> StreamSet:
    """The test digits of a run as streams of ``stream_digits`` (:func:`biosim.streams.make_streams`).

    Stream ``j`` holds test digits ``j * stream_digits`` to ``(j + 1) * stream_digits - 1``,
    each with the input spikes of its trial in :func:`test_trial_set`; the
    same streams every epoch and in :mod:`bridge.validation`.
    """
    config = config.resolved()
    return make_streams(test_trial_set(config), config.stream_digits, settle_steps=config.stream_settle_steps())


test_stream_set.__test__ = False


def population_spiketrains(counts: np.ndarray, n_neurons: int) -> SpikeTrains:
    """Population spike counts per step as :class:`~biosim.results.SpikeTrains` for the analyses.

    Parameters
    ----------
    counts : np.ndarray
        ``(n_trials, n_steps)`` spikes of the whole population per step.
    n_neurons : int
        Population size (rates are per neuron).

    Returns
    -------
    SpikeTrains
        One row per spike with the right trial and step; the neuron index is
        unknown and set to 0, so only population-level analyses
        (:func:`~biosim.analysis.population_rates`,
        :func:`~biosim.analysis.population_spectrum`) are meaningful.
    """
    counts = np.rint(np.asarray(counts)).astype(np.int64)
    n_trials, n_steps = counts.shape
    trial, step = np.nonzero(counts)
    repeats = counts[trial, step]
    return SpikeTrains(
        trial=np.repeat(trial, repeats),
        step=np.repeat(step, repeats),
        neuron=np.zeros(int(repeats.sum()), dtype=np.int64),
        n_neurons=n_neurons,
        n_trials=n_trials,
        n_steps=n_steps,
    )


def _batch_tensors(
    trials: TrialSet, positions: np.ndarray, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(trials.dense(positions)).to(device)
    v_init_e = torch.as_tensor(trials.v_init_e_mv[positions], dtype=dtype, device=device)
    v_init_i = torch.as_tensor(trials.v_init_i_mv[positions], dtype=dtype, device=device)
    labels = torch.as_tensor(trials.labels[positions], device=device)
    return x, v_init_e, v_init_i, labels


def _forward(
    model: PINGModel,
    trials: TrialSet | StreamSet,
    positions: np.ndarray,
    dtype: torch.dtype,
    device: torch.device,
    *,
    record_population: bool = False,
) -> tuple[NetworkOutput, torch.Tensor, torch.Tensor]:
    """Trials (or streams) ``positions`` through ``model``: its output, and class scores and labels per digit.

    Single-digit trials: the mem-mean ``scores`` and each trial's label.
    Streams (:mod:`biosim.streams`): the readout trace averaged over each
    digit's window, one row per digit (stream by stream, in stream order),
    and each digit's label.
    """
    if not isinstance(trials, StreamSet):
        x, v_init_e, v_init_i, labels = _batch_tensors(trials, positions, dtype, device)
        output = model(x, v_init_e, v_init_i, record_population=record_population)
        return output, output.scores, labels
    x, v_init_e, v_init_i, _ = _batch_tensors(trials.trials, positions, dtype, device)
    output = model(x, v_init_e, v_init_i, record_population=record_population, record_readout=True)
    scores = window_means(output.readout_trace, trials.n_digits, trials.settle_steps)
    labels = torch.as_tensor(trials.digit_labels[positions], device=device)
    return output, scores.reshape(-1, scores.shape[-1]), labels.reshape(-1)


def _nonfinite_state(output: NetworkOutput) -> list[str]:
    state = output.final_state
    names = ("v_e", "ge_e", "gi_e", "v_i", "ge_i", "gi_i", "u", "score_sum")
    return [f"state.{name}" for name in names if not bool(torch.isfinite(getattr(state, name)).all())]


@torch.no_grad()
@flushed_denormals()  # decaying conductances reach denormal floats, which are slow
def evaluate(
    model: PINGModel,
    trials: TrialSet | StreamSet,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Loss, accuracy, rates and gamma peak of ``model`` on ``trials``, without gradients.

    Parameters
    ----------
    model : PINGModel
    trials : TrialSet or StreamSet
        Single-digit trials, or digit streams (:mod:`biosim.streams`):
        then loss and accuracy are over the digits' readout windows, and
        rates and spectrum over the streams (transient excluded at each
        stream's start).
    batch_size : int
        Digits simulated at once (streams: ``batch_size // n_digits`` streams, at least one).
    device : torch.device or str

    Returns
    -------
    dict
        ``loss`` (mean cross-entropy), ``accuracy`` (fraction),
        ``rate_e_hz`` / ``rate_i_hz`` (population rates, mean over trials,
        transient excluded), ``gamma_peak_hz`` and ``gamma_relative_power`` of
        the E population spectrum, ``spectrum`` (``frequency_hz`` and
        ``power`` lists) and ``nonfinite`` (names of non-finite state
        variables, empty when all is well). Streams add
        ``accuracy_by_position``: the accuracy of the digits at each position
        of a stream (a list, position 0 first).
    """
    device = torch.device(device)
    dtype = model.w_out.dtype
    params = model.params
    losses, correct = [], 0
    population = {"e": [], "i": []}
    nonfinite: set[str] = set()
    streams = trials if isinstance(trials, StreamSet) else None
    n_trials = streams.n_streams if streams else trials.n_trials
    n_digits = streams.n_streams * streams.n_digits if streams else trials.n_trials
    if streams:
        batch_size = max(1, batch_size // streams.n_digits)
        stream_scores = []
    for start in range(0, n_trials, batch_size):
        positions = np.arange(start, min(start + batch_size, n_trials))
        output, scores, labels = _forward(model, trials, positions, dtype, device, record_population=True)
        nonfinite.update(_nonfinite_state(output))
        losses.append(float(functional.cross_entropy(scores, labels, reduction="sum")))
        correct += int((scores.argmax(dim=1) == labels).sum())
        if streams:
            stream_scores.append(scores.view(len(positions), streams.n_digits, -1).cpu().numpy())
        population["e"].append(output.population_e.cpu().numpy())
        population["i"].append(output.population_i.cpu().numpy())
    simulation = params.simulation
    spikes_e = population_spiketrains(np.concatenate(population["e"]), params.connectivity.n_e)
    spikes_i = population_spiketrains(np.concatenate(population["i"]), params.connectivity.n_i)
    frequencies, power = population_spectrum(spikes_e, simulation.dt_ms, simulation.transient_ms)
    peak = gamma_peak(frequencies, power)
    by_position = {}
    if streams:
        by_position["accuracy_by_position"] = accuracy_by_position(
            np.concatenate(stream_scores), streams.digit_labels
        ).tolist()
    return {
        "loss": sum(losses) / n_digits,
        "accuracy": correct / n_digits,
        **by_position,
        "rate_e_hz": float(population_rates(spikes_e, simulation.dt_ms, simulation.transient_ms).mean()),
        "rate_i_hz": float(population_rates(spikes_i, simulation.dt_ms, simulation.transient_ms).mean()),
        "gamma_peak_hz": peak.frequency_hz,
        "gamma_relative_power": peak.relative_power,
        "spectrum": {"frequency_hz": frequencies.tolist(), "power": power.tolist()},
        "nonfinite": sorted(nonfinite),
    }


def _weight_metrics(model: PINGModel) -> dict[str, float]:
    metrics = {}
    mask = model.input_mask.cpu().numpy()
    for name in CONDUCTANCE_MATRICES:
        stored = getattr(model, name).detach().cpu().to(torch.float64).numpy()
        stats = weight_stats(stored, mask if name == "w_in" else None)
        for key, value in stats.as_dict().items():
            metrics[f"{name}_{key}"] = value
    return metrics


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


def _append_json_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def _write_json_lines(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in records))


def _finite_or_none(record: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities become None (JSON null): e.g. no gamma peak in a silent network."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in record.items()
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
        train_set = load_split(config.tier, idx_directory=config.idx_directory).train
        if config.n_train > len(train_set):
            raise ConfigError(
                f"TrainConfig.n_train: {config.n_train} digits requested, "
                f"but data tier {config.tier!r} holds {len(train_set)}"
            )
        self.train_images = train_set.images[: config.n_train]
        self.train_labels = train_set.labels[: config.n_train]
        self.test_trials = test_trial_set(config) if config.stream_digits == 1 else test_stream_set(config)
        self.model = _build_model(config, self.params)
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

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # --- the run ---
    def run(self) -> TrainResult:
        config = self.config
        if self.checkpoint_path.exists():
            checkpoint = _load_run_checkpoint(self.checkpoint_path)
            _check_same_config(checkpoint["config"], config, self.checkpoint_path)
            self._restore(checkpoint)
            self._log_event("resumed", epoch=self.epoch, retries=self.retries, lr=self.lr)
        else:
            write_json(
                self.run_dir / "config.json",
                {
                    "command": "train",
                    "created": _now(),
                    "seed": config.seed,
                    "config": config.to_dict(),
                    "versions": library_versions(),
                },
            )
            self.metrics = [self._epoch_zero()]
            self._save_checkpoint()
        # Checkpoint first, metrics file second: after a crash in between, this rewrite repairs it.
        _write_json_lines(self.run_dir / "metrics.jsonl", self.metrics)

        while self.epoch < config.epochs:
            try:
                record = self._train_epoch(self.epoch + 1)
            except _NonFinite as problem:
                self._log_event("nonfinite", **problem.record)
                if self.retries >= config.max_retries:
                    self._restore(_load_run_checkpoint(self.checkpoint_path))
                    self._log_event("diverged", **problem.record, retries=self.retries)
                    return self._finish("diverged", problem.record)
                retries = self.retries + 1
                self._restore(_load_run_checkpoint(self.checkpoint_path))
                self.retries = retries
                self.lr = config.lr * config.retry_lr_factor**retries
                self._set_lr(self.lr)
                # Persist the spent retry at once, so a crash now cannot grant it again.
                self._save_checkpoint()
                self._log_event("rollback", to_epoch=self.epoch, retries=self.retries, lr=self.lr)
                continue
            self.epoch += 1
            self.metrics.append(record)
            self._save_checkpoint()
            _append_json_line(self.run_dir / "metrics.jsonl", record)
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

    def _train_trials(self, epoch: int, indices: np.ndarray) -> TrialSet | StreamSet:
        """The digits ``indices`` of epoch ``epoch`` as trials, or as streams in this order (``stream_digits > 1``)."""
        trials = make_trials(
            self.train_images[indices],
            self.train_labels[indices],
            self.params,
            seed=derived_seed(self.config.seed, _TRAIN_INPUT_STREAM, epoch),
            trial_ids=indices,
        )
        if self.config.stream_digits == 1:
            return trials
        return make_streams(trials, self.config.stream_digits, settle_steps=self.config.stream_settle_steps())

    def _train_batch(self, epoch: int, step: int, global_step: int, indices: np.ndarray) -> _StepRecord:
        """One optimizer step: loss, correct predictions and per-matrix gradient diagnostics."""
        trials = self._train_trials(epoch, indices)
        positions = np.arange(trials.n_streams if isinstance(trials, StreamSet) else trials.n_trials)
        output, scores, labels = _forward(
            self.model, trials, positions, self.dtype, self.device, record_population=self.config.reg_gamma_power > 0
        )
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
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainable = {name: getattr(self.model, name) for name in MATRICES if getattr(self.model, name).requires_grad}
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
        )

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
            self._train_trials(0, np.arange(self.config.n_train)),
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
        generator = torch.Generator().manual_seed(derived_seed(config.seed, _SHUFFLE_STREAM, epoch))
        order = torch.randperm(config.n_train, generator=generator).numpy()
        batches = [order[i : i + config.batch_size] for i in range(0, config.n_train, config.batch_size)]
        total_loss, correct, steps = 0.0, 0, []
        self.model.train()
        description = f"epoch {epoch}/{config.epochs}"
        with tqdm(batches, desc=description, disable=not self.progress, file=sys.stderr) as bar:
            for step, indices in enumerate(bar):
                record = self._train_batch(epoch, step, (epoch - 1) * len(batches) + step, indices)
                total_loss += record.loss * len(indices)
                correct += record.correct
                steps.append(record)
                bar.set_postfix(loss=f"{record.loss:.4f}")
        self.model.eval()
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
            "optimizer_steps": epoch * len(batches),
            **self._test_metrics(epoch),
            **_weight_metrics(self.model),
            "lr": self.lr,
            "retries": self.retries,
        }
        wall = time.perf_counter() - start
        self.elapsed_s += wall
        return _finite_or_none({**record, "wall_time_s": wall, "elapsed_s": self.elapsed_s})


def _clip_gradients(parameters: dict[str, torch.Tensor], max_norm: float | None, mode: str) -> dict[str, float]:
    """Clip the gradients (``mode`` as in :attr:`TrainConfig.grad_clip_mode`); return each norm before clipping.

    The scaling rule is that of ``torch.nn.utils.clip_grad_norm_`` (factor
    ``max_norm / (norm + 1e-6)`` when below 1), applied to each matrix
    (``"per_matrix"``) or to all together (``"global"``). Norms are summed in
    float64: float32 gradients of surrogate BPTT can be finite while the sum
    of their squares overflows.
    """
    norms = {name: math.sqrt(float(p.grad.to(torch.float64).square().sum())) for name, p in parameters.items()}
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


def _build_model(config: TrainConfig, params: NetworkParams) -> PINGModel:
    weights = init_weights(params, config.seed, w_in=config.init_w_in, w_ei=config.init_w_ei, w_ie=config.init_w_ie)
    return PINGModel.from_network_weights(
        params,
        weights,
        trainable=config.trainable(),
        spike_fn=get_surrogate(config.surrogate, config.surrogate_slope, config.surrogate_unit_mv),
        engine=config.engine,
        dtype=config.torch_dtype(),
        device=config.device,
        w_out_unit=config.w_out_unit,
        membrane_grad_scale=config.membrane_grad_scale,
    )


def _check_same_config(stored: dict[str, Any], config: TrainConfig, where: Path) -> None:
    # A field that an older config lacks has its default, which is what the older code did.
    current = config.to_dict()
    try:
        stored = TrainConfig.from_dict(stored).to_dict()
    except (ConfigError, TypeError):
        pass  # reported below as differing fields
    differing = sorted(key for key in set(stored) | set(current) if stored.get(key) != current.get(key))
    if differing:
        raise ConfigError(
            f"{where} was written by a run with a different config (fields {differing} differ); "
            "resume with the same config or use a new run directory"
        )


# --- public entry points -----------------------------------------------------------


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    progress: bool = True,
    hook: BatchHook | None = None,
) -> TrainResult:
    """Train the PING network as ``config`` says, in ``run_dir`` (see the module docstring).

    Resumes from ``run_dir/checkpoint.pt`` if present; returns the stored
    result without training if ``run_dir`` holds ``final.json`` and
    ``weights.npz`` (:func:`is_finished`).

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
        holds a run of a different config. Checked before ``run_dir`` is
        created, so a failed config leaves no directory behind.
    biosim.records.OutputLocationError
        ``run_dir`` cannot be created or written (checked before any work).
    bridge.checkpoint.CheckpointError
        The checkpoint of an unfinished run is damaged (the message says how to recover).
    """
    config = config.resolved()
    run_dir = Path(run_dir)
    check_writable_dir(run_dir, "run directory")  # before any work; creates nothing
    if is_finished(run_dir):
        return _finished_result(config, run_dir)
    # Decaying conductances reach denormal floats; flushing them keeps float32 CPU math fast.
    with flushed_denormals(), _deterministic_algorithms(config.deterministic):
        # The trainer checks device and data first; the directory exists only once they pass.
        trainer = _Trainer(config, run_dir, progress, hook)
        run_dir.mkdir(parents=True, exist_ok=True)
        return trainer.run()


def is_finished(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a finished run: its final records ``final.json`` and ``weights.npz``.

    The checkpoint is not needed (nor read) to recognise a finished run.
    """
    run_dir = Path(run_dir)
    return (run_dir / "final.json").is_file() and (run_dir / WEIGHTS_NAME).is_file()


def load_model(run_dir: str | Path, *, device: str | None = None) -> PINGModel:
    """The model of a run's last checkpoint (final weights once the run has finished).

    A finished run whose checkpoint is missing or damaged gets its model from
    ``weights.npz`` instead (the final weights, as Brian2 sees them).

    Parameters
    ----------
    run_dir : str or Path
        A run directory written by :func:`train`.
    device : str, optional
        Where to put the model (default: the run's device).

    Raises
    ------
    CheckpointError
        The checkpoint is damaged and the run has not finished.
    FileNotFoundError
        No checkpoint, and the run has not finished.
    """
    run_dir = Path(run_dir)
    try:
        checkpoint = _load_run_checkpoint(run_dir / CHECKPOINT_NAME)
    except (CheckpointError, FileNotFoundError) as error:
        if not is_finished(run_dir):
            raise
        _warn(
            f"{_checkpoint_problem(run_dir / CHECKPOINT_NAME, error)}; "
            f"the run is finished: its model comes from {run_dir / WEIGHTS_NAME}"
        )
        config = _stored_config(run_dir, None)
        return _model_from_weights(config, run_dir).to(device or config.device)
    config = TrainConfig.from_dict(checkpoint["config"])
    return _model_from_checkpoint(config, checkpoint, run_dir / CHECKPOINT_NAME).to(device or config.device)


_CHECKPOINT_KEYS = ("config", "epoch", "model", "optimizer", "rng", "retries", "lr", "metrics", "spectrum")


def _load_run_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint, checked to be one (:class:`CheckpointError` naming the file otherwise)."""
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, f"expected a dict of training state, found a {type(checkpoint).__name__}")
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            path, f"expected checkpoint format {CHECKPOINT_FORMAT}, found {checkpoint.get('format')!r}"
        )
    missing = [key for key in _CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(path, f"entries {missing} are missing")
    return checkpoint


def _model_from_checkpoint(config: TrainConfig, checkpoint: dict[str, Any], path: Path) -> PINGModel:
    """A CPU model with the checkpoint's weights (:class:`CheckpointError` if they do not fit ``config``)."""
    model = _build_model(dataclasses.replace(config, device="cpu"), config.network_params())
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(path, f"its model does not fit the run's config: {first}") from None
    return model


def _model_from_weights(config: TrainConfig, run_dir: Path) -> PINGModel:
    """A CPU model holding the final weights of ``run_dir/weights.npz`` (checked against the config)."""
    params = config.network_params()
    loaded = load_weights(run_dir / WEIGHTS_NAME, params=params)
    return PINGModel.from_network_weights(
        params,
        loaded.stored,
        trainable=config.trainable(),
        spike_fn=get_surrogate(config.surrogate, config.surrogate_slope, config.surrogate_unit_mv),
        engine=config.engine,
        dtype=config.torch_dtype(),
        device="cpu",
        w_out_unit=config.w_out_unit,
    )


def _checkpoint_problem(path: Path, error: Exception) -> str:
    """``PATH: damaged checkpoint (why), ignored`` or ``PATH: missing, ignored``, for a finished run."""
    if isinstance(error, CheckpointError):
        return f"{path}: damaged checkpoint ({error.problem}), ignored"
    return f"{path}: no checkpoint, ignored"


def _warn(message: str) -> None:
    print(f"[bridge.training] warning: {message}", file=sys.stderr)


def _read_json_file(path: Path, what: str) -> Any:
    """``json.loads`` of ``path``, with an error naming the file (:class:`ConfigError`)."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: {what} is not valid JSON ({error})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: {what} is not a text file ({error.reason})") from None


def read_run_config(path: Path) -> TrainConfig:
    """The :class:`TrainConfig` of a run's ``config.json``, with errors that name the file.

    Raises
    ------
    ConfigError
        The file is not JSON, not a config record, or holds an invalid config.
    """
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: expected the run's config record (JSON), found invalid JSON ({error})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: expected the run's config record (JSON), found binary data ({error.reason})"
        ) from None
    if not isinstance(record, dict) or "config" not in record:
        raise ConfigError(f"{path}: expected a JSON object with a 'config' entry (written by biosim train)")
    try:
        return TrainConfig.from_dict(record["config"])
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _stored_config(run_dir: Path, checkpoint: dict[str, Any] | None) -> TrainConfig:
    """The config a run was started with: ``config.json``, else the checkpoint's, else the weight file's."""
    path = run_dir / "config.json"
    if path.is_file():
        return read_run_config(path)
    if checkpoint is not None:
        return TrainConfig.from_dict(checkpoint["config"])
    try:
        provenance = load_weights(run_dir / WEIGHTS_NAME).metadata.get("provenance", {})
        return TrainConfig.from_dict(provenance["config"])
    except (KeyError, TypeError, WeightFileError, ConfigError) as error:
        raise ConfigError(
            f"{run_dir}: the run's config is lost ({path} is missing, the checkpoint is unreadable and "
            f"{run_dir / WEIGHTS_NAME} does not record it: {error})"
        ) from None


def _finished_result(config: TrainConfig, run_dir: Path) -> TrainResult:
    """The stored result of a finished run, from ``final.json`` and ``weights.npz``.

    The checkpoint, if readable, gives the exact model and metrics; if it is
    missing or damaged the run is still finished: the model comes from
    ``weights.npz`` and the metrics from ``metrics.jsonl`` (a warning names
    the checkpoint).
    """
    final_path = run_dir / "final.json"
    final = _read_json_file(final_path, "the run's final record")
    if not isinstance(final, dict) or "status" not in final:
        raise ConfigError(f"{final_path}: expected a JSON object with a 'status' entry (written by biosim train)")
    checkpoint_path = run_dir / CHECKPOINT_NAME
    try:
        checkpoint = _load_run_checkpoint(checkpoint_path)
    except (CheckpointError, FileNotFoundError) as error:
        _warn(
            f"{_checkpoint_problem(checkpoint_path, error)}; the run is finished: its results come from "
            "final.json, weights.npz and metrics.jsonl"
        )
        checkpoint = None
    stored = _stored_config(run_dir, checkpoint)
    where = run_dir / "config.json" if (run_dir / "config.json").is_file() else checkpoint_path
    _check_same_config(stored.to_dict(), config, where)
    if checkpoint is not None:
        model, metrics = _model_from_checkpoint(config, checkpoint, checkpoint_path), list(checkpoint["metrics"])
    else:
        model, metrics = _model_from_weights(config, run_dir), _stored_metrics(run_dir, final)
    return TrainResult(
        status=final["status"],
        run_dir=run_dir,
        config=config,
        metrics=metrics,
        model=model.to(config.device),
        retries=final.get("retries", 0),
        diverged=final.get("diverged"),
    )


def _stored_metrics(run_dir: Path, final: dict[str, Any]) -> list[dict[str, Any]]:
    """``metrics.jsonl`` if it is readable, else the final epoch's record of ``final.json``."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(line) for line in lines if line.strip()]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        metrics = []
    return metrics or [final.get("final", {})]
