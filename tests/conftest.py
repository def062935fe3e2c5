"""Shared fixtures: small networks, a clean Brian2 device per test, quiet threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biosim.params import NetworkParams


@pytest.fixture(autouse=True)
def _clean_brian2_device():
    """Every test starts and ends on Brian2's runtime device with default preferences."""
    import brian2 as b2

    yield
    b2.device.reinit()
    b2.set_device("runtime")
    b2.device.reinit()
    b2.device.activate()
    b2.prefs.reset_to_defaults()


@pytest.fixture(scope="session", autouse=True)
def _torch_settings():
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks run faster on one thread: no fork/join stalls when other processes hold the cores.

    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``; the session's count comes back after.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def small_params() -> NetworkParams:
    """A scaled-down network (fan-in normalisation keeps it in a similar regime)."""
    return NetworkParams().replace(
        connectivity__n_e=128, connectivity__n_i=32, simulation__trial_ms=60.0, simulation__transient_ms=10.0
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
