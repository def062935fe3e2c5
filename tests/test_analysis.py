"""Tests of biosim.analysis on synthetic rasters and spectra whose answers are known.

Every verdict rests on the population rates and on the gamma peak of the E population's spectrum, so
these pin both: exact rates from hand-made rasters, the peak of a rate modulated at a known frequency,
no peak in a flat or white spectrum, and the spectrum's normalisation.
"""

from __future__ import annotations

import numpy as np
import pytest

from biosim.analysis import GammaPeak, gamma_peak, population_rates, population_spectrum, weight_stats
from biosim.analysis.spectra import GAMMA_BAND_HZ, population_activity
from biosim.results import SpikeTrains
from protocols.verdicts import VerdictCriteria

DT_MS = 0.1
STEPS_PER_MS = 10
N_NEURONS = 200
KEPT_MIN_RELATIVE_POWER = VerdictCriteria().kept_min_relative_power  # what the verdicts call a clear peak


def raster(counts: np.ndarray, *, n_neurons: int = N_NEURONS, extra_steps: int = 0) -> SpikeTrains:
    """Spike trains with ``counts[trial, ms]`` spikes (distinct neurons) at the first step of each 1 ms bin."""
    counts = np.atleast_2d(np.asarray(counts, dtype=np.int64))
    trial, ms = np.nonzero(counts)
    repeats = counts[trial, ms]
    neuron = np.concatenate([np.arange(k) for k in repeats]) if len(repeats) else np.zeros(0, dtype=np.int64)
    return SpikeTrains.from_arrays(
        np.repeat(trial, repeats),
        np.repeat(ms * STEPS_PER_MS, repeats),
        neuron,
        n_neurons=n_neurons,
        n_trials=counts.shape[0],
        n_steps=counts.shape[1] * STEPS_PER_MS + extra_steps,
    )


def modulated_counts(frequency_hz: float, amplitude: float = 20.0, *, mean: float = 40.0, ms: int = 1000):
    """Spikes per 1 ms bin following ``mean + amplitude * cos(2 pi f t)``, rounded to whole spikes."""
    t_s = np.arange(ms) * 1e-3
    return np.round(mean + amplitude * np.cos(2 * np.pi * frequency_hz * t_s)).astype(np.int64)


def spectrum_of(counts, transient_ms: float = 0.0, **kwargs):
    return population_spectrum(raster(counts), DT_MS, transient_ms, **kwargs)


# --- rates ---------------------------------------------------------------------------------------


def test_rates_of_a_known_raster_are_exact():
    # 10 neurons, 3 trials of 100 ms: 5, 0 and 12 spikes -> 5, 0, 12 Hz.
    trial = [0] * 5 + [2] * 12
    step = list(range(0, 500, 100)) + list(range(0, 960, 80))
    spikes = SpikeTrains.from_arrays(trial, step, [i % 10 for i in range(17)], n_neurons=10, n_trials=3, n_steps=1000)
    rates = population_rates(spikes, DT_MS, 0.0)
    assert rates.shape == (3,)
    np.testing.assert_array_equal(rates, [5.0, 0.0, 12.0])


def test_rates_exclude_the_transient_and_count_its_last_step():
    # The transient is steps s with s * dt < 10 ms: step 99 is out, step 100 is in; 90 ms remain.
    spikes = SpikeTrains.from_arrays([0, 0, 0], [0, 99, 100], [0, 1, 2], n_neurons=2, n_trials=1, n_steps=1000)
    assert population_rates(spikes, DT_MS, 10.0)[0] == pytest.approx(1 / (2 * 0.090), rel=1e-12)


@pytest.mark.parametrize(
    ("transient_ms", "first_counted"),
    [(0.3, 3), (10.05, 101), (10.0, 100)],
    ids=["rounding-below", "between-steps", "on-a-step"],
)
def test_transient_boundary_is_robust_to_rounding(transient_ms, first_counted):
    # 0.3 / 0.1 is 2.9999999999999996 in floating point: step 3 (t = 0.3 ms) is not in the transient.
    n_steps = 2000
    spikes = SpikeTrains.from_arrays(
        [0, 0], [first_counted - 1, first_counted], [0, 0], n_neurons=1, n_trials=1, n_steps=n_steps
    )
    expected = 1 / ((n_steps - first_counted) * DT_MS * 1e-3)
    assert population_rates(spikes, DT_MS, transient_ms)[0] == pytest.approx(expected, rel=1e-12)


