"""``reference_ladder``: from this project's training recipe to the reference study's, one factor at a time.

Each factor by which the reference study's recipe (:data:`bridge.presets.PRESETS`, ``reference``)
differs from this project's is written with both values (:data:`REFERENCE_FACTORS`), so that a
rung means the same under any preset.
"""

from __future__ import annotations

from typing import Any

from biosim.tiers import TIERS
from bridge.presets import PRESETS

from ..conditions import Condition, loop, network_difference, recipe_factor
from ..record import ProtocolDefaults, ProtocolDefinition

LADDER_BATCH = {key: getattr(TIERS["study256"].protocol, key) for key in ("batch_size", "n_train", "epochs")}
"""The reference's batch at the study tier's 120 Adam steps (the ``study256`` tier): 6 batches of 256, 20 epochs."""

REFERENCE_FACTORS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "constants": (
        "the study's membrane constants, 25 Hz input, calibrated input scale",
        *network_difference(PRESETS["reference"].network),
    ),
    "damping": ("membrane gradient x 1e-3 per step", *recipe_factor("membrane_grad_scale")),
    "global_clip": ("one global gradient-norm clip", *recipe_factor("grad_clip_mode")),
    "readout_unit": ("readout trained in its own unit", *recipe_factor("w_out_unit")),
    "batch": (
        "batch 256 (1536 digits x 20 epochs: the same 120 Adam steps)",
        {},  # the tier's batch
        LADDER_BATCH,
    ),
}
"""Factor -> (what the reference does, the project's settings, the reference's), in the ladder's order."""


def _ladder_condition(name: str, description: str, reference: tuple[str, ...]) -> Condition:
    """The canonical loop, trainable, with the factors in ``reference`` at the reference's values."""
    settings: dict[str, Any] = {}
    for factor, (_, project, other) in REFERENCE_FACTORS.items():
        settings.update(other if factor in reference else project)
    return loop(name, description, "canonical", True, **settings)


_RECIPE_FACTORS = tuple(f for f in REFERENCE_FACTORS if f != "batch")
# The reference with its last recipe factor set back is the rung before it (rung 3): no condition of its own.
_REVERSED_FACTORS = _RECIPE_FACTORS[:-1]
CONDITIONS = (
    _ladder_condition("ladder_0_project", "canonical loop, trainable; the project's recipe", ()),
    *(
        _ladder_condition(
            f"ladder_{k}_{factor}",
            f"canonical loop, trainable; rung {k - 1} + {REFERENCE_FACTORS[factor][0]}",
            tuple(REFERENCE_FACTORS)[:k],
        )
        for k, factor in enumerate(REFERENCE_FACTORS, start=1)
    ),
    *(
        _ladder_condition(
            f"reverse_{factor}",
            f"canonical loop, trainable; the reference recipe with the project's {factor.replace('_', ' ')}",
            tuple(f for f in _RECIPE_FACTORS if f != factor),
        )
        for factor in _REVERSED_FACTORS
    ),
)
"""The matched-steps ladder on trainable_ping_init: project recipe -> reference, one factor per rung
(rung 4 is the reference recipe at batch 16, rung 5 at batch 256), and the reference recipe with
each factor set back (``reverse_*``; with the readout unit set back it is rung 3). Every run takes
120 Adam steps at the study tier."""

PROTOCOL = ProtocolDefinition(
    name="reference_ladder",
    question=(
        "Which factor of the training recipe decides between a rewired loop and a dismantled one? The "
        "canonical loop, trainable, from this project's recipe to the reference study's one factor at a time "
        "(membrane constants, gradient damping, global clip, readout unit, batch 256), every rung at the same "
        "120 Adam steps, and the reference recipe with each factor set back."
    ),
    conditions=CONDITIONS,
    # One seed per rung by default (the batch rung alone is 16 study-tier runs of training);
    # the rungs that decide take --seeds 42 43 44 (docs/reference.md).
    defaults=ProtocolDefaults("study", (42,)),
    order=7,
    figures="protocols.sweep_figures.reference_ladder:draw_reference_ladder",
)
