"""Figures of one simulation: raster (E and I) and the E-population spectrum."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .analysis.spectra import GammaPeak
from .results import SimulationResult

__all__ = ["plot_raster", "plot_spectrum", "raster_and_spectrum_figure"]

E_COLOR, I_COLOR = "#1f4e9c", "#c0392b"


def plot_raster(ax, result: SimulationResult, trial: int = 0, *, transient_ms: float = 0.0) -> None:
    """Single-trial raster: E neurons below, I neurons above (time in ms)."""
    n_e = result.spikes_e.n_neurons
    for spikes, offset, color, label in (
        (result.spikes_e, 0, E_COLOR, "E"),
        (result.spikes_i, n_e, I_COLOR, "I"),
    ):
        step, neuron = spikes.of_trial(trial)
        ax.scatter(step * result.dt_ms, neuron + offset, s=0.6, color=color, marker="|", linewidths=0.5, label=label)
    ax.axhline(n_e - 0.5, color="0.6", linewidth=0.5)
    if transient_ms > 0:
        ax.axvspan(0, transient_ms, color="0.93", zorder=-1, label="transient (not analysed)")
    ax.set_xlim(0, result.spikes_e.n_steps * result.dt_ms)
    ax.set_ylim(-0.5, n_e + result.spikes_i.n_neurons - 0.5)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("neuron (E below, I above)")
    ax.set_title(f"raster, trial {trial}")


def plot_spectrum(ax, frequencies_hz: np.ndarray, power: np.ndarray, peak: GammaPeak, *, f_max: float = 150.0) -> None:
    """E-population power spectrum with the gamma peak marked."""
    keep = frequencies_hz <= f_max
    ax.plot(frequencies_hz[keep], power[keep], color=E_COLOR, linewidth=1.2)
    if np.isfinite(peak.frequency_hz):
        ax.axvline(peak.frequency_hz, color="k", linestyle="--", linewidth=0.8)
        ax.annotate(
            f"gamma peak {peak.frequency_hz:.0f} Hz (x{peak.relative_power:.1f} band median)",
            (peak.frequency_hz, peak.power),
            xytext=(6, 0),
            textcoords="offset points",
            fontsize=8,
        )
    ax.axvspan(30, 46, color="0.9", zorder=-1, label="target band 30-46 Hz")
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("PSD (spikes$^2$ / Hz, 1 ms bins)")
    ax.set_title("E population spectrum (trial mean)")
    ax.legend(fontsize=7, loc="center right")


def raster_and_spectrum_figure(
    result: SimulationResult,
    frequencies_hz: np.ndarray,
    power: np.ndarray,
    peak: GammaPeak,
    path: str | Path,
    *,
    title: str = "",
    trial: int = 0,
    transient_ms: float = 0.0,
) -> Path:
    """Save a two-panel figure (raster, spectrum) to ``path`` (format from the suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_raster, ax_spectrum) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.6, 1]})
    plot_raster(ax_raster, result, trial, transient_ms=transient_ms)
    plot_spectrum(ax_spectrum, frequencies_hz, power, peak)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
