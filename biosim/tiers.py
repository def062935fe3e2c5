"""Named experiment sizes (``--tier``): one table, :data:`TIERS`, read by every layer.

A tier name stands for up to three sizes, each read by one consumer:

- ``pool`` (:class:`DataPool`): the digits :func:`biosim.data.load_split`
  serves at this tier, the first ``n_train`` / ``n_test`` of the train and
  test pools (class-balanced prefixes, :mod:`biosim.data`).
- ``training`` (:class:`RunSize`): the defaults of a
  :class:`bridge.train_config.TrainConfig` that names this tier; the run's
  digits are the first of the tier's own pool, so a tier with training
  defaults has a pool.
- ``protocol`` (:class:`ProtocolRuns`): digits, epochs, batch size and engine
  of every run of a protocol at this tier (:mod:`protocols.definitions`),
  and the tier whose pool the digits come from.

``smoke``, ``cpu``, ``medium`` and ``full`` have all three; the protocol
tiers ``study``, ``study256`` and ``survey`` have only the third and draw
their digits from the ``medium`` pool.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["TIERS", "DataPool", "ProtocolRuns", "RunSize", "Tier"]


def _check_positive(owner: str, record: object) -> None:
    for item in fields(record):
        value = getattr(record, item.name)
        if item.type in ("int", int) and not (isinstance(value, int) and value > 0):
            raise ValueError(f"tier {owner}: {type(record).__name__}.{item.name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class DataPool:
    """Digits of a tier's data split: the first ``n_train`` train and ``n_test`` test digits of the pools."""

    n_train: int
    n_test: int


@dataclass(frozen=True)
class RunSize:
    """Digits, epochs and batch size of a training run."""

    n_train: int
    n_test: int
    epochs: int
    batch_size: int


@dataclass(frozen=True)
class ProtocolRuns(RunSize):
    """The size of every run of a protocol at a tier, the data pool it draws from and its engine."""

    data_tier: str
    """The tier whose :attr:`Tier.pool` the digits come from (the runs' ``TrainConfig.tier``)."""
    engine: str = "fused"
    """Time-loop engine of the runs (:data:`bridge.model.ENGINES`)."""


@dataclass(frozen=True)
class Tier:
    """One named size: its data pool, training defaults and protocol runs (see the module docstring)."""

    name: str
    protocol: ProtocolRuns
    pool: DataPool | None = None
    training: RunSize | None = None

    def __post_init__(self) -> None:
        for record in (self.protocol, self.pool, self.training):
            if record is not None:
                _check_positive(repr(self.name), record)
        if self.training is not None and self.pool is None:
            raise ValueError(f"tier {self.name!r}: training defaults need the tier's own data pool")


def _by_name(*tiers: Tier) -> dict[str, Tier]:
    table = {tier.name: tier for tier in tiers}
    for tier in tiers:
        source = table.get(tier.protocol.data_tier)
        if source is None or source.pool is None:
            raise ValueError(f"tier {tier.name!r}: data_tier {tier.protocol.data_tier!r} is not a tier with a pool")
    return table


TIERS: dict[str, Tier] = _by_name(
    Tier(
        "smoke",
        pool=DataPool(n_train=64, n_test=32),
        # Tests: a handful of digits, with a small network supplied through TrainConfig.network.
        training=RunSize(n_train=16, n_test=8, epochs=2, batch_size=8),
        # Protocol tests only: tiny, with a scaled-down network passed by the test.
        protocol=ProtocolRuns(n_train=8, n_test=8, epochs=1, batch_size=8, data_tier="smoke"),
    ),
    Tier(
        "cpu",
        pool=DataPool(n_train=512, n_test=256),
        # The full-size network on a 2-core CPU with the eager engine: measured 77 s per run in
        # float32 (about 29 s per epoch) and 154 s in float64. It checks the pipeline, not accuracy.
        training=RunSize(n_train=32, n_test=16, epochs=2, batch_size=16),
        # A pipeline check: train, validate in Brian2, draw and tabulate in minutes on 2 cores.
        # Four optimizer steps per run do not learn MNIST.
        protocol=ProtocolRuns(n_train=32, n_test=32, epochs=2, batch_size=16, data_tier="cpu"),
    ),
    # The main job: the smallest tier whose frozen control learns (>= 80 % on 400 held-out
    # digits) while the whole protocol, Brian2 validation included, fits in an hour on 2 cores.
    # 120 Adam steps per run; why these numbers: docs/training.md, "The study tier".
    Tier("study", protocol=ProtocolRuns(n_train=640, n_test=400, epochs=3, batch_size=16, data_tier="medium")),
    # The study tier's 120 Adam steps at the reference study's batch of 256 (1536 digits x 20
    # epochs): what batch size alone changes, at the cost of 16 study-tier runs of training.
    Tier("study256", protocol=ProtocolRuns(n_train=1536, n_test=400, epochs=20, batch_size=256, data_tier="medium")),
    # The follow-up sweeps (tens of conditions, one seed each): half the study tier's digits, 60 Adam
    # steps per run, so that a 25-condition grid fits in an hour on 2 cores.
    Tier("survey", protocol=ProtocolRuns(n_train=320, n_test=200, epochs=3, batch_size=16, data_tier="medium")),
    Tier(
        "medium",
        pool=DataPool(n_train=1600, n_test=400),
        training=RunSize(n_train=1600, n_test=400, epochs=100, batch_size=256),
        protocol=ProtocolRuns(n_train=1600, n_test=400, epochs=100, batch_size=256, data_tier="medium"),
    ),
    Tier(  # needs the IDX files
        "full",
        pool=DataPool(n_train=60_000, n_test=10_000),
        training=RunSize(n_train=60_000, n_test=10_000, epochs=20, batch_size=256),
        protocol=ProtocolRuns(n_train=60_000, n_test=10_000, epochs=20, batch_size=256, data_tier="full"),
    ),
)
"""Every tier by name, in the order ``biosim protocol list`` shows them."""
