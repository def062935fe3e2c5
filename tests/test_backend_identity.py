"""One test body, every CPU backend: the float64 mirror reproduces Brian2 spike for spike.

Selected by markers, as Brian2's own suite selects its targets: ``-m numpy_backend``, ``-m cython_backend``,
``-m standalone``. The default run includes all three (the cython one compiles Brian2's code objects once,
cached in ``~/.cython/brian_extensions``).
"""

import numpy as np
import pytest
import torch
from helpers import BRIAN2_BACKENDS

from biosim.backends import run_trials
from biosim.data import load_split
from biosim.inputs import make_trials
from biosim.params import NetworkParams
from biosim.weights import init_weights
from bridge.crosscheck import compare_spikes
from bridge.simulate import run_mirror


@pytest.fixture(scope="module")
def network():
    # A scaled-down network in the same regime (fan-in normalisation); the conftest's small_params.
    params = NetworkParams().replace(
        connectivity__n_e=128, connectivity__n_i=32, simulation__trial_ms=60.0, simulation__transient_ms=10.0
    )
    test = load_split("smoke").test
    trials = make_trials(test.images[:3], test.labels[:3], params, seed=11)
    weights = init_weights(params, seed=11).effective()
    mirror = run_mirror(params, weights, trials, dtype=torch.float64)
    return params, weights, trials, mirror


@pytest.mark.parametrize("backend", BRIAN2_BACKENDS)
def test_mirror_is_spike_identical_to_brian2(network, backend, tmp_path):
    params, weights, trials, mirror = network
    brian = run_trials(params, weights, trials, backend=backend, build_dir=tmp_path, progress=False)
    for population in ("e", "i"):
        comparison = compare_spikes(
            getattr(brian, f"spikes_{population}"), getattr(mirror, f"spikes_{population}"), population
        )
        assert comparison.reference_spikes > 0, f"{population}: no spikes, the comparison would be empty"
        assert comparison.identical == comparison.reference_spikes and comparison.extra == 0, f"{backend}: {comparison}"
    np.testing.assert_allclose(mirror.scores, brian.scores, rtol=1e-9, atol=1e-12)
