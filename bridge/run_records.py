"""A training run's directory: its files, and the config, model and result read back from them.

One run is described by a :class:`~bridge.train_config.TrainConfig` and lives in a run directory:

=====================  ==========================================================
``config.json``        resolved config, network parameters, library versions, and
                       the digest of the run's digits (``data``)
``metrics.jsonl``      one JSON line per epoch, starting with epoch 0 (untrained)
``events.jsonl``       resumptions, non-finite values, rollbacks, divergence
``checkpoint.pt``      last good state (atomic; see :mod:`bridge.checkpoint`)
``spectrum.json``      final E-population power spectrum on the test set
``weights.npz``        final stored weights (:mod:`biosim.weight_files`), for Brian2
``final.json``         status (``completed`` or ``diverged``) and final metrics;
                       written last, it marks the run finished
``.biosim.lock``       lock of the process training or validating the run, with its
                       pid, host and command (:mod:`biosim.locks`)
=====================  ==========================================================

:func:`bridge.training.train` writes them. This module reads them back: a
finished run's result (:func:`is_finished`, :func:`_finished_result`), its
model (:func:`load_model`) and config (:func:`read_run_config`), with errors
that name the file at fault; it checks that a resume or a validation sees the
run's own digits (:func:`check_same_data`); and it holds the JSON-lines
helpers the trainer writes with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from biosim.params import NetworkParams, ParameterError
from biosim.records import atomic_write_text
from biosim.weight_files import WeightFileError, load_weights

from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, CheckpointError, load_checkpoint
from .model import PINGModel
from .surrogates import get_surrogate
from .train_config import ConfigError, TrainConfig, build_model

__all__ = [
    "WEIGHTS_NAME",
    "TrainResult",
    "check_same_data",
    "check_same_environment",
    "describe_environment",
    "finished_run_config",
    "is_finished",
    "load_model",
    "read_run_config",
    "run_environment",
]

WEIGHTS_NAME = "weights.npz"
"""Final stored weights of a run (:func:`biosim.weight_files.save_weights` format)."""


@dataclass
class TrainResult:
    """Outcome of :func:`bridge.training.train`.

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


def _check_same_config(
    stored: dict[str, Any], config: TrainConfig, where: Path, *, ignore: tuple[str, ...] = ()
) -> None:
    # A field that an older config lacks has its default, which is what the older code did; that holds
    # for the network parameters too (fields added since, such as connectivity p_ee, keep their defaults).
    current = config.to_dict()
    try:
        stored = TrainConfig.from_dict(stored).to_dict()
        stored["network"] = NetworkParams.from_dict(stored["network"]).to_dict()
        current["network"] = NetworkParams.from_dict(current["network"]).to_dict()
    except (ConfigError, ParameterError, TypeError):
        pass  # reported below as differing fields
    keys = (set(stored) | set(current)) - set(ignore)
    differing = sorted(key for key in keys if stored.get(key) != current.get(key))
    if differing:
        raise ConfigError(
            f"{where} was written by a run with a different config (fields {differing} differ); "
            "resume with the same config or use a new run directory"
        )


def check_same_data(config_path: Path, current: dict[str, Any], *, action: str) -> None:
    """Refuse to ``action`` a run on digits other than those its ``config.json`` records.

    The ``data`` entry of ``config.json`` (:func:`bridge.feeding.data_record`,
    written when the run starts) is compared with ``current`` by digest: the
    same path may hold other files, and only the digest says what the
    digits are. A run directory written before digests were recorded (no
    ``data`` entry, or no ``config.json``) is not refused but warned about:
    its digits cannot be checked, and refusing would strand every older run.

    Parameters
    ----------
    config_path : Path
        The run's ``config.json``.
    current : dict
        :func:`bridge.feeding.data_record` of the digits this process would use.
    action : str
        What would use them, for the messages (``"resume"``, ``"validate"``).

    Raises
    ------
    ConfigError
        The digests differ (the message names the file and both data: source, counts and
        SHA-256), or the ``data`` entry is not a data record.
    """
    record = _read_json_file(config_path, "the run's config record") if config_path.is_file() else {}
    recorded = record.get("data") if isinstance(record, dict) else None
    if recorded is None:
        _warn(
            f"{config_path} records no digest of the run's digits (written before digests were recorded, or "
            f"missing): they cannot be checked; {action} goes on with {_describe_data(current)}"
        )
        return
    if not (isinstance(recorded, dict) and isinstance(recorded.get("sha256"), str)):
        raise ConfigError(f"{config_path}: expected a 'data' entry with a 'sha256' digest, found {recorded!r}")
    if recorded["sha256"] != current["sha256"]:
        raise ConfigError(
            f"{config_path}: cannot {action} on other digits: the run recorded {_describe_data(recorded)}, "
            f"the digits now are {_describe_data(current)}; restore the run's data, or train a new run "
            "in another run directory"
        )


