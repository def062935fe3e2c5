"""The fused engine's torch path on the Triton step and on captured chunks (BIOSIM_CUDA_TRITON, BIOSIM_CUDA_GRAPHS).

Without a GPU the Triton kernels run through Triton's interpreter (``TRITON_INTERPRET=1``, which the Triton
switch accepts on the CPU) and the capture cannot run: the chunk loop of the graph path is tested with
:func:`bridge.cuda_graphs.run_chunk` in place of :class:`~bridge.cuda_graphs.CapturedChunk`. The switches'
parsing and refusals run without triton; the interpreted tests skip where triton is not installed. The
interpreter is slow: short trials (40 steps), two trials.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers import leaf_weights, relative_difference, small_network

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton jits the kernels (bridge.triton_step, lazily)

from biosim.data import load_split  # noqa: E402
from biosim.environment import check_environment, switch  # noqa: E402
from biosim.inputs import make_trials  # noqa: E402
from biosim.weights import init_weights  # noqa: E402
from bridge import cuda_graphs, triton_step  # noqa: E402
from bridge.dynamics import make_constants  # noqa: E402
from bridge.fast_engine import FusedEngine  # noqa: E402
from bridge.surrogates import get_surrogate  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_triton = pytest.mark.skipif(not triton_step.AVAILABLE, reason="triton is not installed")

SWITCHES = ("BIOSIM_CUDA_TRITON", "BIOSIM_CUDA_GRAPHS")
PARAMS = small_network(simulation__trial_ms=4.0, simulation__transient_ms=1.0)  # 40 steps
BLOCKS = PARAMS.replace(connectivity__p_ee=0.2, connectivity__p_ii=0.2)  # with E -> E and I -> I
N_TRIALS = 2
# Relative tolerance (of each output's largest entry) where exp's last bit differs between the interpreter's
# numpy and torch: docs/gpu.md gives 1e-13 after 15 float64 steps; float32 carries 5e-7 per step.
OUTPUT_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
GRADIENT_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-5}


@pytest.fixture(autouse=True)
def _switches_off(monkeypatch):
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)


def _run(params, dtype, engine: FusedEngine):
    """Forward and backward of a loss on scores and counts; ``(output, rasters, gradients by name)``."""
    split = load_split("smoke")
    trials = make_trials(split.train.images[:N_TRIALS], split.train.labels[:N_TRIALS], params, seed=3)
    x = torch.from_numpy(trials.dense(slice(0, N_TRIALS)))
    v_e = torch.as_tensor(trials.v_init_e_mv[:N_TRIALS], dtype=dtype)
    v_i = torch.as_tensor(trials.v_init_i_mv[:N_TRIALS], dtype=dtype)
    weights = leaf_weights(init_weights(params, seed=1), dtype)
    constants = make_constants(params)
    output = engine(x, v_e, v_i, weights, constants, get_surrogate(), record_population=True, record_readout=True)
    labels = torch.as_tensor(trials.labels[:N_TRIALS])
    loss = torch.nn.functional.cross_entropy(output.scores, labels) + 1e-2 * output.spike_counts_e.pow(2).mean()
    loss.backward()
    rasters = engine.spike_rasters(x, v_e, v_i, weights, constants)[1:]
    return output, rasters, {name: w.grad for name, w in weights.items()}


def _outputs(output) -> dict[str, torch.Tensor]:
    state = output.final_state
    fields = ("v_e", "ge_e", "gi_e", "v_i", "ge_i", "gi_i", "u", "score_sum")
    outputs = {"scores": output.scores, "trace": output.readout_trace}
    outputs |= {name: getattr(state, name) for name in fields}
    return {name: value.detach() for name, value in outputs.items()}


# --- the switches ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SWITCHES)
def test_the_switches_are_off_by_default_and_parse_as_switches(monkeypatch, name):
    assert switch(name) is False
    monkeypatch.setenv(name, "on")
    assert switch(name) is True
    with pytest.raises(ValueError, match=rf"{name}='maybe'"):
        check_environment({name: "maybe"})


def test_off_by_default_the_engine_steps_on_torch_operations():
    engine = FusedEngine(implementation="torch")
    problem = engine._problem(torch.zeros(1, 3, 4, dtype=torch.bool), torch.zeros(1, 2), torch.zeros(1, 1),
                              leaf_weights(init_weights(PARAMS, seed=1), torch.float32), None, None, False)  # fmt: skip
    assert not problem.triton and not problem.graphs


def test_the_triton_switch_is_refused_on_the_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("BIOSIM_CUDA_TRITON", "on")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    # Without triton it is refused for that reason, naming the variable too.
    with pytest.raises((ValueError, RuntimeError), match="BIOSIM_CUDA_TRITON=on"):
        triton_step.wanted("cpu")
    with pytest.raises((ValueError, RuntimeError), match="BIOSIM_CUDA_TRITON=on"):
        _run(PARAMS, torch.float64, FusedEngine(implementation="torch"))


@needs_triton
def test_the_triton_switch_is_accepted_on_the_cpu_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("BIOSIM_CUDA_TRITON", "on")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_step.wanted("cpu")


def test_the_graphs_switch_is_refused_off_cuda(monkeypatch):
    monkeypatch.setenv("BIOSIM_CUDA_GRAPHS", "on")
    with pytest.raises(ValueError, match="BIOSIM_CUDA_GRAPHS=on: .*CUDA device"):
        cuda_graphs.wanted("cpu")
    for implementation in ("torch", "auto"):  # also where the CPU kernels would run
        with pytest.raises(ValueError, match="BIOSIM_CUDA_GRAPHS=on"):
            _run(PARAMS, torch.float64, FusedEngine(implementation=implementation))


def test_captured_chunks_refuse_sparse_products(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "wanted", lambda device: True)
    with pytest.raises(ValueError, match="BIOSIM_CUDA_GRAPHS=on: .*dense products"):
        _run(PARAMS, torch.float64, FusedEngine(implementation="torch", propagation="sparse"))


# --- the engine on the Triton step -----------------------------------------------------------------


def _compare(expected, actual, dtype) -> None:
    (output_a, rasters_a, gradients_a), (output_b, rasters_b, gradients_b) = expected, actual
    assert rasters_a[0].any() and rasters_a[1].any()  # not a silent test
    for a, b in zip(rasters_a, rasters_b, strict=True):
        assert torch.equal(a, b)  # identical rasters
    for name in ("spike_counts_e", "spike_counts_i", "population_e", "population_i"):
        assert torch.equal(getattr(output_a, name), getattr(output_b, name)), name
    assert torch.equal(output_a.final_state.ready_e, output_b.final_state.ready_e)
    for name, a in _outputs(output_a).items():
        assert relative_difference(a, _outputs(output_b)[name]) <= OUTPUT_TOLERANCE[dtype], name
    assert set(gradients_a) == set(gradients_b)
    for name, a in gradients_a.items():
        assert a is not None and float(a.abs().max()) > 0, name
        assert relative_difference(a, gradients_b[name]) < GRADIENT_TOLERANCE[dtype], name


@needs_triton
@pytest.mark.parametrize(
    ("params", "dtype", "propagation"),
    [(BLOCKS, torch.float64, "auto"), (PARAMS, torch.float32, "dense")],
    ids=["float64-blocks-sparse", "float32-dense"],
)
def test_the_triton_step_gives_the_torch_steps_spikes_and_gradients(monkeypatch, params, dtype, propagation):
    engine = FusedEngine(chunk_steps=15, implementation="torch", propagation=propagation)  # chunks of 15, 15, 10
    expected = _run(params, dtype, engine)
    monkeypatch.setenv("BIOSIM_CUDA_TRITON", "on")
    _compare(expected, _run(params, dtype, engine), dtype)


# --- the chunk loop of captured graphs (the capture itself needs CUDA) ----------------------------------


class _Uncaptured:
    """:class:`bridge.cuda_graphs.CapturedChunk`'s interface on :func:`bridge.cuda_graphs.run_chunk`."""

    made = 0
    calls = 0

    def __init__(self, step, state, drives, warmup: int = 2) -> None:
        type(self).made += 1
        self.step, self.shape = step, drives.shape

    def __call__(self, state, drives):
        assert drives.shape == self.shape
        type(self).calls += 1
        return cuda_graphs.run_chunk(self.step, state, drives)


