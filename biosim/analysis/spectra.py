"""Power spectrum of population activity and its gamma peak.

The E population's activity is the spike count in bins of ``bin_ms``
(default 1 ms, Nyquist 500 Hz), transient excluded, mean removed. Each trial's
spectrum is Welch's estimate (Hann window, segments of ``segment_ms``, half
overlap, zero-padded to a 1 Hz grid); trials are averaged. The true frequency
resolution is about ``1000 / segment_ms`` Hz (~7.8 Hz for 128 ms); the peak is
read off the zero-padded grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

from ..results import SpikeTrains

__all__ = ["population_activity", "population_spectrum", "gamma_peak", "GammaPeak"]

GAMMA_BAND_HZ = (20.0, 100.0)


def population_activity(spiketrains: SpikeTrains, dt_ms: float, transient_ms: float, bin_ms: float = 1.0) -> np.ndarray:
    """Spike counts per bin, shape (n_trials, n_bins), transient excluded."""
    steps_per_bin = round(bin_ms / dt_ms)
    if steps_per_bin < 1 or abs(steps_per_bin * dt_ms - bin_ms) > 1e-9:
        raise ValueError(f"bin_ms={bin_ms} must be a whole multiple of dt_ms={dt_ms}")
    first_step = int(np.ceil(transient_ms / dt_ms - 1e-9))
    n_bins = (spiketrains.n_steps - first_step) // steps_per_bin
    if n_bins < 1:  # else numpy fails on a negative bin count, or an empty signal gives a nan spectrum
        raise ValueError(
            f"transient_ms={transient_ms} leaves no whole {bin_ms} ms bin of a {spiketrains.n_steps}-step trial"
        )
    keep = (spiketrains.step >= first_step) & (spiketrains.step < first_step + n_bins * steps_per_bin)
    bins = (spiketrains.step[keep] - first_step) // steps_per_bin
    flat = np.bincount(spiketrains.trial[keep] * n_bins + bins, minlength=spiketrains.n_trials * n_bins)
    return flat.reshape(spiketrains.n_trials, n_bins).astype(float)


def population_spectrum(
    spiketrains: SpikeTrains,
    dt_ms: float,
    transient_ms: float,
    *,
    bin_ms: float = 1.0,
    segment_ms: float = 128.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Trial-averaged power spectral density of the population activity.

    Parameters
    ----------
    spiketrains : SpikeTrains
    dt_ms, transient_ms : float
        Time step and excluded initial part of each trial (ms).
    bin_ms : float
        Bin width of the activity signal (ms), at most 1 ms by default.
    segment_ms : float
        Welch segment length (ms); shortened to the analysed duration if needed.

    Returns
    -------
    frequencies_hz : ndarray
    power : ndarray
        PSD in (spikes/bin)^2 / Hz, averaged over trials.
    """
    activity = population_activity(spiketrains, dt_ms, transient_ms, bin_ms)
    fs_hz = 1000.0 / bin_ms
    nperseg = min(activity.shape[1], round(segment_ms / bin_ms))
    nfft = max(nperseg, round(fs_hz))  # 1 Hz grid
    frequencies, power = signal.welch(
        activity - activity.mean(axis=1, keepdims=True),
        fs=fs_hz,
        window="hann",
        nperseg=nperseg,
        noverlap=nperseg // 2,
        nfft=nfft,
        axis=-1,
    )
    return frequencies, power.mean(axis=0)


@dataclass(frozen=True)
class GammaPeak:
    frequency_hz: float
    """Frequency of the largest power in the band (nan if the spectrum is flat zero)."""
    power: float
    relative_power: float
    """Peak power over the median power in the band: > ~3 marks a clear peak."""
    resolution_hz: float
    """Spacing of the frequency grid the peak was read from."""


def gamma_peak(
    frequencies_hz: np.ndarray, power: np.ndarray, band_hz: tuple[float, float] = GAMMA_BAND_HZ
) -> GammaPeak:
    """Largest spectral peak inside ``band_hz`` (default 20-100 Hz)."""
    inside = (frequencies_hz >= band_hz[0]) & (frequencies_hz <= band_hz[1])
    band_power = power[inside]
    resolution = float(frequencies_hz[1] - frequencies_hz[0])
    if not np.any(band_power > 0):
        return GammaPeak(float("nan"), 0.0, 0.0, resolution)
    k = int(np.argmax(band_power))
    median = float(np.median(band_power))
    relative = float(band_power[k] / median) if median > 0 else float("inf")
    return GammaPeak(float(frequencies_hz[inside][k]), float(band_power[k]), relative, resolution)
