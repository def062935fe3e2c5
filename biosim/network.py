"""Build the PING network in Brian2 for a whole set of trials.

All trials run back to back in one Brian2 run (one build on standalone
devices): on the first step of each trial a custom event (``trial_start``,
decided on the integer step count, so everything stays on one clock) restores
that trial's initial state from a 2-D ``TimedArray`` (row = trial) and clears
conductances, refractoriness and the readout. The input spikes of all trials
sit in one ``SpikeGeneratorGroup``, shifted by ``trial * trial_ms``.

The class scores are read by an event monitor that records the readout's
accumulator at each trial boundary, just before the reset; the run therefore
lasts one extra step so that the last trial's boundary is reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import equations as eq
from .inputs import TrialSet
from .params import NetworkParams, to_brian2_namespace
from .weights import NetworkWeights

__all__ = ["BrianNetwork", "build_network", "reset_at_trial_start"]


def reset_at_trial_start(group, code: str) -> None:
    """Run ``code`` on the first step of every trial, before the step's state update.

    In the ``start`` slot: the event is detected (order 0), monitors read the
    finished trial (order 1), then the reset runs (order 2).
    """
    group.thresholder[eq.TRIAL_START_EVENT].when = "start"
    group.thresholder[eq.TRIAL_START_EVENT].order = 0
    group.run_on_event(eq.TRIAL_START_EVENT, code, when="start", order=2)


@dataclass
class BrianNetwork:
    """The Brian2 objects of one multi-trial simulation."""

    network: Any
    duration: Any
    monitors: dict[str, Any]


def _dense_edges(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pre/post indices and values of the nonzero entries.

    Zero-weight edges (pruned, or absent) are not instantiated: adding 0 to a
    conductance is exact, so the dynamics are unchanged and Brian2 does less work.
    """
    pre, post = np.nonzero(matrix)
    return pre.astype(np.int32), post.astype(np.int32), matrix[pre, post]


def neuron_populations(params: NetworkParams, v_init_mv: dict[str, np.ndarray], trial_duration) -> dict[str, Any]:
    """The E and I ``NeuronGroup``s, reset at every trial start.

    ``v_init_mv[name]`` is the table of initial potentials (mV) that the trial-start
    reset reads, one row per trial and one column per neuron: its width is the
    group's size (the copies layout puts every copy's neurons in one row).
    """
    import brian2 as b2

    populations = {}
    for name in ("e", "i"):
        table = np.asarray(v_init_mv[name], dtype=float)
        namespace = to_brian2_namespace(params, name)
        namespace["v_init"] = b2.TimedArray(table * b2.mV, dt=trial_duration)
        group = b2.NeuronGroup(
            table.shape[1],
            eq.NEURON_EQUATIONS,
            threshold=eq.THRESHOLD,
            reset=eq.RESET,
            refractory=eq.REFRACTORY,
            events={eq.TRIAL_START_EVENT: eq.TRIAL_START},
            method=eq.METHOD,
            namespace={**namespace, "steps_per_trial": params.simulation.n_steps},
            name=f"neurons_{name}",
        )
        reset_at_trial_start(group, eq.NEURON_TRIAL_RESET)
        populations[name] = group
    return populations


