"""Conditions, and the builders the protocols share.

A condition is a named mapping of settings: any field of
:class:`~bridge.train_config.TrainConfig` (``init_w_ei``, ``train_w_ie``,
``w_out_unit``, ...) or any network parameter, written
``network.SECTION.FIELD`` (``network.synapse.tau_gaba_ms``). :func:`loop`
sets the E-I loop's start and trainability, :func:`grid` expands a grid of
settings into named conditions, and :func:`network_difference` /
:func:`recipe_factor` write a factor of a preset's recipe as the settings of
both sides, so that a condition means the same under any preset.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from biosim.params import NetworkParams
from bridge.presets import PRESETS
from bridge.train_config import TrainConfig

__all__ = [
    "Condition",
    "REFERENCE_DAMPING",
    "grid",
    "loop",
    "network_difference",
    "number_text",
    "recipe_factor",
]

_NETWORK_PREFIX = "network."


@dataclass(frozen=True)
class Condition:
    """One named set of settings; the input and readout always train.

    Attributes
    ----------
    name : str
    description : str
    settings : mapping
        TrainConfig fields, or network parameters as ``network.SECTION.FIELD``.
    """

    name: str
    description: str
    settings: Mapping[str, Any]

    def __post_init__(self) -> None:
        known = {f.name for f in dataclasses.fields(TrainConfig)} - {"network", "seed"}
        for key in self.settings:
            if key.startswith(_NETWORK_PREFIX):
                if key.count(".") != 2:
                    raise ValueError(f"condition {self.name!r}: {key!r} must read network.SECTION.FIELD")
            elif key not in known:
                raise ValueError(
                    f"condition {self.name!r}: unknown setting {key!r}; valid: TrainConfig fields "
                    f"({', '.join(sorted(known))}) or network.SECTION.FIELD"
                )

    def apply(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``fields`` (TrainConfig keyword arguments) with this condition's settings applied."""
        fields = {**fields, "network": {k: dict(v) for k, v in fields.get("network", {}).items()}}
        for key, value in self.settings.items():
            if key.startswith(_NETWORK_PREFIX):
                _, section, name = key.split(".")
                fields["network"].setdefault(section, {})[name] = value
            else:
                fields[key] = value
        return fields


def loop(name: str, description: str, init: str | float, trainable: bool, **extra: Any) -> Condition:
    """The E-I loop (W_EI and W_IE) started at ``init`` and frozen or trainable; ``extra`` settings on top."""
    settings = {"init_w_ei": init, "init_w_ie": init, "train_w_ei": trainable, "train_w_ie": trainable, **extra}
    return Condition(name, description, settings)


def number_text(value: float) -> str:
    """A number as a condition name writes it: ``0.25`` -> ``0p25``."""
    return f"{value:g}".replace(".", "p")


def grid(prefix: str, description: str, axes: Mapping[str, tuple[Any, ...]], **fixed: Any) -> tuple[Condition, ...]:
    """Every combination of the values of ``axes`` as a named condition.

    >>> [c.name for c in grid("tau", "", {"network.synapse.tau_gaba_ms": (4.0, 8.0)})]
    ['tau_tau_gaba_ms_4', 'tau_tau_gaba_ms_8']
    """
    conditions = []
    for values in itertools.product(*axes.values()):
        settings = dict(zip(axes, values, strict=True))
        parts = [
            f"{key.rsplit('.', 1)[-1]}_{number_text(v) if isinstance(v, float) else v}" for key, v in settings.items()
        ]
        label = ", ".join(f"{key.rsplit('.', 1)[-1]} = {v}" for key, v in settings.items())
        conditions.append(Condition(f"{prefix}_{'__'.join(parts)}", f"{description} ({label})", {**fixed, **settings}))
    return tuple(conditions)


REFERENCE_DAMPING = PRESETS["reference"].recipe["membrane_grad_scale"]
"""The reference study's membrane-gradient damping ("v-grad dampen 1000"), from its preset."""

_PROJECT_NETWORK = NetworkParams()


def network_difference(network: NetworkParams) -> tuple[dict[str, Any], dict[str, Any]]:
    """``network.SECTION.FIELD`` settings where ``network`` differs from the defaults: (project's, network's)."""
    project, other = {}, {}
    for section, values in network.to_dict().items():
        defaults = getattr(_PROJECT_NETWORK, section)
        for name, value in values.items():
            if value != getattr(defaults, name):
                project[f"network.{section}.{name}"] = getattr(defaults, name)
                other[f"network.{section}.{name}"] = value
    return project, other


def recipe_factor(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One TrainConfig field: (project's default, reference value)."""
    return {name: TrainConfig.__dataclass_fields__[name].default}, {name: PRESETS["reference"].recipe[name]}
