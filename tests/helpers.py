"""Helpers shared by several test modules: one definition of the small network, the smoke training
config, the in-process CLI, spike-train and fused-engine comparisons, raw weight files and IDX files.

A plain module (pytest puts tests/ on sys.path): test modules import it with ``from helpers import ...``
and never import one another. Fixtures shared by several modules live in conftest.py.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from biosim.data import N_CLASSES, N_PIXELS
from biosim.params import NetworkParams
from bridge.dynamics import Weights, make_constants
from bridge.fused_kernels import kernels_available
from bridge.simulate import torch_weights
from bridge.train_config import TrainConfig
from protocols.definitions import Protocol

# --- the small network ----------------------------------------------------------------------------

SMALL_POPULATIONS: dict[str, int] = {"connectivity__n_e": 64, "connectivity__n_i": 16}
"""64 E, 16 I: the populations of every small test network (tests that only tabulate keep the default trial)."""

SMALL_NETWORK_FIELDS: dict[str, float] = {
    **SMALL_POPULATIONS,
    "simulation__trial_ms": 20.0,
    "simulation__transient_ms": 5.0,
}
"""64 E, 16 I, 20 ms trials: the smallest network the tests simulate (fan-in normalisation keeps the regime)."""


def small_network(**overrides) -> NetworkParams:
    """The small network, with ``section__field`` overrides (e.g. ``simulation__trial_ms=40.0``)."""
    return NetworkParams().replace(**{**SMALL_NETWORK_FIELDS, **overrides})


# --- training and protocol runs ---------------------------------------------------------------------

SMOKE_NETWORK = small_network(init__input_scale_us=0.06).to_dict()
"""The small network, as a config's dict, with a stronger input that keeps it active (about 8 Hz E, 17 Hz I)."""

SMOKE = TrainConfig(
    tier="smoke",
    n_train=16,
    n_test=8,
    epochs=2,
    batch_size=8,
    network=SMOKE_NETWORK,
    dtype="float64",
    deterministic=True,
    train_w_ei=True,
    train_w_ie=True,
    seed=5,
)
"""A two-epoch float64 training run on the small network (a few seconds)."""

FROZEN_PING_CONFIG = TrainConfig(
    tier="smoke", n_train=8, n_test=8, epochs=1, batch_size=8, engine="fused", network=SMOKE_NETWORK
)
"""Exactly the frozen_ping run of :data:`FROZEN_PING_PROTOCOL` (seed 42), so the runner can reuse it."""

FROZEN_PING_PROTOCOL = Protocol(
    name="dale_pruning",
    conditions=("frozen_ping",),
    tier="smoke",
    seeds=(42,),
    overrides={"network": SMOKE_NETWORK},
    validation_backend="numpy",
)


def run_cli(argv, capsys) -> tuple[int, str]:
    """Exit status and stderr of ``biosim ARGV``, argparse errors included."""
    from protocols.cli import main  # the whole CLI: only for the modules that run it

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


# --- simulators ----------------------------------------------------------------------------------

BRIAN2_BACKENDS = [
    pytest.param("numpy", marks=pytest.mark.numpy_backend),
    pytest.param("cython", marks=pytest.mark.cython_backend),
    pytest.param("cpp_standalone", marks=pytest.mark.standalone),
]
"""Every CPU backend of Brian2, each selectable by its marker (``-m numpy_backend`` ...)."""


def assert_same_spikes(a, b) -> None:
    """Two results hold the same, non-empty E and I spike trains."""
    for population in ("spikes_e", "spikes_i"):
        x, y = getattr(a, population), getattr(b, population)
        assert len(x) > 0, f"{population}: no spikes, the comparison would be empty"
        for field in ("trial", "step", "neuron"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=f"{population}.{field}")


# --- the fused engine against the eager engine ------------------------------------------------------

ENGINE_PARAMS = small_network()
ENGINE_TRIALS = 4
ENGINE_CONSTANTS = make_constants(ENGINE_PARAMS)
"""The constants :func:`bptt` runs with; a network that differs only by its recurrent blocks shares them."""

IMPLEMENTATIONS = [
    "torch",
    pytest.param(
        "kernels", marks=pytest.mark.skipif(not kernels_available(), reason="CPU kernels cannot be built here")
    ),
]


def inputs(trials, dtype=torch.float64, count=ENGINE_TRIALS):
    return (
        torch.from_numpy(trials.dense(slice(0, count))),
        torch.as_tensor(trials.v_init_e_mv[:count], dtype=dtype),
        torch.as_tensor(trials.v_init_i_mv[:count], dtype=dtype),
    )


def leaf_weights(weights, dtype=torch.float64) -> Weights:
    """Leaf copies of the effective weights, by name (a network may have one recurrent block without the other)."""
    effective = torch_weights(weights, dtype=dtype).items()
    return Weights(**{name: w.detach().clone().requires_grad_(True) for name, w in effective})


