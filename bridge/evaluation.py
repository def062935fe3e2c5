"""Evaluation of a PING model without gradients: loss, accuracy, rates, gamma and weight statistics.

:func:`evaluate` runs a trial set (or digit streams) through the model in
batches; the trainer calls it on the test digits after every epoch, and on
the training digits for the untrained network (epoch 0). The forward pass
that turns trials into class scores (:func:`_forward`) is shared with the
training step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as functional

from biosim.analysis import gamma_peak, population_rates, population_spectrum, weight_stats
from biosim.inputs import TrialSet
from biosim.results import SpikeTrains
from biosim.streams import StreamSet, accuracy_by_position, window_means
from biosim.weights import CONDUCTANCE_MATRICES, RECURRENT_BLOCKS

from .feeding import _batch_tensors
from .model import NetworkOutput, PINGModel
from .torch_settings import flushed_denormals

__all__ = ["evaluate", "population_spiketrains"]


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
    """:func:`biosim.analysis.weight_stats` of each stored conductance matrix, keyed ``{matrix}_{statistic}``."""
    metrics = {}
    mask = model.input_mask.cpu().numpy()
    for name in (*CONDUCTANCE_MATRICES, *(n for n in model.matrices if n in RECURRENT_BLOCKS)):
        stored = getattr(model, name).detach().cpu().to(torch.float64).numpy()
        stats = weight_stats(stored, mask if name == "w_in" else None)
        for key, value in stats.as_dict().items():
            metrics[f"{name}_{key}"] = value
    return metrics
