"""The ``copies`` trial layout: n trials at once, as n copies of the network.

The ``sequential`` layout (:func:`biosim.network.build_network`) runs the
trials back to back, 400 trials being 800 000 steps of a small network. Here
every population holds n copies (copy k's neuron p is index ``k * N + p``),
the synapses are block-diagonal (copy k's E reaches only copy k's I, ...),
and the network runs for one trial: n times fewer steps, each n times larger.

Copy k gets trial k's input spikes and initial state; all copies share the
weights. Each copy computes what its trial computes in the sequential
layout, in the same order of floating-point operations:

- the equations, the trial-start reset and the schedule are the same
  objects (:mod:`biosim.equations`), and the pathways keep their names, so
  Brian2 runs them in the same order onto each target;
- within a copy the synapses are ordered as in the sequential layout (by
  presynaptic, then postsynaptic index) and the presynaptic indices keep
  their order, so the spikes landing on one target in one step are summed in
  the same order; no spike of another copy lands there.

No per-synapse array is written into a standalone project: the weights of a
block sit in one shared table (a 2-D ``TimedArray``, row = presynaptic,
column = postsynaptic neuron of one copy) and the synapses are made by a
generator expression that reads the table, so the project holds n_pre x
n_post numbers per block whatever the number of copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import equations as eq
from .inputs import TrialSet
from .network import BrianNetwork, neuron_populations, reset_at_trial_start
from .params import NetworkParams, to_brian2_namespace
from .results import SimulationResult, SpikeTrains
from .weights import NetworkWeights

__all__ = ["LAYOUTS", "check_layout", "build_copies_network", "collect_copies"]

LAYOUTS = ("sequential", "copies")
"""``sequential``: trials back to back in one network; ``copies``: n trials at once, n copies of the network."""


def check_layout(layout: str, name: str = "layout") -> str:
    """``layout`` if it is one of :data:`LAYOUTS`; a ``ValueError`` naming ``name`` (the flag or argument) if not."""
    if layout not in LAYOUTS:
        raise ValueError(f"{name}: unknown trial layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    return layout


# A table row is addressed as a time: row r is read at r * _ROW_DT. With a row length of one second,
# TimedArray's index (t / epsilon + 0.5) / K, epsilon = _ROW_DT / K with K a power of two, is exact.
_ROW_DT_S = 1.0


def _connect_copies(b2, pre, post, matrix: np.ndarray, unit, model: str, on_pre: str, name: str):
    """Block-diagonal synapses, ``matrix`` (n_pre x n_post, one copy's weights) in every block; None if all zero.

    ``unit``: the weights' unit (``matrix * unit`` is what the sequential layout assigns), None if dimensionless.
    """
    if not np.any(matrix):
        return None  # as in the sequential layout: a fully pruned block has no synapse
    n_pre, n_post = matrix.shape
    values = np.asarray(matrix, dtype=float)
    table = b2.TimedArray(values * unit if unit is not None else values, dt=_ROW_DT_S * b2.second)
    namespace = {"w_table": table, "n_pre": n_pre, "n_post": n_post, "row_dt": _ROW_DT_S * b2.second}
    # A scalar (shared) zero delay instead of one per synapse: 8 bytes less per synapse, the same delivery.
    synapses = b2.Synapses(
        pre, post, model=model, on_pre=on_pre, delay=0 * b2.ms, method=eq.METHOD, namespace=namespace, name=name
    )
    zero = "0 * siemens" if unit is not None else "0"
    # For each presynaptic neuron (in index order), its copy's targets in ascending order: the order of
    # the sequential layout's np.nonzero edges, block by block.
    synapses.connect(
        j=f"k for k in range((i // n_pre) * n_post, (i // n_pre + 1) * n_post) "
        f"if w_table((i % n_pre) * row_dt, k % n_post) != {zero}"
    )
    synapses.w = "w_table((i % n_pre) * row_dt, j % n_post)"
    return synapses


def build_copies_network(
    params: NetworkParams,
    weights: NetworkWeights,
    trials: TrialSet,
    *,
    record_v: dict[str, np.ndarray] | None = None,
    record_readout: bool = False,
) -> BrianNetwork:
    """The Brian2 network of ``trials`` as ``trials.n_trials`` copies, on the active device.

    Arguments as :func:`biosim.network.build_network`; ``record_v`` indices are
    within a population and recorded in every copy.
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
    n = trials.n_trials
    b2.defaultclock.dt = sim.dt_ms * b2.ms
    trial_duration = sim.trial_ms * b2.ms

    # One row (the single trial), copy after copy: column k * size + p is copy k's neuron p.
    rows = {
        name: np.asarray(v_init, dtype=float).reshape(1, n * size)
        for name, size, v_init in (("e", c.n_e, trials.v_init_e_mv), ("i", c.n_i, trials.v_init_i_mv))
    }
    populations = neuron_populations(params, rows, trial_duration)
    neurons_e, neurons_i = populations["e"], populations["i"]

    readout = b2.NeuronGroup(
        n * c.n_classes,
        eq.READOUT_EQUATIONS,
        events={eq.TRIAL_START_EVENT: eq.TRIAL_START},
        method=eq.METHOD,
        namespace={**to_brian2_namespace(params, "readout"), "steps_per_trial": sim.n_steps},
        name="readout",
    )
    readout.run_regularly(eq.READOUT_ACCUMULATE, when="after_synapses", name="readout_accumulate")
    reset_at_trial_start(readout, eq.READOUT_TRIAL_RESET)

    input_index = trials.input_trial.astype(np.int64) * c.n_input + trials.input_neuron
    source = b2.SpikeGeneratorGroup(
        n * c.n_input, input_index, trials.input_step.astype(np.int64) * sim.dt_ms * b2.ms, name="input"
    )

    w_in = np.where(weights.input_mask, weights.w_in, 0.0)
    conductance, excitatory, inhibitory = eq.SYNAPSE_MODEL_CONDUCTANCE, eq.ON_PRE_EXCITATORY, eq.ON_PRE_INHIBITORY
    blocks = [
        (source, neurons_e, w_in, b2.uS, conductance, excitatory, "syn_in_e"),
        (neurons_e, neurons_i, weights.w_ei, b2.uS, conductance, excitatory, "syn_e_i"),
        (neurons_i, neurons_e, weights.w_ie, b2.uS, conductance, inhibitory, "syn_i_e"),
        (neurons_e, readout, weights.w_out, None, eq.SYNAPSE_MODEL_READOUT, eq.ON_PRE_READOUT, "syn_e_out"),
    ]
    if weights.w_ee is not None:
        blocks.append((neurons_e, neurons_e, weights.w_ee, b2.uS, conductance, excitatory, eq.SYNAPSES_E_E))
    if weights.w_ii is not None:
        blocks.append((neurons_i, neurons_i, weights.w_ii, b2.uS, conductance, inhibitory, eq.SYNAPSES_I_I))
    synapses = []
    for pre, post, matrix, unit, model, on_pre, name in blocks:
        block = _connect_copies(b2, pre, post, matrix, unit, model, on_pre, name)
        if block is not None:
            synapses.append(block)

    monitors: dict[str, Any] = {
        "spikes_e": b2.SpikeMonitor(neurons_e, name="spikes_e"),
        "spikes_i": b2.SpikeMonitor(neurons_i, name="spikes_i"),
        "scores": b2.EventMonitor(
            readout, eq.TRIAL_START_EVENT, variables=["score_sum"], when="start", order=1, name="scores"
        ),
    }
    sizes = {"e": c.n_e, "i": c.n_i}
    for name, indices in (record_v or {}).items():
        every_copy = (np.arange(n)[:, None] * sizes[name] + np.asarray(indices)[None, :]).ravel()
        monitors[f"v_{name}"] = b2.StateMonitor(populations[name], "v", record=every_copy, when="end", name=f"v_{name}")
    if record_readout:
        monitors["readout"] = b2.StateMonitor(
            readout, "u", record=True, when="after_synapses", order=1, name="readout_trace"
        )

    network = b2.Network(neurons_e, neurons_i, readout, source, *synapses, *monitors.values())
    # One trial, and one more step to reach its end boundary, where the scores are read.
    return BrianNetwork(network=network, duration=trial_duration + b2.defaultclock.dt, monitors=monitors)


def _copy_spikes(monitor, n_neurons: int, n_copies: int, n_steps: int, dt_s: float) -> SpikeTrains:
    step = np.round(np.asarray(monitor.t_) / dt_s).astype(np.int64)
    index = np.asarray(monitor.i, dtype=np.int64)
    keep = step < n_steps  # drop the extra boundary step
    step, index = step[keep], index[keep]
    return SpikeTrains.from_arrays(
        index // n_neurons, step, index % n_neurons, n_neurons=n_neurons, n_trials=n_copies, n_steps=n_steps
    )


def collect_copies(params: NetworkParams, trials: TrialSet, monitors, backend: str) -> SimulationResult:
    """The copies' monitors as the sequential layout's result: copy k is trial k."""
    c, sim = params.connectivity, params.simulation
    dt_s = sim.dt_ms * 1e-3
    n, n_steps = trials.n_trials, sim.n_steps
    # Two samples per readout neuron: the start (t = 0) and the end boundary of the trial.
    scores = monitors["scores"]
    order = np.lexsort((np.asarray(scores.i), np.asarray(scores.t_)))
    score_sum = np.asarray(scores.score_sum)[order].reshape(2, n * c.n_classes)[1].reshape(n, c.n_classes)
    traces = {}
    for key in ("v_e", "v_i"):
        if key in monitors:
            v = np.asarray(monitors[key].v_).T[:n_steps] * 1e3  # mV, (n_steps, n * n_recorded)
            traces[key] = v.reshape(n_steps, n, -1).transpose(1, 0, 2)
    if "readout" in monitors:
        u = np.asarray(monitors["readout"].u).T[:n_steps]
        traces["readout"] = u.reshape(n_steps, n, c.n_classes).transpose(1, 0, 2)
    return SimulationResult(
        spikes_e=_copy_spikes(monitors["spikes_e"], c.n_e, n, n_steps, dt_s),
        spikes_i=_copy_spikes(monitors["spikes_i"], c.n_i, n, n_steps, dt_s),
        scores=score_sum / n_steps,
        dt_ms=sim.dt_ms,
        simulator=f"brian2:{backend}",
        traces=traces,
    )
