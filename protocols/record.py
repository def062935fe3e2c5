"""A protocol's record (:class:`ProtocolDefinition`): what it asks, its conditions, defaults, figures and page.

Each module of :mod:`protocols.catalog` defines one, as ``PROTOCOL``; :mod:`protocols.registry` collects them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .conditions import Condition

__all__ = ["DEFAULT_SEEDS", "ProtocolDefaults", "ProtocolDefinition"]

DEFAULT_SEEDS = (42, 43, 44)


@dataclass(frozen=True)
class ProtocolDefaults:
    """What ``biosim protocol run NAME`` uses when no tier, seeds, preset or recording interval are given."""

    tier: str
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    preset: str = "project"
    """The recipe every run starts from (:data:`bridge.presets.PRESETS`; ``--preset``)."""
    record_every: int = 0
    """Adam steps between trajectory records (``TrainConfig.record_every``, ``--record-every``; 0: none)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.record_every, int) and self.record_every >= 0):
            raise ValueError(f"ProtocolDefaults.record_every must be a non-negative int, got {self.record_every!r}")


@dataclass(frozen=True)
class ProtocolDefinition:
    """One protocol: what it asks, its conditions and defaults, its figures and its page.

    Attributes
    ----------
    name : str
        The protocol's name (``biosim protocol run NAME``); its module in the catalog has this name.
    question : str
        The question the protocol asks, one paragraph (the report's opening).
    conditions : tuple of Condition
    defaults : ProtocolDefaults
        Tier and seeds when none are given; each default finishes in an hour on 2 cores.
    order : int
        Position in ``biosim protocol list`` and in :data:`CONDITIONS` (the study's experiment first).
    figures : str, optional
        ``"module:function"`` that draws the protocol's own figures across its conditions
        (:func:`protocols.sweep_figures.draw_sweep_figures`); None: the per-condition cards only.
    page : str, optional
        Its results page, relative to the repository root (default ``docs/results/<name>.md``).
    """

    name: str
    question: str
    conditions: tuple[Condition, ...]
    defaults: ProtocolDefaults
    order: int
    figures: str | None = None
    page: str | None = None

    def __post_init__(self) -> None:
        if not self.conditions:
            raise ValueError(f"protocol {self.name!r}: no conditions")
        names = [c.name for c in self.conditions]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"protocol {self.name!r}: condition(s) {twice} given more than once")
        if self.figures is not None and ":" not in self.figures:
            raise ValueError(f"protocol {self.name!r}: figures {self.figures!r} must read 'module:function'")

    @property
    def results_page(self) -> Path:
        """The protocol's page, relative to the repository root."""
        return Path(self.page or f"docs/results/{self.name}.md")

    def figure_function(self) -> Callable[..., list[Path]] | None:
        """The function of :attr:`figures`, imported now (the figure modules import the tables, which import this)."""
        if self.figures is None:
            return None
        module, function = self.figures.split(":")
        return getattr(importlib.import_module(module), function)