def test_empty_raster_has_zero_rates_in_every_trial():
    spikes = SpikeTrains.from_arrays([], [], [], n_neurons=10, n_trials=4, n_steps=500)
    rates = population_rates(spikes, DT_MS, 5.0)
    assert rates.shape == (4,) and rates.dtype == np.float64
    np.testing.assert_array_equal(rates, 0.0)


@pytest.mark.parametrize("transient_ms", [100.0, 250.0])
def test_transient_as_long_as_the_trial_is_a_clear_error_for_rates(transient_ms):
    spikes = SpikeTrains.from_arrays([0], [5], [0], n_neurons=1, n_trials=1, n_steps=1000)
    with pytest.raises(ValueError, match=rf"transient_ms={transient_ms} leaves nothing of a 1000-step trial"):
        population_rates(spikes, DT_MS, transient_ms)


# --- the activity signal ---------------------------------------------------------------------------


def test_activity_counts_spikes_per_bin_and_drops_the_partial_last_bin():
    # Steps 0..24 at dt 0.1 ms: bins of 1 ms are steps 0-9, 10-19; steps 20-24 do not fill a bin.
    spikes = SpikeTrains.from_arrays(
        [0, 0, 0, 0, 1, 1], [0, 9, 10, 22, 15, 24], [0, 1, 0, 0, 0, 1], n_neurons=2, n_trials=2, n_steps=25
    )
    activity = population_activity(spikes, DT_MS, 0.0)
    np.testing.assert_array_equal(activity, [[2.0, 1.0], [0.0, 1.0]])
    # A 0.5 ms transient shifts the bins: steps 5-14 and 15-24.
    np.testing.assert_array_equal(population_activity(spikes, DT_MS, 0.5), [[2.0, 1.0], [0.0, 2.0]])


def test_activity_with_wider_bins_sums_the_narrow_ones():
    counts = modulated_counts(40.0, ms=200)
    narrow = population_activity(raster(counts), DT_MS, 0.0)
    wide = population_activity(raster(counts), DT_MS, 0.0, bin_ms=2.0)
    np.testing.assert_array_equal(wide, narrow.reshape(1, -1, 2).sum(axis=2))


@pytest.mark.parametrize("bin_ms", [0.05, 1.05])
def test_bins_that_are_not_whole_steps_are_refused(bin_ms):
    with pytest.raises(ValueError, match=rf"bin_ms={bin_ms} must be a whole multiple of dt_ms=0.1"):
        population_activity(raster(np.ones((1, 10))), DT_MS, 0.0, bin_ms=bin_ms)


@pytest.mark.parametrize("transient_ms", [100.0, 99.5, 150.0])
def test_transient_leaving_no_whole_bin_is_a_clear_error_for_spectra(transient_ms):
    spikes = raster(np.ones((2, 100)))  # 100 ms trials
    with pytest.raises(ValueError, match=rf"transient_ms={transient_ms} leaves no whole 1.0 ms bin of a 1000-step"):
        population_spectrum(spikes, DT_MS, transient_ms)


# --- the spectrum and its gamma peak -----------------------------------------------------------------


@pytest.mark.parametrize("frequency_hz", [30.0, 40.0, 45.5, 60.0, 85.0])
def test_a_rate_modulated_at_f_peaks_at_f(frequency_hz):
    frequencies, power = spectrum_of(modulated_counts(frequency_hz))
    peak = gamma_peak(frequencies, power)
    assert peak.resolution_hz == 1.0
    assert abs(peak.frequency_hz - frequency_hz) <= 1.0
    assert peak.relative_power > 100 * KEPT_MIN_RELATIVE_POWER


def test_frequency_grid_is_one_hertz_up_to_nyquist():
    frequencies, power = spectrum_of(modulated_counts(40.0, ms=300))
    np.testing.assert_array_equal(frequencies, np.arange(501.0))
    assert power.shape == frequencies.shape and np.all(power >= 0)
    frequencies, _ = spectrum_of(modulated_counts(40.0, ms=300), bin_ms=2.0)
    np.testing.assert_array_equal(frequencies, np.arange(251.0))  # Nyquist of 2 ms bins, still a 1 Hz grid


