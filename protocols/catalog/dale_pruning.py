"""``dale_pruning``, the study's experiment: is the PING loop learnable?"""

from __future__ import annotations

from ..conditions import loop
from ..record import ProtocolDefaults, ProtocolDefinition

CONDITIONS = (
    loop("frozen_ping", "control: canonical loop, frozen", "canonical", False),
    loop("trainable_ping_init", "canonical loop, trainable", "canonical", True),
    loop("trainable_zero_init", "loop starts at zero, trainable", "zero", True),
    loop("trainable_small_init", "loop starts at 0.1 x canonical, trainable", 0.1, True),
)

PROTOCOL = ProtocolDefinition(
    name="dale_pruning",
    question=(
        "Is the PING loop learnable? Once the E-I loop (W_EI and W_IE) may train along with the input and "
        "the readout, is the gamma rhythm kept, rewired or taken apart? Four initialisations of the loop: "
        "the canonical one frozen (the control), and the canonical one, zero and 0.1 x canonical, trainable."
    ),
    conditions=CONDITIONS,
    defaults=ProtocolDefaults("study"),
    order=0,
)
