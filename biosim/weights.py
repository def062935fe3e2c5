"""Synaptic weight matrices: initialisation, Dale's law and validation.

Conductance matrices are in uS, laid out ``(n_pre, n_post)``:

========  =====================  =========================================
name      shape                  meaning
========  =====================  =========================================
``w_in``  (n_input, n_e)         input -> E, zero outside ``input_mask``
``w_ei``  (n_e, n_i)             E -> I (drives the interneurons)
``w_ie``  (n_i, n_e)             I -> E (the inhibitory shunt)
``w_out`` (n_e, n_classes)       E -> readout, dimensionless, any sign
``w_ee``  (n_e, n_e)             E -> E, optional (``connectivity.p_ee > 0``)
``w_ii``  (n_i, n_i)             I -> I, optional (``connectivity.p_ii > 0``)
========  =====================  =========================================

The recurrent blocks ``w_ee`` and ``w_ii`` exist only when their connection
probability is above 0 (:class:`~biosim.params.ConnectivityParams`); a
network without them has ``None`` there. :func:`expected_shapes` lists the
matrices a network has, and every consumer (Brian2 builder, weight files,
mirror) iterates over it.

Training stores unconstrained values; the network uses ``max(w, 0)``
(Dale's law). A stored entry below zero is a structural zero ("pruned").
Brian2 only ever receives effective (clamped) weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .params import NetworkParams

__all__ = [
    "CONDUCTANCE_MATRICES",
    "RECURRENT_BLOCKS",
    "DaleLawError",
    "WeightShapeError",
    "NetworkWeights",
    "expected_shapes",
    "RANK_PROFILES",
    "flat_rank",
    "init_weights",
    "input_mask",
    "truncate_rank",
]

CONDUCTANCE_MATRICES = ("w_in", "w_ei", "w_ie")
"""The conductance matrices every network has."""
RECURRENT_BLOCKS = ("w_ee", "w_ii")
"""The optional recurrent conductance blocks (E -> E, I -> I), present when ``p_ee`` / ``p_ii`` > 0."""

# Random streams are SeedSequence([seed, WEIGHT_STREAM, k]) with k >= 1: the
# tag keeps them apart from the input streams of biosim.inputs (same seed).
# The recurrent blocks have streams of their own, so turning them on leaves
# every other matrix's draw unchanged.
WEIGHT_STREAM = 1
_MASK, _W_IN, _W_EI, _W_IE, _W_OUT, _P_EI, _P_IE, _W_EE, _P_EE, _W_II, _P_II = range(1, 12)


def _rng(seed: int, k: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, WEIGHT_STREAM, k]))


MATRICES = (*CONDUCTANCE_MATRICES, "w_out")
"""The matrices every network has; :func:`expected_shapes` adds the recurrent blocks it has."""

# An initialisation is "canonical", "zero", or a multiple of canonical.
InitSpec = str | float

RANK_PROFILES = ("truncated", "flat")
"""How a rank-r loop keeps its spectrum: the draw's top r singular values (:func:`truncate_rank`), or r equal
ones (:func:`flat_rank`); both at the draw's Frobenius norm."""


class WeightShapeError(ValueError):
    """A weight matrix does not have the shape the network needs."""


class DaleLawError(ValueError):
    """A conductance weight is negative where only effective weights are allowed."""


_BLOCK_PROBABILITY = {"w_ee": "p_ee", "w_ii": "p_ii"}


def expected_shapes(params: NetworkParams) -> dict[str, tuple[int, int]]:
    """Shape ``(pre, post)`` of every matrix the network has: :data:`MATRICES`, then its recurrent blocks."""
    c = params.connectivity
    shapes = {
        "w_in": (c.n_input, c.n_e),
        "w_ei": (c.n_e, c.n_i),
        "w_ie": (c.n_i, c.n_e),
        "w_out": (c.n_e, c.n_classes),
    }
    if c.has_ee:
        shapes["w_ee"] = (c.n_e, c.n_e)
    if c.has_ii:
        shapes["w_ii"] = (c.n_i, c.n_i)
    return shapes


def is_conductance(name: str) -> bool:
    """Whether matrix ``name`` is a conductance (uS, Dale's law), i.e. anything but the readout."""
    return name != "w_out"


