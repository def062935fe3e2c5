"""Tests of bridge.fast_engine: the fused engine against the eager engine (forward spikes, adjoint gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import ENGINE_CONSTANTS as CONSTANTS
from helpers import ENGINE_PARAMS as PARAMS
from helpers import ENGINE_TRIALS as N_TRIALS
from helpers import (
    IMPLEMENTATIONS,
    assert_same_forward,
    bptt,
    inputs,
    per_step_loss,
    relative_difference,
    state_and_count_loss,
)

from biosim.data import load_split
from biosim.inputs import make_trials
from biosim.weights import init_weights
from bridge.dynamics import Weights, heaviside
from bridge.fast_engine import FusedEngine, run_network_fused
from bridge.fused_kernels import kernel_info, kernels_available
from bridge.model import run_network
from bridge.simulate import torch_weights
from bridge.surrogates import SURROGATES, get_surrogate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trials():
    split = load_split("smoke")
    return make_trials(split.train.images[:N_TRIALS], split.train.labels[:N_TRIALS], PARAMS, seed=3)


@pytest.fixture(scope="module")
def stored_weights():
    return init_weights(PARAMS, seed=1)


_EAGER_CACHE: dict = {}


def eager_bptt(trials, weights, surrogate="fast_sigmoid", *, dtype=torch.float64, count=N_TRIALS, key=None):
    """:func:`bptt` of the eager engine, computed once per configuration (the tests compare many engines to it)."""
    cache_key = (key, surrogate, dtype, count)
    if cache_key not in _EAGER_CACHE:
        _EAGER_CACHE[cache_key] = bptt(run_network, trials, weights, get_surrogate(surrogate), dtype=dtype, count=count)
    return _EAGER_CACHE[cache_key]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_is_bit_identical_to_eager(trials, stored_weights, implementation, dtype):
    engine = FusedEngine(chunk_steps=30, implementation=implementation)
    with torch.no_grad():
        w = torch_weights(stored_weights, dtype=dtype)
        expected = run_network(*inputs(trials, dtype), w, CONSTANTS, record_population=True)
        actual = engine(*inputs(trials, dtype), w, CONSTANTS, record_population=True)
    assert expected.spike_counts_e.sum() > 0 and expected.spike_counts_i.sum() > 0  # not a silent test
    assert_same_forward(expected, actual)
    assert engine(*inputs(trials, dtype), w, CONSTANTS).population_e is None


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
def test_gradients_match_eager_autograd(trials, stored_weights, surrogate, implementation):
    expected_output, expected = eager_bptt(trials, stored_weights, surrogate, key="canonical")
    engine = FusedEngine(chunk_steps=37, implementation=implementation)  # chunks that do not divide T
    output, actual = bptt(engine, trials, stored_weights, get_surrogate(surrogate))
    assert_same_forward(expected_output, output)
    for name, a, b in zip(Weights.BASE, expected, actual, strict=True):
        assert a is not None and float(a.abs().max()) > 0, name
        assert relative_difference(a, b) < 1e-6, name


@pytest.fixture(scope="module")
def eager_state_and_count_gradients(trials, stored_weights):
    return bptt(run_network, trials, stored_weights, get_surrogate(), loss_fn=state_and_count_loss)[1]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gradients_through_counts_and_final_state(
    trials, stored_weights, eager_state_and_count_gradients, implementation
):
    engine = FusedEngine(chunk_steps=64, implementation=implementation)
    _, actual = bptt(engine, trials, stored_weights, get_surrogate(), loss_fn=state_and_count_loss)
    for name, a, b in zip(Weights.BASE, eager_state_and_count_gradients, actual, strict=True):
        assert relative_difference(a, b) < 1e-6, name


@pytest.fixture(scope="module")
def eager_per_step_gradients(trials, stored_weights):
    return bptt(run_network, trials, stored_weights, get_surrogate(), loss_fn=per_step_loss)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gradients_through_population_and_readout_trace(
    trials, stored_weights, eager_per_step_gradients, implementation
):
    """dL/dpopulation_e(t) and dL/du(t) enter the adjoint at their own step, as autograd's graph has them."""
    expected_output, expected = eager_per_step_gradients
    engine = FusedEngine(chunk_steps=37, implementation=implementation)
    output, actual = bptt(engine, trials, stored_weights, get_surrogate(), loss_fn=per_step_loss)
    assert_same_forward(expected_output, output)
    assert torch.allclose(output.readout_trace.mean(dim=1), output.scores, rtol=1e-12, atol=0)
    for name, a, b in zip(Weights.BASE, expected, actual, strict=True):
        assert a is not None and float(a.abs().max()) > 0, name
        assert relative_difference(a, b) < 1e-6, name


