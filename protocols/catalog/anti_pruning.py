"""``anti_pruning`` (a follow-up): the canonical loop trainable, with a penalty that resists pruning."""

from __future__ import annotations

from ..conditions import grid, loop
from ..record import ProtocolDefaults, ProtocolDefinition

LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0)
"""The penalty strengths, on a log grid."""

CONDITIONS = (
    loop("anti_pruning_off", "canonical loop, trainable, no penalty", "canonical", True),
    *grid(
        "anti_pruning",
        "canonical loop, trainable, W_EI distance from canonical penalised",
        {"reg_w_ei_distance": LAMBDAS},
        train_w_ei=True,
        train_w_ie=True,
    ),
    *grid(
        "anti_pruning",
        "canonical loop, trainable, low E gamma-band power penalised",
        {"reg_gamma_power": LAMBDAS},
        train_w_ei=True,
        train_w_ie=True,
    ),
)

PROTOCOL = ProtocolDefinition(
    name="anti_pruning",
    question=(
        "How strong must a penalty be to keep the loop? The canonical loop, trainable, with a penalty on "
        "W_EI's distance from canonical or on low E gamma-band power (bridge.regularisers), lambda on a log "
        "grid from 0.1 to 1000, and no penalty as the control."
    ),
    conditions=CONDITIONS,
    defaults=ProtocolDefaults("survey", (42,)),
    order=4,
    figures="protocols.sweep_figures.anti_pruning:draw_anti_pruning",
)
