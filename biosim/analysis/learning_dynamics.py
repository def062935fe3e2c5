"""Learning-dynamics metrics of a trained loop: racing, rank and laziness, abrupt transitions.

Pure numpy, on arrays: a series of weight matrices over recorded steps
(``W_EI`` is (n_e, n_i): I cell ``j``'s incoming vector is the column
``W_EI[:, j]``), per-step scalar series, or representations (trials x
units). :mod:`bridge.learning_dynamics` reads a run's trajectory records and
applies them; docs/learning_dynamics.md defines each metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "change_points",
    "column_norms",
    "effective_rank",
    "gradient_jumps",
    "gradient_jumps_before",
    "initial_alignment",
    "linear_cka",
    "mean_pairwise_cosine",
    "plateau_lengths",
    "racing_summary",
    "relative_change",
    "spearman",
    "top_share",
    "unlocking_steps",
]


# --- racing -------------------------------------------------------------------------------------------------


def column_norms(matrices: np.ndarray) -> np.ndarray:
    """Euclidean norm of each column: (..., rows, columns) -> (..., columns), in float64.

    On a ``W_EI`` series (steps, n_e, n_i): each I cell's incoming norm at each step.
    """
    return np.sqrt(np.square(np.asarray(matrices, dtype=np.float64)).sum(axis=-2))


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their mean rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of the ranks, ties averaged).

    NaN where fewer than two pairs are finite or either side is constant
    (no ranking to correlate). Pairs with a NaN on either side are left out.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"spearman: the two series differ in shape, {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    ra, rb = _ranks(a[keep]), _ranks(b[keep])
    if len(ra) < 2 or np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return math.nan
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / math.sqrt((ra @ ra) * (rb @ rb)))


def _unit_columns(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns scaled to unit norm, and which columns are non-zero (zero columns stay zero)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = column_norms(matrix)
    nonzero = norms > 0
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=nonzero), nonzero


def initial_alignment(initial: np.ndarray, final: np.ndarray) -> np.ndarray:
    """Per column: cosine between its initial vector and its final direction; NaN where either is zero.

    A column that has not moved has cosine exactly 1: computed, it would be 1 up to rounding, and
    rounding alone would rank the unmoved columns (a frozen loop) against one another.
    """
    u0, nz0 = _unit_columns(initial)
    u1, nz1 = _unit_columns(final)
    cosines = np.where(np.all(np.asarray(initial) == np.asarray(final), axis=0), 1.0, (u0 * u1).sum(axis=0))
    return np.where(nz0 & nz1, cosines, np.nan)


def top_share(norms: np.ndarray, fraction: float = 0.1) -> float:
    """Share of the total norm held by the ``ceil(fraction x n)`` cells of largest norm; NaN if all are 0.

    Equal norms give ``ceil(fraction x n) / n``; one cell holding everything gives 1.
    """
    norms = np.sort(np.asarray(norms, dtype=np.float64))[::-1]
    total = norms.sum()
    if total <= 0:
        return math.nan
    return float(norms[: max(1, math.ceil(fraction * len(norms)))].sum() / total)


def mean_pairwise_cosine(matrix: np.ndarray) -> float:
    """Mean cosine over all pairs of distinct non-zero columns (NaN with fewer than two)."""
    unit, nonzero = _unit_columns(matrix)
    unit = unit[:, nonzero]
    n = unit.shape[1]
    if n < 2:
        return math.nan
    gram = unit.T @ unit
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def unlocking_steps(norms: np.ndarray, steps: Sequence[int], band: float = 0.1) -> np.ndarray:
    """Each cell's unlocking step: the first recorded step at which its norm rises above its initial band.

    Cell ``j``'s band is ``n_j(0) +- h_j`` with ``h_j = band x max(n_j(0),
    median_k n_k(0))``: relative to its own start, and, for cells that start
    at or near zero, to the typical start (a cell at 0 among zeros unlocks at
    its first norm above 0). Unlocking = the first step ``t`` with
    ``n_j(t) > n_j(0) + h_j`` (growth; shrinking is pruning, not unlocking).

    Parameters
    ----------
    norms : ndarray (n_records, n_cells)
        Per-cell norms at the recorded steps (the first row: the initial network).
    steps : sequence of int
        The Adam step of each row.
    band : float
        Half-width of the band, relative.

    Returns
    -------
    ndarray (n_cells,) of float
        The unlocking step of each cell; NaN for a cell that never leaves its band upward.
    """
    norms = np.asarray(norms, dtype=np.float64)
    steps = np.asarray(steps, dtype=np.float64)
    if norms.ndim != 2 or len(steps) != norms.shape[0]:
        raise ValueError(f"unlocking_steps: norms (records x cells) {norms.shape} do not fit {len(steps)} steps")
    start = norms[0]
    half_width = band * np.maximum(start, np.median(start))
    above = norms > start + half_width
    first = np.argmax(above, axis=0)
    return np.where(above.any(axis=0), steps[first], np.nan)


def racing_summary(matrices: np.ndarray, steps: Sequence[int], *, top_fraction: float = 0.1) -> dict:
    """The racing lens on a series of one loop matrix (columns = the receiving cells), first and last record.

    Returns ``norms`` (per cell, per record), ``lottery`` (Spearman of initial
    vs final norm), ``race`` (Spearman of initial alignment vs final norm),
    ``alignment``, ``top_share`` (initial, final), ``mean_pairwise_cosine``
    (initial, final) and ``unlocking_steps`` (per cell, None for never) with
    the ``unlocked_fraction``.
    """
    matrices = np.asarray(matrices)
    norms = column_norms(matrices)
    alignment = initial_alignment(matrices[0], matrices[-1])
    unlocking = unlocking_steps(norms, steps)
    return {
        "norms": norms.tolist(),
        "lottery": spearman(norms[0], norms[-1]),
        "race": spearman(alignment, norms[-1]),
        "alignment": [None if math.isnan(a) else float(a) for a in alignment],
        "top_share": {"initial": top_share(norms[0], top_fraction), "final": top_share(norms[-1], top_fraction)},
        "mean_pairwise_cosine": {
            "initial": mean_pairwise_cosine(matrices[0]),
            "final": mean_pairwise_cosine(matrices[-1]),
        },
        "unlocking_steps": [None if math.isnan(s) else int(s) for s in unlocking],
        "unlocked_fraction": float(np.mean(~np.isnan(unlocking))),
    }


# --- rank and laziness --------------------------------------------------------------------------------------


def effective_rank(matrix: np.ndarray, *, centred: bool = False) -> float:
    """Participation ratio of the squared singular values: ``(sum s^2)^2 / sum s^4``; 0 for a zero matrix.

    A matrix of rank r with r equal singular values gives r; unequal ones give
    less (the spread of variance over directions, as the participation ratio
    of a covariance spectrum). A non-negative conductance matrix is dominated
    by its mean (the all-ones direction: the canonical W_EI gives about 1.02);
    ``centred=True`` subtracts the mean entry first, leaving the structure
    beyond it.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if centred:
        matrix = matrix - matrix.mean()
    s2 = np.square(np.linalg.svd(matrix, compute_uv=False))
    total = (s2 * s2).sum()
    return float(s2.sum() ** 2 / total) if total > 0 else 0.0


