"""Read a protocol's output directory back: runs, their metrics and weights."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biosim.weight_files import load_weights
from bridge.train_config import initial_weights

from .definitions import RunSpec

__all__ = ["RunRecord", "load_runs", "initial_effective", "trained_effective"]


@dataclass
class RunRecord:
    run_dir: Path
    spec: RunSpec
    status: dict[str, Any]

    @property
    def condition(self) -> str:
        return self.spec.condition

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def ok(self) -> bool:
        return self.status.get("status") == "completed"

    def metrics(self) -> list[dict[str, Any]]:
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    @property
    def validation_backend(self) -> str:
        """The Brian2 backend this run was validated on (its files carry the name)."""
        return (self.status.get("validation") or {}).get("backend", self.spec.validation_backend)


def load_runs(out_dir: str | Path) -> list[RunRecord]:
    """Every run under ``out_dir`` that has a spec, sorted by condition and seed.

    A run without a readable ``status.json`` is ``incomplete``; one whose
    ``run_spec.json`` is damaged is left out. Both cases print a warning
    that names the file.
    """
    records = []
    for spec_path in sorted(Path(out_dir).glob("*/seed_*/run_spec.json")):
        run_dir = spec_path.parent
        try:
            spec = RunSpec.from_dict(json.loads(spec_path.read_text()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            _warn(f"{spec_path}: unreadable run spec ({type(error).__name__}: {error}); run left out")
            continue
        status_path = run_dir / "status.json"
        status = {"status": "incomplete"}
        if status_path.exists():
            try:
                status = json.loads(status_path.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as error:
                _warn(f"{status_path}: unreadable run status ({error}); the run counts as incomplete")
            if not isinstance(status, dict):
                _warn(f"{status_path}: expected a JSON object; the run counts as incomplete")
                status = {"status": "incomplete"}
        records.append(RunRecord(run_dir, spec, status))
    return records


def _warn(message: str) -> None:
    print(f"[protocols.results] warning: {message}", file=sys.stderr)


def initial_effective(record: RunRecord) -> dict[str, np.ndarray]:
    """Effective W_EI, W_IE at initialisation (redrawn from the run's config and seed)."""
    config = record.spec.config
    params = config.network_params()
    stored = initial_weights(config, params)
    return {"w_ei": np.maximum(stored.w_ei, 0.0), "w_ie": np.maximum(stored.w_ie, 0.0)}


def trained_effective(record: RunRecord) -> dict[str, np.ndarray] | None:
    """Effective W_EI, W_IE after training, from the run's weight file (None if absent)."""
    path = record.run_dir / "weights.npz"
    if not path.exists():
        return None
    loaded = load_weights(path)
    return {"w_ei": loaded.effective.w_ei, "w_ie": loaded.effective.w_ie}
