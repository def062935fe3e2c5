"""Runs trained together as one batched model (bridge.batched_training) give what each gives alone."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from helpers import FROZEN_PING_PROTOCOL, SMOKE, run_cli

import bridge.memory
from biosim.weight_files import load_weights
from bridge.batched_engine import CHUNK_STEPS, run_networks, run_output, stack_weights
from bridge.batched_training import group_runs, train_batched
from bridge.dynamics import make_constants
from bridge.eager import run_network
from bridge.memory import batched_run_bytes, runs_that_fit
from bridge.run_records import load_model
from bridge.train_config import ConfigError, TrainConfig, build_model
from bridge.training import BatchContext, train
from bridge.validation import validate
from protocols.runner import run_protocol

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = dataclasses.replace(SMOKE, n_train=8)
"""Two epochs of one batch: two Adam steps per run."""

CONFIGS = [
    BASE,  # every matrix trains
    dataclasses.replace(BASE, seed=6, train_w_ei=False, train_w_ie=False),  # the loop frozen
    dataclasses.replace(BASE, seed=7, train_w_ie=False, init_w_ei="zero", lr=1e-3),
]
"""Three runs of one shape: other seeds, other trainable matrices, another start and learning rate."""

FUSED_TOLERANCE = 1e-13
"""Against runs trained alone by the fused engine, relative to each matrix's largest entry: its hand-derived
adjoint sums the gradients in another order than autograd (1e-12 relative in float64, docs/engine.md); measured
here: 1.2e-15 at most (elementwise, entries near zero differ by up to 9e-13 of themselves)."""


def _timeless(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in ("wall_time_s", "elapsed_s")} for m in metrics]


def _poison_at(epoch: int, step: int):
    """A hook that makes the loss NaN once, at (epoch, step)."""
    done = []

    def hook(context: BatchContext) -> None:
        if (context.epoch, context.step) == (epoch, step) and not done:
            done.append(True)
            context.loss = context.loss * float("nan")

    return hook


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    root = tmp_path_factory.mktemp("batched")
    return train_batched([(config, root / f"run{k}") for k, config in enumerate(CONFIGS)])


FLOAT32_TOLERANCE = 1e-6
"""float32, relative to the tensor's largest entry: MKL's batched sgemm may sum a run's slice other than the single
product (the readout of the second run here: scores one float32 ulp apart, 7.5e-9 in 0.19); the spikes agree."""


def _same(a: torch.Tensor, b: torch.Tensor, exact: bool) -> None:
    if exact:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=FLOAT32_TOLERANCE * float(b.detach().abs().max()))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batched_engine_equals_the_eager_engine_run_by_run(dtype):
    """Spikes, outputs and gradients of two stacked networks are each network's alone: bit for bit in float64."""
    exact = dtype == "float64"
    torch.manual_seed(0)
    configs = [dataclasses.replace(BASE, seed=seed, engine="eager", dtype=dtype) for seed in (1, 2)]
    models = [build_model(config, config.network_params()) for config in configs]
    params = configs[0].network_params()
    n_steps, batch = params.simulation.n_steps, 3
    x = torch.rand(2, batch, n_steps, params.connectivity.n_input) < 0.05
    v_e = torch.rand(2, batch, params.connectivity.n_e, dtype=configs[0].torch_dtype()) * 10 - 65
    v_i = torch.rand(2, batch, params.connectivity.n_i, dtype=configs[0].torch_dtype()) * 10 - 65
    constants = make_constants(params)
    stacked = stack_weights([m.effective_weights() for m in models])
    output = run_networks(x, v_e, v_i, stacked, constants, models[0].spike_fn, record_population=True, chunk_steps=7)
    output.scores.square().sum().backward()
    for k, model in enumerate(models):
        own = run_output(output, k)
        alone = run_network(
            x[k], v_e[k], v_i[k], model.effective_weights(), constants, model.spike_fn, record_population=True
        )
        assert torch.equal(own.spike_counts_e, alone.spike_counts_e)
        assert torch.equal(own.population_e, alone.population_e)
        _same(own.scores, alone.scores, exact)
        _same(own.final_state.v_i, alone.final_state.v_i, exact)
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad(set_to_none=True)
        alone.scores.square().sum().backward()
        for grad, p in zip(grads, (p for p in model.parameters() if p.requires_grad), strict=True):
            _same(grad, p.grad, exact)