@pytest.fixture(scope="module")
def eager_damped_gradients(trials, stored_weights):
    def damped(*args, **kwargs):
        return run_network(*args, **kwargs, membrane_grad_scale=1e-3)

    return bptt(damped, trials, stored_weights, get_surrogate())


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_membrane_gradient_damping_matches_eager_autograd(
    trials, stored_weights, eager_damped_gradients, eager_per_step_gradients, implementation
):
    """The reference's "v-grad dampen 1000": the membrane adjoint x 1e-3 per step, in both engines alike."""
    expected_output, expected = eager_damped_gradients
    engine = FusedEngine(chunk_steps=37, implementation=implementation)

    def damped(*args, **kwargs):
        return engine(*args, **kwargs, membrane_grad_scale=1e-3)

    output, actual = bptt(damped, trials, stored_weights, get_surrogate())
    assert_same_forward(expected_output, output)  # the forward pass does not change
    _, exact = eager_bptt(trials, stored_weights, key="canonical")
    for name, a, b, undamped in zip(Weights.BASE, expected, actual, exact, strict=True):
        assert a is not None and float(a.abs().max()) > 0, name
        assert relative_difference(a, b) < 1e-6, name
        if name != "w_out":  # the readout's gradient does not pass through a membrane; the others' do
            assert relative_difference(undamped, a) > 1e-3, name


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_zero_initialised_loop_and_batch_of_one(trials, stored_weights, implementation):
    zero = init_weights(PARAMS, seed=1, w_ei="zero", w_ie="zero")
    engine = FusedEngine(chunk_steps=50, implementation=implementation)
    for weights, count, key in ((zero, N_TRIALS, "zero"), (stored_weights, 1, "canonical")):
        expected_output, expected = eager_bptt(trials, weights, count=count, key=key)
        output, actual = bptt(engine, trials, weights, get_surrogate(), count=count)
        assert_same_forward(expected_output, output)
        for name, a, b in zip(Weights.BASE, expected, actual, strict=True):
            assert relative_difference(a, b) < 1e-6, name
    # the zero-initialised loop still learns: its conductances receive gradient
    assert float(actual[1].abs().max()) > 0 and float(actual[2].abs().max()) > 0


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float32_runs_and_agrees_with_eager(trials, stored_weights, implementation):
    spike_fn = get_surrogate()
    expected_output, expected = eager_bptt(trials, stored_weights, dtype=torch.float32, key="canonical")
    engine = FusedEngine(implementation=implementation)
    output, actual = bptt(engine, trials, stored_weights, spike_fn, dtype=torch.float32)
    assert output.scores.dtype == torch.float32
    assert_same_forward(expected_output, output)
    for name, a, b in zip(Weights.BASE, expected, actual, strict=True):
        assert b.dtype == torch.float32 and torch.isfinite(b).all(), name
        assert relative_difference(a, b) < 1e-3, name


def test_dale_clamp_and_mask_stay_with_autograd(trials, stored_weights):
    """Stored weights go through clamp/mask outside the engine; their gradients match the eager engine's."""
    rng = np.random.default_rng(0)
    stored = {
        name: torch.tensor(
            getattr(stored_weights, name) * rng.choice([-1.0, 1.0], size=getattr(stored_weights, name).shape)
        )
        for name in ("w_in", "w_ei", "w_ie", "w_out")
    }
    mask = torch.as_tensor(stored_weights.input_mask, dtype=torch.float64)
    results = []
    for engine in (run_network, run_network_fused):
        leaves = {name: value.clone().requires_grad_(True) for name, value in stored.items()}
        effective = Weights(
            torch.clamp(leaves["w_in"], min=0.0) * mask,
            torch.clamp(leaves["w_ei"], min=0.0),
            torch.clamp(leaves["w_ie"], min=0.0),
            leaves["w_out"],
        )
        output = engine(*inputs(trials), effective, CONSTANTS, get_surrogate())
        torch.nn.functional.cross_entropy(output.scores, torch.as_tensor(trials.labels)).backward()
        results.append(leaves)
    for name in stored:
        assert relative_difference(results[0][name].grad, results[1][name].grad) < 1e-6, name
    pruned = stored["w_ei"] < 0
    assert torch.all(results[1]["w_ei"].grad[pruned] == 0)


