"""``learning_dynamics``: the four ``dale_pruning`` runs with trajectory records, and what the records show."""

from __future__ import annotations

from ..record import ProtocolDefaults, ProtocolDefinition
from .dale_pruning import CONDITIONS as DALE_PRUNING

RECORD_EVERY = 3
"""Adam steps between weight records: 41 records over the study tier's 120 steps. A record of the full
network is at most 1.8 MB (the canonical loop; measured 1787272 bytes, 85 ms to write), so a run keeps
at most about 73 MB (docs/learning_dynamics.md); every 2 steps would pass 100 MB."""

PROTOCOL = ProtocolDefinition(
    name="learning_dynamics",
    question=(
        "How does training take the loop where it ends? The four dale_pruning runs (loop frozen; trainable from "
        "canonical, zero and 0.1 x canonical) with the reference recipe, their loop matrices recorded every "
        f"{RECORD_EVERY} Adam steps: do a few interneurons win a race for the input or keep their initial lead "
        "(race or lottery), does the loop move far from its start and change the E representation (rich or "
        "lazy), and does it change in jumps or gradually (abrupt or gradual)?"
    ),
    # The same conditions as dale_pruning (one condition each, shared by name): with the same tier,
    # seeds and preset, each run is the main job's run, with its records.
    conditions=DALE_PRUNING,
    defaults=ProtocolDefaults("study", preset="reference", record_every=RECORD_EVERY),
    order=10,
    figures="protocols.sweep_figures.learning_dynamics:draw_learning_dynamics",
)
