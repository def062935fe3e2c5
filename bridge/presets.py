"""Named recipes: network parameters and training settings together, under one name.

A preset is what ``biosim train --preset NAME`` and ``biosim protocol run
... --preset NAME`` start from; explicit flags and a protocol's condition
settings apply on top of it. Two presets exist:

- ``project``: this project's calibration and training choices, the
  defaults of :class:`biosim.params.NetworkParams` and
  :class:`bridge.train_config.TrainConfig` (docs/model.md, docs/training.md).
- ``reference``: the reference study's own recipe, as far as its public
  notes state it (docs/reference.md lists every value, its source, and the
  choices the notes leave open).

A preset holds a recipe, not a size: the number of digits, epochs and the
batch come from the tier (``--tier``). The study's own size is the
``medium`` tier (1600 / 400 digits, 100 epochs, batch 256), so
``--preset reference --tier medium`` is the study's run as its notes
describe it; the main job runs the recipe at the study tier (batch 16).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from biosim.params import InitParams, InputParams, MembraneParams, NetworkParams, SynapseParams

__all__ = ["PRESETS", "Preset", "get_preset", "REFERENCE_NETWORK"]

REFERENCE_INPUT_SCALE_US = 0.17
"""Conductance (uS) of one unit of W_in under the reference constants and 25 Hz input.

The one value of the reference preset that is calibrated here rather than
taken from the study: the untrained network, loop at canonical, meets the
calibration target in Brian2 (docs/reference.md, "Calibration")."""

REFERENCE_NETWORK = NetworkParams(
    # The study's membranes: E tau_m 20 ms, I tau_m 5 ms (its notes, article ar004).
    membrane_e=MembraneParams(c_m_nf=1.0, g_leak_us=0.05, refractory_ms=3.0),
    membrane_i=MembraneParams(c_m_nf=0.5, g_leak_us=0.1, refractory_ms=1.5),
    synapse=SynapseParams(tau_ampa_ms=2.0, tau_gaba_ms=9.0),
    input=InputParams(max_rate_hz=25.0),
    init=InitParams(input_scale_us=REFERENCE_INPUT_SCALE_US),
)
"""The reference study's network: its constants, its 25 Hz input, this project's input scale."""


@dataclass(frozen=True)
class Preset:
    """A network and a training recipe under one name.

    Attributes
    ----------
    name, description : str
    network : NetworkParams
    recipe : mapping
        :class:`~bridge.train_config.TrainConfig` fields (never ``network``,
        ``seed`` or a size: those come from the tier and the caller).
    """

    name: str
    description: str
    network: NetworkParams
    recipe: Mapping[str, Any]

    def __post_init__(self) -> None:
        # Sizes are the tier's; TrainConfig itself rejects a field it does not know.
        not_recipe = sorted(set(self.recipe) & {"network", "seed", "tier", "n_train", "n_test", "epochs", "batch_size"})
        if not_recipe:
            raise ValueError(f"preset {self.name!r}: {not_recipe} are not recipe fields (sizes come from the tier)")

    def config_fields(self) -> dict[str, Any]:
        """TrainConfig keyword arguments of this recipe (``network`` in full)."""
        return {**self.recipe, "network": self.network.to_dict()}


PRESETS: dict[str, Preset] = {
    "project": Preset(
        "project",
        "this project's calibration (100 Hz input) and training choices: exact BPTT, "
        "clip per matrix, readout trained in units of 10",
        NetworkParams(),
        {},
    ),
    "reference": Preset(
        "reference",
        "the reference study's recipe: its membrane constants, 25 Hz input, membrane gradient x 1e-3, "
        "one global clip at 1.0, readout trained in its own unit",
        REFERENCE_NETWORK,
        {
            "lr": 4e-4,
            "grad_clip": 1.0,
            # "gradient norm clipped to 1.0": one norm over every trainable matrix, as
            # torch.nn.utils.clip_grad_norm_ does, is the plain reading.
            "grad_clip_mode": "global",
            "w_out_unit": 1.0,
            "membrane_grad_scale": 1e-3,  # "v-grad dampen 1000"
            "surrogate": "fast_sigmoid",
            "surrogate_slope": 1.0,
            "surrogate_unit_mv": 1000.0,
            "reg_w_ei_distance": 0.0,
            "reg_gamma_power": 0.0,
        },
    ),
}
"""Every preset by name."""


def get_preset(name: str) -> Preset:
    """The preset ``name``; an unknown name is a ``ValueError`` that lists the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]
