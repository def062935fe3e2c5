"""``feedback_rank``: the trainable canonical loop with the readout's error fed back to E through a fixed
random matrix of rank 1, 2, 5 or 10 instead of W_out (feedback alignment), against exact BPTT."""

from __future__ import annotations

from ..conditions import loop
from ..record import ProtocolDefaults, ProtocolDefinition
from .dale_pruning import CONDITIONS as DALE_PRUNING

RANKS = (1, 2, 5, 10)
"""Ranks of the feedback matrix; 10 = n_classes, a full-rank random matrix."""

_EXACT = next(c for c in DALE_PRUNING if c.name == "trainable_ping_init")
"""The exact-BPTT arm: dale_pruning's trainable canonical loop itself (so its runs are shared)."""

CONDITIONS = (_EXACT,) + tuple(
    loop(
        f"feedback_rank_{rank}",
        f"canonical loop, trainable; error into E through a fixed random rank-{rank} matrix",
        "canonical",
        True,
        feedback_rank=rank,
    )
    for rank in RANKS
)

PROTOCOL = ProtocolDefinition(
    name="feedback_rank",
    question=(
        "Does the PING loop survive training when the error reaching the network is not the exact gradient? "
        "The trainable canonical loop, with the readout's error fed back to the E population through a fixed "
        "random matrix of rank 1, 2, 5 or 10 in place of W_out (low-dimensional feedback alignment; the rest "
        "of the gradient stays exact BPTT), against exact BPTT."
    ),
    conditions=CONDITIONS,
    defaults=ProtocolDefaults("survey", (42, 43, 44)),
    order=9,
)
