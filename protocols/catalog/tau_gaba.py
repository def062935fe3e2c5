"""``tau_gaba`` (a follow-up): tau_GABA of 4, 6, 8, 12 and 16 ms, each with the loop frozen and trainable."""

from __future__ import annotations

from ..conditions import loop, number_text
from ..record import ProtocolDefaults, ProtocolDefinition

CONDITIONS = tuple(
    loop(
        f"tau_gaba_{number_text(tau)}_{'trainable' if trainable else 'frozen'}",
        f"tau_GABA = {tau:g} ms, loop {'trainable' if trainable else 'frozen'}",
        "canonical",
        trainable,
        **{"network.synapse.tau_gaba_ms": tau},
    )
    for tau in (4.0, 6.0, 8.0, 12.0, 16.0)
    for trainable in (False, True)
)

PROTOCOL = ProtocolDefinition(
    name="tau_gaba",
    question=(
        "Does the GABA decay time decide what training does to the loop? tau_GABA of 4, 6, 8, 12 and 16 ms, "
        "each with the loop frozen and trainable: does the frozen gamma frequency fall as tau_GABA rises, and "
        "at which tau does the trainable loop keep or lose the rhythm?"
    ),
    conditions=CONDITIONS,
    # Sweeps: one seed per grid point at the survey tier; more seeds or tiers on request (--seeds, --tier).
    defaults=ProtocolDefaults("survey", (42,)),
    order=2,
    figures="protocols.sweep_figures.tau_gaba:draw_tau_gaba",
)