def test_gradient_only_for_requested_weights_and_heaviside(trials, stored_weights):
    w = torch_weights(stored_weights, dtype=torch.float64)
    w_out = w.w_out.clone().requires_grad_(True)
    weights = Weights(w.w_in, w.w_ei, w.w_ie, w_out)
    labels = torch.as_tensor(trials.labels)
    grads = []
    for engine in (run_network, run_network_fused):
        w_out.grad = None
        output = engine(*inputs(trials), weights, CONSTANTS, heaviside)
        torch.nn.functional.cross_entropy(output.scores, labels).backward()
        grads.append(w_out.grad.clone())
    assert relative_difference(*grads) < 1e-12


def test_unknown_spike_function_runs_on_the_eager_engine(trials, stored_weights):
    w = torch_weights(stored_weights, dtype=torch.float64)

    def custom(x):
        return (x > 0).to(x.dtype)

    with torch.no_grad():
        assert_same_forward(
            run_network(*inputs(trials), w, CONSTANTS, custom, record_population=True),
            run_network_fused(*inputs(trials), w, CONSTANTS, custom, record_population=True),
        )


def test_implementations_agree_and_options_are_validated(trials, stored_weights):
    if kernels_available():
        results = [
            bptt(FusedEngine(implementation=i), trials, stored_weights, get_surrogate()) for i in ("torch", "kernels")
        ]
        assert_same_forward(results[0][0], results[1][0])
        for a, b in zip(results[0][1], results[1][1], strict=True):
            assert relative_difference(a, b) < 1e-12
    dense = bptt(FusedEngine(implementation="torch", propagation="dense"), trials, stored_weights, get_surrogate())
    sparse = bptt(FusedEngine(implementation="torch", propagation="sparse"), trials, stored_weights, get_surrogate())
    assert torch.equal(dense[0].spike_counts_e, sparse[0].spike_counts_e)
    for a, b in zip(dense[1], sparse[1], strict=True):
        assert relative_difference(a, b) < 1e-9
    with pytest.raises(ValueError, match="chunk_steps"):
        FusedEngine(chunk_steps=0)
    with pytest.raises(ValueError, match="implementation"):
        FusedEngine(implementation="cuda-graphs")
    with pytest.raises(ValueError, match="propagation"):
        FusedEngine(propagation="random")
    x, v_e, v_i = inputs(trials)
    with pytest.raises(ValueError, match="spike raster"):
        run_network_fused(x.double() * 0.5, v_e, v_i, torch_weights(stored_weights, dtype=torch.float64), CONSTANTS)


def test_registered_as_a_model_engine(trials, stored_weights, monkeypatch):
    """Through PINGModel (stored weights, clamp, mask, trainable flags) the engines agree."""
    from bridge.model import ENGINES, PINGModel

    monkeypatch.setitem(ENGINES, "fused", run_network_fused)
    trainable = {"w_in": True, "w_ei": False, "w_ie": True, "w_out": True}
    grads = []
    for engine in ("eager", "fused"):
        model = PINGModel(
            PARAMS, stored_weights, trainable=trainable, spike_fn=get_surrogate(), engine=engine, dtype=torch.float64
        )
        output = model(*inputs(trials), record_population=True)
        torch.nn.functional.cross_entropy(output.scores, torch.as_tensor(trials.labels)).backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    assert grads[1]["w_ei"] is None
    for name in ("w_in", "w_ie", "w_out"):
        assert relative_difference(grads[0][name], grads[1][name]) < 1e-6, name


@pytest.mark.skipif(not kernels_available(), reason="CPU kernels cannot be built here")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("slope, unit_mv", [(1.0, 1000.0), (10.0, 1.0), (0.5, 1.0)])
def test_kernel_surrogates_equal_their_torch_definitions(dtype, slope, unit_mv):
    """The kernels evaluate sigma' themselves; it must be the surrogate's own ``derivative``, masked by m."""
    from bridge.fast_engine import _surrogate_fields
    from bridge.fused_kernels import KERNEL_SURROGATES, Network, kernel_library
    from bridge.surrogates import Surrogate

    library = kernel_library()
    generator = torch.Generator().manual_seed(0)
    x = torch.cat([torch.linspace(-90.0, 60.0, 20001, dtype=dtype), torch.tensor([0.0, -0.0, 1e-30], dtype=dtype)])
    integrating = torch.rand(x.shape, generator=generator) < 0.9
    for name in KERNEL_SURROGATES:
        surrogate = Surrogate(name, slope=slope, unit_mv=unit_mv)
        network = Network()
        network.surrogate, network.surrogate_slope, network.surrogate_unit_mv = _surrogate_fields(surrogate)
        actual = x.clone()
        library.surrogate[dtype](network, x.numel(), actual.data_ptr(), integrating.data_ptr())
        expected = torch.where(integrating, surrogate.derivative(x), 0.0)
        assert torch.equal(actual[~integrating], torch.zeros_like(actual[~integrating])), name
        assert float(expected.abs().max()) > 0, name
        tolerance = 4 * torch.finfo(dtype).eps  # the same operations; exp may differ in the last bits
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=tolerance, atol=0, err_msg=name)


