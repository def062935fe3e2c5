"""What cutting the canonical loop to rank r does to it: the numbers behind the ``loop_rank`` ranks.

For the default network (1024 E, 256 I) and each seed, per matrix (W_EI, W_IE), profile (truncated:
the top r singular triplets; flat: r equal singular values; both at the draw's Frobenius norm) and
rank r, one line: the participation ratio of the stored matrix (plain and centred), the fraction of
negative entries (Dale's clamp makes them structural zeros), and the participation ratio and exact
rank of the effective (clamped) matrix the network uses:

    python scripts/loop_rank_spectra.py --seeds 42 43 --ranks 1 2 4 16 64
"""

from __future__ import annotations

import argparse

import numpy as np

from biosim.analysis.learning_dynamics import effective_rank
from biosim.params import NetworkParams
from biosim.weights import RANK_PROFILES, init_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 16, 64, 256])
    args = parser.parse_args()
    params = NetworkParams()
    print("seed matrix profile rank | stored: PR PR_centred negative | effective: PR PR_centred exact_rank")
    for seed in args.seeds:
        full = init_weights(params, seed)
        for name in ("w_ei", "w_ie"):
            matrix = getattr(full, name)
            print(f"{seed} {name} full draw | {_line(matrix)}")
            for profile in RANK_PROFILES:
                for rank in args.ranks:
                    cut = getattr(
                        init_weights(params, seed, rank_w_ei=rank, rank_w_ie=rank, rank_spectrum=profile), name
                    )
                    print(f"{seed} {name} {profile} {rank} | {_line(cut)}")


def _line(stored: np.ndarray) -> str:
    effective = np.maximum(stored, 0.0)
    return (
        f"{effective_rank(stored):.4f} {effective_rank(stored, centred=True):.2f} {np.mean(stored < 0):.4f} | "
        f"{effective_rank(effective):.4f} {effective_rank(effective, centred=True):.2f} "
        f"{np.linalg.matrix_rank(effective)}"
    )


if __name__ == "__main__":
    main()
