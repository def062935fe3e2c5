"""The ``copies`` trial layout (n trials as n copies of the network) gives the sequential layout's results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_same_spikes, run_cli, small_network

from biosim.backends import run_trials
from biosim.data import load_split
from biosim.inputs import make_trials
from biosim.weights import init_weights
from bridge.simulate import run_mirror

# A stronger input keeps the small network active (both populations spike in every trial).
PARAMS = small_network(init__input_scale_us=0.06)
RECORD = {"e": np.array([0, 5, 63]), "i": np.array([1, 15])}


def _trials(params, count: int):
    test = load_split("smoke").test
    return make_trials(test.images[:count], test.labels[:count], params, seed=5)


def _assert_same_result(expected, actual, *, traces_exact: bool = True) -> None:
    assert_same_spikes(expected, actual)
    np.testing.assert_array_equal(actual.scores, expected.scores)
    assert actual.scores.shape == expected.scores.shape
    assert sorted(actual.traces) == sorted(expected.traces)
    for key, trace in expected.traces.items():
        assert actual.traces[key].shape == trace.shape, key
        if traces_exact:
            np.testing.assert_array_equal(actual.traces[key], trace, err_msg=key)
        else:
            np.testing.assert_allclose(actual.traces[key], trace, rtol=1e-12, atol=0, err_msg=key)


@pytest.mark.numpy_backend
@pytest.mark.parametrize(
    "params",
    [PARAMS, PARAMS.replace(connectivity__p_ee=0.2, connectivity__p_ii=0.2)],
    ids=["study_blocks", "with_recurrent_blocks"],
)
def test_copies_equal_sequential_on_numpy_bit_for_bit(params):
    """Spikes, scores, membrane and readout traces: identical, in one run and in chunks of copies."""
    trials = _trials(params, 4)
    weights = init_weights(params, seed=5).effective()
    options = {"backend": "numpy", "progress": False, "record_v": RECORD, "record_readout": True}
    sequential = run_trials(params, weights, trials, **options)
    _assert_same_result(sequential, run_trials(params, weights, trials, layout="copies", **options))
    chunked = run_trials(params, weights, trials, layout="copies", max_copies=3, **options)
    _assert_same_result(sequential, chunked)
    assert chunked.meta["trial_layout"] == {"layout": "copies", "copies_per_run": [3, 1]}


@pytest.mark.numpy_backend
def test_a_fully_pruned_block_has_no_synapses_in_copies_either():
    trials = _trials(PARAMS, 2)
    weights = init_weights(PARAMS, seed=5).effective()
    weights.w_ie[:] = 0.0  # I still spikes (driven by E), so both populations are compared
    sequential = run_trials(PARAMS, weights, trials, backend="numpy", progress=False)
    copies = run_trials(PARAMS, weights, trials, backend="numpy", progress=False, layout="copies")
    _assert_same_result(sequential, copies)


@pytest.mark.standalone
def test_copies_equal_sequential_and_the_mirror_on_cpp_standalone(tmp_path):
    """cpp_standalone: the same spikes and scores as the sequential layout and the float64 mirror.

    The membrane traces may differ in the last bits: the state update's vector exp (libmvec,
    biosim.standalone_build) computes a neuron in a vector lane or in the scalar remainder
    depending on the group's size, which the copies change. Spikes are what must agree.
    """
    trials = _trials(PARAMS, 4)
    weights = init_weights(PARAMS, seed=5).effective()
    options = {"backend": "cpp_standalone", "progress": False, "record_v": RECORD}
    sequential = run_trials(PARAMS, weights, trials, build_dir=tmp_path / "sequential", **options)
    copies = run_trials(PARAMS, weights, trials, build_dir=tmp_path / "copies", layout="copies", **options)
    _assert_same_result(sequential, copies, traces_exact=False)
    # No per-synapse array in the project (the sequential layout writes indices and weights of every block).
    written = [path.name for path in (tmp_path / "copies" / "static_arrays").iterdir()]
    assert written and not [name for name in written if "array_syn_" in name], written
    assert [name for name in (tmp_path / "sequential" / "static_arrays").iterdir() if "array_syn_" in name.name]
    mirror = run_mirror(PARAMS, weights, trials, dtype=torch.float64)
    assert_same_spikes(copies, mirror)
    np.testing.assert_allclose(mirror.scores, copies.scores, rtol=1e-9, atol=1e-12)


def test_bad_layout_and_chunking_are_refused():
    trials = _trials(PARAMS, 2)
    weights = init_weights(PARAMS, seed=5).effective()
    with pytest.raises(ValueError, match="layout: unknown trial layout 'diagonal'; valid layouts: sequential, copies"):
        run_trials(PARAMS, weights, trials, backend="numpy", layout="diagonal")
    with pytest.raises(ValueError, match="max_copies=2 applies to layout 'copies' only"):
        run_trials(PARAMS, weights, trials, backend="numpy", max_copies=2)
    with pytest.raises(ValueError, match="max_copies must be a positive integer, got 0"):
        run_trials(PARAMS, weights, trials, backend="numpy", layout="copies", max_copies=0)
    with pytest.raises(ValueError, match="the 'copies' layout runs in one process"):
        run_trials(PARAMS, weights, trials, backend="cpp_standalone", layout="copies", processes=2)


@pytest.mark.parametrize("command", [["simulate"], ["crosscheck"], ["validate", "run_dir"]])
def test_the_cli_refuses_a_bad_trial_layout_naming_the_flag(command, capsys):
    code, err = run_cli([*command, "--trial-layout", "diagonal"], capsys)
    assert code == 2
    assert "--trial-layout" in err and "'diagonal'" in err and "sequential" in err and "copies" in err
    code, err = run_cli([*command, "--max-copies", "0"], capsys)
    assert code == 2 and "--max-copies" in err


def _copies_network():
    """The small network as 3 copies, on the active device (cuda_standalone in compile_check's child)."""
    from biosim.copies import build_copies_network

    return build_copies_network(PARAMS, init_weights(PARAMS, seed=5).effective(), _trials(PARAMS, 3)).network


@pytest.mark.cuda_compile
def test_the_copies_layout_compiles_for_cuda_standalone(tmp_path):
    """brian2cuda generates and nvcc compiles the copies (generator connect, weight tables); no GPU needed."""
    from biosim import cuda_toolchain as ct

    try:
        ct.find_toolchain(compile_only=True)
    except ct.CudaToolchainError as error:
        if "nvcc not found" in str(error):
            pytest.skip(f"no CUDA toolkit: {error}")
        raise
    result = ct.compile_check(tmp_path / "cuda_project", compute_capability=9.0, build_network=_copies_network)
    assert Path(result["binary"]).is_file()


@pytest.mark.numpy_backend
def test_validate_with_the_copies_layout_in_chunks(tmp_path, capsys):
    """The CLI path end to end: a trained run validated with its 8 test digits as copies, 3 per Brian2 run."""
    import json

    from bridge.train_config import TrainConfig
    from bridge.training import train

    network = small_network(simulation__trial_ms=40.0, simulation__transient_ms=10.0)
    config = TrainConfig(tier="smoke", n_train=8, n_test=8, epochs=1, batch_size=8, network=network.to_dict())
    train(config, tmp_path / "run", progress=False)
    from protocols.cli import main

    argv = ["validate", str(tmp_path / "run"), "--backend", "numpy", "--trial-layout", "copies", "--max-copies", "3"]
    code = main([*argv, "--json", "--quiet"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["verdict"] == "pass"
    assert report["spike_identity_float64"]["fraction"] == 1.0
