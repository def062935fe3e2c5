"""The PING network as Brian2 equation strings.

Identifiers are resolved from per-group namespaces built by
:func:`biosim.params.to_brian2_namespace`; no number is formatted into a string.

Integration
-----------
All groups are integrated with ``exponential_euler`` (:data:`METHOD`), named
explicitly rather than left to Brian2's fallback chain, because the PyTorch
mirror (:mod:`bridge.dynamics`) reproduces it step for step:

- the conductances decay exactly, ``g <- g * exp(-dt / tau)``;
- the membrane is linear in ``v`` with conductances frozen at the start of the
  step, so with ``A = -(g_leak + ge + gi) / c_m`` and
  ``B = (g_leak e_leak + ge e_exc + gi e_inh) / c_m`` the update is
  ``v <- -B/A + (v + B/A) * exp(A dt)``, which is exact for piecewise constant
  conductances and stable for any conductance.
- during the refractory period ``v`` is held (``unless refractory``).

Per time step Brian2's schedule runs: state update (all groups), threshold,
synaptic propagation (zero delay: a spike at step n changes the target
conductance at step n, which the membrane sees from step n + 1), reset.

Within the synaptic slot Brian2 runs the pathways in the order of their
names (all have the same ``when`` and ``order``). Only ``ge`` of E can
receive from two of them, the input (``syn_in_e``) and the optional E -> E
block (:data:`SYNAPSES_E_E`), whose name puts it after the input; the mirror
adds the two in that order (``bridge.dynamics.advance``). The I -> I block
(:data:`SYNAPSES_I_I`) is the only source of ``gi`` of I.
"""

METHOD = "exponential_euler"

NEURON_EQUATIONS = """
dv/dt = (g_leak * (e_leak - v) + ge * (e_exc - v) + gi * (e_inh - v)) / c_m : volt (unless refractory)
dge/dt = -ge / tau_ampa : siemens
dgi/dt = -gi / tau_gaba : siemens
"""
THRESHOLD = "v > v_threshold"
RESET = "v = v_reset"
# A neuron integrates (and can spike) again ``refractory / dt`` steps after its spike (params checks
# that this is a whole number). ``t - lastspike`` is a whole number k of steps up to rounding, so
# this is Brian2's rule for ``refractory=<a time>`` (integrate again once ``timestep(t - lastspike, dt)
# >= timestep(refractory, dt)``, i.e. k >= refractory / dt) with half a step of margin against rounding.
# It is written as a comparison of times because Brian2's form converts a double to int64 per neuron and
# step, which AVX2 has no vector instruction for: GCC then left the whole state update scalar.
REFRACTORY = "t - lastspike < refractory - dt / 2"

# Trial boundary: a custom event on the first step of every trial, decided on
# the integer step count of the simulation clock. (A run_regularly on a clock
# of its own would need Brian2 to match two clocks' float times; cpp_standalone
# does so with an absolute tolerance of 1e-14 s, smaller than one ulp of t
# beyond 64 s, and there the reset ran one step late.)
TRIAL_START_EVENT = "trial_start"
TRIAL_START = "t_in_timesteps % steps_per_trial == 0"
# At the event: forget the previous trial's spikes, then restore the initial
# state of trial k (a row of a 2-D TimedArray indexed by trial).
# Refractoriness is cleared first: Brian2 only writes a variable marked
# "unless refractory" where not_refractory is true, so otherwise a neuron that
# spiked in the last 2 ms of the previous trial would keep its old v.
NEURON_TRIAL_RESET = """
lastspike = -1e4 * second
not_refractory = True
v = v_init(t, i)
ge = 0 * siemens
gi = 0 * siemens
"""

READOUT_EQUATIONS = """
du/dt = -u / tau_readout : 1
score_sum : 1
"""
# Accumulated after synaptic input, i.e. u sampled at the end of each step.
READOUT_ACCUMULATE = "score_sum += u"
READOUT_TRIAL_RESET = """
u = 0
score_sum = 0
"""

SYNAPSE_MODEL_CONDUCTANCE = "w : siemens"
SYNAPSE_MODEL_READOUT = "w : 1"
ON_PRE_EXCITATORY = "ge_post += w"
ON_PRE_INHIBITORY = "gi_post += w"
ON_PRE_READOUT = "u_post += w"

# Names of the optional recurrent blocks' Synapses ("syn_in_e" < SYNAPSES_E_E: the input comes first).
SYNAPSES_E_E = "syn_recurrent_e_e"
SYNAPSES_I_I = "syn_recurrent_i_i"
