"""Numerics against closed-form solutions, in Brian2 and in the PyTorch mirror.

Exponential Euler is exact for a membrane with constant conductances and for
an exponentially decaying conductance, so both must match the analytic
solution to rounding error.
"""

import numpy as np
import pytest
import torch

from biosim import equations as eq
from biosim.params import NetworkParams, to_brian2_namespace
from bridge.dynamics import make_constants, reset, update_membrane

# A conductance that stays effectively constant over the test window.
FROZEN_TAU_MS = 1e12


def _analytic_v(t_ms, v0, g_leak, e_leak, ge, e_exc, c_m):
    g_total = g_leak + ge
    v_inf = (g_leak * e_leak + ge * e_exc) / g_total
    return v_inf + (v0 - v_inf) * np.exp(-t_ms * g_total / c_m)


def _brian2_membrane(params: NetworkParams, v0_mv: float, ge0_us: float, gi0_us: float, steps: int):
    import brian2 as b2

    b2.prefs.codegen.target = "numpy"
    b2.defaultclock.dt = params.simulation.dt_ms * b2.ms
    group = b2.NeuronGroup(
        1,
        eq.NEURON_EQUATIONS,
        threshold=eq.THRESHOLD,
        reset=eq.RESET,
        refractory=eq.REFRACTORY,
        method=eq.METHOD,
        namespace=to_brian2_namespace(params, "e"),
    )
    group.v = v0_mv * b2.mV
    group.ge = ge0_us * b2.uS
    group.gi = gi0_us * b2.uS
    monitor = b2.StateMonitor(group, ["v", "ge", "gi"], record=0, when="after_groups")
    b2.Network(group, monitor).run(steps * params.simulation.dt_ms * b2.ms)
    return monitor.v_[0] * 1e3, monitor.ge_[0] * 1e6, monitor.gi_[0] * 1e6


@pytest.mark.parametrize("ge0_us", [0.0, 0.002])  # v_inf = -65 and -54 mV, below threshold
def test_membrane_relaxes_to_reversal_brian2(ge0_us):
    """Below threshold, v relaxes exponentially to the conductance-weighted reversal."""
    params = NetworkParams().replace(synapse__tau_ampa_ms=FROZEN_TAU_MS)
    m, s, dt = params.membrane_e, params.synapse, params.simulation.dt_ms
    v, ge, _ = _brian2_membrane(params, v0_mv=-75.0, ge0_us=ge0_us, gi0_us=0.0, steps=500)
    t_ms = dt * np.arange(1, len(v) + 1)  # recorded after the state update
    expected = _analytic_v(t_ms, -75.0, m.g_leak_us, m.e_leak_mv, ge0_us, s.e_exc_mv, m.c_m_nf)
    assert np.max(np.abs(v - expected)) < 1e-9
    assert np.all(v < m.v_threshold_mv)  # really non-spiking
    assert abs(v[-1] - expected[-1]) < 1e-9 and abs(v[-1] - v[0]) > 1.0  # and really moving


def test_conductances_decay_exponentially_brian2():
    params = NetworkParams()
    s, dt = params.synapse, params.simulation.dt_ms
    _, ge, gi = _brian2_membrane(params, v0_mv=-70.0, ge0_us=0.002, gi0_us=0.05, steps=300)
    t_ms = dt * np.arange(1, len(ge) + 1)
    np.testing.assert_allclose(ge, 0.002 * np.exp(-t_ms / s.tau_ampa_ms), rtol=1e-12)
    np.testing.assert_allclose(gi, 0.05 * np.exp(-t_ms / s.tau_gaba_ms), rtol=1e-12)


def test_membrane_relaxes_to_reversal_mirror():
    params = NetworkParams()
    constants = make_constants(params)
    m, s, dt = params.membrane_e, params.synapse, params.simulation.dt_ms
    ge = torch.tensor([0.003], dtype=torch.float64)
    v = torch.tensor([-75.0], dtype=torch.float64)
    ready = torch.zeros(1, dtype=torch.int32)
    trace = []
    for t in range(500):
        v, _ = update_membrane(v, ge, torch.zeros_like(ge), ready, t, constants.e, dt)
        trace.append(v.item())
    t_ms = dt * np.arange(1, 501)
    expected = _analytic_v(t_ms, -75.0, m.g_leak_us, m.e_leak_mv, 0.003, s.e_exc_mv, m.c_m_nf)
    assert np.max(np.abs(np.array(trace) - expected)) < 1e-9


def test_refractory_period_is_counted_in_steps():
    """A neuron that spikes at step n integrates again exactly at step n + refractory_steps."""
    params = NetworkParams()
    constants = make_constants(params)
    k = constants.e
    spiked_at = 7
    v = torch.tensor([k.v_reset], dtype=torch.float64)
    v, ready = reset(v, torch.zeros(1, dtype=torch.int32), torch.tensor([True]), spiked_at, k)
    ge = torch.tensor([1.0], dtype=torch.float64)  # strong drive: v moves as soon as allowed
    t = spiked_at + 1
    while True:
        v_new, integrating = update_membrane(v, ge, torch.zeros_like(ge), ready, t, k, constants.dt)
        if integrating.item():
            break
        assert v_new.item() == k.v_reset
        t += 1
    assert t == spiked_at + params.refractory_steps("e")


def test_brian2_refractory_condition_holds_on_the_steps_of_brian2s_own_rule():
    """eq.REFRACTORY (a comparison of times) gives the spikes of Brian2's rule for ``refractory=<a time>``."""
    import brian2 as b2

    params = NetworkParams()
    b2.prefs.codegen.target = "numpy"
    b2.defaultclock.dt = params.simulation.dt_ms * b2.ms
    namespace = to_brian2_namespace(params, "e")
    trains = []
    for refractory in (eq.REFRACTORY, namespace["refractory"]):
        group = b2.NeuronGroup(
            40,
            eq.NEURON_EQUATIONS,
            threshold=eq.THRESHOLD,
            reset=eq.RESET,
            refractory=refractory,
            method=eq.METHOD,
            namespace=namespace,
        )
        group.v = namespace["e_leak"]
        # A steady drive from none to one that fires as soon as the neuron integrates again.
        group.run_regularly("ge = i * 0.5 * uS", when="start")
        monitor = b2.SpikeMonitor(group)
        b2.Network(group, monitor).run(100 * b2.ms)
        trains.append((np.asarray(monitor.i[:]), np.round(np.asarray(monitor.t_[:]) / float(b2.defaultclock.dt_))))
    (neurons, steps), (neurons_brian2, steps_brian2) = trains
    np.testing.assert_array_equal(neurons, neurons_brian2)
    np.testing.assert_array_equal(steps, steps_brian2)
    fastest = np.diff(steps[neurons == neurons.max()])
    assert len(fastest) > 10 and fastest.min() == params.refractory_steps("e")  # not one step sooner or later
