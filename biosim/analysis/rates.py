"""Population firing rates."""

from __future__ import annotations

import numpy as np

from ..results import SpikeTrains

__all__ = ["population_rates"]


def population_rates(spiketrains: SpikeTrains, dt_ms: float, transient_ms: float) -> np.ndarray:
    """Mean firing rate of the population in each trial, transient excluded.

    Parameters
    ----------
    spiketrains : SpikeTrains
    dt_ms : float
        Time step (ms).
    transient_ms : float
        Initial part of each trial that is ignored (ms); steps ``s`` with
        ``s * dt < transient_ms`` do not count.

    Returns
    -------
    ndarray, shape (n_trials,)
        Rate in Hz: spikes / (n_neurons * analysed duration).

    Examples
    --------
    >>> population_rates(result.spikes_e, 0.1, 50.0).mean()  # doctest: +SKIP
    """
    first_step = int(np.ceil(transient_ms / dt_ms - 1e-9))
    duration_s = (spiketrains.n_steps - first_step) * dt_ms * 1e-3
    if duration_s <= 0:
        raise ValueError(f"transient_ms={transient_ms} leaves nothing of a {spiketrains.n_steps}-step trial")
    keep = spiketrains.step >= first_step
    counts = np.bincount(spiketrains.trial[keep], minlength=spiketrains.n_trials)
    return counts / (spiketrains.n_neurons * duration_s)
