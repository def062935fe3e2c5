import json

import pytest

from protocols.cli import main


def test_simulate_json(tmp_path, capsys):
    code = main(["simulate", "--backend", "numpy", "--n-trials", "2", "--json", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("rate_e_hz", "rate_i_hz", "gamma_peak_hz", "backend", "n_trials"):
        assert key in report
    assert report["backend"] == "numpy" and report["n_trials"] == 2
    assert report["rate_e_hz"] > 0 and report["rate_i_hz"] > 0
    assert (tmp_path / "simulate_numpy.png").stat().st_size > 10_000
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["seed"] == 0 and record["versions"]["brian2"]
    assert record["config"]["network"]["synapse"]["tau_gaba_ms"] > 0
    assert record["metrics"]["rate_e_hz"] == report["rate_e_hz"]


def test_unknown_backend_lists_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--backend", "genn"])
    assert exit_info.value.code == 2
    assert "cpp_standalone" in capsys.readouterr().err


def test_missing_idx_directory_is_named(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = main(["simulate", "--backend", "numpy", "--tier", "full", "--idx-dir", str(missing), "--n-trials", "1"])
    assert code == 2
    assert str(missing / "t10k-images-idx3-ubyte") in capsys.readouterr().err


def test_too_many_trials_is_a_clear_error(tmp_path, capsys):
    code = main(["simulate", "--backend", "numpy", "--tier", "smoke", "--n-trials", "1000", "--out", str(tmp_path)])
    assert code == 2
    assert "n_trials=1000" in capsys.readouterr().err


def test_crosscheck_json_reports_identical_spikes(tmp_path, capsys):
    """Brian2 (numpy runtime) and the float64 mirror agree spike for spike on full-size trials."""
    code = main(["crosscheck", "--backend", "numpy", "--n-trials", "2", "--json", "--quiet", "--out", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    for population in ("e", "i"):
        counts = report["spikes"][population]
        assert counts["reference_spikes"] > 100
        assert counts["missing"] == 0 and counts["extra"] == 0
        assert counts["first_divergence_step"] is None
    assert report["max_relative_v_difference"] < 1e-9


def _small_trained_run(run_dir):
    from helpers import small_network

    from bridge.train_config import TrainConfig
    from bridge.training import train

    network = small_network(simulation__trial_ms=40.0, simulation__transient_ms=10.0)
    config = TrainConfig(tier="smoke", n_train=8, n_test=8, epochs=1, batch_size=8, network=network.to_dict())
    return train(config, run_dir, progress=False)


def test_validate_json_passes_for_a_trained_run(tmp_path, capsys):
    _small_trained_run(tmp_path / "run")
    code = main(["validate", str(tmp_path / "run"), "--backend", "numpy", "--json", "--quiet"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["verdict"] == "pass"
    assert report["spike_identity_float64"]["fraction"] == 1.0
    assert set(report["simulators"]) == {"brian2:numpy", "mirror:float64", "mirror:float32"}


def test_validate_names_the_bad_matrix(tmp_path, capsys):
    import numpy as np

    _small_trained_run(tmp_path / "run")
    path = tmp_path / "run" / "weights.npz"
    entries = dict(np.load(path, allow_pickle=False))
    entries["effective/w_ie"] = entries["effective/w_ie"][:, :-1]  # wrong shape
    np.savez_compressed(path, **entries)
    code = main(["validate", str(tmp_path / "run"), "--backend", "numpy", "--quiet"])
    assert code == 2
    error = capsys.readouterr().err
    assert "w_ie" in error and "expected" in error


def test_validate_missing_run_directory(tmp_path, capsys):
    code = main(["validate", str(tmp_path / "nothing"), "--backend", "numpy"])
    assert code == 2
    assert "config.json not found" in capsys.readouterr().err
