"""The captured step loop (bridge/cuda_graphs.py): the step function it captures equals the eager step on the
CPU; the capture itself needs CUDA (skipped without it)."""

from __future__ import annotations

import pytest
import torch
from helpers import small_network

from bridge import cuda_graphs
from bridge.dynamics import NetworkState, crossed, make_constants, transition

CONSTANTS = make_constants(small_network())
BATCH, N_E, N_I, N_CLASSES, STEPS = 3, 64, 16, 10, 12


def _problem(device: str = "cpu", dtype=torch.float64):
    generator = torch.Generator().manual_seed(2)

    def rand(*shape, scale=1.0):
        return (scale * torch.rand(*shape, dtype=dtype, generator=generator)).to(device)

    weights = {"w_ee": None, "w_ie": rand(N_I, N_E, scale=0.05), "w_ei": rand(N_E, N_I, scale=0.05), "w_ii": None}
    weights["w_out"] = rand(N_E, N_CLASSES)
    k = CONSTANTS.e
    state = {
        "v_e": k.v_reset + rand(BATCH, N_E, scale=k.v_threshold - k.v_reset + 2.0),
        "v_i": k.v_reset + rand(BATCH, N_I, scale=k.v_threshold - k.v_reset + 2.0),
        "ge_e": rand(BATCH, N_E, scale=0.02),
        "gi_e": rand(BATCH, N_E, scale=0.02),
        "ge_i": rand(BATCH, N_I, scale=0.02),
        "gi_i": rand(BATCH, N_I, scale=0.02),
        "ready_e": torch.zeros(BATCH, N_E, dtype=torch.int32, device=device),
        "ready_i": torch.zeros(BATCH, N_I, dtype=torch.int32, device=device),
        "u": torch.zeros(BATCH, N_CLASSES, dtype=dtype, device=device),
        "score_sum": torch.zeros(BATCH, N_CLASSES, dtype=dtype, device=device),
        "step": torch.tensor(0, dtype=torch.int32, device=device),
    }
    return weights, state, rand(STEPS, BATCH, N_E, scale=0.03)


def _eager(weights, state, drives):
    """The loop of dynamics.transition with a Python int step index, as the fused engine's forward runs it."""

    def threshold(population, v1, integrating, k):
        fired = crossed(v1, integrating, k)
        return fired, fired

    def synapses(name, fired):
        weight = weights.get(name)
        return None if weight is None else fired.to(weight.dtype) @ weight

    current = NetworkState(**{name: value for name, value in state.items() if name != "step"}, step=0)
    raster = []
    for j in range(drives.shape[0]):
        made = transition(current, CONSTANTS, drives[j], threshold, synapses)
        current = made.state
        raster.append(made.fired_e)
    return current, torch.stack(raster)


def test_the_captured_step_function_equals_the_eager_step():
    weights, state, drives = _problem()
    final, records = cuda_graphs.run_chunk(cuda_graphs.transition_step(CONSTANTS, weights), state, drives)
    expected, raster_e = _eager(weights, state, drives)
    assert raster_e.any() and bool((final["ready_e"] > 0).any())  # spikes and refractory neurons in the case
    assert records["fired_e"].shape == (STEPS, BATCH, N_E) and records["u"].shape == (STEPS, BATCH, N_CLASSES)
    assert torch.equal(records["fired_e"], raster_e)
    for name in ("v_e", "ge_e", "gi_e", "ready_e", "v_i", "ge_i", "gi_i", "ready_i", "u", "score_sum"):
        assert torch.equal(final[name], getattr(expected, name)), name
    assert int(final["step"]) == STEPS


def test_capture_is_asked_for_and_only_on_cuda():
    assert not cuda_graphs.enabled("cpu", False) and not cuda_graphs.enabled("cuda", False)
    assert cuda_graphs.enabled("cuda:0", True)
    with pytest.raises(ValueError, match="CUDA device"):
        cuda_graphs.enabled("cpu", True)


def test_capture_needs_cuda_tensors():
    weights, state, drives = _problem()
    with pytest.raises(RuntimeError, match="CUDA"):
        cuda_graphs.CapturedChunk(cuda_graphs.transition_step(CONSTANTS, weights), state, drives)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_replayed_chunk_equals_the_eager_chunk():
    weights, state, drives = _problem("cuda")
    step = cuda_graphs.transition_step(CONSTANTS, weights)
    captured = cuda_graphs.CapturedChunk(step, state, drives)
    final, records = captured(state, drives)
    eager_final, eager_records = cuda_graphs.run_chunk(step, state, drives)
    assert torch.equal(records["fired_e"], eager_records["fired_e"])
    for name, value in eager_final.items():
        assert torch.equal(final[name], value), name
    # A second chunk from the first's end: the step index comes from the state, not from the capture.
    again, _ = captured({name: value.clone() for name, value in final.items()}, drives)
    assert int(again["step"]) == 2 * STEPS
