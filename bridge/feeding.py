"""The digits a training run sees: which ones, in which order, with which input spikes.

Randomness is explicit. Weights come from ``init_weights(params, seed)``. The
training inputs of epoch ``e`` are ``make_trials(..., seed=derived(seed, 1,
e), trial_ids=global sample index)`` and the test inputs are fixed for the
run (``derived(seed, 2)``), so a sample's spikes never depend on the batch it
lands in. The sample order of epoch ``e`` is ``torch.randperm`` with a
generator seeded from ``derived(seed, 3, e)``. ``derived`` is
``numpy.random.SeedSequence`` (:func:`derived_seed`). Nothing draws from a
global generator.

Digit streams (``stream_digits > 1``, :mod:`biosim.streams`): the digits are
drawn, batched and given input spikes exactly as above; then each batch's
digits, in batch order, are joined into streams of ``stream_digits`` without a
reset between them (the test digits, in order, likewise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from biosim.data import Dataset, digits_sha256, load_split
from biosim.inputs import TrialSet, make_trials
from biosim.params import NetworkParams
from biosim.streams import StreamSet, make_streams

from .train_config import ConfigError, TrainConfig

__all__ = ["TrainingDigits", "data_record", "derived_seed", "run_digits", "test_stream_set", "test_trial_set"]

# Stream tags of the seeds derived from TrainConfig.seed.
_TRAIN_INPUT_STREAM = 1
_TEST_INPUT_STREAM = 2
_SHUFFLE_STREAM = 3


def derived_seed(seed: int, *stream: int) -> int:
    """A 32-bit seed for one random stream of a run: ``SeedSequence([seed, *stream])``."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1, np.uint32)[0])


def run_digits(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """The train and test digits of a run: the first ``n_train`` / ``n_test`` of its tier's split.

    Parameters
    ----------
    config : TrainConfig
        Resolved here.

    Returns
    -------
    train, test : Dataset

    Raises
    ------
    ConfigError
        The data tier holds fewer than ``n_train`` training or ``n_test`` test digits.
    """
    config = config.resolved()
    split = load_split(config.tier, idx_directory=config.idx_directory)
    for name, dataset in (("n_train", split.train), ("n_test", split.test)):
        requested = getattr(config, name)
        if requested > len(dataset):
            raise ConfigError(
                f"TrainConfig.{name}: {requested} digits requested, but data tier {config.tier!r} holds {len(dataset)}"
            )
    return split.train.subset(slice(config.n_train)), split.test.subset(slice(config.n_test))


def data_record(config: TrainConfig, train: Dataset, test: Dataset) -> dict[str, Any]:
    """What a run's digits are: the ``data`` entry of its ``config.json``.

    Parameters
    ----------
    config : TrainConfig
        The run's config.
    train, test : Dataset
        Its digits (:func:`run_digits`).

    Returns
    -------
    dict
        ``source`` (the absolute IDX directory, or ``"embedded"`` for the
        embedded sample), ``n_train``, ``n_test`` and ``sha256``
        (:func:`biosim.data.digits_sha256` of train then test). The digest is
        what a resume or a validation compares (:func:`bridge.run_records.check_same_data`):
        the path says where the digits were, the digest what they were.
    """
    return {
        "source": config.idx_directory or "embedded",
        "n_train": len(train),
        "n_test": len(test),
        "sha256": digits_sha256(train, test),
    }


def test_trial_set(config: TrainConfig) -> TrialSet:
    """The test digits of a run as input spikes: fixed for the run, seed ``derived(seed, 2)``.

    Parameters
    ----------
    config : TrainConfig
        Resolved here; the first ``n_test`` test digits of its tier.

    Returns
    -------
    TrialSet
        Trial ``k`` is test digit ``k``; the same set every epoch and in
        :mod:`bridge.validation`, so Brian2 sees the trainer's exact inputs.
    """
    config = config.resolved()
    test = run_digits(config)[1]
    return make_trials(
        test.images, test.labels, config.network_params(), seed=derived_seed(config.seed, _TEST_INPUT_STREAM)
    )


test_trial_set.__test__ = False  # not a pytest test, whatever module imports it


def test_stream_set(config: TrainConfig) -> StreamSet:
    """The test digits of a run as streams of ``stream_digits`` (:func:`biosim.streams.make_streams`).

    Stream ``j`` holds test digits ``j * stream_digits`` to ``(j + 1) * stream_digits - 1``,
    each with the input spikes of its trial in :func:`test_trial_set`; the
    same streams every epoch and in :mod:`bridge.validation`.
    """
    config = config.resolved()
    return make_streams(test_trial_set(config), config.stream_digits, settle_steps=config.stream_settle_steps())


test_stream_set.__test__ = False


def _batch_tensors(
    trials: TrialSet, positions: np.ndarray, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(trials.dense(positions)).to(device)
    v_init_e = torch.as_tensor(trials.v_init_e_mv[positions], dtype=dtype, device=device)
    v_init_i = torch.as_tensor(trials.v_init_i_mv[positions], dtype=dtype, device=device)
    labels = torch.as_tensor(trials.labels[positions], device=device)
    return x, v_init_e, v_init_i, labels


@dataclass(frozen=True, eq=False)  # array fields
class TrainingDigits:
    """A run's training digits, and the batches and input spikes of each epoch.

    Attributes
    ----------
    config : TrainConfig
        The run's resolved config.
    params : NetworkParams
        Its network parameters.
    images, labels : np.ndarray
        The first ``n_train`` training digits of the config's tier.
    data : dict
        The run's :func:`data_record` (its train and test digits' source, counts and digest).
    """

    config: TrainConfig
    params: NetworkParams
    images: np.ndarray
    labels: np.ndarray
    data: dict[str, Any]

    @classmethod
    def load(cls, config: TrainConfig) -> TrainingDigits:
        """The training digits of ``config`` (resolved here), and the record of all its digits.

        Raises
        ------
        ConfigError
            The data tier holds fewer than ``n_train`` training or ``n_test`` test digits.
        """
        config = config.resolved()
        train, test = run_digits(config)
        return cls(config, config.network_params(), train.images, train.labels, data_record(config, train, test))

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The digit indices of each batch of epoch ``epoch``: a shuffle seeded ``derived(seed, 3, epoch)``."""
        config = self.config
        generator = torch.Generator().manual_seed(derived_seed(config.seed, _SHUFFLE_STREAM, epoch))
        order = torch.randperm(config.n_train, generator=generator).numpy()
        return [order[i : i + config.batch_size] for i in range(0, config.n_train, config.batch_size)]

    def trials(self, epoch: int, indices: np.ndarray) -> TrialSet | StreamSet:
        """The digits ``indices`` of epoch ``epoch`` as trials, or as streams in this order (``stream_digits > 1``)."""
        trials = make_trials(
            self.images[indices],
            self.labels[indices],
            self.params,
            seed=derived_seed(self.config.seed, _TRAIN_INPUT_STREAM, epoch),
            trial_ids=indices,
        )
        if self.config.stream_digits == 1:
            return trials
        return make_streams(trials, self.config.stream_digits, settle_steps=self.config.stream_settle_steps())
