"""``biosim bench`` end to end on a short trial (the measured figures live in docs/performance.md, not here)."""

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
