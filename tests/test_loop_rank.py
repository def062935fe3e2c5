"""Low-rank initialisation of the E-I loop (biosim.weights.truncate_rank, flat_rank) and the loop_rank protocol."""

import dataclasses
import json

import numpy as np
import pytest
from helpers import SMALL_POPULATIONS, SMOKE_NETWORK, run_cli, small_network

from biosim.analysis.learning_dynamics import effective_rank
from biosim.params import NetworkParams
from biosim.weights import flat_rank, init_weights, truncate_rank
from bridge import run_records, training
from bridge.train_config import ConfigError, TrainConfig, build_model, initial_weights
from bridge.trajectory import load_trajectory
from protocols.definitions import Protocol, get_protocol
from protocols.results import initial_effective, load_runs
from protocols.runner import run_protocol

PARAMS = NetworkParams().replace(**SMALL_POPULATIONS)
DRAW = init_weights(PARAMS, seed=3).w_ei  # 64 x 16, mean plus 10 % noise


# --- the pure functions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 2, 5, 15])
def test_truncate_rank_has_the_rank_and_the_norm_of_the_draw(rank):
    cut = truncate_rank(DRAW, rank)
    assert np.linalg.matrix_rank(cut) == rank
    np.testing.assert_allclose(np.linalg.norm(cut), np.linalg.norm(DRAW), rtol=1e-12)
    # The top singular vectors are the draw's: the rank-r cut is the best rank-r approximation, rescaled.
    u, s, vt = np.linalg.svd(DRAW, full_matrices=False)
    best = (u[:, :rank] * s[:rank]) @ vt[:rank]
    np.testing.assert_allclose(cut, best * np.linalg.norm(DRAW) / np.linalg.norm(best), rtol=0, atol=1e-14)


@pytest.mark.parametrize("rank", [16, 17, 1000])
def test_truncate_rank_at_or_beyond_full_rank_returns_the_draw_bit_for_bit(rank):
    cut = truncate_rank(DRAW, rank)
    assert cut is not DRAW and cut.tobytes() == DRAW.tobytes()


@pytest.mark.parametrize("rank", [1, 3, 16, 40])
def test_flat_rank_has_equal_singular_values_and_the_norm_of_the_draw(rank):
    flat = flat_rank(DRAW, rank)
    kept = min(rank, 16)
    singular = np.linalg.svd(flat, compute_uv=False)
    np.testing.assert_allclose(singular[:kept], np.linalg.norm(DRAW) / np.sqrt(kept), rtol=1e-12)
    assert np.linalg.matrix_rank(flat) == kept
    assert effective_rank(flat) == pytest.approx(kept, rel=1e-12)
    np.testing.assert_allclose(np.linalg.norm(flat), np.linalg.norm(DRAW), rtol=1e-12)


@pytest.mark.parametrize("cut", [truncate_rank, flat_rank])
@pytest.mark.parametrize("rank", [0, -1, 2.0, True, "2", None])
def test_a_bad_rank_is_refused(cut, rank):
    with pytest.raises(ValueError, match="rank: must be an int >= 1"):
        cut(DRAW, rank)


@pytest.mark.parametrize("cut", [truncate_rank, flat_rank])
def test_a_zero_matrix_stays_zero(cut):
    assert not np.any(cut(np.zeros((6, 4)), 2))


# --- init_weights and TrainConfig ----------------------------------------------------------------------------


def test_init_weights_cuts_the_loop_before_the_multiple_and_leaves_the_rest():
    full = init_weights(PARAMS, seed=3)
    cut = init_weights(PARAMS, seed=3, w_ei=0.5, rank_w_ei=2, rank_w_ie=1)
    np.testing.assert_array_equal(cut.w_ei, 0.5 * truncate_rank(full.w_ei, 2))
    np.testing.assert_array_equal(cut.w_ie, truncate_rank(full.w_ie, 1))
    for name in ("w_in", "w_out", "input_mask"):
        assert getattr(cut, name).tobytes() == getattr(full, name).tobytes()
    flat = init_weights(PARAMS, seed=3, rank_w_ei=4, rank_spectrum="flat")
    np.testing.assert_array_equal(flat.w_ei, flat_rank(full.w_ei, 4))
    assert flat.w_ie.tobytes() == full.w_ie.tobytes()


def test_init_weights_refuses_a_rank_on_sparse_edges_and_an_unknown_spectrum():
    sparse = PARAMS.replace(connectivity__p_ie=0.5)
    with pytest.raises(ValueError, match=r"rank_w_ie: .*connectivity.p_ie = 1"):
        init_weights(sparse, seed=3, rank_w_ie=2)
    init_weights(sparse, seed=3, rank_w_ei=2)  # W_EI is all to all
    with pytest.raises(ValueError, match="rank_spectrum: must be one of truncated, flat"):
        init_weights(PARAMS, seed=3, rank_spectrum="equal")


