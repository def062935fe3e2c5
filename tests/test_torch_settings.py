"""The library leaves torch's process-wide settings as it found them (bridge.torch_settings)."""

from __future__ import annotations

import dataclasses

import torch
from helpers import SMOKE

from bridge.torch_settings import denormals_flushed, flushed_denormals, torch_threads


def global_settings() -> dict:
    return {
        "denormals_flushed": denormals_flushed(),
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "grad_enabled": torch.is_grad_enabled(),
        "default_dtype": torch.get_default_dtype(),
    }


def test_context_managers_restore_what_they_change():
    torch.set_flush_denormal(False)
    with flushed_denormals():
        assert denormals_flushed()
    assert not denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        with flushed_denormals():
            assert denormals_flushed()
        assert denormals_flushed()  # it was on before: left on
    finally:
        torch.set_flush_denormal(False)
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_training_validation_and_the_engines_leave_global_settings_alone(tmp_path):
    from bridge.run_records import load_model
    from bridge.simulate import run_mirror
    from bridge.training import train

    torch.set_flush_denormal(False)
    before = global_settings()
    config = dataclasses.replace(SMOKE, epochs=1, engine="fused", dtype="float32")
    train(config, tmp_path / "run", progress=False)
    assert global_settings() == before
    model = load_model(tmp_path / "run")
    from biosim.simulation import load_test_trials

    params = model.params
    trials = load_test_trials(params, 2, seed=0)
    for engine in ("fused", "eager"):
        run_mirror(params, model.to_network_weights(stored=False), trials, engine=engine)
        assert global_settings() == before, engine
