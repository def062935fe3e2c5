"""Simulator-independent containers for what a multi-trial run produced.

Both simulators (Brian2 in :mod:`biosim.backends`, the PyTorch mirror in
:mod:`bridge`) return a :class:`SimulationResult`, so analysis and
cross-simulator comparison never depend on where spikes came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SpikeTrains", "SimulationResult"]


@dataclass(frozen=True)
class SpikeTrains:
    """Spikes of one population over many trials, as integer time steps.

    Rows are sorted by (trial, step, neuron). Step ``s`` of a trial is the
    time ``s * dt`` after the trial's start.
    """

    trial: np.ndarray
    step: np.ndarray
    neuron: np.ndarray
    n_neurons: int
    n_trials: int
    n_steps: int

    @classmethod
    def from_arrays(cls, trial, step, neuron, *, n_neurons: int, n_trials: int, n_steps: int) -> SpikeTrains:
        trial, step, neuron = (np.asarray(a, dtype=np.int64) for a in (trial, step, neuron))
        order = np.lexsort((neuron, step, trial))
        return cls(trial[order], step[order], neuron[order], n_neurons, n_trials, n_steps)

    def __len__(self) -> int:
        return len(self.step)

    def of_trial(self, trial: int) -> tuple[np.ndarray, np.ndarray]:
        """(step, neuron) arrays of one trial."""
        lo, hi = np.searchsorted(self.trial, [trial, trial + 1])
        return self.step[lo:hi], self.neuron[lo:hi]

    def counts(self) -> np.ndarray:
        """Spike counts, shape (n_trials, n_neurons)."""
        flat = np.bincount(self.trial * self.n_neurons + self.neuron, minlength=self.n_trials * self.n_neurons)
        return flat.reshape(self.n_trials, self.n_neurons)


@dataclass
class SimulationResult:
    """Everything a multi-trial run returns."""

    spikes_e: SpikeTrains
    spikes_i: SpikeTrains
    scores: np.ndarray
    """Readout scores, shape (n_trials, n_classes): time-averaged readout potential."""
    dt_ms: float
    simulator: str
    """``"brian2:<backend>"`` or ``"mirror:<device>"``."""
    timings_s: dict[str, float] = field(default_factory=dict)
    traces: dict[str, np.ndarray] = field(default_factory=dict)
    """Optional membrane traces in mV, ``{"v_e": (n_trials, n_steps, n_recorded)}``, and the
    readout potentials after each step, ``{"readout": (n_trials, n_steps, n_classes)}``, when requested."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_trials(self) -> int:
        return self.spikes_e.n_trials

    def predictions(self) -> np.ndarray:
        return np.argmax(self.scores, axis=1)
