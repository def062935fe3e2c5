"""The named recipes (``bridge.presets``) and the ladder between them (``reference_ladder``)."""

import pytest
import torch
from helpers import small_network

from biosim.params import NetworkParams
from biosim.simulation import load_test_trials, summarize
from biosim.weights import init_weights
from bridge.presets import PRESETS, Preset, get_preset
from bridge.run_records import read_run_config
from bridge.simulate import run_mirror
from bridge.train_config import TrainConfig
from protocols.cli import main
from protocols.definitions import CONDITIONS, PROTOCOLS, REFERENCE_FACTORS, get_protocol

CALIBRATION_BAND = {"rate_e_hz": (6.0, 11.0), "rate_i_hz": (30.0, 46.0), "gamma_peak_hz": (30.0, 46.0)}


def test_reference_preset_holds_the_study_recipe():
    reference = get_preset("reference")
    network = reference.network
    assert (network.membrane_e.c_m_nf, network.membrane_e.g_leak_us, network.membrane_e.refractory_ms) == (
        1.0,
        0.05,
        3.0,
    )
    assert network.membrane_e.tau_m_ms == pytest.approx(20.0) and network.membrane_i.tau_m_ms == pytest.approx(5.0)
    assert network.membrane_i.refractory_ms == 1.5 and network.synapse.tau_gaba_ms == 9.0
    assert network.input.max_rate_hz == 25.0
    config = TrainConfig(**reference.config_fields(), tier="medium").resolved()
    assert (config.batch_size, config.epochs, config.n_train, config.n_test) == (256, 100, 1600, 400)
    assert (config.lr, config.grad_clip, config.grad_clip_mode, config.w_out_unit) == (4e-4, 1.0, "global", 1.0)
    assert config.membrane_grad_scale == 1e-3
    assert config.reg_w_ei_distance == 0 and config.reg_gamma_power == 0


def test_project_preset_is_the_defaults():
    project = TrainConfig(**get_preset("project").config_fields()).resolved()
    assert project == TrainConfig().resolved()


def test_preset_rejects_sizes_and_unknown_names():
    with pytest.raises(ValueError, match="batch_size"):
        Preset("x", "", NetworkParams(), {"batch_size": 256})
    with pytest.raises(ValueError, match="unknown preset 'nope'; valid presets: project, reference"):
        get_preset("nope")
    with pytest.raises(ValueError, match="unknown preset"):
        get_protocol("dale_pruning", preset="nope")


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_network_is_in_the_calibration_band(seed):
    """The frozen, untrained network under the reference preset is "PING on" (mirror, float32: a fast check).

    The mirror is spike-identical to Brian2 in float64 (tests/test_backend_identity.py); the Brian2
    calibration record is in docs/reference.md.
    """
    params = get_preset("reference").network
    trials = load_test_trials(params, 20, seed=seed)
    result = run_mirror(params, init_weights(params, seed=seed), trials, dtype=torch.float32, batch_size=20)
    summary = summarize(result, params, trials.labels)
    for key, (low, high) in CALIBRATION_BAND.items():
        assert low <= getattr(summary, key) <= high, f"{key} = {getattr(summary, key):.2f} outside [{low}, {high}]"
    assert summary.gamma_relative_power > 3.0


def test_protocol_runs_start_from_the_preset_and_overrides_keep_its_constants():
    small = {"connectivity": {"n_e": 64, "n_i": 16}}
    protocol = get_protocol("dale_pruning", tier="cpu", preset="reference", network=small, dtype="float64")
    for run in protocol.runs():
        config = run.config.resolved()
        network = config.network_params()
        assert network.connectivity.n_e == 64 and network.membrane_e.c_m_nf == 1.0
        assert network.input.max_rate_hz == 25.0 and config.grad_clip_mode == "global"
        assert config.dtype == "float64" and config.batch_size == 16  # the tier's size, not the study's
    frozen = {r.condition: r.config for r in protocol.runs()}["frozen_ping"]
    assert not frozen.train_w_ei
    assert type(protocol).from_dict(protocol.to_dict()) == protocol
    project = get_protocol("dale_pruning", tier="cpu")
    assert project.preset == "project"
    assert all(run.config.network_params() == NetworkParams() for run in project.runs())


def _resolved(condition: str) -> dict:
    (run,) = get_protocol("reference_ladder", conditions=(condition,), seeds=(42,)).runs()
    fields = run.config.resolved().to_dict()
    network = fields.pop("network")
    return {**fields, **{f"network.{s}.{k}": v for s, values in network.items() for k, v in values.items()}}


def _differences(a: str, b: str) -> set[str]:
    first, second = _resolved(a), _resolved(b)
    return {key for key in first if first[key] != second[key]}


