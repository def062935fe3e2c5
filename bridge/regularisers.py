"""Penalties that oppose the dismantling of the PING loop (the anti-pruning follow-up of docs/reference_study.md).

Two terms a training run can add to its cross-entropy, each with its own
strength lambda (:class:`bridge.train_config.TrainConfig` fields
``reg_w_ei_distance`` and ``reg_gamma_power``):

- :func:`w_ei_distance`: how far the *stored* W_EI has moved from the
  canonical draw of the run's seed, as a mean absolute difference in units
  of the canonical mean. Stored, not effective, weights: Dale's clamp gives
  a pruned (negative) entry no gradient, so a penalty on the effective
  weights could not pull it back; on the stored ones it can.
- :func:`gamma_shortfall`: one minus the fraction of the E population's
  spectral power that lies in the gamma band, so that a rhythm-free
  population costs 1 and a pure gamma rhythm 0.

The gamma estimator
-------------------
From the E spikes per step of each trial (differentiable through the
surrogate, :attr:`bridge.eager.NetworkOutput.population_e`):

1. the first ``transient_ms`` are dropped (as the analysis of
   :mod:`biosim.analysis.spectra` drops them);
2. the spikes are summed in bins of ``bin_ms`` (1 ms): the population rate,
   smoothed by a boxcar, which leaves the gamma band (period >= 10 ms) almost
   untouched (the boxcar's gain at 80 Hz is 0.99);
3. the mean is subtracted, a Hann window applied, and the power spectrum
   ``|rfft|^2`` taken;
4. ``fraction = P(band) / (P(all non-zero frequencies) + eps)`` per trial,
   averaged over the batch; the penalty is ``1 - fraction``.

It is a smooth function of the population counts (``eps`` keeps it defined
for a silent population), so its gradient is exact given the surrogate's;
``tests/test_regularisers.py`` checks it against finite differences in
float64.
"""

from __future__ import annotations

import math

import torch

from biosim.analysis.spectra import GAMMA_BAND_HZ

__all__ = ["GAMMA_BIN_MS", "gamma_fraction", "gamma_shortfall", "w_ei_distance"]

GAMMA_BIN_MS = 1.0
"""Bin of the population rate the gamma estimator reads (ms)."""

_EPS = 1e-12


def gamma_fraction(
    population: torch.Tensor,
    dt_ms: float,
    *,
    transient_ms: float = 0.0,
    band_hz: tuple[float, float] = GAMMA_BAND_HZ,
    bin_ms: float = GAMMA_BIN_MS,
) -> torch.Tensor:
    """Fraction of each trial's population-rate power in ``band_hz``: shape ``(batch,)``, in [0, 1].

    Parameters
    ----------
    population : Tensor (batch, n_steps)
        Spikes per step of one population (any scale: the fraction is scale-free).
    dt_ms : float
        Time step (ms).
    transient_ms : float
        Leading time left out (ms).
    band_hz : (float, float)
        The gamma band, inclusive (default: the analysis module's).
    bin_ms : float
        Bin of the rate (ms); a whole number of steps.
    """
    steps_per_bin = round(bin_ms / dt_ms)
    if steps_per_bin < 1 or abs(steps_per_bin * dt_ms - bin_ms) > 1e-9 * bin_ms:
        raise ValueError(f"bin_ms = {bin_ms} is not a whole number of steps of {dt_ms} ms")
    start = int(math.ceil(transient_ms / dt_ms - 1e-9))  # as biosim.analysis.spectra.population_activity
    n_bins = (population.shape[1] - start) // steps_per_bin
    if n_bins < 4:
        raise ValueError(
            f"the gamma estimator needs at least 4 bins of {bin_ms} ms after the {transient_ms} ms transient; "
            f"the trial has {population.shape[1]} steps of {dt_ms} ms"
        )
    binned = population[:, start : start + n_bins * steps_per_bin].reshape(population.shape[0], n_bins, -1).sum(-1)
    centred = binned - binned.mean(dim=1, keepdim=True)
    window = torch.hann_window(n_bins, periodic=False, dtype=population.dtype, device=population.device)
    power = torch.fft.rfft(centred * window, dim=1).abs().pow(2)
    frequencies = torch.fft.rfftfreq(n_bins, d=bin_ms / 1000.0).to(population.device)
    in_band = (frequencies >= band_hz[0]) & (frequencies <= band_hz[1])
    if not bool(in_band.any()):
        raise ValueError(f"no frequency of the {n_bins}-bin spectrum lies in the band {band_hz} Hz")
    total = power[:, 1:].sum(dim=1)
    return power[:, in_band].sum(dim=1) / (total + _EPS)


def gamma_shortfall(population: torch.Tensor, dt_ms: float, *, transient_ms: float = 0.0) -> torch.Tensor:
    """``1 - gamma_fraction``, averaged over the batch: the penalty on low gamma-band power (a scalar)."""
    return 1.0 - gamma_fraction(population, dt_ms, transient_ms=transient_ms).mean()


def w_ei_distance(w_ei: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``mean|w_ei - reference| / mean(reference)``: distance from the reference in its own mean's units.

    ``w_ei`` is the stored (unconstrained) matrix; ``reference`` the canonical draw (all >= 0, mean > 0).
    """
    scale = reference.mean()
    if not bool(scale > 0):
        raise ValueError("the W_EI reference has a zero mean; the distance has no scale")
    return (w_ei - reference).abs().mean() / scale