@pytest.mark.parametrize("triton", [False, pytest.param(True, marks=needs_triton)])
def test_the_graph_paths_chunk_loop_gives_the_same_results(monkeypatch, triton):
    """Full chunks, forward and recomputed, go through the capture (once made, replayed for each), the shorter
    last one runs uncaptured; the step index lives in the state as a tensor. Spikes, outputs and gradients as
    the dense torch path's, bit for bit."""
    engine = FusedEngine(chunk_steps=15, implementation="torch", propagation="dense")
    if triton:
        monkeypatch.setenv("BIOSIM_CUDA_TRITON", "on")
    expected = _run(PARAMS, torch.float64, engine)
    monkeypatch.setattr(cuda_graphs, "wanted", lambda device: True)
    monkeypatch.setattr(cuda_graphs, "CapturedChunk", _Uncaptured)
    monkeypatch.setattr(_Uncaptured, "made", 0)
    monkeypatch.setattr(_Uncaptured, "calls", 0)
    actual = _run(PARAMS, torch.float64, engine)
    # Two full chunks each: the forward pass and the recompute of the training run, and spike_rasters' forward.
    assert (_Uncaptured.made, _Uncaptured.calls) == (3, 6)
    (output_a, rasters_a, gradients_a), (output_b, rasters_b, gradients_b) = expected, actual
    for a, b in zip(rasters_a, rasters_b, strict=True):
        assert torch.equal(a, b)
    for name, a in _outputs(output_a).items():  # the same operations: bit for bit
        assert torch.equal(a, _outputs(output_b)[name]), name
    for name, a in gradients_a.items():  # the checkpoints the graph path saved, and its recompute
        assert torch.equal(a, gradients_b[name]), name


@needs_triton
def test_the_counted_launches_of_the_triton_step_are_its_codes():
    """``biosim bench``'s "after" column counted on the wired engine: per step exactly the launches
    :func:`benchmarks.operations.fused_launches` reads from the code; per chunk, the same work at any length."""
    from benchmarks.operations import count_operations, fused_launches

    counted = {steps: count_operations(small_network(), chunk_steps=steps, triton=True) for steps in (4, 8)}
    code = fused_launches(counted[4])
    for phase in ("forward", "recompute"):
        per_chunk = [steps * (getattr(counts, phase) - code[phase]) for steps, counts in counted.items()]
        assert per_chunk[0] == pytest.approx(per_chunk[1]) and per_chunk[0] > 0, phase
    assert counted[4].adjoint == count_operations(small_network(), chunk_steps=4).adjoint  # the adjoint as it is
