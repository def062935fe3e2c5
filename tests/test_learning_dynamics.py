"""Tests of the learning-dynamics metrics (biosim.analysis.learning_dynamics) on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biosim.analysis import learning_dynamics as ld


def orthogonal(n, rng):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


# --- racing -------------------------------------------------------------------------------------------------


def test_column_norms_are_each_receiving_cells_incoming_norm():
    w_ei = np.array([[3.0, 0.0], [4.0, 1.0]])  # (n_e=2, n_i=2): I cell 0 receives (3, 4)
    np.testing.assert_allclose(ld.column_norms(w_ei), [5.0, 1.0])
    np.testing.assert_allclose(ld.column_norms(np.stack([w_ei, 2 * w_ei])), [[5.0, 1.0], [10.0, 2.0]])


def test_spearman_on_known_rankings():
    assert ld.spearman([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert ld.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert ld.spearman([1, 2, 3, 4], [2, 2, 1, 3]) == pytest.approx(0.31622776601683794)  # ties averaged, as scipy
    assert math.isnan(ld.spearman([1, 2, 3], [5, 5, 5]))
    assert ld.spearman([1, 2, np.nan, 4], [1, 2, 9, 4]) == pytest.approx(1.0)


def test_alignment_top_share_and_pairwise_cosine():
    initial = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    final = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    alignment = ld.initial_alignment(initial, final)
    np.testing.assert_allclose(alignment[:2], [1.0, 0.0])
    assert math.isnan(alignment[2])  # a column pruned to zero has no direction
    # Unmoved columns (a frozen loop) are aligned exactly: no ranking of rounding errors, Spearman undefined.
    rng = np.random.default_rng(3)
    frozen = rng.uniform(0.0, 1.0, size=(64, 16))
    assert (ld.initial_alignment(frozen, frozen) == 1.0).all()
    assert math.isnan(ld.racing_summary(np.stack([frozen, frozen]), [0, 3])["race"])
    assert ld.top_share(np.ones(20)) == pytest.approx(0.1)
    assert ld.top_share(np.r_[10.0, np.zeros(19)]) == 1.0
    assert ld.top_share(np.ones(5)) == pytest.approx(0.2)  # ceil(0.5) = one cell of five
    assert math.isnan(ld.top_share(np.zeros(4)))
    assert ld.mean_pairwise_cosine(np.ones((3, 4))) == pytest.approx(1.0)
    assert ld.mean_pairwise_cosine(np.eye(3)) == pytest.approx(0.0)
    assert ld.mean_pairwise_cosine(np.array([[1.0, -1.0, 0.0]])) == pytest.approx(-1.0)  # the zero column left out


def test_unlocking_step_is_the_first_step_above_the_band():
    steps = [0, 10, 20, 30]
    norms = np.array(
        [
            [1.0, 1.0, 1.0, 0.0],
            [1.05, 0.5, 1.0, 0.0],  # cell 0 inside its band (1 +- 0.1), cell 1 shrinks (not unlocking)
            [1.2, 0.2, 1.0, 0.05],  # cell 0 leaves upward; cell 3 (starts at 0): band 0.1 x median 1
            [2.0, 0.1, 1.0, 0.5],  # cell 3 leaves
        ]
    )
    unlocking = ld.unlocking_steps(norms, steps)
    assert unlocking[0] == 20 and unlocking[3] == 30
    assert np.isnan(unlocking[1]) and np.isnan(unlocking[2])
    with pytest.raises(ValueError, match="do not fit"):
        ld.unlocking_steps(norms, steps[:2])


def test_racing_summary_of_a_race_won_by_the_aligned_cells():
    rng = np.random.default_rng(0)
    initial = rng.uniform(0.0, 1.0, size=(30, 8))
    # Final: each cell grows along its own initial vector by a gain g, plus a random vector of fixed norm;
    # the larger g, the larger the final norm and the closer the final direction stays to the initial one.
    gains = np.linspace(0.0, 20.0, 8)
    drift = rng.standard_normal((30, 8))
    final = initial * gains + 3.0 * drift / np.linalg.norm(drift, axis=0)
    summary = ld.racing_summary(np.stack([initial, final]), [0, 100])
    assert summary["race"] > 0.9
    assert summary["top_share"]["final"] > summary["top_share"]["initial"]
    assert summary["unlocking_steps"][0] is None and summary["unlocking_steps"][-1] == 100  # gain 0, gain 20
    assert set(summary["mean_pairwise_cosine"]) == {"initial", "final"}


# --- rank and laziness --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_effective_rank_of_matrices_of_known_rank(rank):
    rng = np.random.default_rng(rank)
    u, v = orthogonal(20, rng)[:, :rank], orthogonal(12, rng)[:, :rank]
    assert ld.effective_rank(2.5 * u @ v.T) == pytest.approx(rank)  # equal singular values: the rank
    unequal = u @ np.diag(np.arange(1.0, rank + 1)) @ v.T
    assert 1.0 <= ld.effective_rank(unequal) <= rank
    assert ld.effective_rank(np.zeros((4, 5))) == 0.0
    # A constant offset adds the all-ones direction; centring removes it.
    shifted = u @ v.T + 10.0
    assert ld.effective_rank(shifted) < 1.5
    assert ld.effective_rank(np.full((4, 5), 3.0)) == pytest.approx(1.0)
    assert ld.effective_rank(np.full((4, 5), 3.0), centred=True) == 0.0


def test_relative_change():
    w = np.ones((3, 3))
    assert ld.relative_change(w, w) == 0.0
    assert ld.relative_change(w, 1.5 * w) == pytest.approx(0.5)
    assert ld.relative_change(np.zeros((2, 2)), np.ones((2, 2))) == math.inf


def test_linear_cka_properties():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 10))
    assert ld.linear_cka(x, x) == pytest.approx(1.0)
    assert ld.linear_cka(x, 3.0 * x @ orthogonal(10, rng)) == pytest.approx(1.0)
    assert ld.linear_cka(x, x + 5.0) == pytest.approx(1.0)  # centred
    assert ld.linear_cka(x, rng.standard_normal((200, 10))) < 0.1
    assert math.isnan(ld.linear_cka(x, np.ones((200, 3))))
    with pytest.raises(ValueError, match="same trials"):
        ld.linear_cka(x, x[:10])


# --- abrupt transitions -------------------------------------------------------------------------------------


def test_change_points_find_a_step_and_nothing_in_stationary_noise():
    rng = np.random.default_rng(2)
    noise = rng.standard_normal(200)
    assert ld.change_points(noise) == []
    for seed in range(5):  # and across draws
        assert ld.change_points(np.random.default_rng(100 + seed).standard_normal(300)) == []
    step = noise + np.where(np.arange(200) >= 120, 3.0, 0.0)
    assert ld.change_points(step) == [120]
    two = noise + np.select([np.arange(200) >= 150, np.arange(200) >= 60], [-1.0, 4.0], 0.0)
    assert ld.change_points(two) == [60, 150]
    assert ld.change_points(np.r_[np.zeros(10), np.ones(10)]) == [10]  # noiseless
    assert ld.plateau_lengths([60, 150], 200) == [60, 90, 50]
    assert ld.plateau_lengths([], 7) == [7]
    with pytest.raises(ValueError, match="NaN"):
        ld.change_points([1.0, np.nan, 2.0, 3.0, 4.0, 5.0])


def test_gradient_jump_precedes_a_change_point_within_the_window():
    rng = np.random.default_rng(3)
    grad = 1.0 + 0.1 * rng.standard_normal(200)
    grad[95:] += 2.0  # jumps at 95
    assert ld.gradient_jumps_before([100, 60, 94], grad, window=5) == [True, False, False]
    assert ld.gradient_jumps(grad) == [95]
    falling = 1.0 + 0.1 * rng.standard_normal(200)
    falling[95:] -= 0.8  # a drop is no jump
    assert ld.gradient_jumps_before([100], falling, window=5) == [False]
    assert ld.gradient_jumps(falling) == []
