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

- ``loop_rank``: :func:`loop_rank_figure` (``loop_rank.<format>``), the
  relative change of W_EI and W_IE, the CKA of the E rates (initial against
  trained), the effective rank of W_EI's change, accuracy and I rate against
  the initial effective W_EI's centred participation ratio, one line per
  spectrum (truncated, flat), from each run's learning-dynamics summary
  (:func:`run_dynamics`); :func:`loop_rank_rows` (``loop_rank.json``).

:func:`draw_sweep_figures` draws the figures the protocol's record names
(``figures`` of :class:`protocols.registry.ProtocolDefinition`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .. import registry
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
from .common import QUANTITIES, VERDICT_COLORS, Quantity, setting_sweep_figure, short_verdict
from .loop_rank import draw_loop_rank, loop_rank_figure, loop_rank_rows, run_dynamics
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
    "draw_sweep_figures",
    "draw_anti_pruning",
    "draw_basin_map",
    "draw_reference_ladder",
    "draw_tau_gaba",
    "draw_loop_rank",
    "loop_rank_figure",
    "loop_rank_rows",
    "run_dynamics",
    "VERDICT_COLORS",
]


# --- dispatch -----------------------------------------------------------------------------------------------


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
    """The figures of a protocol across its conditions: those its record names (none for most protocols).

    Parameters
    ----------
    records : list of RunRecord
        The protocol's runs (any status; only completed runs give values).
    figure_dir : Path
        Where the figures (one per format) and their JSON summaries go.
    protocol_name, conditions : optional
        From ``protocol.json``: the protocol's name (its record, :mod:`protocols.registry`,
        names the function that draws its figures; an unknown or missing name gets none)
        and every one of its conditions (cells of runs not started yet are drawn as missing).
    """
    record = registry.DEFINITIONS.get(protocol_name) if protocol_name else None
    draw = record.figure_function() if record is not None else None
    if draw is None:
        return []
    names = list(conditions or dict.fromkeys(r.condition for r in records))
    return draw(
        list(records), Path(figure_dir), formats, conditions=names, title=title or protocol_name, criteria=criteria
    )
