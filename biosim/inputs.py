"""Poisson spike input and initial membrane potentials, generated outside the simulators.

Both the Brian2 network and the PyTorch mirror replay the same :class:`TrialSet`,
so their only difference is the integration, never the randomness.

Each pixel drives one input neuron with a Poisson process of rate
``intensity / 255 * max_rate_hz``, discretised per time step as a Bernoulli
draw with probability ``rate * dt`` (at most one spike per input per step).

Reproducibility: trial ``k`` of a set made with seed ``s`` draws from its own
generator, ``np.random.default_rng(np.random.SeedSequence([s, 2, k]))`` (the
tag 2 keeps input streams apart from the weight streams of
:mod:`biosim.weights`, which use tag 1 with the same seed), so a
trial's spikes and initial state depend only on ``(s, k)`` and its image, not
on which other trials share the batch. Within a trial the draw order is fixed:

1. ``n_e`` uniforms for the E initial potentials, in neuron order;
2. ``n_i`` uniforms for the I initial potentials, in neuron order;
3. an ``(n_steps, n_active)`` block of uniforms in C order, where the
   ``n_active`` columns are the pixels with nonzero intensity in increasing
   pixel order; pixel ``j`` spikes at step ``t`` if its uniform is below its
   spike probability. Zero pixels draw nothing (they cannot spike), which
   keeps generation fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biosim.params import MembraneParams, NetworkParams, ParameterError

__all__ = ["TrialSet", "make_trials"]

MAX_INTENSITY = 255
INPUT_STREAM = 2  # see the module docstring


@dataclass(frozen=True, eq=False)  # array fields: compare contents explicitly
class TrialSet:
    """Input spikes, initial potentials and labels of a batch of trials.

    Spikes are stored sparsely, one row per spike across the three ``input_*``
    arrays, sorted by trial, then step, then neuron.

    Attributes
    ----------
    input_trial : np.ndarray
        ``(n_spikes,)`` int32 position of the spike's trial in this set, ``0..n_trials-1``.
    input_step : np.ndarray
        ``(n_spikes,)`` int32 time step of the spike, ``0..n_steps-1``.
    input_neuron : np.ndarray
        ``(n_spikes,)`` int32 input neuron (pixel) index, ``0..n_input-1``.
    v_init_e_mv : np.ndarray
        ``(n_trials, n_e)`` float64 initial E membrane potentials (mV).
    v_init_i_mv : np.ndarray
        ``(n_trials, n_i)`` float64 initial I membrane potentials (mV).
    labels : np.ndarray
        ``(n_trials,)`` int64 class of each trial's image.
    n_steps : int
        Time steps per trial.
    n_input : int
        Input neurons (pixels).
    seed : int
        Seed the set was generated from.
    trial_ids : np.ndarray, optional
        ``(n_trials,)`` int64 identity of each trial in the seed's stream
        (see the module docstring); defaults to ``arange(n_trials)``.
    """

    input_trial: np.ndarray
    input_step: np.ndarray
    input_neuron: np.ndarray
    v_init_e_mv: np.ndarray
    v_init_i_mv: np.ndarray
    labels: np.ndarray
    n_steps: int
    n_input: int
    seed: int
    trial_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_trials = len(self.labels)
        if self.trial_ids is None:
            object.__setattr__(self, "trial_ids", np.arange(n_trials, dtype=np.int64))
        expected = {
            "input_trial": (np.int32, None),
            "input_step": (np.int32, len(self.input_trial)),
            "input_neuron": (np.int32, len(self.input_trial)),
            "labels": (np.int64, n_trials),
            "trial_ids": (np.int64, n_trials),
        }
        for name, (dtype, length) in expected.items():
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != 1:
                raise ValueError(f"TrialSet.{name} must be a 1-D {np.dtype(dtype)} array, got {_describe(array)}")
            if length is not None and len(array) != length:
                raise ValueError(f"TrialSet.{name} must have length {length}, got {len(array)}")
        for name in ("v_init_e_mv", "v_init_i_mv"):
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.dtype != np.float64 or array.ndim != 2:
                raise ValueError(f"TrialSet.{name} must be a 2-D float64 array, got {_describe(array)}")
            if len(array) != n_trials:
                raise ValueError(f"TrialSet.{name} must have {n_trials} rows (one per trial), got {len(array)}")
        for name, upper in (
            ("input_trial", n_trials),
            ("input_step", self.n_steps),
            ("input_neuron", self.n_input),
        ):
            array = getattr(self, name)
            if array.size and (array.min() < 0 or array.max() >= upper):
                raise ValueError(f"TrialSet.{name} must lie in 0..{upper - 1}, found {array.min()}..{array.max()}")
        # One strictly increasing key proves the sort order and at most one spike per input per step.
        keys = (self.input_trial.astype(np.int64) * self.n_steps + self.input_step) * self.n_input + self.input_neuron
        disordered = np.flatnonzero(np.diff(keys) <= 0)
        if disordered.size:
            raise ValueError(
                "TrialSet spikes must be sorted by (trial, step, neuron) without duplicates; "
                f"spike rows {disordered[0]} and {disordered[0] + 1} are not"
            )

    @property
    def n_trials(self) -> int:
        """Trials in the set."""
        return len(self.labels)

    def spike_count(self) -> np.ndarray:
        """Input spikes per trial, ``(n_trials,)`` int64."""
        return np.bincount(self.input_trial, minlength=self.n_trials).astype(np.int64)

    def dense(self, trials: slice | np.ndarray) -> np.ndarray:
        """Spike raster of the selected trials, for the PyTorch mirror.

        Parameters
        ----------
        trials : slice or np.ndarray
            Trial positions (slice, integer indices or boolean mask), in the
            order wanted in the output.

        Returns
        -------
        np.ndarray
            ``(len(trials), n_steps, n_input)`` bool; ``True`` where an input spiked.
        """
        positions = np.arange(self.n_trials)[trials]
        raster = np.zeros((len(positions), self.n_steps, self.n_input), dtype=bool)
        starts = self._trial_starts()
        for row, position in enumerate(positions):
            spikes = slice(starts[position], starts[position + 1])
            raster[row, self.input_step[spikes], self.input_neuron[spikes]] = True
        return raster

    def subset(self, trials: slice | np.ndarray) -> TrialSet:
        """The selected trials (slice, integer indices or boolean mask) as a new set, renumbered 0..n-1.

        Trial ids and the seed are kept, so the result equals :func:`make_trials`
        of the same images with ``trial_ids=self.trial_ids[trials]``.
        """
        positions = np.arange(self.n_trials)[trials]
        starts = self._trial_starts()
        spikes = [np.arange(starts[position], starts[position + 1]) for position in positions]
        counts = np.array([len(rows) for rows in spikes], dtype=np.int64)
        rows = np.concatenate(spikes) if spikes else np.zeros(0, dtype=np.int64)
        return TrialSet(
            input_trial=np.repeat(np.arange(len(positions), dtype=np.int32), counts),
            input_step=self.input_step[rows],
            input_neuron=self.input_neuron[rows],
            v_init_e_mv=self.v_init_e_mv[positions],
            v_init_i_mv=self.v_init_i_mv[positions],
            labels=self.labels[positions],
            n_steps=self.n_steps,
            n_input=self.n_input,
            seed=self.seed,
            trial_ids=self.trial_ids[positions],
        )

    def _trial_starts(self) -> np.ndarray:
        """Row where each trial's spikes begin, plus the total at the end: ``(n_trials + 1,)``."""
        return np.searchsorted(self.input_trial, np.arange(self.n_trials + 1))