def test_trial_shorter_than_a_segment_still_gives_its_peak():
    # 60 ms analysed (one shortened segment, resolution about 17 Hz): the peak is coarse but in place.
    frequencies, power = spectrum_of(modulated_counts(50.0, ms=80), transient_ms=20.0)
    assert np.array_equal(frequencies, np.arange(501.0))
    assert abs(gamma_peak(frequencies, power).frequency_hz - 50.0) <= 3.0


def test_integrated_spectrum_equals_the_signal_variance():
    # Parseval for Welch's one-sided density: the integral of the PSD is the variance of the activity.
    counts = modulated_counts(40.0)
    frequencies, power = spectrum_of(counts)
    integral = float(np.sum(power) * (frequencies[1] - frequencies[0]))
    assert integral == pytest.approx(np.var(counts), rel=0.01)
    assert integral == pytest.approx(20.0**2 / 2, rel=0.03)  # a cosine of amplitude 20 spikes per bin


def test_peak_power_scales_with_the_squared_amplitude():
    weak_counts, strong_counts = modulated_counts(40.0, amplitude=10.0), modulated_counts(40.0, amplitude=30.0)
    _, weak = spectrum_of(weak_counts)
    _, strong = spectrum_of(strong_counts)
    # Rounding to whole spikes changes the amplitudes a little: measure them by projection on the cosine.
    cosine = np.cos(2 * np.pi * 40.0 * np.arange(1000) * 1e-3)
    amplitude_ratio = np.dot(strong_counts, cosine) / np.dot(weak_counts, cosine)
    assert amplitude_ratio == pytest.approx(3.0, rel=0.02)
    assert strong[40] / weak[40] == pytest.approx(amplitude_ratio**2, rel=0.005)


def test_spectrum_is_the_mean_of_the_single_trial_spectra():
    first, second = modulated_counts(40.0), modulated_counts(55.0, amplitude=10.0)
    frequencies, both = spectrum_of(np.stack([first, second]))
    _, alone_first = spectrum_of(first)
    _, alone_second = spectrum_of(second)
    np.testing.assert_allclose(both, (alone_first + alone_second) / 2, rtol=1e-12, atol=1e-15)
    assert gamma_peak(frequencies, both).frequency_hz == 40.0  # the larger of the two peaks


def test_constant_offset_does_not_change_the_spectrum():
    # Each trial's mean is removed: a steady extra rate adds no power at any frequency.
    _, power = spectrum_of(modulated_counts(40.0))
    _, offset = spectrum_of(modulated_counts(40.0) + 7)
    np.testing.assert_allclose(offset, power, rtol=1e-9, atol=1e-12)


def test_transient_is_left_out_of_the_spectrum():
    # A strong 35 Hz rhythm in the first 200 ms (the transient), a weaker 70 Hz one after it.
    counts = np.concatenate([modulated_counts(35.0, amplitude=30.0, ms=200), modulated_counts(70.0, ms=800)])
    frequencies, power = spectrum_of(counts, transient_ms=200.0)
    assert gamma_peak(frequencies, power).frequency_hz == 70.0
    _, with_transient_power = spectrum_of(counts)
    assert with_transient_power[35] > 10 * power[35]  # the early rhythm counts only when it is analysed


def test_constant_activity_has_a_flat_zero_spectrum_and_no_peak():
    frequencies, power = spectrum_of(np.full((3, 500), 12))
    np.testing.assert_array_equal(power, 0.0)
    peak = gamma_peak(frequencies, power)
    assert np.isnan(peak.frequency_hz) and peak.power == 0.0 and peak.relative_power == 0.0
    assert peak.resolution_hz == 1.0


def test_empty_raster_has_no_peak():
    spikes = SpikeTrains.from_arrays([], [], [], n_neurons=N_NEURONS, n_trials=2, n_steps=5000)
    frequencies, power = population_spectrum(spikes, DT_MS, 50.0)
    peak = gamma_peak(frequencies, power)
    assert np.all(power == 0.0) and np.isnan(peak.frequency_hz) and peak.relative_power == 0.0


def test_white_noise_has_no_peak_above_the_verdict_threshold():
    # Independent Poisson counts per bin: a flat spectrum, so the largest in-band value stays near the median.
    counts = np.random.default_rng(7).poisson(20.0, size=(10, 1000))
    frequencies, power = spectrum_of(counts)
    peak = gamma_peak(frequencies, power)
    assert peak.relative_power < KEPT_MIN_RELATIVE_POWER / 2
    inside = (frequencies >= 20) & (frequencies <= 100)
    # White noise of variance 20 spikes^2 has a one-sided density 2 * 20 / 1000 Hz.
    assert np.median(power[inside]) == pytest.approx(2 * 20.0 / 1000.0, rel=0.15)


