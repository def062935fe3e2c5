"""``membrane_damping``: the four ``dale_pruning`` conditions, exact and with the reference's gradient damping."""

from __future__ import annotations

from ..conditions import REFERENCE_DAMPING, Condition
from ..record import ProtocolDefaults, ProtocolDefinition
from .dale_pruning import CONDITIONS as DALE_PRUNING

CONDITIONS = DALE_PRUNING + tuple(
    Condition(
        f"damped_{c.name}",
        f"{c.description}; membrane gradient x {REFERENCE_DAMPING:g} per step",
        {**c.settings, "membrane_grad_scale": REFERENCE_DAMPING},
    )
    for c in DALE_PRUNING
)

PROTOCOL = ProtocolDefinition(
    name="membrane_damping",
    question=(
        "Does the reference study's membrane-gradient damping change the answer? The four dale_pruning "
        f"conditions, trained with exact BPTT and with the membrane gradient scaled by {REFERENCE_DAMPING:g} "
        "per step."
    ),
    conditions=CONDITIONS,
    defaults=ProtocolDefaults("survey", (42,)),
    order=5,
)