def test_runs_trained_together_equal_runs_trained_alone(batched, tmp_path):
    """Bit-identical to each run trained alone by the eager engine; within FUSED_TOLERANCE of the fused one."""
    for k, (config, together) in enumerate(zip(CONFIGS, batched, strict=True)):
        trainable = config.trainable()
        assert together.status == "completed" and together.model.trainable == {
            name: trainable[name] for name in together.model.matrices
        }
        eager = train(dataclasses.replace(config, engine="eager"), tmp_path / f"eager{k}", progress=False)
        fused = train(dataclasses.replace(config, engine="fused"), tmp_path / f"fused{k}", progress=False)
        assert _timeless(together.metrics) == _timeless(eager.metrics)
        for name in together.model.matrices:
            mine = getattr(together.model, name).detach()
            assert torch.equal(mine, getattr(eager.model, name).detach()), name
            scale = float(mine.abs().max())
            torch.testing.assert_close(mine, getattr(fused.model, name).detach(), rtol=0, atol=FUSED_TOLERANCE * scale)
            if not trainable[name]:
                assert torch.equal(mine, getattr(build_model(config, config.network_params()), name).detach())


def test_a_rollback_in_one_run_leaves_the_others_unchanged(batched, tmp_path):
    hooks = [None, _poison_at(2, 0), None]
    results = train_batched([(c, tmp_path / f"run{k}") for k, c in enumerate(CONFIGS)], hooks=hooks)
    assert [r.retries for r in results] == [0, 1, 0]
    events = [json.loads(line) for line in (tmp_path / "run1" / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["nonfinite", "rollback"] and events[0]["epoch"] == 2
    for k in (0, 2):
        assert not (tmp_path / f"run{k}" / "events.jsonl").exists()
        assert _timeless(results[k].metrics) == _timeless(batched[k].metrics)
        for name in results[k].model.matrices:
            assert torch.equal(getattr(results[k].model, name), getattr(batched[k].model, name)), (k, name)
    # The rolled-back run is what it gives alone under the same poisoning.
    alone = train(CONFIGS[1], tmp_path / "alone", progress=False, hook=_poison_at(2, 0))
    assert alone.retries == 1 and _timeless(alone.metrics) == _timeless(results[1].metrics)
    for name in alone.model.matrices:
        assert torch.equal(getattr(alone.model, name), getattr(results[1].model, name)), name


def test_run_directories_are_complete_resume_and_validate(batched):
    for result in batched:
        run_dir = result.run_dir
        for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "final.json", "weights.npz", "spectrum.json"):
            assert (run_dir / name).is_file(), name
        final = json.loads((run_dir / "final.json").read_text())
        assert final["status"] == "completed" and final["epochs_completed"] == BASE.epochs
        stored = load_weights(run_dir / "weights.npz").stored
        reloaded = load_model(run_dir)
        for name in result.model.matrices:
            np.testing.assert_array_equal(getattr(stored, name), getattr(result.model.to_network_weights(), name))
            assert torch.equal(getattr(reloaded, name), getattr(result.model, name))
    # Finished runs are returned as stored, as train() returns them.
    again = train_batched([(c, r.run_dir) for c, r in zip(CONFIGS, batched, strict=True)])
    assert [_timeless(r.metrics) for r in again] == [_timeless(r.metrics) for r in batched]
    report = validate(batched[1].run_dir, backend="numpy", progress=False)
    assert report["verdict"] == "pass", report


def test_runs_of_other_shapes_are_grouped_apart_and_refused_together(tmp_path):
    other = dataclasses.replace(BASE, batch_size=4)
    assert group_runs([CONFIGS[0], other, CONFIGS[1], CONFIGS[2]]) == [[0, 2, 3], [1]]
    with pytest.raises(ConfigError, match="TrainConfig.batch_size"):
        train_batched([(CONFIGS[0], tmp_path / "a"), (other, tmp_path / "b")])
    assert not (tmp_path / "a").exists()


def test_protocol_with_batch_runs_trains_validates_and_skips_finished(tmp_path, monkeypatch, capsys):
    protocol = dataclasses.replace(FROZEN_PING_PROTOCOL, conditions=("frozen_ping", "trainable_small_init"))
    monkeypatch.setattr(bridge.memory, "runs_that_fit", lambda config, memory, chunk_steps: 1)
    statuses = run_protocol(protocol, tmp_path, progress=False, batch_runs=True)
    assert "2 runs of one shape" in capsys.readouterr().err  # and, as only one fits, one at a time
    assert [s["status"] for s in statuses] == ["completed", "completed"]
    assert all(s["validation"]["verdict"] == "pass" for s in statuses), statuses
    mtimes = [(tmp_path / s["run_id"] / "status.json").stat().st_mtime_ns for s in statuses]
    again = run_protocol(protocol, tmp_path, progress=False, batch_runs=True)
    assert [(tmp_path / s["run_id"] / "status.json").stat().st_mtime_ns for s in again] == mtimes
    with pytest.raises(ValueError, match="processes: batched runs"):
        run_protocol(protocol, tmp_path / "other", processes=2, progress=False, batch_runs=True)


def test_cli_batch_runs_flag_reaches_the_runner(monkeypatch, capsys, tmp_path):
    import protocols.report
    import protocols.runner

    seen = {}

    def fake_run(protocol, out, **options):
        seen.update(options)
        return []

    monkeypatch.setattr(protocols.runner, "run_protocol", fake_run)
    table = tmp_path / "table.md"
    table.write_text("")
    monkeypatch.setattr(protocols.report, "write_report", lambda out, formats: (table, tmp_path))
    for flags, expected in (([], None), (["--batch-runs"], True), (["--no-batch-runs"], False)):
        code, _ = run_cli(["protocol", "run", "dale_pruning", "--tier", "smoke", "--out", tmp_path, *flags], capsys)
        assert code == 0 and seen["batch_runs"] is expected, flags


def test_the_medium_protocol_fits_on_one_80_gb_gpu():
    """The estimate (docs/gpu.md): dale_pruning's 12 medium runs (batch 256, 2000 steps) train as one on 80 GB."""
    config = TrainConfig(tier="medium", dtype="float32")
    parts = batched_run_bytes(config, CHUNK_STEPS)
    assert parts["chunk"] > parts["checkpoints"] and parts["raster"] > parts["weights"]
    assert runs_that_fit(config, 80 * 10**9, CHUNK_STEPS) >= 12
    assert runs_that_fit(config, 141 * 10**9, CHUNK_STEPS) > runs_that_fit(config, 80 * 10**9, CHUNK_STEPS)


def test_a_crashed_batch_resumes_to_the_same_weights(batched, tmp_path):
    def crash(context: BatchContext) -> None:
        if (context.epoch, context.step) == (2, 0):
            raise RuntimeError("simulated crash")

    jobs = [(c, tmp_path / f"run{k}") for k, c in enumerate(CONFIGS)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_batched(jobs, hooks=[None, crash, None])
    assert all(not (tmp_path / f"run{k}" / "final.json").exists() for k in range(3))
    resumed = train_batched(jobs)
    for again, first in zip(resumed, batched, strict=True):
        assert _timeless(again.metrics) == _timeless(first.metrics)
        for name in first.model.matrices:
            assert torch.equal(getattr(again.model, name), getattr(first.model, name)), name


def test_runs_on_cuda_are_batched_by_default(tmp_path, monkeypatch):
    import protocols.runner

    called = []
    monkeypatch.setattr(protocols.runner, "_run_batched", lambda specs, out, progress, on_done: called.append(specs))
    overrides = {**FROZEN_PING_PROTOCOL.overrides, "device": "cuda"}
    run_protocol(dataclasses.replace(FROZEN_PING_PROTOCOL, overrides=overrides), tmp_path / "cuda", progress=False)
    assert len(called) == 1 and called[0][0].config.device == "cuda"
