"""Every protocol, registered once: one :class:`ProtocolDefinition` per module of :mod:`protocols.catalog`.

A protocol's module (``protocols/catalog/<name>.py``) defines ``PROTOCOL``,
its record: the question it asks, its conditions, its default tier and
seeds, the function that draws its own figures (if any) and its results page
under ``docs/results/``. The modules are found by walking the package
(:func:`discover`), so adding a protocol is adding its module (and its test);
:data:`DEFINITIONS` and :data:`CONDITIONS` are built from them and nowhere
else.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from .conditions import Condition
from .record import DEFAULT_SEEDS, ProtocolDefaults, ProtocolDefinition

__all__ = [
    "CATALOG",
    "CONDITIONS",
    "DEFAULT_SEEDS",
    "DEFINITIONS",
    "ProtocolDefaults",
    "ProtocolDefinition",
    "definition",
    "discover",
]

CATALOG = "protocols.catalog"
"""The package whose modules are the protocols."""


def discover(package: str = CATALOG) -> dict[str, ProtocolDefinition]:
    """Every ``PROTOCOL`` of the modules of ``package``, by name, in their :attr:`~ProtocolDefinition.order`.

    Raises
    ------
    ValueError
        A module without a ``PROTOCOL``, one named otherwise than its protocol, two protocols
        sharing a name or an order, or two different conditions sharing a name.
    """
    found: list[ProtocolDefinition] = []
    root = importlib.import_module(package)
    for info in pkgutil.iter_modules(root.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        record: Any = getattr(module, "PROTOCOL", None)
        if not isinstance(record, ProtocolDefinition):
            raise ValueError(f"{module.__name__}: a catalog module defines PROTOCOL, a ProtocolDefinition")
        if record.name != info.name:
            raise ValueError(f"{module.__name__}: defines protocol {record.name!r}; name the module after it")
        found.append(record)
    for key in ("name", "order"):
        values = [getattr(r, key) for r in found]
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ValueError(f"{package}: protocols share a {key}: {twice}")
    found.sort(key=lambda r: r.order)
    conditions: dict[str, Condition] = {}
    for record in found:
        for condition in record.conditions:
            if conditions.get(condition.name, condition) != condition:
                raise ValueError(f"{package}: two different conditions are named {condition.name!r}")
            conditions.setdefault(condition.name, condition)
    return {r.name: r for r in found}


DEFINITIONS: dict[str, ProtocolDefinition] = discover()
"""Every protocol's record, by name, in listing order."""

CONDITIONS: dict[str, Condition] = {c.name: c for record in DEFINITIONS.values() for c in record.conditions}
"""Every condition of every protocol, by name (a name shared by protocols is one condition)."""


def definition(name: str) -> ProtocolDefinition:
    """The record of protocol ``name``; an unknown name is a ValueError listing the valid ones."""
    if name not in DEFINITIONS:
        raise ValueError(f"unknown protocol {name!r}; valid protocols: {', '.join(DEFINITIONS)}")
    return DEFINITIONS[name]
