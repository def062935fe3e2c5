"""What "identical spikes" means between two simulators, and why a trial diverges.

Two simulators of the same network are *identical* on a set of trials when
every trial has the same set of spikes, each spike a (step, neuron) pair of
its population, whatever order the simulators emit them in (brian2cuda
appends spikes from many GPU threads). Short of that, the report counts the
trials that agree exactly, and for each trial that does not, finds its first
divergence: the earliest step at which the two spike sets differ, and the
neurons that differ there.

A divergence has one of two causes. Between two exact simulators of the same
equations, the state variables differ only by rounding (an FMA, another
``exp``, another summation order), far below a millivolt. A spike can then
differ only where the membrane lands on the threshold to within that rounding:
a *threshold tie*. After the first differing spike the trials are different
networks' trajectories (this network is chaotic), so only the first divergence
says anything about the simulators. Its *margin* is the float64 mirror's
``v - v_threshold`` after the state update at that step, for the neuron that
differs. A margin within :data:`THRESHOLD_TIE_MV` is a tie; anything larger
means the simulators computed different dynamics (a model or code difference),
since nothing but a tie can flip a spike when all earlier spikes agree.

Synaptic effects reach the membrane one step after the spike, so at a trial's
first divergence only ties can differ; neurons that differ there all have
their own margin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from biosim.inputs import TrialSet
from biosim.params import NetworkParams
from biosim.results import SpikeTrains
from biosim.weights import NetworkWeights

from .dynamics import PopulationConstants, fire, heaviside, initial_state, make_constants, transition
from .simulate import input_drive, torch_weights
from .torch_settings import flushed_denormals, torch_threads

__all__ = ["THRESHOLD_TIE_MV", "Divergence", "first_divergences", "threshold_margins", "identity_report"]

THRESHOLD_TIE_MV = 1e-9
"""Largest mirror margin |v - v_threshold| (mV) of a first divergence that rounding can explain.

Float64 rounding moves a membrane by about 1e-14 mV per step (|v| ~ 60 mV, 2**-52
relative) and, while every spike agrees, the dynamics between spikes are contracting,
so the gap stays near that; one synaptic event moves a membrane by 1e-3 mV or more.
1e-9 mV sits five orders of magnitude above the first and six below the second."""

POPULATIONS = ("e", "i")


@dataclass(frozen=True)
class Divergence:
    """One neuron that differs at its trial's first divergence."""

    trial: int
    step: int
    population: str
    neuron: int
    spiked_in: str
    """``"reference"`` or ``"candidate"``: the simulator in which the neuron spiked."""
    margin_mv: float | None = None
    """The float64 mirror's ``v - v_threshold`` after the state update at ``step`` (None until computed)."""

    @property
    def cause(self) -> str | None:
        if self.margin_mv is None:
            return None
        return "threshold tie" if abs(self.margin_mv) <= THRESHOLD_TIE_MV else "different dynamics"


def _keys(spikes: SpikeTrains) -> np.ndarray:
    return (spikes.trial * spikes.n_steps + spikes.step) * spikes.n_neurons + spikes.neuron


def _check_same_shape(reference: dict[str, SpikeTrains], candidate: dict[str, SpikeTrains]) -> None:
    for population in POPULATIONS:
        a, b = reference[population], candidate[population]
        if (a.n_trials, a.n_steps, a.n_neurons) != (b.n_trials, b.n_steps, b.n_neurons):
            raise ValueError(
                f"population {population!r}: the spike trains cover different trials, steps or neurons "
                f"({a.n_trials}, {a.n_steps}, {a.n_neurons}) and ({b.n_trials}, {b.n_steps}, {b.n_neurons})"
            )


def first_divergences(reference: dict[str, SpikeTrains], candidate: dict[str, SpikeTrains]) -> list[Divergence]:
    """Per trial that differs, the neurons (of either population) that differ at its earliest differing step.

    ``reference`` and ``candidate`` map ``"e"`` and ``"i"`` to the spike trains of
    the same trials. Spikes are compared as sets: their order does not matter.
    The result is sorted by trial, then population, then neuron.
    """
    _check_same_shape(reference, candidate)
    differing = []
    for population in POPULATIONS:
        a, b = reference[population], candidate[population]
        keys_a, keys_b = _keys(a), _keys(b)
        for keys, other, side in ((keys_a, keys_b, "reference"), (keys_b, keys_a, "candidate")):
            only = np.setdiff1d(keys, other, assume_unique=True)
            trial, rest = np.divmod(only, a.n_steps * a.n_neurons)
            step, neuron = np.divmod(rest, a.n_neurons)
            differing += [
                (int(t), int(s), population, int(n), side) for t, s, n in zip(trial, step, neuron, strict=True)
            ]
    first_step: dict[int, int] = {}
    for trial, step, *_ in differing:
        first_step[trial] = min(step, first_step.get(trial, step))
    first = [Divergence(*row) for row in differing if row[1] == first_step[row[0]]]
    return sorted(first, key=lambda d: (d.trial, POPULATIONS.index(d.population), d.neuron))


