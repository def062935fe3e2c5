"""Tests of bridge.regularisers: the gamma-power estimator, the W_EI distance, and their use in training."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import SMOKE

from bridge.regularisers import gamma_fraction, gamma_shortfall, w_ei_distance
from bridge.train_config import ConfigError, TrainConfig
from bridge.training import train

DT_MS = 0.1


def rhythm(frequency_hz: float, n_steps: int = 2000, batch: int = 2) -> torch.Tensor:
    t_ms = torch.arange(n_steps, dtype=torch.float64) * DT_MS
    return (1.0 + torch.sin(2 * math.pi * frequency_hz * t_ms / 1000.0)).expand(batch, -1).clone()


def test_gamma_fraction_reads_the_band():
    assert float(gamma_fraction(rhythm(40.0), DT_MS).min()) > 0.95
    assert float(gamma_fraction(rhythm(8.0), DT_MS).max()) < 0.05  # theta, below the band
    assert float(gamma_fraction(rhythm(200.0), DT_MS).max()) < 0.05  # above it
    # White noise spreads its power evenly: the band's share of the 1-500 Hz spectrum, 81/500.
    noise = torch.rand(64, 2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(float(gamma_fraction(noise, DT_MS).mean()) - 81 / 500) < 0.04
    # A silent population costs the whole penalty, and stays finite.
    assert float(gamma_shortfall(torch.zeros(2, 2000, dtype=torch.float64), DT_MS)) == 1.0


def test_gamma_estimator_gradient_matches_finite_differences():
    population = torch.rand(2, 400, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 5
    population.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p: gamma_shortfall(p, DT_MS, transient_ms=5.0), (population,), eps=1e-6, atol=1e-8, rtol=1e-5
    )
    # the transient carries no gradient
    gamma_shortfall(population, DT_MS, transient_ms=5.0).backward()
    assert float(population.grad[:, :50].abs().max()) == 0.0 and float(population.grad[:, 50:].abs().max()) > 0


def test_gamma_estimator_rejects_what_it_cannot_read():
    with pytest.raises(ValueError, match="whole number of steps"):
        gamma_fraction(rhythm(40.0), 0.3, bin_ms=1.0)
    with pytest.raises(ValueError, match="at least 4 bins"):
        gamma_fraction(rhythm(40.0, n_steps=60), DT_MS, transient_ms=5.0)


def test_w_ei_distance_and_its_gradient():
    reference = torch.full((4, 3), 2.0, dtype=torch.float64)
    assert float(w_ei_distance(reference.clone(), reference)) == 0.0
    pruned = reference.clone()
    pruned[0] = -1.0  # one row pushed below zero (pruned)
    w = pruned.requires_grad_(True)
    distance = w_ei_distance(w, reference)
    assert float(distance.detach()) == pytest.approx((3 * 3 / 12) / 2.0)
    distance.backward()
    # the penalty pulls the pruned entries back up: a negative gradient (descent raises them)
    assert bool((w.grad[0] < 0).all()) and float(w.grad[1:].abs().max()) == 0.0
    with pytest.raises(ValueError, match="zero mean"):
        w_ei_distance(reference, torch.zeros_like(reference))


def test_config_checks_regulariser_strengths():
    with pytest.raises(ConfigError, match="reg_gamma_power"):
        TrainConfig(reg_gamma_power=-1.0)
    with pytest.raises(ConfigError, match="reg_w_ei_distance.*does not train"):
        TrainConfig(reg_w_ei_distance=1.0, train_w_ei=False)
    # an older config without the fields reads as the regularisers off
    data = TrainConfig().to_dict()
    del data["reg_gamma_power"], data["reg_w_ei_distance"]
    assert TrainConfig.from_dict(data) == TrainConfig()


def test_regularised_training_logs_the_penalties_and_changes_the_weights(tmp_path):
    base = dataclasses.replace(SMOKE, epochs=1)
    plain = train(base, tmp_path / "plain", progress=False)
    regularised = train(
        dataclasses.replace(base, reg_w_ei_distance=10.0, reg_gamma_power=10.0), tmp_path / "reg", progress=False
    )
    last = regularised.metrics[-1]
    assert 0.0 <= last["penalty_gamma_shortfall"] <= 1.0
    assert last["penalty_w_ei_distance"] > 0.0  # one epoch of Adam moved W_EI off the reference
    assert "penalty_gamma_shortfall" not in plain.metrics[-1]
    assert not torch.equal(plain.model.w_ei, regularised.model.w_ei)
