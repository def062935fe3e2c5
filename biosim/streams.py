"""Continuous digit streams: several digits back to back in one trial, no reset between them.

A stream of ``n_digits`` digits is one trial of ``n_digits x trial_ms``: digit
``p`` of the stream is presented during steps ``[p * digit_steps, (p + 1) *
digit_steps)``, where ``digit_steps = simulation.n_steps`` of the per-digit
parameters. The network state is never reset inside a stream: membrane
potentials, conductances, refractoriness and the readout carry over from one
digit to the next. Only the stream's start is a trial start (initial
potentials, no conductance, readout at 0), in both simulators, because both
run a stream as one trial of the longer duration (:func:`stream_params`).

How a stream is made (:func:`make_streams`): from a :class:`~biosim.inputs.TrialSet`
of single-digit trials, made as usual by :func:`biosim.inputs.make_trials`,
stream ``j`` takes trials ``j * n_digits ... (j + 1) * n_digits - 1`` in
order. Each digit keeps the input spikes of its own trial, shifted by its
position in the stream; the stream's initial potentials are those of its
first digit's trial (the other digits' initial potentials are unused: there
is no reset). A digit's spikes therefore depend only on the seed, its trial
id and its image, exactly as in a single-digit trial, and a stream of one
digit is the trial itself.

Readout windows: digit ``p``'s class scores are the readout potential
averaged over its window, steps ``[p * digit_steps + settle_steps, (p + 1) *
digit_steps)`` (:func:`window_means`). With ``settle_steps = 0`` (the
default) the window is the digit's whole presentation, the stream analogue
of the "mem-mean" readout; a settle time leaves out the start of each
presentation, where the readout (tau 20 ms) still carries the previous
digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .inputs import TrialSet
from .params import NetworkParams

__all__ = ["StreamSet", "make_streams", "stream_params", "window_means", "accuracy_by_position"]


@dataclass(frozen=True, eq=False)  # array fields: compare contents explicitly
class StreamSet:
    """Digit streams as one trial each, with the label of every digit.

    Attributes
    ----------
    trials : TrialSet
        One trial per stream, ``n_steps = n_digits * digit_steps``; its
        ``labels`` and ``trial_ids`` are those of each stream's first digit
        (the labels of all digits are :attr:`digit_labels`).
    digit_labels : np.ndarray
        ``(n_streams, n_digits)`` int64 class of each digit, in stream order.
    digit_ids : np.ndarray
        ``(n_streams, n_digits)`` int64 trial id of each digit (its random stream,
        :mod:`biosim.inputs`).
    digit_steps : int
        Time steps per digit (the per-digit trial's ``n_steps``).
    settle_steps : int
        Steps at the start of each digit left out of its readout window.
    """

    trials: TrialSet
    digit_labels: np.ndarray
    digit_ids: np.ndarray
    digit_steps: int
    settle_steps: int = 0

    def __post_init__(self) -> None:
        n_streams = self.trials.n_trials
        for name in ("digit_labels", "digit_ids"):
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.dtype != np.int64 or array.ndim != 2:
                raise ValueError(f"StreamSet.{name} must be a 2-D int64 array (n_streams, n_digits)")
            if array.shape != self.digit_labels.shape or len(array) != n_streams:
                raise ValueError(
                    f"StreamSet.{name} must have shape ({n_streams}, n_digits) like digit_labels, got {array.shape}"
                )
        if self.n_digits < 1:
            raise ValueError("StreamSet: a stream holds at least one digit")
        if self.trials.n_steps != self.n_digits * self.digit_steps:
            raise ValueError(
                f"StreamSet: trials have {self.trials.n_steps} steps, expected n_digits x digit_steps = "
                f"{self.n_digits} x {self.digit_steps}"
            )
        if not 0 <= self.settle_steps < self.digit_steps:
            raise ValueError(f"StreamSet.settle_steps must lie in [0, {self.digit_steps}), got {self.settle_steps}")

    @property
    def n_streams(self) -> int:
        """Streams (trials) in the set."""
        return self.trials.n_trials

    @property
    def n_digits(self) -> int:
        """Digits per stream."""
        return self.digit_labels.shape[1]

    @property
    def window_steps(self) -> int:
        """Steps of each digit's readout window."""
        return self.digit_steps - self.settle_steps

    def windows(self) -> list[tuple[int, int]]:
        """``(first, stop)`` step of each digit's readout window within a stream."""
        return [(p * self.digit_steps + self.settle_steps, (p + 1) * self.digit_steps) for p in range(self.n_digits)]

    def describe(self) -> dict[str, Any]:
        """The stream layout as JSON-ready numbers (for run records and reports)."""
        return {
            "n_streams": self.n_streams,
            "n_digits": self.n_digits,
            "digit_steps": self.digit_steps,
            "settle_steps": self.settle_steps,
        }


def make_streams(digits: TrialSet, n_digits: int, *, settle_steps: int = 0) -> StreamSet:
    """Join consecutive single-digit trials into streams of ``n_digits`` (see the module docstring).

    Parameters
    ----------
    digits : TrialSet
        Single-digit trials (:func:`biosim.inputs.make_trials`); their number
        must be a multiple of ``n_digits``.
    n_digits : int
        Digits per stream (1: each stream is one trial, unchanged).
    settle_steps : int
        Steps at the start of each digit left out of its readout window.

    Returns
    -------
    StreamSet

    Raises
    ------
    ValueError
        ``n_digits`` is not a positive int, or does not divide the number of trials.
    """
    if not (isinstance(n_digits, (int, np.integer)) and not isinstance(n_digits, bool) and n_digits >= 1):
        raise ValueError(f"n_digits must be a positive int, got {n_digits!r}")
    if digits.n_trials % n_digits:
        raise ValueError(f"{digits.n_trials} trials cannot be cut into streams of {n_digits} digits")
    n_streams, digit_steps = digits.n_trials // n_digits, digits.n_steps
    first = np.arange(0, digits.n_trials, n_digits)
    position = digits.input_trial % n_digits
    trials = TrialSet(
        input_trial=(digits.input_trial // n_digits).astype(np.int32),
        input_step=(digits.input_step + position * digit_steps).astype(np.int32),
        input_neuron=digits.input_neuron,
        v_init_e_mv=digits.v_init_e_mv[first],
        v_init_i_mv=digits.v_init_i_mv[first],
        labels=digits.labels[first],
        n_steps=n_digits * digit_steps,
        n_input=digits.n_input,
        seed=digits.seed,
        trial_ids=digits.trial_ids[first],
    )
    return StreamSet(
        trials=trials,
        digit_labels=digits.labels.reshape(n_streams, n_digits),
        digit_ids=digits.trial_ids.reshape(n_streams, n_digits),
        digit_steps=digit_steps,
        settle_steps=int(settle_steps),
    )


def stream_params(params: NetworkParams, n_digits: int) -> NetworkParams:
    """The parameters of a stream of ``n_digits``: one trial of ``n_digits x trial_ms``.

    Everything else is unchanged; the transient (excluded from rates and
    spectra) is at the stream's start only, the one point where the network
    starts from its initial state.
    """
    simulation = params.simulation
    return params.replace(simulation__trial_ms=n_digits * simulation.trial_ms)


def window_means(trace: Any, n_digits: int, settle_steps: int = 0) -> Any:
    """Each digit's class scores: the readout trace averaged over the digit's window.

    Parameters
    ----------
    trace : np.ndarray or torch.Tensor
        ``(n_streams, n_digits * digit_steps, n_classes)`` readout potential
        after each step (Brian2's ``traces["readout"]``, the mirror's
        ``NetworkOutput.readout_trace``; differentiable for a tensor).
    n_digits : int
    settle_steps : int
        Steps left out at the start of each digit.

    Returns
    -------
    np.ndarray or torch.Tensor
        ``(n_streams, n_digits, n_classes)``, same type as ``trace``.
    """
    n_streams, n_steps, n_classes = trace.shape
    if n_steps % n_digits:
        raise ValueError(f"a trace of {n_steps} steps cannot hold {n_digits} digits of equal length")
    by_digit = trace.reshape(n_streams, n_digits, n_steps // n_digits, n_classes)
    return by_digit[:, :, settle_steps:].mean(2)


def accuracy_by_position(scores: np.ndarray, digit_labels: np.ndarray) -> np.ndarray:
    """Fraction of streams whose digit at each position is classified right: ``(n_digits,)``.

    ``scores`` is ``(n_streams, n_digits, n_classes)`` (:func:`window_means`).
    """
    return np.mean(np.argmax(scores, axis=2) == digit_labels, axis=0)
