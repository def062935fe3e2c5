"""``basin_map`` (a follow-up): initial W_EI x W_IE, each at 0, 0.25, 0.5, 1 and 2 x canonical, loop trainable."""

from __future__ import annotations

from ..conditions import grid
from ..record import ProtocolDefaults, ProtocolDefinition

CONDITIONS = grid(
    "basin",
    "loop trainable from an initial multiple of canonical",
    {"init_w_ei": (0.0, 0.25, 0.5, 1.0, 2.0), "init_w_ie": (0.0, 0.25, 0.5, 1.0, 2.0)},
    train_w_ei=True,
    train_w_ie=True,
)

PROTOCOL = ProtocolDefinition(
    name="basin_map",
    question=(
        "Which end state does each start of the loop reach? The initial W_EI and W_IE, each at 0, 0.25, 0.5, "
        "1 and 2 x canonical, the loop trainable: where are the basins of a kept, a rewired and a dismantled "
        "PING loop?"
    ),
    conditions=CONDITIONS,
    defaults=ProtocolDefaults("survey", (42,)),
    order=3,
    figures="protocols.sweep_figures.basin_map:draw_basin_map",
)
