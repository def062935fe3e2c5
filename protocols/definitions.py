"""The protocols as plain tables, read from the registry: a compatibility view, not a second source.

Each protocol is one module of :mod:`protocols.catalog` (its record:
:class:`protocols.registry.ProtocolDefinition`); the protocol at a tier and
its runs are :mod:`protocols.protocol`; the shared condition builders are
:mod:`protocols.conditions`. This module re-exports them and derives
:data:`PROTOCOLS` (name -> conditions) and :data:`PROTOCOL_DEFAULTS`
(name -> default tier and seeds) from the records.
"""

from __future__ import annotations

from .catalog.reference_ladder import LADDER_BATCH, REFERENCE_FACTORS
from .conditions import REFERENCE_DAMPING, Condition, grid
from .protocol import Protocol, RunSpec, estimated_minutes, get_protocol
from .registry import CONDITIONS, DEFAULT_SEEDS, DEFINITIONS, ProtocolDefaults

__all__ = [
    "Condition",
    "Protocol",
    "RunSpec",
    "CONDITIONS",
    "DEFAULT_SEEDS",
    "LADDER_BATCH",
    "PROTOCOL_DEFAULTS",
    "PROTOCOLS",
    "REFERENCE_DAMPING",
    "REFERENCE_FACTORS",
    "ProtocolDefaults",
    "estimated_minutes",
    "get_protocol",
    "grid",
]

PROTOCOLS: dict[str, tuple[Condition, ...]] = {name: record.conditions for name, record in DEFINITIONS.items()}
"""Each protocol's conditions (from :data:`protocols.registry.DEFINITIONS`)."""

PROTOCOL_DEFAULTS: dict[str, ProtocolDefaults] = {name: record.defaults for name, record in DEFINITIONS.items()}
"""Default tier and seeds of each protocol (from :data:`protocols.registry.DEFINITIONS`)."""
