"""The operation counter of ``biosim bench`` (benchmarks/operations.py) on the small network."""

from __future__ import annotations

from helpers import small_network

from benchmarks.operations import count_operations, fused_launches, operations_record


def test_the_torch_path_counts_operations_per_step_and_the_fused_path_fewer():
    params = small_network()
    counts = count_operations(params, chunk_steps=5)
    assert counts.forward > 20 and counts.recompute > 20 and counts.adjoint > 5
    assert counts.backward == counts.recompute + counts.adjoint
    # The count does not depend on the network's size: the same operations on larger tensors.
    assert count_operations(small_network(connectivity__n_e=32, connectivity__n_i=8), chunk_steps=5) == counts
    after = fused_launches(counts, chunk_steps=5)
    assert 0 < after["forward"] < counts.forward and 0 < after["backward"] < counts.backward
    assert after["forward_captured"] == 1 / 5


def test_the_record_names_before_and_after():
    record = operations_record(small_network(), chunk_steps=4)["operations_per_step"]
    assert set(record["before"]) == {"forward", "backward", "recompute", "adjoint"}
    assert record["after"]["forward"] < record["before"]["forward"] and "not timed" in record["after_is"]