def make_trials(
    images: np.ndarray,
    labels: np.ndarray,
    params: NetworkParams,
    *,
    seed: int,
    trial_ids: np.ndarray | None = None,
) -> TrialSet:
    """Generate Poisson input spikes and random initial potentials for one trial per image.

    Parameters
    ----------
    images : np.ndarray
        ``(n_trials, n_input)`` pixel intensities in 0..255 (any real dtype).
    labels : np.ndarray
        ``(n_trials,)`` integer classes.
    params : NetworkParams
        Supplies ``input.max_rate_hz``, ``simulation.dt_ms`` and ``n_steps``,
        ``connectivity.n_input`` / ``n_e`` / ``n_i``, and the membranes'
        ``v_reset_mv`` and ``v_threshold_mv``.
    seed : int
        Non-negative seed of the whole set.
    trial_ids : np.ndarray, optional
        ``(n_trials,)`` non-negative ids selecting each trial's random stream;
        default ``arange(n_trials)``. Pass the images' positions in a larger
        set to generate it batch by batch with identical results.

    Returns
    -------
    TrialSet
        Initial potentials are uniform in ``[v_reset_mv, v_threshold_mv)`` of
        each population.

    Raises
    ------
    ValueError
        If images, labels, trial ids or the seed have the wrong shape or values.
    ParameterError
        If ``max_rate_hz * dt`` exceeds one spike per step.
    """
    connectivity = params.connectivity
    n_input, n_e, n_i = connectivity.n_input, connectivity.n_e, connectivity.n_i
    n_steps = params.simulation.n_steps
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 2 or images.shape[1] != n_input or images.dtype.kind not in "uif":
        raise ValueError(f"images must be a real-valued array of shape (n_trials, {n_input}), got {_describe(images)}")
    n_trials = len(images)
    if images.size and not (images.min() >= 0 and images.max() <= MAX_INTENSITY):  # also rejects NaN
        raise ValueError(f"images must lie in 0..{MAX_INTENSITY}, found {images.min()}..{images.max()}")
    if labels.shape != (n_trials,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array of shape ({n_trials},), got {_describe(labels)}")
    trial_ids = np.arange(n_trials) if trial_ids is None else np.asarray(trial_ids)
    if trial_ids.shape != (n_trials,) or not np.issubdtype(trial_ids.dtype, np.integer):
        raise ValueError(f"trial_ids must be an integer array of shape ({n_trials},), got {_describe(trial_ids)}")
    if trial_ids.size and trial_ids.min() < 0:
        raise ValueError(f"trial_ids must be >= 0, found {trial_ids.min()}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")

    max_probability = params.input.max_rate_hz * params.simulation.dt_ms * 1e-3
    if max_probability > 1:
        raise ParameterError(
            f"input.max_rate_hz ({params.input.max_rate_hz}) times "
            f"simulation.dt_ms ({params.simulation.dt_ms}) "
            "exceeds one spike per step"
        )
    probabilities = images.astype(np.float64) / MAX_INTENSITY * max_probability

    trial_columns, step_columns, neuron_columns = [], [], []
    v_init_e = np.empty((n_trials, n_e))
    v_init_i = np.empty((n_trials, n_i))
    for position, trial_id in enumerate(trial_ids):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), INPUT_STREAM, int(trial_id)]))
        v_init_e[position] = _uniform_potentials(rng, params.membrane_e, n_e)
        v_init_i[position] = _uniform_potentials(rng, params.membrane_i, n_i)
        active = np.flatnonzero(probabilities[position])
        steps, columns = np.nonzero(rng.random((n_steps, len(active))) < probabilities[position, active])
        trial_columns.append(np.full(len(steps), position, dtype=np.int32))
        step_columns.append(steps.astype(np.int32))
        neuron_columns.append(active[columns].astype(np.int32))

    def joined(columns: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(columns) if columns else np.zeros(0, dtype=np.int32)

    return TrialSet(
        input_trial=joined(trial_columns),
        input_step=joined(step_columns),
        input_neuron=joined(neuron_columns),
        v_init_e_mv=v_init_e,
        v_init_i_mv=v_init_i,
        labels=labels.astype(np.int64),
        n_steps=n_steps,
        n_input=n_input,
        seed=int(seed),
        trial_ids=trial_ids.astype(np.int64),
    )


def _uniform_potentials(rng: np.random.Generator, membrane: MembraneParams, n_neurons: int) -> np.ndarray:
    """Uniform in ``[v_reset, v_threshold)`` (mV); clipped because rounding could reach the threshold."""
    low, high = membrane.v_reset_mv, membrane.v_threshold_mv
    values = low + (high - low) * rng.random(n_neurons)
    return np.minimum(values, np.nextafter(high, low))


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