def relative_change(initial: np.ndarray, final: np.ndarray) -> float:
    """``||final - initial||_F / ||initial||_F`` (inf when the initial matrix is zero and the final is not)."""
    initial, final = np.asarray(initial, dtype=np.float64), np.asarray(final, dtype=np.float64)
    change, start = np.linalg.norm(final - initial), np.linalg.norm(initial)
    if start == 0:
        return 0.0 if change == 0 else math.inf
    return float(change / start)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment of two representations of the same trials (rows).

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred
    ``Xc``, ``Yc`` (Kornblith et al. 2019): 1 for a representation and itself,
    unchanged by orthogonal transforms and isotropic scaling of either, near 0
    for independent ones. NaN when either is constant across trials.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka: expected (trials x units) arrays with the same trials, got {x.shape}, {y.shape}")
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    denominator = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    if denominator == 0:
        return math.nan
    return float(np.linalg.norm(y.T @ x) ** 2 / denominator)


# --- abrupt transitions -------------------------------------------------------------------------------------


def _noise_scale(series: np.ndarray) -> float:
    """Robust standard deviation of the noise: MAD of the first differences / sqrt(2) (steps and trends aside)."""
    differences = np.diff(series)
    if len(differences) == 0:
        return 0.0
    mad = np.median(np.abs(differences - np.median(differences)))
    return float(1.4826 * mad / math.sqrt(2.0))