@torch.no_grad()
def threshold_margins(
    params: NetworkParams, weights: NetworkWeights, trials: TrialSet, divergences: list[Divergence]
) -> list[Divergence]:
    """``divergences`` with their ``margin_mv`` from the float64 mirror (eager step loop, CPU).

    Runs only the trials that diverge, up to the last step needed; the mirror's
    trajectory there is the reference's and the candidate's up to rounding,
    because every earlier spike agrees.
    """
    if not divergences:
        return []
    index = np.unique([d.trial for d in divergences])
    row = {int(trial): k for k, trial in enumerate(index)}
    last_step = max(d.step for d in divergences)
    wanted: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for k, d in enumerate(divergences):
        wanted.setdefault((d.step, d.population), []).append((k, row[d.trial], d.neuron))
    margins: list[float | None] = [None] * len(divergences)

    dtype = torch.float64
    w = torch_weights(weights, dtype=dtype)
    constants = make_constants(params)
    state = initial_state(
        torch.as_tensor(trials.v_init_e_mv[index], dtype=dtype),
        torch.as_tensor(trials.v_init_i_mv[index], dtype=dtype),
        params.connectivity.n_classes,
    )

    def synapses(name: str, spikes: torch.Tensor) -> torch.Tensor | None:
        weight = getattr(w, name)
        return None if weight is None else spikes @ weight

    with torch_threads(1), flushed_denormals():
        for first, drive in input_drive(trials, index, w.w_in):
            for t in range(drive.shape[1]):
                step = first + t

                def threshold(
                    population: str,
                    v1: torch.Tensor,
                    integrating: torch.Tensor,
                    k: PopulationConstants,
                    *,
                    step: int = step,
                ):
                    # The mirror's own threshold (as bridge.dynamics.advance), reading v1 on the way.
                    for slot, trial_row, neuron in wanted.get((step, population), ()):
                        margins[slot] = float(v1[trial_row, neuron] - k.v_threshold)
                    spikes = fire(v1, integrating, k, heaviside)
                    return spikes, spikes > 0

                state = transition(state, constants, drive[:, t], threshold, synapses).state
                if step >= last_step:
                    break
            if first + drive.shape[1] > last_step:
                break
    return [Divergence(**{**asdict(d), "margin_mv": margin}) for d, margin in zip(divergences, margins, strict=True)]


def identity_report(
    reference: dict[str, SpikeTrains],
    candidate: dict[str, SpikeTrains],
    *,
    params: NetworkParams | None = None,
    weights: NetworkWeights | None = None,
    trials: TrialSet | None = None,
    listed: int = 20,
) -> dict:
    """A JSON-ready verdict on spike identity, per trial, with the first divergences and their causes.

    ``verdict`` is ``"identical"`` (every trial's spike set equal),
    ``"identical up to threshold ties"`` (every differing trial starts with a tie)
    or ``"different dynamics"``. Causes need the network (``params``,
    ``weights``, ``trials``) to run the mirror; without it the verdict is
    ``"differs (causes not computed)"`` where trials differ.
    """
    divergences = first_divergences(reference, candidate)
    if divergences and params is not None and weights is not None and trials is not None:
        divergences = threshold_margins(params, weights, trials, divergences)
    n_trials = reference["e"].n_trials
    diverged = sorted({d.trial for d in divergences})
    trial_causes: dict[int, set[str | None]] = {}
    for d in divergences:
        trial_causes.setdefault(d.trial, set()).add(d.cause)
    ties = sum(1 for causes in trial_causes.values() if causes == {"threshold tie"})
    if not diverged:
        verdict = "identical"
    elif any(None in causes for causes in trial_causes.values()):
        verdict = "differs (causes not computed)"
    else:
        verdict = "identical up to threshold ties" if ties == len(diverged) else "different dynamics"
    margins = [abs(d.margin_mv) for d in divergences if d.margin_mv is not None]
    return {
        "definition": "per trial, the same set of (step, neuron) spikes in each population, in any order",
        "verdict": verdict,
        "n_trials": n_trials,
        "identical_trials": n_trials - len(diverged),
        "diverged_trials": len(diverged),
        "diverged_by_threshold_tie": ties,
        "threshold_tie_mv": THRESHOLD_TIE_MV,
        "largest_first_divergence_margin_mv": max(margins) if margins else None,
        "first_divergences": [{**asdict(d), "cause": d.cause} for d in divergences[:listed]],
        "first_divergences_listed": min(listed, len(divergences)),
        "first_divergences_total": len(divergences),
    }
