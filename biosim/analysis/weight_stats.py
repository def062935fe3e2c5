"""Summary statistics of a stored weight matrix under Dale's law."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["WeightStats", "weight_stats"]


@dataclass(frozen=True)
class WeightStats:
    pruned_fraction: float
    """Fraction of edges whose stored value is < 0 (a structural zero)."""
    effective_mean: float
    """Mean of ``max(w, 0)`` over edges (uS for conductances)."""
    mean_abs_stored: float
    """Mean of ``|w|`` over edges: the 'norm' tracked during training."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def weight_stats(stored: np.ndarray, mask: np.ndarray | None = None, *, effective: bool = False) -> WeightStats:
    """Statistics over the edges of one matrix.

    Parameters
    ----------
    stored : ndarray
        Stored (unconstrained) values, or effective values with ``effective=True``.
    mask : ndarray of bool, optional
        Edges that exist (e.g. the sparse input mask); default all.
    effective : bool
        ``stored`` holds clamped values: an edge counts as pruned when it is 0
        (the stored sign is lost, so ``mean_abs_stored`` equals the effective mean).

    Examples
    --------
    >>> weight_stats(np.array([-1.0, 1.0, 3.0, 0.0]))
    WeightStats(pruned_fraction=0.25, effective_mean=1.0, mean_abs_stored=1.25)
    """
    values = np.asarray(stored, dtype=float)
    if mask is not None:
        values = values[np.asarray(mask, dtype=bool)]
    if values.size == 0:
        return WeightStats(float("nan"), float("nan"), float("nan"))
    return WeightStats(
        pruned_fraction=float(np.mean(values <= 0 if effective else values < 0)),
        effective_mean=float(np.mean(np.maximum(values, 0.0))),
        mean_abs_stored=float(np.mean(np.abs(values))),
    )