def _describe_data(data: dict[str, Any]) -> str:
    """``SOURCE (N train + M test digits, SHA-256 HEX)``."""
    return (
        f"{data.get('source', '?')} ({data.get('n_train', '?')} train + {data.get('n_test', '?')} test digits, "
        f"SHA-256 {data.get('sha256', '?')})"
    )


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
        A run directory written by :func:`bridge.training.train`.
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
    model = build_model(dataclasses.replace(config, device="cpu"), config.network_params())
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


# --- the computing environment a run's numbers came from ----------------------------------------------------

_ENVIRONMENT_PATHS = ("engine_path", "kernel_product_path", "aten_cpu_capability")
"""Entries of :func:`run_environment` that decide float32 bits: a resume on other ones is warned about."""


def run_environment(config: TrainConfig) -> dict[str, Any]:
    """Which code computes this run here: engine path, kernel product path, ATen CPU capability, torch, MKL.

    Recorded in ``config.json`` (``environment``). ``engine_path`` is
    ``"eager"``, ``"fused C++ kernels"`` or ``"fused torch fallback"`` (with
    why: ``BIOSIM_FUSED_KERNELS`` off, another device, or kernels that could
    not be built, e.g. an unwritable ``BIOSIM_KERNEL_CACHE``); the fused
    paths give other float32 bits than each other.
    """
    import torch

    from biosim.environment import switch

    from . import fused_kernels

    product_path = None
    if config.engine == "eager":
        engine_path = "eager"
    elif config.device != "cpu":
        engine_path = f"fused torch fallback (device {config.device})"
    elif not switch("BIOSIM_FUSED_KERNELS"):
        engine_path = "fused torch fallback (BIOSIM_FUSED_KERNELS off)"
    else:
        info = fused_kernels.kernel_info()  # builds the kernels if this process has not yet: the run will
        product_path = info["product_path"]
        engine_path = "fused C++ kernels" if info["available"] else "fused torch fallback (kernels unavailable)"
    return {
        "engine_path": engine_path,
        "kernel_product_path": product_path,
        "kernel_isa": os.environ.get("BIOSIM_KERNEL_ISA", "native"),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "mkl": _mkl_version(torch) if torch.backends.mkl.is_available() else "not available",
    }


def _mkl_version(torch: Any) -> str:
    """The MKL version line of ``torch.__config__.show()`` (``"2024.2-Product Build 20240605"``)."""
    for line in torch.__config__.show().splitlines():
        if "Math Kernel Library Version" in line:
            return line.split("Version", 1)[1].split(" for ", 1)[0].strip()
    return "available (version not reported)"


def check_same_environment(config_path: Path, current: dict[str, Any]) -> None:
    """Warn, naming both, when a run resumes on another engine path, kernel product path or CPU capability."""
    try:
        recorded = json.loads(config_path.read_text()).get("environment")
    except (OSError, ValueError, AttributeError):
        return  # a missing or damaged config.json is reported where it is read
    if not isinstance(recorded, dict):
        return  # written before environments were recorded
    differ = [key for key in _ENVIRONMENT_PATHS if recorded.get(key) != current.get(key)]
    if differ:
        details = "; ".join(f"{key}: recorded {recorded.get(key)!r}, now {current.get(key)!r}" for key in differ)
        _warn(
            f"{config_path}: resuming on another path than the run started on ({details}); "
            "the float32 bits of the remaining epochs may differ from an uninterrupted run"
        )


def describe_environment(environments: list[dict[str, Any] | None]) -> str:
    """One line for a table: ``Environment: torch ..., ATen CPU capability ..., kernels ...`` (or how runs differ)."""

    def line(env: dict[str, Any]) -> str:
        engine = env.get("engine_path", "?")
        if env.get("kernel_product_path"):
            engine = f"{engine} {env['kernel_product_path']}"
        return f"torch {env.get('torch', '?')}, ATen CPU capability {env.get('aten_cpu_capability', '?')}, {engine}"

    known = [env for env in environments if isinstance(env, dict)]
    unrecorded = len(environments) - len(known)
    lines = sorted({line(env) for env in known})
    if not lines:
        return "Environment: not recorded by these runs."
    text = f"Environment: {lines[0]}" if len(lines) == 1 else "Environment: runs differ: " + "; ".join(lines)
    return text + (f" ({unrecorded} runs without a record)" if unrecorded else "") + "."


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


def finished_run_config(run_dir: str | Path) -> tuple[TrainConfig, str]:
    """The config of a finished run and where it was read: ``config.json``, else the weight file's record.

    The same order :func:`bridge.training.train` reads a finished run in; a
    missing ``config.json`` is warned about.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if path.is_file():
        return read_run_config(path), str(path)
    config = _stored_config(run_dir, None)
    _warn(f"{path} is missing: using the config recorded in {run_dir / WEIGHTS_NAME}")
    return config, f"{run_dir / WEIGHTS_NAME} (provenance.config)"


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