def test_a_modulated_rate_in_poisson_noise_is_a_clear_peak():
    rng = np.random.default_rng(3)
    counts = rng.poisson(np.clip(modulated_counts(40.0, amplitude=8.0), 0, None), size=(10, 1000))
    frequencies, power = spectrum_of(counts)
    peak = gamma_peak(frequencies, power)
    assert abs(peak.frequency_hz - 40.0) <= 1.0 and peak.relative_power > KEPT_MIN_RELATIVE_POWER


# --- gamma_peak on given spectra ---------------------------------------------------------------------


def flat_spectrum() -> tuple[np.ndarray, np.ndarray]:
    frequencies = np.arange(501.0)
    return frequencies, np.ones_like(frequencies)


def test_relative_power_is_the_peak_over_the_band_median():
    frequencies, power = flat_spectrum()
    power[45] = 10.0
    power[[60, 61]] = 4.0
    assert gamma_peak(frequencies, power) == GammaPeak(45.0, 10.0, 10.0, 1.0)
    power[20:40] = 2.0  # 20 of the band's 81 values doubled: the median stays 1
    assert gamma_peak(frequencies, power).relative_power == 10.0
    power[20:70] = 2.0  # now 50 of the 81 values are 2: the median is 2
    power[75] = 4.0
    assert gamma_peak(frequencies, power) == GammaPeak(75.0, 4.0, 2.0, 1.0)


def test_peaks_outside_the_band_are_ignored():
    frequencies, power = flat_spectrum()
    power[10] = 1000.0  # an alpha rhythm
    power[150] = 1000.0  # fast ripples
    power[38] = 5.0
    peak = gamma_peak(frequencies, power)
    assert peak.frequency_hz == 38.0 and peak.relative_power == 5.0
    assert GAMMA_BAND_HZ == (20.0, 100.0)


@pytest.mark.parametrize(("where", "found"), [(20, 20.0), (100, 100.0), (19, 50.0), (101, 50.0)])
def test_band_edges_are_included(where, found):
    frequencies, power = flat_spectrum()
    power[50] = 2.0
    power[where] = 8.0
    assert gamma_peak(frequencies, power).frequency_hz == found


def test_custom_band_and_zero_median():
    frequencies, power = flat_spectrum()
    power[12] = 3.0
    assert gamma_peak(frequencies, power, band_hz=(8.0, 13.0)).frequency_hz == 12.0
    sparse = np.zeros_like(frequencies)
    sparse[40] = 2.0  # a single non-zero value: the band median is 0
    assert gamma_peak(frequencies, sparse) == GammaPeak(40.0, 2.0, float("inf"), 1.0)


def test_resolution_is_the_spacing_of_the_grid():
    frequencies = np.arange(0.0, 501.0, 7.8125)
    power = np.ones_like(frequencies)
    power[5] = 4.0  # 39.0625 Hz
    peak = gamma_peak(frequencies, power)
    assert peak.resolution_hz == 7.8125 and peak.frequency_hz == 39.0625 and peak.relative_power == 4.0


# --- weight statistics ------------------------------------------------------------------------------


def test_weight_stats_of_a_known_matrix():
    stored = np.array([[-1.0, 1.0], [3.0, 0.0]])
    stats = weight_stats(stored)
    assert stats.as_dict() == {"pruned_fraction": 0.25, "effective_mean": 1.0, "mean_abs_stored": 1.25}
    masked = weight_stats(stored, np.array([[True, False], [True, False]]))
    assert (masked.pruned_fraction, masked.effective_mean, masked.mean_abs_stored) == (0.5, 1.5, 2.0)


def test_weight_stats_of_effective_values_count_zeros_as_pruned():
    effective = np.maximum(np.array([-1.0, 1.0, 3.0, 0.0]), 0.0)
    stats = weight_stats(effective, effective=True)
    assert stats.pruned_fraction == 0.5 and stats.effective_mean == 1.0 and stats.mean_abs_stored == 1.0


def test_weight_stats_without_edges_are_nan():
    stats = weight_stats(np.ones((2, 2)), np.zeros((2, 2), dtype=bool))
    assert all(np.isnan(value) for value in stats.as_dict().values())
