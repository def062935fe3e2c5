"""``frozen_baseline``: the frozen control of ``dale_pruning`` alone."""

from __future__ import annotations

from ..record import ProtocolDefaults, ProtocolDefinition
from .dale_pruning import CONDITIONS as DALE_PRUNING

PROTOCOL = ProtocolDefinition(
    name="frozen_baseline",
    question=(
        "What does the network do with its E-I loop frozen at the canonical weights, only the input and the "
        "readout trained? The control of dale_pruning, on its own."
    ),
    conditions=DALE_PRUNING[:1],
    defaults=ProtocolDefaults("study"),
    order=1,
    page="docs/results/dale_pruning.md",  # the control's numbers are reported with the experiment's
)