@dataclass(frozen=True)
class NetworkWeights:
    """Stored weights of one network (see the module docstring for layout)."""

    w_in: np.ndarray
    w_ei: np.ndarray
    w_ie: np.ndarray
    w_out: np.ndarray
    input_mask: np.ndarray
    """Boolean (n_input, n_e): which input -> E edges exist."""
    w_ee: np.ndarray | None = None
    """E -> E (n_e, n_e), or None: the network has no E -> E block."""
    w_ii: np.ndarray | None = None
    """I -> I (n_i, n_i), or None: the network has no I -> I block."""

    def matrices(self) -> dict[str, np.ndarray]:
        """The matrices present, by name: :data:`MATRICES`, then the recurrent blocks that are not None."""
        present = {name: getattr(self, name) for name in MATRICES}
        present |= {name: getattr(self, name) for name in RECURRENT_BLOCKS if getattr(self, name) is not None}
        return present

    def check_shapes(self, params: NetworkParams) -> None:
        """Raise :class:`WeightShapeError` naming the first matrix of the wrong shape, missing or extra."""
        shapes = expected_shapes(params)
        shapes["input_mask"] = shapes["w_in"]
        for name in RECURRENT_BLOCKS:
            if name not in shapes and getattr(self, name) is not None:
                raise WeightShapeError(
                    f"{name}: the network has no such block (connectivity.{_BLOCK_PROBABILITY[name]} = 0), "
                    f"found a matrix of shape {np.shape(getattr(self, name))}"
                )
        for name, shape in shapes.items():
            value = getattr(self, name)
            if value is None:
                raise WeightShapeError(
                    f"{name}: expected shape {shape} (pre, post) (connectivity.{_BLOCK_PROBABILITY[name]} > 0), "
                    "found none"
                )
            found = np.shape(value)
            if found != shape:
                raise WeightShapeError(f"{name}: expected shape {shape} (pre, post), found {found}")

    def check_dale(self) -> None:
        """Raise :class:`DaleLawError` if a conductance matrix has a negative entry."""
        for name, w in self.matrices().items():
            if not is_conductance(name):
                continue
            if np.any(w < 0):
                n_negative = int(np.sum(w < 0))
                raise DaleLawError(
                    f"{name}: {n_negative} negative conductance(s) (min {float(np.min(w)):.3g} uS); "
                    "Dale's law requires effective weights >= 0, pass weights.effective()"
                )

    def effective(self) -> NetworkWeights:
        """Weights as the network uses them: conductances clamped at 0, masked input."""
        blocks = {
            name: np.maximum(getattr(self, name), 0.0) for name in RECURRENT_BLOCKS if getattr(self, name) is not None
        }
        return replace(
            self,
            w_in=np.where(self.input_mask, np.maximum(self.w_in, 0.0), 0.0),
            w_ei=np.maximum(self.w_ei, 0.0),
            w_ie=np.maximum(self.w_ie, 0.0),
            **blocks,
        )

    def as_dict(self) -> dict[str, np.ndarray]:
        """The matrices present and the input mask."""
        return {**self.matrices(), "input_mask": self.input_mask}


def input_mask(params: NetworkParams, seed: int) -> np.ndarray:
    """Fixed random input -> E connectivity with probability ``p_input``."""
    c = params.connectivity
    return _rng(seed, _MASK).random((c.n_input, c.n_e)) < c.p_input


def _scale(spec: InitSpec, name: str) -> float:
    if spec == "canonical":
        return 1.0
    if spec == "zero":
        return 0.0
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return float(spec)
    raise ValueError(f"{name}: unknown initialisation {spec!r}; use 'canonical', 'zero' or a number (x canonical)")


def _check_rank(rank: int, name: str = "rank") -> None:
    if not (isinstance(rank, (int, np.integer)) and not isinstance(rank, bool) and rank >= 1):
        raise ValueError(f"{name}: must be an int >= 1, got {rank!r}")


def truncate_rank(matrix: np.ndarray, rank: int) -> np.ndarray:
    """The best rank-``rank`` approximation of ``matrix`` (its top singular triplets), at its Frobenius norm.

    ``rank >= min(matrix.shape)`` returns a copy of ``matrix``, bit for bit
    (no SVD round trip). A zero matrix stays zero.
    """
    _check_rank(rank)
    matrix = np.asarray(matrix, dtype=np.float64)
    if rank >= min(matrix.shape):
        return matrix.copy()
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    truncated = (u[:, :rank] * s[:rank]) @ vt[:rank]
    norm = np.linalg.norm(truncated)
    return truncated * (np.linalg.norm(matrix) / norm) if norm > 0 else truncated


def flat_rank(matrix: np.ndarray, rank: int) -> np.ndarray:
    """``matrix``'s top ``rank`` singular vectors with equal singular values, at its Frobenius norm.

    Its participation ratio is ``rank`` exactly (``min(shape)`` where ``rank``
    is larger), where :func:`truncate_rank` keeps the draw's spectrum. A zero
    matrix stays zero.
    """
    _check_rank(rank)
    matrix = np.asarray(matrix, dtype=np.float64)
    rank = min(rank, min(matrix.shape))
    u, _, vt = np.linalg.svd(matrix, full_matrices=False)
    return (u[:, :rank] * (np.linalg.norm(matrix) / np.sqrt(rank))) @ vt[:rank]


def _with_rank(draw: np.ndarray, rank: int | None, spectrum: str, name: str, probability: float, p_name: str):
    if rank is None:
        return draw
    _check_rank(rank, f"rank_{name}")
    if probability < 1.0:
        # The SVD fills the absent edges in; masking them again would undo the rank.
        raise ValueError(
            f"rank_{name}: a rank-limited {name} needs all-to-all edges (connectivity.{p_name} = 1), "
            f"got {p_name} = {probability}"
        )
    return truncate_rank(draw, rank) if spectrum == "truncated" else flat_rank(draw, rank)