def build_network(
    params: NetworkParams,
    weights: NetworkWeights,
    trials: TrialSet,
    *,
    record_v: dict[str, np.ndarray] | None = None,
    record_readout: bool = False,
) -> BrianNetwork:
    """Create the Brian2 network for ``trials`` on the currently active device.

    Parameters
    ----------
    params : NetworkParams
    weights : NetworkWeights
        Effective weights (uS); checked for shape and Dale's law.
    trials : TrialSet
        Input spikes and initial membrane potentials.
    record_v : dict, optional
        ``{"e": indices, "i": indices}``: record the membrane potential of
        these neurons at every step (for cross-simulator checks).
    record_readout : bool
        Record the readout potentials ``u`` after every step's synaptic
        input, where ``score_sum`` samples them (monitor ``"readout"``): the
        readout windows of digit streams (:mod:`biosim.streams`).

    Raises
    ------
    WeightShapeError, DaleLawError
        Before any Brian2 object is created.
    """
    import brian2 as b2

    weights.check_shapes(params)
    weights.check_dale()
    c, sim = params.connectivity, params.simulation
    if trials.n_input != c.n_input or trials.n_steps != sim.n_steps:
        raise ValueError(
            f"trial set has n_input={trials.n_input}, n_steps={trials.n_steps}; "
            f"the network expects n_input={c.n_input}, n_steps={sim.n_steps}"
        )
    b2.defaultclock.dt = sim.dt_ms * b2.ms
    trial_duration = sim.trial_ms * b2.ms

    populations = neuron_populations(params, {"e": trials.v_init_e_mv, "i": trials.v_init_i_mv}, trial_duration)
    neurons_e, neurons_i = populations["e"], populations["i"]

    readout = b2.NeuronGroup(
        c.n_classes,
        eq.READOUT_EQUATIONS,
        events={eq.TRIAL_START_EVENT: eq.TRIAL_START},
        method=eq.METHOD,
        namespace={**to_brian2_namespace(params, "readout"), "steps_per_trial": sim.n_steps},
        name="readout",
    )
    readout.run_regularly(eq.READOUT_ACCUMULATE, when="after_synapses", name="readout_accumulate")
    reset_at_trial_start(readout, eq.READOUT_TRIAL_RESET)

    steps = trials.input_trial.astype(np.int64) * sim.n_steps + trials.input_step
    source = b2.SpikeGeneratorGroup(c.n_input, trials.input_neuron, steps * sim.dt_ms * b2.ms, name="input")

    def connect(pre, post, matrix, model, on_pre, name, unit):
        i, j, w = _dense_edges(matrix)
        if len(w) == 0:
            return None  # a fully pruned (or zero-initialised) block has no synapse to simulate
        synapses = b2.Synapses(pre, post, model=model, on_pre=on_pre, method=eq.METHOD, name=name)
        synapses.connect(i=i, j=j)
        synapses.w = w * unit
        return synapses

    w_in = np.where(weights.input_mask, weights.w_in, 0.0)
    conductance, excitatory, inhibitory = eq.SYNAPSE_MODEL_CONDUCTANCE, eq.ON_PRE_EXCITATORY, eq.ON_PRE_INHIBITORY
    synapses = [
        connect(source, neurons_e, w_in, conductance, excitatory, "syn_in_e", b2.uS),
        connect(neurons_e, neurons_i, weights.w_ei, conductance, excitatory, "syn_e_i", b2.uS),
        connect(neurons_i, neurons_e, weights.w_ie, conductance, inhibitory, "syn_i_e", b2.uS),
        connect(neurons_e, readout, weights.w_out, eq.SYNAPSE_MODEL_READOUT, eq.ON_PRE_READOUT, "syn_e_out", 1),
    ]
    # The optional recurrent blocks (check_shapes made sure they are there exactly when params have them).
    # Their names fix their place in the synaptic slot (see biosim.equations): E -> E after the input.
    if weights.w_ee is not None:
        synapses.append(connect(neurons_e, neurons_e, weights.w_ee, conductance, excitatory, eq.SYNAPSES_E_E, b2.uS))
    if weights.w_ii is not None:
        synapses.append(connect(neurons_i, neurons_i, weights.w_ii, conductance, inhibitory, eq.SYNAPSES_I_I, b2.uS))

    monitors = {
        "spikes_e": b2.SpikeMonitor(neurons_e, name="spikes_e"),
        "spikes_i": b2.SpikeMonitor(neurons_i, name="spikes_i"),
        # Recorded at each trial boundary, between the event's detection and the reset.
        "scores": b2.EventMonitor(
            readout, eq.TRIAL_START_EVENT, variables=["score_sum"], when="start", order=1, name="scores"
        ),
    }
    for name, indices in (record_v or {}).items():
        monitors[f"v_{name}"] = b2.StateMonitor(
            populations[name], "v", record=np.asarray(indices), when="end", name=f"v_{name}"
        )

    if record_readout:
        # After the synapses (and after readout_accumulate, order 0): the u that score_sum adds.
        monitors["readout"] = b2.StateMonitor(
            readout, "u", record=True, when="after_synapses", order=1, name="readout_trace"
        )

    synapses = [block for block in synapses if block is not None]
    network = b2.Network(populations["e"], populations["i"], readout, source, *synapses, *monitors.values())
    duration = trials.n_trials * trial_duration + b2.defaultclock.dt
    return BrianNetwork(network=network, duration=duration, monitors=monitors)
