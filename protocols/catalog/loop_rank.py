"""``loop_rank`` (a follow-up): the trainable loop started from its canonical draw cut to rank r."""

from __future__ import annotations

from ..conditions import loop
from ..record import ProtocolDefaults, ProtocolDefinition

TRUNCATED_RANKS = (1, 2, 4, 16, None)
"""Ranks of the truncated loop (None: the full draw). The truncated W_EI and W_IE of the default network
(1024 E, 256 I) have centred participation ratios of about 1.5, 2, 4, 16 and 204 (docs/learning_dynamics.md)."""

FLAT_RANKS = (2, 4, 16)
"""Ranks of the flat loop (rank 1 flat is rank 1 truncated): participation ratios r stored, 1.8, 3.0 and 5.6
once Dale's clamp has cut the negative entries."""

RECORD_EVERY = 4
"""Adam steps between trajectory records: 16 records of about 1.8 MB at the survey tier's 60 steps."""


def rank_text(rank: int | None) -> str:
    """A rank as a condition name writes it: ``4`` -> ``4``, None -> ``full``."""
    return "full" if rank is None else str(rank)


CONDITIONS = (
    *(
        loop(
            f"loop_rank_{rank_text(rank)}",
            "canonical loop, trainable"
            + ("" if rank is None else f", cut to rank {rank} (top singular triplets, same Frobenius norm)"),
            "canonical",
            True,
            init_rank_w_ei=rank,
            init_rank_w_ie=rank,
            record_every=RECORD_EVERY,
        )
        for rank in TRUNCATED_RANKS
    ),
    *(
        loop(
            f"loop_rank_flat_{rank}",
            f"canonical loop, trainable, rank {rank} with equal singular values (same Frobenius norm)",
            "canonical",
            True,
            init_rank_w_ei=rank,
            init_rank_w_ie=rank,
            init_rank_spectrum="flat",
            record_every=RECORD_EVERY,
        )
        for rank in FLAT_RANKS
    ),
)

PROTOCOL = ProtocolDefinition(
    name="loop_rank",
    question=(
        "Does the rank of the initial loop decide how much training rewires it (rich versus lazy learning)? "
        "The canonical W_EI and W_IE, trainable, cut to rank 1, 2, 4 and 16 at the same Frobenius norm and "
        "at full rank, and with 2, 4 and 16 equal singular values; trajectory records every "
        f"{RECORD_EVERY} Adam steps give each run's relative weight change, effective rank of the change and "
        "representation change (biosim dynamics)."
    ),
    conditions=CONDITIONS,
    defaults=ProtocolDefaults("survey"),
    order=8,
    figures="protocols.sweep_figures.loop_rank:draw_loop_rank",
)
