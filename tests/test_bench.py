"""``biosim bench`` end to end on a short trial, and the records its measurements give (the measured figures
live in docs/performance.md, not here)."""

import json

import pytest

from protocols.cli import _bench_summary, main


@pytest.mark.standalone
def test_bench_reports_every_figure_and_records_the_run(tmp_path, capsys):
    code = main(
        ["bench", "--n-steps", "40", "--batch-size", "2", "--n-brian2-trials", "3", "--json", "--quiet"]
        + ["--out", str(tmp_path)]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("speedup", "memory_ratio", "grad_max_rel_diff", "brian2_trials_per_s", "brian2_build_s"):
        assert result[key] > 0, key
    # Same network, same input: the fused engine's gradients are the eager loop's, and its float64 forward
    # pass reproduces Brian2's spikes.
    assert result["grad_max_rel_diff"] < 1e-6
    assert result["grad_check_spike_counts_identical"]
    assert result["brian2_spike_counts_match_fused_float64"], result["brian2_trials_mismatching_fused_float64"]
    assert result["eager_peak_memory_bytes"] > 0 and result["fused_peak_memory_bytes"] > 0  # tiny: fixed costs rule
    assert json.loads((tmp_path / "bench.json").read_text())["speedup"] == result["speedup"]
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["command"] == "bench" and record["versions"]["torch"]
    assert record["config"]["batch_size"] == 2 and record["metrics"]["speedup"] == result["speedup"]
    summary = _bench_summary(result)
    assert "speedup" in summary and "3 trials on cpp_standalone" in summary and "mirror's: yes" in summary
    by_batch = result["fused_sample_steps_per_s_by_batch"]  # batch 2: a quarter and a half round to 1
    assert list(by_batch) == ["1", "2", "4"] and min(by_batch.values()) > 0 and "fused by batch" in summary
    if result["machine"]["fused_cpu_kernels"]:
        # The roofline counts 4 n_e n_i flops per trial-step against the machine's measured FMA peak.
        assert result["useful_flops_per_sample_step"] == 4 * 1024 * 256
        assert result["fma_peak_flops"] > 1e9 and 0 < result["roofline_fraction"] < 1
        assert result["machine"]["fused_product_path"] in ("avx512", "avx2", "mkl")
        assert "roofline_fraction" in summary and "fused products" in summary
        phases = result["phase_seconds"]
        assert phases["batches"] == 1 and phases["forward"] > 0 and phases["backward"] > 0
        assert phases["recompute"] > 0 and phases["adjoint"] > 0
        assert 0 < result["product_fraction_of_peak"] < 1.5 and result["product_share_of_adjoint"] > 0
        assert "phases" in summary and "products alone" in summary


def test_no_batch_sweep_skips_the_sweep(capsys):
    flags = ["--no-brian2", "--no-batch-sweep", "--json", "--quiet"]
    code = main(["bench", "--n-steps", "20", "--batch-size", "2", *flags])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert "fused_sample_steps_per_s_by_batch" not in result and result["speedup"] > 0
    counts = result["operations_per_step"]
    assert counts["after"]["forward"] < counts["before"]["forward"]
    assert "operations per step: forward" in _bench_summary(result)


def test_a_brian2_failure_keeps_the_other_figures(monkeypatch):
    from benchmarks import bench

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(bench, "run_brian2", no_compiler)
    result = bench.run_benchmark(n_steps=20, batch_size=2, n_repeats=1, grad_check_steps=20, measure_memory=False)
    assert result["speedup"] > 0 and result["grad_max_rel_diff"] < 1e-6
    assert result["brian2_error"] == "RuntimeError: no C++ compiler"
    assert "brian2_trials_per_s" not in result
    assert "failed: RuntimeError: no C++ compiler" in _bench_summary(result)


def test_brian2_processes_reach_the_evaluation_and_bad_values_fail_first(monkeypatch, capsys):
    from benchmarks import bench

    seen = []

    def record(backend, params, weights, trials, openmp_threads, progress, processes=1):
        seen.append((backend, trials.n_trials, processes))
        raise RuntimeError("stop here")

    monkeypatch.setattr(bench, "run_brian2", record)
    tiny = {"n_steps": 20, "batch_size": 2, "n_repeats": 1, "grad_check_steps": 20, "measure_memory": False}
    result = bench.run_benchmark(n_brian2_trials=100, brian2_processes=2, **tiny)
    assert seen == [("cpp_standalone", 100, 2)] and result["settings"]["brian2_parts"] == 2
    # At most one process per 50 trials: 60 trials run in one.
    assert bench.run_benchmark(n_brian2_trials=60, brian2_processes="auto", **tiny)["settings"]["brian2_parts"] == 1
    # A value that cannot apply fails before the training comparison runs.
    with pytest.raises(ValueError, match="processes must be a positive integer or 'auto', got 'two'"):
        bench.run_benchmark(n_brian2_trials=100, brian2_processes="two", **tiny)
    assert len(seen) == 2
    with pytest.raises(SystemExit):
        main(["bench", "--brian2-processes", "0"])
    assert "--brian2-processes: expected a positive integer or 'auto', got 0" in capsys.readouterr().err


def test_summary_without_adjoint_kernels_omits_the_products_share():
    """A backward pass that ran no adjoint kernels has no share to report; the summary says the rest."""
    result = {
        "settings": {"batch_size": 2, "n_steps": 20, "grad_check_batch": 4, "grad_check_steps": 20},
        **{"speedup": 2.0, "fused_sample_steps_per_s": 10.0, "eager_sample_steps_per_s": 5.0},
        **{"fused_threads": 2, "eager_threads": 2, "grad_max_rel_diff": 1e-15},
        "phase_seconds": {"forward": 0.1, "backward": 0.0, "recompute": 0.0, "adjoint": 0.0, "batches": 0},
        **{"product_flops_per_s": 5e10, "product_fraction_of_peak": 0.5, "product_rows": 2},
        "product_share_of_adjoint": None,
    }
    summary = _bench_summary(result)
    assert "products alone     50 GFLOP/s" in summary and "of the adjoint's time" not in summary


def test_each_engine_is_scored_by_its_fastest_repetition():
    from benchmarks.throughput import Throughput

    seconds = {"eager": {1: [2.0, 1.0], 2: [1.5, 1.2]}, "fused": {1: [0.2, 0.25], 2: [0.3, 0.1]}}
    record = Throughput(batch_size=4, n_steps=10, seconds=seconds).record()
    assert (record["eager_threads"], record["fused_threads"]) == (1, 2)
    assert record["eager_sample_steps_per_s"] == pytest.approx(40.0) and record["speedup"] == pytest.approx(10.0)
    assert record["fused_seconds_per_sample"] == pytest.approx(0.025)
    assert record["speedup_at_threads"] == pytest.approx({"1": 5.0, "2": 12.0})
    assert record["seconds_per_batch"]["fused"] == {"1": [0.2, 0.25], "2": [0.3, 0.1]}  # every repetition, JSON keys


def test_brian2_figures_and_the_trials_that_differ_from_the_fused_engine():
    from types import SimpleNamespace

    import numpy as np

    from benchmarks.brian2_eval import Brian2Timing, FusedEvaluation, agreement_record

    counts_e, counts_i = np.array([[1, 0], [2, 2], [0, 0]]), np.array([[0], [1], [3]])
    spikes = SimpleNamespace(
        spikes_e=SimpleNamespace(counts=lambda: counts_e), spikes_i=SimpleNamespace(counts=lambda: counts_i)
    )
    timing = Brian2Timing(result=spikes, n_trials=3, build_s=2.0, simulate_s=1.0)
    cpp, cuda = timing.record("brian2_"), timing.record("brian2_cuda_")
    assert cpp["brian2_trials_per_s"] == 3.0 and cpp["brian2_trials_per_s_with_build"] == 1.0
    assert cpp["brian2_total_s"] == 3.0 and cuda["brian2_cuda_build_s"] == 2.0
    assert [key.removeprefix("brian2_cuda_") for key in cuda] == [key.removeprefix("brian2_") for key in cpp]
    # Trial 1 differs in E, trial 2 in I: both are named, trial 0 is not.
    fused = FusedEvaluation(
        seconds=0.5, counts_e=np.array([[1, 0], [2, 1], [0, 0]]), counts_i=np.array([[0], [1], [2]])
    )
    record = agreement_record(timing, fused)
    assert record["brian2_trials_mismatching_fused_float64"] == [1, 2]
    assert record["brian2_spike_counts_match_fused_float64"] is False
    assert record["fused_eval_float64_trials_per_s"] == 6.0
    same = FusedEvaluation(seconds=0.5, counts_e=counts_e, counts_i=counts_i)
    assert agreement_record(timing, same)["brian2_spike_counts_match_fused_float64"] is True
