"""Input spikes drawn with a torch generator (bridge/device_inputs.py): the rates of the Poisson input, on the
CPU (on a GPU the same code draws with the device's generator)."""

from __future__ import annotations

import pytest
import torch
from helpers import small_network

from biosim.params import ParameterError
from bridge.device_inputs import device_generator, input_spikes, spike_probabilities


def test_spike_rates_follow_the_pixel_intensities():
    params = small_network()
    n_input = params.connectivity.n_input
    images = torch.zeros(2, n_input)
    images[0, :100] = 255.0
    images[1, 100:200] = 64.0
    probabilities = spike_probabilities(images, params)
    expected = images / 255.0 * params.input.max_rate_hz * params.simulation.dt_ms * 1e-3
    torch.testing.assert_close(probabilities, expected)
    n_steps = 4000
    spikes = input_spikes(probabilities, n_steps, device_generator(7, "cpu"))
    assert spikes.shape == (2, n_steps, n_input) and spikes.dtype == torch.bool
    assert not spikes[probabilities[:, None, :].expand_as(spikes) == 0].any()  # dark pixels never spike
    for trial, pixels in ((0, slice(0, 100)), (1, slice(100, 200))):
        p = float(probabilities[trial, pixels.start])
        draws = spikes[trial, :, pixels].sum().item()
        trials = n_steps * 100
        sigma = (trials * p * (1 - p)) ** 0.5
        assert abs(draws - trials * p) < 5 * sigma, (trial, draws, trials * p)


def test_draws_repeat_with_the_seed_and_continue_the_generator():
    params = small_network()
    probabilities = spike_probabilities(torch.full((1, params.connectivity.n_input), 200.0), params)
    first = input_spikes(probabilities, 50, device_generator(3, "cpu"))
    assert torch.equal(first, input_spikes(probabilities, 50, device_generator(3, "cpu")))
    generator = device_generator(3, "cpu")
    input_spikes(probabilities, 50, generator)
    assert not torch.equal(first, input_spikes(probabilities, 50, generator))


def test_bad_inputs_name_the_problem():
    params = small_network()
    with pytest.raises(ValueError, match="images must be"):
        spike_probabilities(torch.zeros(2, 3), params)
    with pytest.raises(ParameterError, match="max_rate_hz"):
        spike_probabilities(torch.zeros(1, params.connectivity.n_input), params.replace(input__max_rate_hz=1e5))
