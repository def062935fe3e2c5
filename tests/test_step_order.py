"""One step order: bridge.dynamics.transition is the only definition of a time step on torch operations.

The eager step, the fused engine's torch forward pass and its recompute all call it (counted here), every
weight matrix but the input's is one row of its pathway table, and the C++ kernels, which keep their own copy
of the order, give the torch path's results on the same inputs.
"""

from __future__ import annotations

import sys

import pytest
import torch

import bridge.dynamics
from biosim.data import load_split
from biosim.inputs import make_trials
from biosim.params import NetworkParams
from biosim.weights import init_weights
from bridge.dynamics import PATHWAYS, Weights, make_constants
from bridge.eager import run_network
from bridge.fast_engine import FusedEngine
from bridge.fused_kernels import kernels_available
from bridge.simulate import torch_weights
from bridge.surrogates import get_surrogate

BASE = NetworkParams().replace(
    connectivity__n_e=64, connectivity__n_i=16, simulation__trial_ms=20.0, simulation__transient_ms=5.0
)
NETWORKS = {"base": BASE, "blocks": BASE.replace(connectivity__p_ee=0.2, connectivity__p_ii=0.2)}
N_TRIALS = 3
CHUNK_STEPS = 7  # several chunks, the last one shorter


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _setup(network: str, dtype: torch.dtype):
    params = NETWORKS[network]
    split = load_split("smoke")
    trials = make_trials(split.train.images[:N_TRIALS], split.train.labels[:N_TRIALS], params, seed=3)
    x = torch.from_numpy(trials.dense(slice(0, N_TRIALS)))
    v_e = torch.as_tensor(trials.v_init_e_mv[:N_TRIALS], dtype=dtype)
    v_i = torch.as_tensor(trials.v_init_i_mv[:N_TRIALS], dtype=dtype)
    return params, (x, v_e, v_i), torch_weights(init_weights(params, seed=1), dtype=dtype)


def _bptt(engine, params, inputs, weights: Weights):
    """Forward and backward of a loss on scores, counts and the final membranes; (output, gradients)."""
    leaves = Weights(**{name: w.detach().clone().requires_grad_(True) for name, w in weights.items()})
    output = engine(*inputs, leaves, make_constants(params), get_surrogate(), record_population=True)
    loss = output.scores.square().sum() + 1e-3 * output.spike_counts_e.sum() + 1e-4 * output.final_state.v_i.sum()
    loss.backward()
    return output, [w.grad for w in leaves]


def test_every_matrix_but_the_input_is_one_pathway():
    """A new block is a row of PATHWAYS: every Weights field but w_in is one, with a population and a target."""
    names = [pathway.weight for pathway in PATHWAYS]
    assert sorted(names) == sorted(name for name in (*Weights.BASE, *Weights.BLOCKS) if name != "w_in")
    state_fields = set(bridge.dynamics.NetworkState._fields)
    for pathway in PATHWAYS:
        assert pathway.pre in ("e", "i") and pathway.target in state_fields, pathway
        assert pathway.target in bridge.dynamics.TARGETS, pathway
    # Brian2's order onto ge_e: the input (first, as input_drive), then E -> E.
    assert [p.weight for p in PATHWAYS if p.target == "ge_e"] == ["w_ee"]


@pytest.mark.parametrize("network", NETWORKS)
def test_eager_step_fused_forward_and_recompute_all_call_transition(network, monkeypatch):
    params, inputs, weights = _setup(network, torch.float64)
    n_steps = inputs[0].shape[1]
    original = bridge.dynamics.transition
    calls: list[int] = []

    def counted(state, *args, **kwargs):
        calls.append(state.step)
        return original(state, *args, **kwargs)

    # Every module that bound the function by name (the eager step's module and the fused engine's).
    bound = [m for m in list(sys.modules.values()) if getattr(m, "transition", None) is original]
    assert {m.__name__ for m in bound} >= {"bridge.dynamics", "bridge.fast_engine"}
    for module in bound:
        monkeypatch.setattr(module, "transition", counted)

    eager = _bptt(run_network, params, inputs, weights)
    assert calls == list(range(n_steps)), "the eager engine: one transition per step"
    calls.clear()
    fused = _bptt(FusedEngine(chunk_steps=CHUNK_STEPS, implementation="torch"), params, inputs, weights)
    firsts = range(0, n_steps, CHUNK_STEPS)[::-1]
    recompute = [t for first in firsts for t in range(first, min(first + CHUNK_STEPS, n_steps))]
    assert calls == list(range(n_steps)) + recompute, "fused torch path: the forward pass, then the chunks backward"
    # ... and the one function gives both engines their results.
    assert torch.equal(eager[0].spike_counts_e, fused[0].spike_counts_e)
    assert torch.equal(eager[0].scores, fused[0].scores)
    for a, b in zip(eager[1], fused[1], strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=0.0)