def bptt(engine, trials, weights, spike_fn, *, dtype=torch.float64, count=ENGINE_TRIALS, loss_fn=None):
    """Forward + backward of a loss; returns (output, gradients of the four weight matrices)."""
    w = leaf_weights(weights, dtype)
    output = engine(
        *inputs(trials, dtype, count), w, ENGINE_CONSTANTS, spike_fn, record_population=True, record_readout=True
    )
    labels = torch.as_tensor(trials.labels[:count])
    loss = torch.nn.functional.cross_entropy(output.scores, labels) if loss_fn is None else loss_fn(output, labels)
    loss.backward()
    return output, [x.grad for x in w]


def relative_difference(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """``max|a - b| / max|a|`` (0 when both are zero or absent)."""
    a = torch.zeros(()) if a is None else a
    b = torch.zeros(()) if b is None else b
    scale = float(a.abs().max())
    difference = float((a - b).abs().max())
    return difference / scale if scale > 0 else difference


def assert_same_forward(expected, actual) -> None:
    assert torch.equal(expected.scores, actual.scores)
    assert torch.equal(expected.spike_counts_e, actual.spike_counts_e)
    assert torch.equal(expected.spike_counts_i, actual.spike_counts_i)
    assert torch.equal(expected.population_e, actual.population_e)
    assert torch.equal(expected.population_i, actual.population_i)
    if expected.readout_trace is not None:
        assert torch.equal(expected.readout_trace, actual.readout_trace)
    assert expected.final_state.step == actual.final_state.step
    for name in expected.final_state._fields[:-1]:  # the tensors; the last field is the step index
        assert torch.equal(getattr(expected.final_state, name), getattr(actual.final_state, name)), name


def state_and_count_loss(output, labels):
    """A loss on everything the engine returns that can carry gradient."""
    state = output.final_state
    return (
        torch.nn.functional.cross_entropy(output.scores, labels)
        + 1e-2 * output.spike_counts_e.pow(2).mean()
        + 0.3 * output.spike_counts_i.mean()
        + 1e-3 * state.v_e.mean()
        + state.gi_e.sum()
        + state.ge_e.sum()
        + 0.5 * state.ge_i.sum()
        + 1e-2 * state.v_i.sum()
        + 0.1 * state.u.sum()
        + 1e-3 * state.score_sum.sum()
    )


def per_step_loss(output, labels):
    """Losses on the per-step outputs: a rhythm of the E population and readouts over two windows of the trial."""
    n_steps = output.population_e.shape[1]
    phase = torch.arange(n_steps, dtype=output.population_e.dtype) * (2 * torch.pi / 25.0)
    rhythm = (output.population_e * torch.cos(phase)).sum(dim=1).pow(2).mean()
    half = n_steps // 2
    windows = [output.readout_trace[:, :half].mean(dim=1), output.readout_trace[:, half:].mean(dim=1)]
    return 1e-2 * rhythm + sum(torch.nn.functional.cross_entropy(w, labels) for w in windows)


# --- weight files written by hand -------------------------------------------------------------------


def read_raw(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return arrays, json.loads(str(arrays.pop("metadata")))


def write_raw(path: Path, arrays: dict[str, np.ndarray], metadata: dict | None) -> Path:
    """Write a (possibly broken) weight file by hand, bypassing save_weights' checks."""
    entries = dict(arrays)
    if metadata is not None:
        entries["metadata"] = np.array(json.dumps(metadata))
    np.savez_compressed(path, **entries)
    return path


# --- IDX files ------------------------------------------------------------------------------------

STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_images(images: np.ndarray, *, magic: int = 0x803, rows: int = 28, columns: int = 28) -> bytes:
    return struct.pack(">IIII", magic, len(images), rows, columns) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray, *, magic: int = 0x801) -> bytes:
    return struct.pack(">II", magic, len(labels)) + labels.astype(np.uint8).tobytes()


def write_idx_set(directory: Path, n_train: int, n_test: int, *, compress: bool = False, seed: int = 0):
    """Write four synthetic IDX files; return the (images, labels) written for train and test."""
    rng = np.random.default_rng(seed)
    written = {}
    for role, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, N_PIXELS), dtype=np.uint8)
        labels = rng.integers(0, N_CLASSES, size=n)
        written[role] = (images, labels)
        for kind, payload in (
            ("images", idx_images(images)),
            ("labels", idx_labels(labels)),
        ):
            path = directory / STEMS[f"{role}_{kind}"]
            if compress:
                Path(f"{path}.gz").write_bytes(gzip.compress(payload))
            else:
                path.write_bytes(payload)
    return written