def _segment_cost(prefix: np.ndarray, prefix_sq: np.ndarray, start: int, stop: int) -> float:
    n = stop - start
    total = prefix[stop] - prefix[start]
    return float(prefix_sq[stop] - prefix_sq[start] - total * total / n)


def change_points(series: Sequence[float], *, penalty: float | None = None, min_size: int = 3) -> list[int]:
    """Change points of the mean of a series, by binary segmentation.

    The cost of a segment is its sum of squared deviations from its mean.
    Starting from the whole series, the split that lowers the cost most is
    kept if it lowers it by more than ``penalty``, and each side is searched
    again, until no split pays. The default penalty is ``3 sigma^2 ln(n)``,
    with ``sigma`` the robust noise scale (MAD of the first differences over
    sqrt(2)); a stationary series then has no change point (a BIC penalty,
    ``2 sigma^2 ln(n)``, raised by half against the many splits binary
    segmentation tries). A smooth trend is cut into steps: read the plateaus
    with that in mind.

    Parameters
    ----------
    series : sequence of float
        Equally spaced values (NaN not allowed).
    penalty : float, optional
        Minimum cost reduction of a split.
    min_size : int
        Shortest segment.

    Returns
    -------
    list of int
        Sorted indices ``c``: a new segment starts at ``series[c]``.
    """
    values = np.asarray(series, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("change_points: the series holds NaN or infinite values")
    n = len(values)
    if n < 2 * min_size:
        return []
    if penalty is None:
        penalty = 3.0 * _noise_scale(values) ** 2 * math.log(n)
        if penalty == 0:  # a noiseless series: any real shift pays
            penalty = 1e-12 * max(1.0, float(np.square(values - values.mean()).sum()))
    prefix = np.concatenate([[0.0], np.cumsum(values)])
    prefix_sq = np.concatenate([[0.0], np.cumsum(values * values)])
    found, pending = [], [(0, n)]
    while pending:
        start, stop = pending.pop()
        if stop - start < 2 * min_size:
            continue
        whole = _segment_cost(prefix, prefix_sq, start, stop)
        best, where = 0.0, None
        for split in range(start + min_size, stop - min_size + 1):
            gain = (
                whole - _segment_cost(prefix, prefix_sq, start, split) - _segment_cost(prefix, prefix_sq, split, stop)
            )
            if gain > best:
                best, where = gain, split
        if where is not None and best > penalty:
            found.append(where)
            pending += [(start, where), (where, stop)]
    return sorted(found)


def plateau_lengths(points: Sequence[int], n: int) -> list[int]:
    """Lengths of the segments a series of ``n`` values falls into at ``points`` (first and last included)."""
    edges = [0, *sorted(points), n]
    return [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]


def gradient_jumps_before(
    points: Sequence[int], grad_norm: Sequence[float], *, window: int = 5, penalty: float | None = None
) -> list[bool]:
    """For each change point ``c`` of another series: does a gradient-norm jump precede it?

    A gradient-norm jump is an upward change point ``g`` of the gradient-norm
    series (:func:`change_points`, same penalty rule: the mean after ``g``
    above the mean before). It precedes ``c`` when ``c - window <= g <= c``
    (the same step counts: the gradient of step ``c`` is taken before its update).
    """
    upward = gradient_jumps(grad_norm, penalty=penalty)
    return [any(c - window <= g <= c for g in upward) for c in points]


def gradient_jumps(grad_norm: Sequence[float], *, penalty: float | None = None) -> list[int]:
    """The upward change points of a gradient-norm series: indices ``g`` where its mean rises.

    :func:`change_points` of the series, kept where the mean of the segment starting at ``g``
    is above the mean of the segment before it.
    """
    values = np.asarray(grad_norm, dtype=np.float64)
    jumps = change_points(values, penalty=penalty)
    edges = [0, *jumps, len(values)]
    means = [values[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return [g for k, g in enumerate(jumps) if means[k + 1] > means[k]]