@pytest.mark.skipif(not kernels_available(), reason="CPU kernels cannot be built here")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("network", NETWORKS)
def test_cpp_kernels_equal_the_torch_step_order(network, dtype):
    """The C++ copy of the step order against transition: the same forward bits, the same gradients."""
    params, inputs, weights = _setup(network, dtype)
    torch_path, kernels = (
        _bptt(FusedEngine(chunk_steps=CHUNK_STEPS, implementation=i), params, inputs, weights)
        for i in ("torch", "kernels")
    )
    a, b = torch_path[0], kernels[0]
    assert a.spike_counts_e.sum() > 0 and a.spike_counts_i.sum() > 0  # not a silent test
    for name in ("scores", "spike_counts_e", "spike_counts_i", "population_e", "population_i"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in a.final_state._fields[:-1]:
        assert torch.equal(getattr(a.final_state, name), getattr(b.final_state, name)), name
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    for grad_torch, grad_kernels in zip(torch_path[1], kernels[1], strict=True):
        scale = float(grad_torch.abs().max())
        assert float((grad_torch - grad_kernels).abs().max()) <= tolerance * scale


# --- the structs the C++ kernels share: fields declared once, in the C++ field lists --------------------


def test_ctypes_structs_come_from_the_cpp_field_lists():
    from bridge import fused_kernels

    source = fused_kernels._KERNEL_SOURCE_PATH.read_text()
    assert set(fused_kernels.STRUCTS) == {
        "Population",
        "Network",
        "State",
        "ForwardBuffers",
        "ChunkBuffers",
        "AdjointBuffers",
        "ChunkExtras",
    }
    assert fused_kernels.STATE_NAMES == bridge.dynamics.NetworkState._fields[:8]
    # A field added to a list (here at the end of ChunkExtras) reaches the ctypes class without another edit.
    grown = fused_kernels.structs_from_source(
        source.replace("F(void*, grad_ee) F(void*, grad_ii)", "F(void*, grad_ee) F(void*, grad_ii) F(double, extra)")
    )
    assert [name for name, _ in grown["ChunkExtras"]._fields_][-3:] == ["grad_ee", "grad_ii", "extra"]
    with pytest.raises(RuntimeError, match=r"Population\.v_reset has type 'float'"):
        fused_kernels.structs_from_source(source.replace("F(double, v_reset)", "F(float, v_reset)"))


def test_structs_are_made_by_field_name():
    from bridge.fused_kernels import Network, State, make_struct

    v = torch.zeros(2, 3)
    state = make_struct(State, v_e=v, ge_e=None, gi_e=v, ready_e=None, v_i=v, ge_i=v, gi_i=v, ready_i=None)
    assert state.v_e == v.data_ptr() and state.ge_e is None
    with pytest.raises(TypeError, match=r"State: missing fields \['ready_i'\], unknown fields \['readyi'\]"):
        make_struct(State, v_e=v, ge_e=v, gi_e=v, ready_e=v, v_i=v, ge_i=v, gi_i=v, readyi=v)
    with pytest.raises(TypeError, match="Network: missing fields"):
        make_struct(Network, batch=1)


@pytest.mark.skipif(not kernels_available(), reason="CPU kernels cannot be built here")
def test_the_library_exports_the_field_lists_it_was_built_from():
    import ctypes

    from bridge import fused_kernels
    from bridge.fused_kernels import kernel_info

    library = ctypes.CDLL(kernel_info()["library"])
    assert fused_kernels.layout_mismatches(library) == []
    described = library.biosim_struct_fields
    described.argtypes, described.restype = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int64], ctypes.c_int64
    assert described(b"NoSuchStruct", None, 0) == 0
    # A class whose fields are those of the list but one: the loader's check names the struct.
    shifted = type("State", (ctypes.Structure,), {"_fields_": fused_kernels.State._fields_[1:]})
    (problem,) = fused_kernels.layout_mismatches(library, {"State": shifted})
    assert problem.startswith("State: size and offsets")
