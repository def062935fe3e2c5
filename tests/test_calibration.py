"""The untrained full-size network is in the PING regime (the reference study's regime: docs/reference_study.md)."""

import pytest
import torch

from biosim.params import NetworkParams
from biosim.simulation import load_test_trials, simulate_test_digits, summarize
from biosim.weights import init_weights
from bridge.simulate import run_mirror

N_TRIALS = 20
BANDS = {"rate_e_hz": (6.0, 11.0), "rate_i_hz": (30.0, 46.0), "gamma_peak_hz": (30.0, 46.0)}


def _assert_in_band(summary):
    for key, (low, high) in BANDS.items():
        value = getattr(summary, key)
        assert low <= value <= high, f"{key} = {value:.2f} outside [{low}, {high}]"
    assert summary.gamma_relative_power > 3.0, "no clear gamma peak"


@pytest.mark.standalone
def test_calibration_band_brian2(tmp_path):
    _, summary, _ = simulate_test_digits(
        backend="cpp_standalone", n_trials=N_TRIALS, seed=0, build_dir=tmp_path, progress=False
    )
    _assert_in_band(summary)


@pytest.mark.parametrize("seed", [1, 2])
def test_calibration_band_other_seeds_mirror(seed):
    """Other weight/input draws stay in band (mirror, float32, for speed)."""
    params = NetworkParams()
    trials = load_test_trials(params, N_TRIALS, seed=seed)
    result = run_mirror(params, init_weights(params, seed=seed), trials, dtype=torch.float32, batch_size=N_TRIALS)
    _assert_in_band(summarize(result, params, trials.labels))
