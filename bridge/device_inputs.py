"""Poisson input spikes drawn on the device, from pixel intensities, with a generator on that device.

:func:`biosim.inputs.make_trials` draws every trial's spikes on the CPU with numpy (one generator per
trial, so that Brian2 and the mirror replay the same spikes), and the raster then travels to the device.
On a GPU, :func:`input_spikes` draws them where they are used instead: the same Bernoulli process
(pixel ``j`` spikes at a step with probability ``intensity_j / 255 * max_rate_hz * dt``, at most once per
step), from a :class:`torch.Generator` on the tensors' device.

These are not the CPU's draws: a different generator (Philox on CUDA, numpy's PCG64 per trial on the CPU),
in a different order, so the spikes differ from :func:`~biosim.inputs.make_trials`' for the same seed, and
a run that uses them cannot be replayed by Brian2 from its seed. Their distribution is the same (rates per
pixel; tests/test_device_inputs.py checks it on the CPU). Successive calls continue the generator, so a
trial can be drawn chunk by chunk; the spikes then depend on the chunk lengths.
"""

from __future__ import annotations

import torch

from biosim.inputs import MAX_INTENSITY
from biosim.params import NetworkParams, ParameterError

__all__ = ["device_generator", "spike_probabilities", "input_spikes"]


def device_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(int(seed))


def spike_probabilities(images: torch.Tensor, params: NetworkParams) -> torch.Tensor:
    """Per-step spike probability of each input, ``(batch, n_input)`` float32, on ``images``' device."""
    max_probability = params.input.max_rate_hz * params.simulation.dt_ms * 1e-3
    if max_probability > 1:
        raise ParameterError(
            f"input.max_rate_hz ({params.input.max_rate_hz}) times simulation.dt_ms ({params.simulation.dt_ms}) "
            "exceeds one spike per step"
        )
    if images.dim() != 2 or images.shape[1] != params.connectivity.n_input:
        raise ValueError(f"images must be (batch, {params.connectivity.n_input}), got {tuple(images.shape)}")
    return images.to(torch.float32) * (max_probability / MAX_INTENSITY)


def input_spikes(probabilities: torch.Tensor, n_steps: int, generator: torch.Generator) -> torch.Tensor:
    """``n_steps`` steps of input spikes, ``(batch, n_steps, n_input)`` bool, drawn on the generator's device.

    ``probabilities``: :func:`spike_probabilities`, on the generator's device.
    """
    if probabilities.device != generator.device:
        raise ValueError(f"probabilities on {probabilities.device}, generator on {generator.device}: use one device")
    batch, n_input = probabilities.shape
    uniforms = torch.rand(
        (batch, n_steps, n_input), generator=generator, device=probabilities.device, dtype=probabilities.dtype
    )
    return uniforms < probabilities[:, None, :]
