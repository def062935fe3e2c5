"""Figures of the follow-up sweeps: one figure per protocol across its grid.

The per-condition cards and the comparison figure (:mod:`protocols.figures`)
show one condition at a time; these show how the end state depends on the
swept setting. Every number is the one the table reads (the Brian2 validation
on the test digits with the trained weights, and the final weight metrics:
:func:`protocols.table._value`), averaged over a condition's completed seeds;
verdicts are :func:`protocols.verdicts.run_verdict` and
:func:`~protocols.verdicts.condition_verdict`.

- ``basin_map``: :func:`basin_map_figure` (``basin_map.<format>``), five
  heatmaps (two rows of three panels, the sixth a key) over the (initial W_EI,
  initial W_IE) grid of the final I rate, gamma peak frequency and relative
  power, W_EI pruned fraction and test accuracy, with the condition verdict in
  each cell; cells without a completed run are hatched, never drawn as 0; and
  :func:`basin_arrows_figure` (``basin_map_arrows.<format>``): an arrow from
  each start to its end in the (effective W_EI mean, effective W_IE mean)
  plane, coloured by verdict. ``basin_map.json``: the cells.
- ``tau_gaba``: :func:`tau_gaba_figure` (``tau_gaba.<format>``), gamma peak
  frequency, I rate, W_EI pruned fraction and accuracy against tau_GABA,
  frozen and trainable loop side by side; :func:`frozen_gamma_fit`
  (``tau_gaba_fit.json``): does the frozen gamma frequency fall as tau_GABA
  rises?
- ``anti_pruning``: :func:`anti_pruning_figure` (``anti_pruning.<format>``),
  I rate, W_EI pruned fraction, gamma relative power and accuracy against the
  penalty strength lambda (log axis, lambda = 0 at the left edge), one line
  per penalty; :func:`smallest_keeping_lambda` (``anti_pruning_lambda.json``).
- ``reference_ladder``: :func:`reference_ladder_figure` (``reference_ladder.<format>``),
  accuracy, E and I rate, W_EI pruned fraction and effective mean and the
  largest epoch-mean W_EI gradient norm on each rung from the project's recipe
  to the reference study's, then the reverse conditions; :func:`ladder_rows`
  (``reference_ladder.json``) and :func:`ladder_table_markdown`
  (``reference_ladder.md``): each rung's values, verdicts and I-rate margins;
  :func:`ladder_trajectories_figure` (``reference_ladder_trajectories.<format>``):
  accuracy, rates and W_EI pruned against Adam steps, one line per seed.

:func:`draw_sweep_figures` picks the figures from the protocol's name, or,
for an unnamed protocol, from which settings its conditions vary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .. import definitions
from ..results import RunRecord
from ..verdicts import DEFAULT_CRITERIA, VerdictCriteria
from .anti_pruning import (
    PENALTY_KEYS,
    anti_pruning_figure,
    draw_anti_pruning,
    penalty_lambda,
    smallest_keeping_lambda,
    smallest_keeping_lambdas,
)
from .basin_map import BasinGrid, basin_arrows_figure, basin_cells, basin_grid, basin_map_figure, draw_basin_map
from .common import QUANTITIES, VERDICT_COLORS, Quantity, _settings, setting_sweep_figure, short_verdict
from .reference_ladder import (
    draw_reference_ladder,
    ladder_rows,
    ladder_table_markdown,
    ladder_trajectories_figure,
    reference_ladder_figure,
    rung_label,
)
from .tau_gaba import TAU_GABA_KEY, draw_tau_gaba, frozen_gamma_fit, frozen_gamma_points, tau_gaba_figure

__all__ = [
    "Quantity",
    "QUANTITIES",
    "PENALTY_KEYS",
    "TAU_GABA_KEY",
    "BasinGrid",
    "basin_grid",
    "basin_cells",
    "basin_map_figure",
    "basin_arrows_figure",
    "tau_gaba_figure",
    "frozen_gamma_points",
    "frozen_gamma_fit",
    "anti_pruning_figure",
    "penalty_lambda",
    "smallest_keeping_lambda",
    "smallest_keeping_lambdas",
    "ladder_rows",
    "ladder_table_markdown",
    "reference_ladder_figure",
    "ladder_trajectories_figure",
    "rung_label",
    "setting_sweep_figure",
    "short_verdict",
    "sweep_kind",
    "draw_sweep_figures",
    "SWEEP_FIGURES",
    "VERDICT_COLORS",
]


# --- dispatch -----------------------------------------------------------------------------------------------


SWEEP_FIGURES: dict[str, Callable[..., list[Path]]] = {
    "basin_map": draw_basin_map,
    "tau_gaba": draw_tau_gaba,
    "anti_pruning": draw_anti_pruning,
    "reference_ladder": draw_reference_ladder,
}
"""Protocol name -> what draws its sweep figures."""


def sweep_kind(conditions: Iterable[str], protocol_name: str | None = None) -> str | None:
    """Which sweep figures a protocol gets: a key of :data:`SWEEP_FIGURES`, or None.

    A protocol named in :data:`SWEEP_FIGURES` gets its own; another known
    protocol (``dale_pruning``) none. An unnamed or unknown protocol is
    recognised from its conditions' settings: a penalty of
    :data:`PENALTY_KEYS` -> ``anti_pruning``; several tau_GABA values ->
    ``tau_gaba``; ``init_w_ei`` and ``init_w_ie`` varied independently (a
    grid, not a diagonal) -> ``basin_map``.
    """
    if protocol_name in SWEEP_FIGURES:
        return protocol_name
    if protocol_name in definitions.PROTOCOLS:
        return None
    settings = [_settings(name) for name in conditions]
    if any(key in s for s in settings for key in PENALTY_KEYS):
        return "anti_pruning"
    if len({s[TAU_GABA_KEY] for s in settings if TAU_GABA_KEY in s}) > 1:
        return "tau_gaba"
    pairs = {(str(s["init_w_ei"]), str(s["init_w_ie"])) for s in settings if "init_w_ei" in s and "init_w_ie" in s}
    n_ei, n_ie = len({p[0] for p in pairs}), len({p[1] for p in pairs})
    if n_ei > 1 and n_ie > 1 and len(pairs) > max(n_ei, n_ie):
        return "basin_map"
    return None


def draw_sweep_figures(
    records: Sequence[RunRecord],
    figure_dir: Path,
    formats: tuple[str, ...] = ("png",),
    *,
    protocol_name: str | None = None,
    conditions: Sequence[str] | None = None,
    title: str | None = None,
    criteria: VerdictCriteria = DEFAULT_CRITERIA,
) -> list[Path]:
    """The sweep figures of a protocol (nothing for a protocol that is not a sweep).

    Parameters
    ----------
    records : list of RunRecord
        The protocol's runs (any status; only completed runs give values).
    figure_dir : Path
        Where the figures (one per format) and their JSON summaries go.
    protocol_name, conditions : optional
        From ``protocol.json``: the protocol's name and every one of its
        conditions (cells of runs not started yet are drawn as missing).
    """
    names = list(conditions or dict.fromkeys(r.condition for r in records))
    kind = sweep_kind(names, protocol_name)
    if kind is None:
        return []
    figure_dir = Path(figure_dir)
    return SWEEP_FIGURES[kind](
        list(records), figure_dir, formats, conditions=names, title=title or protocol_name or kind, criteria=criteria
    )
