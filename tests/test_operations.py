"""The operation counter of ``biosim bench`` (benchmarks/operations.py) on the small network."""

from __future__ import annotations

from helpers import small_network

from benchmarks.operations import count_captured, count_operations, fused_launches, operations_record


def test_the_torch_path_counts_operations_per_step_and_the_fused_path_fewer():
    params = small_network()
    counts = count_operations(params, chunk_steps=5)
    assert counts.forward > 20 and counts.recompute > 20 and counts.adjoint > 5
    assert counts.backward == counts.recompute + counts.adjoint
    # The count does not depend on the network's size: the same operations on larger tensors.
    assert count_operations(small_network(connectivity__n_e=32, connectivity__n_i=8), chunk_steps=5) == counts
    after = fused_launches(counts)
    assert 0 < after["forward"] < counts.forward and 0 < after["backward"] < counts.backward
    assert fused_launches(counts, ("w_ee", "w_ii"))["forward"] == after["forward"] + 4


def test_a_captured_chunk_launches_from_the_host_once_per_chunk_not_per_step():
    """The host's launches of the graph path are per chunk (copies, the input drive, one replay): per step they
    shrink as the chunk grows, by the same count per chunk; inside the graph runs the step."""
    params = small_network()
    five, ten = count_captured(params, chunk_steps=5), count_captured(params, chunk_steps=10)
    assert 0 < ten["host"] < five["host"] and 5 * five["host"] == 10 * ten["host"]
    assert 5 * five["recompute_host"] == 10 * ten["recompute_host"] and ten["recompute_host"] > 0
    assert five["in_graph"] > 20 and five["recompute_in_graph"] > 20


def test_the_record_names_before_and_after():
    record = operations_record(small_network(), chunk_steps=4)["operations_per_step"]
    assert set(record["before"]) == {"forward", "backward", "recompute", "adjoint"}
    captured = {"forward_captured", "kernels_per_step_in_graph", "recompute_captured", "recompute_kernels_in_graph"}
    assert {"forward", "backward", "recompute", "adjoint", *captured} == set(record["after"])
    assert record["after"]["forward"] < record["before"]["forward"] and "not timed" in record["after_is"]