def test_ladder_changes_one_factor_per_rung_and_ends_at_the_reference():
    names = [c.name for c in PROTOCOLS["reference_ladder"]]
    rungs = [n for n in names if n.startswith("ladder_")]
    assert len(rungs) == len(REFERENCE_FACTORS) + 1
    for (before, after), (_, project, reference) in zip(
        zip(rungs[:-1], rungs[1:], strict=True), REFERENCE_FACTORS.values(), strict=True
    ):
        changed = _differences(before, after)
        assert changed == set(reference) and set(project) <= changed, (before, after, changed)
    # Rung 0 is the project's recipe on the trainable canonical loop; rung 4 is the reference recipe.
    first, defaults = _resolved(rungs[0]), TrainConfig().to_dict()
    for key in ("membrane_grad_scale", "grad_clip_mode", "w_out_unit", "lr", "batch_size"):
        assert first[key] == (defaults[key] if key != "batch_size" else 16), key
    assert first["train_w_ei"] and first["train_w_ie"] and first["init_w_ei"] == "canonical"
    reference_at_study = get_protocol(
        "dale_pruning", preset="reference", conditions=("trainable_ping_init",), seeds=(42,)
    ).runs()[0]
    ladder_reference = get_protocol("reference_ladder", conditions=("ladder_4_readout_unit",), seeds=(42,)).runs()[0]
    assert ladder_reference.config.resolved() == reference_at_study.config.resolved()
    # Every run of the ladder takes the same number of Adam steps.
    sizes = {name: _resolved(name) for name in names}
    steps = {name: c["n_train"] // c["batch_size"] * c["epochs"] for name, c in sizes.items()}
    assert set(steps.values()) == {120}


def test_reverse_conditions_set_back_one_factor_of_the_reference():
    for factor in ("constants", "damping", "global_clip"):
        changed = _differences("ladder_4_readout_unit", f"reverse_{factor}")
        assert changed == set(REFERENCE_FACTORS[factor][2]), factor
        assert CONDITIONS[f"reverse_{factor}"].settings["train_w_ei"] is True
    # The readout unit set back is rung 3 itself, so it has no reverse condition of its own.
    assert _differences("ladder_4_readout_unit", "ladder_3_global_clip") == set(REFERENCE_FACTORS["readout_unit"][2])
    assert "reverse_readout_unit" not in CONDITIONS


def test_no_two_ladder_conditions_are_the_same_run():
    names = [c.name for c in PROTOCOLS["reference_ladder"]]
    configs = [_resolved(name) for name in names]
    for k, first in enumerate(configs):
        for name, second in zip(names[k + 1 :], configs[k + 1 :], strict=True):
            assert first != second, (names[k], name)


def test_cli_preset_flags_are_checked_and_take_effect(tmp_path, capsys):
    for argv in (
        ["train", str(tmp_path / "x"), "--preset", "nope"],
        ["protocol", "run", "dale_pruning", "--preset", "x"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "--preset: invalid choice" in capsys.readouterr().err
    # The preset's recipe and network, with an explicit flag on top of it.
    run_dir = tmp_path / "run"
    argv = ["train", str(run_dir), "--preset", "reference", "--tier", "smoke", "--epochs", "1", "--quiet"]
    assert main([*argv, "--grad-clip-mode", "per_matrix"]) == 0
    config = read_run_config(run_dir / "config.json")
    assert config.grad_clip_mode == "per_matrix" and config.w_out_unit == 1.0 and config.membrane_grad_scale == 1e-3
    assert config.network_params() == PRESETS["reference"].network


def test_ladder_runs_end_to_end_and_is_drawn(tmp_path):
    """Two rungs on a tiny network: trained, validated, tabulated and drawn by the protocol report."""
    from protocols.report import write_report
    from protocols.runner import run_protocol

    small = small_network(simulation__trial_ms=40.0, simulation__transient_ms=10.0)
    protocol = get_protocol(
        "reference_ladder",
        tier="smoke",
        seeds=(42,),
        conditions=("ladder_0_project", "ladder_4_readout_unit"),
        validation_backend="numpy",
        network={"connectivity": small.to_dict()["connectivity"], "simulation": small.to_dict()["simulation"]},
        engine="eager",
    )
    statuses = run_protocol(protocol, tmp_path, progress=False)
    assert [s["status"] for s in statuses] == ["completed", "completed"]
    configs = {r.condition: r.config.resolved() for r in protocol.runs()}
    assert configs["ladder_4_readout_unit"].network_params().membrane_e.c_m_nf == 1.0
    assert configs["ladder_0_project"].network_params().membrane_e.c_m_nf == NetworkParams().membrane_e.c_m_nf
    _, figures = write_report(tmp_path)
    table = (figures / "reference_ladder.md").read_text()
    assert "0 project" in table and "4 +readout unit" in table
    assert (figures / "reference_ladder.png").stat().st_size > 0
    assert (figures / "reference_ladder_trajectories.png").stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for a machine without a GPU")
def test_protocol_device_cuda_without_a_gpu_is_refused_before_any_run(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["protocol", "run", "dale_pruning", "--preset", "reference", "--device", "cuda", "--out", str(out)]
    assert main(argv) == 2
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err
    assert not out.exists()
