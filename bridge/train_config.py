"""What defines a training run: :class:`TrainConfig`, its validation and its tier defaults.

A config names a tier (:data:`biosim.tiers.TIERS`, one with training
defaults): its ``training`` sizes fill the fields left ``None``
(:meth:`TrainConfig.resolved`) and its data pool serves the digits. The
resolved config is what a run directory stores and what rebuilds the run
(:meth:`TrainConfig.from_dict`); :func:`build_model` gives the untrained model
it describes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from biosim.params import NetworkParams, ParameterError
from biosim.tiers import TIERS, RunSize
from biosim.weight_files import FLOAT32_MAX
from biosim.weights import RANK_PROFILES, NetworkWeights, init_weights

from .feedback import feedback_matrix
from .model import ENGINES, MATRICES, RECURRENT_BLOCKS, PINGModel
from .surrogates import SURROGATES, get_surrogate

__all__ = ["ConfigError", "TrainConfig", "build_model", "initial_weights"]


class ConfigError(ValueError):
    """A training configuration field is invalid; the message names the field."""


_TRAINING_TIERS: dict[str, RunSize] = {name: tier.training for name, tier in TIERS.items() if tier.training is not None}
"""The tiers a config may name, with their training defaults (each also has a data pool)."""

_INIT_NAMES = ("canonical", "zero")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_DEVICES = ("cpu", "cuda")
_CLIP_MODES = ("per_matrix", "global")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; rebuildable from its JSON.

    Fields left ``None`` take the tier's training defaults; :meth:`resolved`
    fills them in (the run directory stores the resolved config).

    Attributes
    ----------
    tier : str
        A :data:`biosim.tiers.TIERS` entry with training defaults (and so a data pool).
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
    init_w_in, init_w_ei, init_w_ie, init_w_ee, init_w_ii : "canonical", "zero" or float
        Initialisation of each conductance matrix; a float is a multiple of
        the canonical draw (``0.1`` = 0.1 x canonical). ``init_w_ee`` /
        ``init_w_ii`` apply to the optional recurrent blocks, where the
        network has them (``network`` connectivity ``p_ee`` / ``p_ii`` > 0).
    init_rank_w_ei, init_rank_w_ie : int, optional
        Rank of the initial W_EI / W_IE: None (the default) keeps the full
        draw; r gives a rank-r matrix at the draw's Frobenius norm, before
        ``init_w_ei`` / ``init_w_ie`` scale it (:func:`biosim.weights.init_weights`).
        Needs all-to-all edges (network connectivity ``p_ei`` / ``p_ie`` = 1).
    init_rank_spectrum : {"truncated", "flat"}
        The rank-r matrix: the draw's top r singular triplets
        (:func:`biosim.weights.truncate_rank`), or its top r singular vectors
        with equal singular values (:func:`biosim.weights.flat_rank`).
        See docs/learning_dynamics.md, "Low-rank initialisation".
    train_w_in, train_w_ei, train_w_ie, train_w_out, train_w_ee, train_w_ii : bool
        Trainable flag of each matrix. The defaults are the frozen-loop
        control: input and readout train, the E-I loop (and the recurrent
        blocks) does not. ``train_w_ee`` / ``train_w_ii`` need the block.
    membrane_grad_scale : float
        Factor on the membrane-potential gradient at every step, in (0, 1]
        (:func:`bridge.eager.run_network`); 1 = exact BPTT, 1e-3 = the
        reference study's "v-grad dampen 1000". See docs/training.md.
    reg_w_ei_distance : float
        Strength lambda of the anti-pruning penalty on the stored W_EI's
        distance from the canonical draw (:func:`bridge.regularisers.w_ei_distance`);
        0 = off. Needs ``train_w_ei``.
    reg_gamma_power : float
        Strength lambda of the penalty on low gamma-band power of the E
        population (:func:`bridge.regularisers.gamma_shortfall`); 0 = off.
    feedback_rank : int
        0 = exact BPTT. ``d >= 1``: the readout's error reaches the E spikes
        through a fixed random matrix of rank ``d`` (at most ``min(n_e,
        n_classes)``) instead of ``w_out`` (:mod:`bridge.feedback`); the rest
        of the gradient stays exact. Not trained batched.
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
    record_every : int
        Trajectory records (:mod:`bridge.trajectory`): the effective loop
        matrices every this many Adam steps (and at step 0 and the last), and
        loss, rates and gradient norms at every step, in ``RUN_DIR/trajectory``;
        0 = none. Reads the weights only: the trained weights are the same either way.
    idx_directory : str, optional
        Folder with the MNIST IDX files (needed by the ``full`` tier). Made
        absolute (against the working directory) when the config is built.
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
    init_w_ee: str | float = "canonical"
    init_w_ii: str | float = "canonical"
    init_rank_w_ei: int | None = None
    init_rank_w_ie: int | None = None
    init_rank_spectrum: str = "truncated"
    train_w_ee: bool = False
    train_w_ii: bool = False
    reg_w_ei_distance: float = 0.0
    reg_gamma_power: float = 0.0
    feedback_rank: int = 0
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
    record_every: int = 0
    idx_directory: str | None = None

    def __post_init__(self) -> None:
        def fail(name: str, message: str) -> None:
            raise ConfigError(f"TrainConfig.{name}: {message}, got {getattr(self, name)!r}")

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if self.tier not in _TRAINING_TIERS:
            fail("tier", f"must be one of {', '.join(_TRAINING_TIERS)}")
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
        for name in ("init_w_in", "init_w_ei", "init_w_ie", "init_w_ee", "init_w_ii"):
            value = getattr(self, name)
            if not (value in _INIT_NAMES if isinstance(value, str) else is_number(value) and value >= 0):
                fail(name, "must be 'canonical', 'zero' or a finite number >= 0 (a multiple of canonical)")
        for name in ("train_w_in", "train_w_ei", "train_w_ie", "train_w_out", "train_w_ee", "train_w_ii"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be a bool")
        for name in ("deterministic",):
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
        connectivity = self.network_params().connectivity
        for name, probability in (("w_ee", "p_ee"), ("w_ii", "p_ii")):
            if getattr(self, f"train_{name}") and getattr(connectivity, probability) == 0:
                fail(
                    f"train_{name}",
                    f"trains a block the network does not have (network connectivity {probability} = 0)",
                )
        largest_rank = min(connectivity.n_e, connectivity.n_classes)
        if not (is_int(self.feedback_rank) and 0 <= self.feedback_rank <= largest_rank):
            fail("feedback_rank", f"must be an int in 0 .. min(n_e, n_classes) = {largest_rank} (0 = exact BPTT)")
        if not (is_int(self.max_retries) and self.max_retries >= 0):
            fail("max_retries", "must be a non-negative int")
        if not (is_number(self.retry_lr_factor) and 0 < self.retry_lr_factor <= 1):
            fail("retry_lr_factor", "must lie in (0, 1]")
        if not (is_int(self.record_every) and self.record_every >= 0):
            fail("record_every", "must be a non-negative int (Adam steps between trajectory records; 0 = none)")
        if self.idx_directory is not None:
            if not isinstance(self.idx_directory, str):
                fail("idx_directory", "must be a path string or None")
            # Absolute from the start, wherever the config comes from (flag, API, protocol): config.json, the
            # resume check and a worker on another host then all mean the same files, not "idx_ok" in
            # whatever directory reads them. abspath, not resolve: the path as named, symlinks kept.
            object.__setattr__(self, "idx_directory", os.path.abspath(self.idx_directory))
        tier = _TRAINING_TIERS[self.tier]
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
        self._check_rank(fail, is_int)

    def _check_rank(self, fail: Callable[[str, str], None], is_int) -> None:
        """``init_rank_*`` are ranks >= 1 or None, on all-to-all loop blocks; ``init_rank_spectrum`` is known."""
        connectivity = self.network_params().connectivity
        for name, probability in (("init_rank_w_ei", "p_ei"), ("init_rank_w_ie", "p_ie")):
            value = getattr(self, name)
            if value is None:
                continue
            if not (is_int(value) and value >= 1):
                fail(name, "must be an int >= 1 or None (the full draw)")
            if getattr(connectivity, probability) < 1.0:
                # The SVD would fill the absent edges in; masking them again would undo the rank.
                fail(name, f"needs all-to-all edges (network connectivity {probability} = 1)")
        if self.init_rank_spectrum not in RANK_PROFILES:
            fail("init_rank_spectrum", f"must be one of {', '.join(RANK_PROFILES)}")

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
        tier = _TRAINING_TIERS[self.tier]
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
        tier = _TRAINING_TIERS[self.tier]
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
        """Trainable flag per matrix, keyed as in :data:`bridge.model.MATRICES` and ``RECURRENT_BLOCKS``.

        The blocks' flags are there whether or not the network has the block (False where it has not).
        """
        return {name: getattr(self, f"train_{name}") for name in (*MATRICES, *RECURRENT_BLOCKS)}

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


def initial_weights(config: TrainConfig, params: NetworkParams) -> NetworkWeights:
    """The stored weights ``config`` starts from: ``init_weights`` with its seed, multiples and ranks."""
    inits = {name: getattr(config, f"init_{name}") for name in ("w_in", "w_ei", "w_ie", *RECURRENT_BLOCKS)}
    return init_weights(
        params,
        config.seed,
        **inits,
        rank_w_ei=config.init_rank_w_ei,
        rank_w_ie=config.init_rank_w_ie,
        rank_spectrum=config.init_rank_spectrum,
    )


def build_model(config: TrainConfig, params: NetworkParams) -> PINGModel:
    """The untrained model of ``config``: weights :func:`initial_weights`, on the config's device."""
    inits = {name: getattr(config, f"init_{name}") for name in ("w_in", "w_ei", "w_ie", *RECURRENT_BLOCKS)}
    weights = initial_weights(config, params)
    for name, init in inits.items():
        matrix = getattr(weights, name)
        largest = float(np.abs(matrix).max()) if matrix is not None and matrix.size else 0.0
        if largest > FLOAT32_MAX:
            # The trainer and the weight file hold weights that float32 can hold; inf would only show as a
            # non-finite loss at epoch 0.
            raise ConfigError(
                f"TrainConfig.init_{name}: {init!r} x the canonical draw gives weights up to {largest:.6g} uS, "
                f"beyond float32's {FLOAT32_MAX:.6g}; give a smaller multiple"
            )
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
        feedback=feedback_matrix(params, config.seed, config.feedback_rank) if config.feedback_rank else None,
    )