def test_the_default_config_starts_from_the_full_draw_bit_for_bit():
    config = TrainConfig(network=SMOKE_NETWORK)
    assert (config.init_rank_w_ei, config.init_rank_w_ie, config.init_rank_spectrum) == (None, None, "truncated")
    params = config.network_params()
    drawn, started = init_weights(params, config.seed), initial_weights(config, params)
    for name, matrix in drawn.as_dict().items():
        assert matrix.tobytes() == getattr(started, name).tobytes(), name
    model = build_model(dataclasses.replace(config, dtype="float64"), params).to_network_weights(stored=True)
    assert model.w_ei.tobytes() == drawn.w_ei.tobytes()


def test_config_rank_fields_reach_the_model_and_round_trip():
    config = TrainConfig(network=SMOKE_NETWORK, dtype="float64", init_rank_w_ei=1, init_rank_w_ie=3)
    assert TrainConfig.from_json(config.to_json()) == config
    stored = build_model(config, config.network_params()).to_network_weights(stored=True)
    assert np.linalg.matrix_rank(stored.w_ei) == 1 and np.linalg.matrix_rank(stored.w_ie) == 3


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"init_rank_w_ei": 0}, "TrainConfig.init_rank_w_ei: must be an int >= 1 or None"),
        ({"init_rank_w_ie": 2.0}, "TrainConfig.init_rank_w_ie: must be an int >= 1 or None"),
        ({"init_rank_w_ei": True}, "TrainConfig.init_rank_w_ei: must be an int >= 1 or None"),
        ({"init_rank_spectrum": "equal"}, "TrainConfig.init_rank_spectrum: must be one of truncated, flat"),
        (
            {"init_rank_w_ei": 2, "network": {"connectivity": {"p_ei": 0.5}}},
            r"TrainConfig.init_rank_w_ei: needs all-to-all edges \(network connectivity p_ei = 1\)",
        ),
    ],
)
def test_bad_rank_fields_are_refused_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**fields)


def test_train_flags_set_the_rank_fields(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake_train(config, run_dir, *, progress=True):
        seen["config"] = config
        return run_records.TrainResult("completed", run_dir, config, [{"epoch": 0}], model=None, retries=0)

    monkeypatch.setattr(training, "train", fake_train)
    argv = ["train", tmp_path / "run", "--init-rank-w-ei", "2", "--init-rank-w-ie", "4", "--init-rank-spectrum", "flat"]
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    config = seen["config"]
    assert (config.init_rank_w_ei, config.init_rank_w_ie, config.init_rank_spectrum) == (2, 4, "flat")
    code, err = run_cli(["train", tmp_path / "run", "--init-rank-w-ei", "0"], capsys)
    assert code == 2 and "--init-rank-w-ei" in err


# --- the protocol ---------------------------------------------------------------------------------------


def test_loop_rank_resolves_with_the_rank_in_every_run_config():
    protocol = get_protocol("loop_rank")
    assert (protocol.tier, protocol.seeds) == ("survey", (42, 43, 44))
    runs = protocol.runs()
    assert len(runs) == 24
    expected = {
        "loop_rank_1": (1, "truncated"),
        "loop_rank_2": (2, "truncated"),
        "loop_rank_4": (4, "truncated"),
        "loop_rank_16": (16, "truncated"),
        "loop_rank_full": (None, "truncated"),
        "loop_rank_flat_2": (2, "flat"),
        "loop_rank_flat_4": (4, "flat"),
        "loop_rank_flat_16": (16, "flat"),
    }
    assert list(dict.fromkeys(r.condition for r in runs)) == list(expected)
    for run in runs:
        config = run.config
        rank, spectrum = expected[run.condition]
        assert (config.init_rank_w_ei, config.init_rank_w_ie, config.init_rank_spectrum) == (rank, rank, spectrum)
        assert config.train_w_ei and config.train_w_ie and config.init_w_ei == config.init_w_ie == "canonical"
        assert config.record_every == 4


def test_a_rank_one_smoke_run_starts_from_a_rank_one_loop_and_draws_the_figure(tmp_path):
    from protocols.report import write_report

    protocol = Protocol(
        name="loop_rank",
        conditions=("loop_rank_1",),
        tier="smoke",
        seeds=(42,),
        overrides={"network": small_network(init__input_scale_us=0.06).to_dict(), "engine": "fused"},
        validation_backend="numpy",
    )
    (status,) = run_protocol(protocol, tmp_path, progress=False)
    assert status["status"] == "completed" and status["validation"]["verdict"] == "pass"
    (record,) = load_runs(tmp_path)
    initial = load_trajectory(record.run_dir).matrices  # the step-0 record: the effective loop the run started from
    assert np.linalg.matrix_rank(initial["w_ei"][0]) == 1 and np.linalg.matrix_rank(initial["w_ie"][0]) == 1
    redrawn = initial_effective(record)  # what the protocol's figures redraw from the config
    np.testing.assert_array_equal(initial["w_ei"][0], redrawn["w_ei"].astype(np.float32))
    _, figures = write_report(tmp_path)
    assert (figures / "loop_rank.png").is_file()
    (row,) = json.loads((figures / "loop_rank.json").read_text())
    assert row["condition"] == "loop_rank_1" and row["init_rank_w_ei"] == 1
    assert row["initial_effective_rank_w_ei"] == pytest.approx(1.0, abs=1e-6)
    assert row["relative_change_w_ei"] > 0 and 0 < row["linear_cka_e"] <= 1 + 1e-9