def init_weights(
    params: NetworkParams,
    seed: int,
    *,
    w_in: InitSpec = "canonical",
    w_ei: InitSpec = "canonical",
    w_ie: InitSpec = "canonical",
    w_ee: InitSpec = "canonical",
    w_ii: InitSpec = "canonical",
    rank_w_ei: int | None = None,
    rank_w_ie: int | None = None,
    rank_spectrum: str = "truncated",
) -> NetworkWeights:
    """Draw the canonical, fan-in normalised weights of the reference study (docs/reference_study.md).

    Each matrix has its own random stream (``SeedSequence([seed, 1, k])``), so
    changing one matrix's initialisation leaves the others unchanged, and a
    network with recurrent blocks has the same ``w_in``, ``w_ei``, ``w_ie``
    and ``w_out`` as one without.

    Parameters
    ----------
    params : NetworkParams
    seed : int
    w_in, w_ei, w_ie, w_ee, w_ii : "canonical", "zero" or float
        A float multiplies the canonical draw (``0.1`` = 0.1 x canonical).
        ``w_ee`` / ``w_ii`` apply only where the network has the block.
    rank_w_ei, rank_w_ie : int, optional
        Rank of the loop's draw before the multiple applies: None keeps the
        full draw; r replaces it with a rank-r matrix at the same Frobenius
        norm, shaped by ``rank_spectrum`` (:data:`RANK_PROFILES`,
        :func:`truncate_rank` or :func:`flat_rank`). Needs ``p_ei`` / ``p_ie`` = 1.
    rank_spectrum : {"truncated", "flat"}

    Returns
    -------
    NetworkWeights
        Stored values (negative draws are kept; see :meth:`NetworkWeights.effective`).
        ``w_ee`` / ``w_ii`` are None where ``p_ee`` / ``p_ii`` is 0; where
        they exist, an edge is present with that probability, never from a
        neuron onto itself (no autapses), and absent edges are stored zeros
        (as for ``p_ei < 1``).
    """
    c, init = params.connectivity, params.init
    if rank_spectrum not in RANK_PROFILES:
        raise ValueError(f"rank_spectrum: must be one of {', '.join(RANK_PROFILES)}, got {rank_spectrum!r}")

    mask = input_mask(params, seed)
    w_in_draw = _rng(seed, _W_IN).normal(init.w_in_mean, init.w_in_std, (c.n_input, c.n_e)) * init.input_scale_us
    w_ei_draw = _rng(seed, _W_EI).normal(init.w_ei_mean_us, init.w_ei_std_us, (c.n_e, c.n_i)) / c.n_e
    w_ie_draw = _rng(seed, _W_IE).normal(init.w_ie_mean_us, init.w_ie_std_us, (c.n_i, c.n_e)) / c.n_i
    w_out = _rng(seed, _W_OUT).normal(0.0, init.w_out_std, (c.n_e, c.n_classes))
    # Sparse E<->I blocks (p < 1) are fixed masks folded in as zeros.
    if c.p_ei < 1.0:
        w_ei_draw = w_ei_draw * (_rng(seed, _P_EI).random(w_ei_draw.shape) < c.p_ei)
    if c.p_ie < 1.0:
        w_ie_draw = w_ie_draw * (_rng(seed, _P_IE).random(w_ie_draw.shape) < c.p_ie)
    w_ei_draw = _with_rank(w_ei_draw, rank_w_ei, rank_spectrum, "w_ei", c.p_ei, "p_ei")
    w_ie_draw = _with_rank(w_ie_draw, rank_w_ie, rank_spectrum, "w_ie", c.p_ie, "p_ie")
    blocks = {}
    if c.has_ee:
        blocks["w_ee"] = _recurrent_block(seed, _W_EE, _P_EE, c.n_e, init.w_ee_mean_us, init.w_ee_std_us, c.p_ee)
        blocks["w_ee"] *= _scale(w_ee, "w_ee")
    if c.has_ii:
        blocks["w_ii"] = _recurrent_block(seed, _W_II, _P_II, c.n_i, init.w_ii_mean_us, init.w_ii_std_us, c.p_ii)
        blocks["w_ii"] *= _scale(w_ii, "w_ii")
    return NetworkWeights(
        w_in=np.where(mask, w_in_draw * _scale(w_in, "w_in"), 0.0),
        w_ei=w_ei_draw * _scale(w_ei, "w_ei"),
        w_ie=w_ie_draw * _scale(w_ie, "w_ie"),
        w_out=w_out,
        input_mask=mask,
        **blocks,
    )


def _recurrent_block(seed: int, draw: int, edges: int, n: int, mean_us: float, std_us: float, p: float) -> np.ndarray:
    """``N(mean, std) / n`` per edge of an (n, n) block: edges with probability ``p``, no autapses."""
    weights = _rng(seed, draw).normal(mean_us, std_us, (n, n)) / n
    exists = _rng(seed, edges).random((n, n)) < p
    np.fill_diagonal(exists, False)
    return weights * exists