def test_a_surrogate_the_kernels_do_not_know_runs_on_torch_operations(trials, stored_weights, monkeypatch):
    from bridge.surrogates import Surrogate

    monkeypatch.setitem(SURROGATES, "gaussian", lambda x, slope: torch.exp(-((slope * x) ** 2)))
    surrogate = Surrogate("gaussian", slope=20.0)
    expected_output, expected = bptt(run_network, trials, stored_weights, surrogate)
    output, actual = bptt(run_network_fused, trials, stored_weights, surrogate)
    assert_same_forward(expected_output, output)
    for name, a, b in zip(Weights.BASE, expected, actual, strict=True):
        assert relative_difference(a, b) < 1e-6, name
    if kernels_available():
        with pytest.raises(RuntimeError, match="gaussian"):
            bptt(FusedEngine(implementation="kernels"), trials, stored_weights, surrogate)


@pytest.mark.skipif(not kernels_available(), reason="CPU kernels cannot be built here")
@pytest.mark.parametrize("count", [1, 3, 4, 5, 7, 10])
def test_float32_kernel_products_for_every_block_shape(stored_weights, count):
    """Blocks of up to 8 trials in register tiles of up to 4 trials: every remainder, full and partial panels."""
    split = load_split("smoke")
    trials = make_trials(split.train.images[:count], split.train.labels[:count], PARAMS, seed=4)
    _, expected = bptt(run_network, trials, stored_weights, get_surrogate(), dtype=torch.float32, count=count)
    engine = FusedEngine(implementation="kernels")
    _, actual = bptt(engine, trials, stored_weights, get_surrogate(), dtype=torch.float32, count=count)
    for name, a, b in zip(Weights.BASE, expected, actual, strict=True):
        assert float(a.abs().max()) > 0, name
        assert relative_difference(a, b) < 1e-4, name  # measured: up to 2e-6 (float32 rounding)


@pytest.mark.skipif(not kernels_available(), reason="CPU kernels cannot be built here")
def test_kernel_results_do_not_depend_on_the_thread_count(stored_weights):
    split = load_split("smoke")
    trials = make_trials(split.train.images[:10], split.train.labels[:10], PARAMS, seed=4)
    engine, results = FusedEngine(implementation="kernels"), []
    for threads in (1, 2):  # 10 trials: backward blocks of 8 and 2, on one thread or two
        torch.set_num_threads(threads)
        try:
            results.append(bptt(engine, trials, stored_weights, get_surrogate(), dtype=torch.float32, count=10))
        finally:
            torch.set_num_threads(1)
    (output_1, grads_1), (output_2, grads_2) = results
    assert_same_forward(output_1, output_2)
    for name, a, b in zip(Weights.BASE, grads_1, grads_2, strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mirror_spike_trains_are_identical_on_both_engines(trials, stored_weights, implementation, dtype, monkeypatch):
    """run_mirror's fused path (validation's) gives every spike of the step-by-step loop, bit for bit."""
    from bridge import fast_engine
    from bridge.simulate import run_mirror

    monkeypatch.setattr(fast_engine, "FusedEngine", lambda: FusedEngine(implementation=implementation))
    fused = run_mirror(PARAMS, stored_weights, trials, dtype=dtype, engine="fused", batch_size=3)
    eager = run_mirror(PARAMS, stored_weights, trials, dtype=dtype, engine="eager", batch_size=3)
    for population in ("spikes_e", "spikes_i"):
        a, b = getattr(fused, population), getattr(eager, population)
        assert len(a) > 0
        for field in ("trial", "step", "neuron"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(fused.scores, eager.scores)
    with pytest.raises(ValueError, match="record_v needs engine='eager'"):
        run_mirror(PARAMS, stored_weights, trials, engine="fused", record_v={"e": [0]})
    with pytest.raises(ValueError, match="valid engines"):
        run_mirror(PARAMS, stored_weights, trials, engine="nosuch")


_GRADIENT_DIGEST = """
import hashlib, json, sys, torch
sys.path.insert(0, {tests!r})
from helpers import ENGINE_PARAMS, bptt
from biosim.data import load_split
from biosim.inputs import make_trials
from biosim.weights import init_weights
from bridge.fast_engine import FusedEngine
from bridge.fused_kernels import kernel_info
from bridge.surrogates import get_surrogate
torch.set_num_threads(1)
split = load_split("smoke")
trials = make_trials(split.train.images[:7], split.train.labels[:7], ENGINE_PARAMS, seed=4)
_, grads = bptt(FusedEngine(implementation="kernels"), trials, init_weights(ENGINE_PARAMS, seed=1), get_surrogate(),
                  dtype=torch.float32, count=7)
digest = hashlib.sha256(b"".join(g.numpy().tobytes() for g in grads)).hexdigest()
print(json.dumps({{"path": kernel_info()["product_path"], "digest": digest}}))
"""


@pytest.mark.skipif(not kernels_available(), reason="CPU kernels cannot be built here")
def test_avx2_product_path_gives_the_native_paths_bits(tmp_path):
    """BIOSIM_KERNEL_ISA=avx2 builds the AVX2 tiles even on an AVX-512 machine; both tiled paths sum alike."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx2" not in flags or " fma" not in flags:
        pytest.skip("this CPU has no AVX2 + FMA")
    code = _GRADIENT_DIGEST.format(tests=str(Path(__file__).parent))

    def digest(isa: str) -> dict:
        env = {**os.environ, "BIOSIM_KERNEL_ISA": isa}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    native, avx2 = digest("native"), digest("avx2")
    assert avx2["path"] == "avx2"
    assert native["path"] == kernel_info()["product_path"]
    if native["path"] in ("avx512", "avx2"):
        assert native["digest"] == avx2["digest"]


def test_kernels_that_cannot_be_built_say_why(tmp_path, monkeypatch):
    """No compiler: one warning naming the cause, and the torch implementation runs instead."""
    from bridge import fused_kernels

    monkeypatch.setenv("BIOSIM_KERNEL_CACHE", str(tmp_path))  # nothing cached there
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.warns(UserWarning, match=r"CPU kernels unavailable \(the build failed: .*no-such-compiler"):
        assert fused_kernels.kernel_library.__wrapped__() is None
    monkeypatch.setattr(fused_kernels.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX")
    with pytest.warns(UserWarning, match="no C.. compiler: set CXX or install g.."):
        assert fused_kernels.kernel_library.__wrapped__() is None


@pytest.mark.skipif(not kernels_available(), reason="CPU kernels cannot be built here")
def test_struct_layouts_of_ctypes_and_cpp_agree():
    """The loader refuses a library whose structs differ from the ctypes copies; here they agree."""
    import ctypes

    from bridge import fused_kernels

    library = ctypes.CDLL(kernel_info()["library"])
    assert fused_kernels.layout_mismatches(library) == []

    class Truncated(ctypes.Structure):  # ChunkExtras without its last field
        _fields_ = fused_kernels.ChunkExtras._fields_[:-1]

    (problem,) = fused_kernels.layout_mismatches(library, {"ChunkExtras": Truncated})
    assert problem.startswith("ChunkExtras: size and offsets")


@pytest.mark.skipif(not kernels_available(), reason="CPU kernels cannot be built here")
def test_phase_times_are_recorded_inside_the_block_only(stored_weights):
    from bridge.fused_kernels import phase_recorder, product_flops, record_phase_times

    split = load_split("smoke")
    trials = make_trials(split.train.images[:2], split.train.labels[:2], PARAMS, seed=4)
    engine = FusedEngine(implementation="kernels")
    with record_phase_times() as record:
        bptt(engine, trials, stored_weights, get_surrogate(), dtype=torch.float32, count=2)
        bptt(engine, trials, stored_weights, get_surrogate(), dtype=torch.float32, count=2)
    assert phase_recorder() is None
    assert record.batches == 2 and min(record.forward, record.backward, record.recompute, record.adjoint) > 0
    before = record.as_dict()
    bptt(engine, trials, stored_weights, get_surrogate(), dtype=torch.float32, count=2)
    assert record.as_dict() == before
    assert product_flops(PARAMS.connectivity.n_e, PARAMS.connectivity.n_i, 10, 2, seconds=0.01) > 0
