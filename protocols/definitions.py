"""Protocol definitions: the Dale-pruning experiment of SPEC section 4.

A protocol is a set of conditions (how the E-I loop is initialised and whether
it may train) crossed with seeds, at a tier (data size and epochs). Every run
is described completely by its :class:`~bridge.training.TrainConfig`, which is
saved in the run's directory, so any run can be rebuilt from there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from bridge.training import TrainConfig

__all__ = [
    "Condition",
    "ProtocolTier",
    "Protocol",
    "RunSpec",
    "CONDITIONS",
    "PROTOCOL_TIERS",
    "PROTOCOLS",
    "get_protocol",
]


@dataclass(frozen=True)
class Condition:
    """How ``W_EI`` and ``W_IE`` start and whether they train (input and readout always train)."""

    name: str
    init_w_ei: str | float
    init_w_ie: str | float
    loop_trainable: bool
    description: str


CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("frozen_ping", "canonical", "canonical", False, "control: canonical loop, frozen"),
        Condition("trainable_ping_init", "canonical", "canonical", True, "canonical loop, trainable"),
        Condition("trainable_zero_init", "zero", "zero", True, "loop starts at zero, trainable"),
        Condition("trainable_small_init", 0.1, 0.1, True, "loop starts at 0.1 x canonical, trainable"),
    )
}


@dataclass(frozen=True)
class ProtocolTier:
    """Data size, epochs and batch size of a protocol tier (fields of TrainConfig)."""

    name: str
    n_train: int
    n_test: int
    epochs: int
    batch_size: int
    data_tier: str
    """The :data:`biosim.data.TIERS` entry the digits come from."""
    engine: str = "fused"


PROTOCOL_TIERS: dict[str, ProtocolTier] = {
    t.name: t
    for t in (
        # Tests only: tiny, with a scaled-down network passed by the test.
        ProtocolTier("smoke", n_train=8, n_test=8, epochs=1, batch_size=8, data_tier="smoke"),
        # A pipeline check: train, validate in Brian2, draw and tabulate in minutes on 2 cores.
        # Four optimizer steps per run do not learn MNIST.
        ProtocolTier("cpu", n_train=32, n_test=32, epochs=2, batch_size=16, data_tier="cpu"),
        # The main job: the smallest tier whose frozen control learns (>= 80 % on 400 held-out
        # digits) while the whole protocol, Brian2 validation included, fits in an hour on 2 cores.
        # 120 Adam steps per run; why these numbers: docs/training.md, "The study tier".
        ProtocolTier("study", n_train=640, n_test=400, epochs=3, batch_size=16, data_tier="medium"),
        ProtocolTier("medium", n_train=1600, n_test=400, epochs=100, batch_size=256, data_tier="medium"),
        ProtocolTier("full", n_train=60_000, n_test=10_000, epochs=20, batch_size=256, data_tier="full"),
    )
}

DEFAULT_SEEDS = (42, 43, 44)


@dataclass(frozen=True)
class RunSpec:
    """One run of a protocol: a condition, a seed and its full training config."""

    protocol: str
    condition: str
    seed: int
    config: TrainConfig
    validation_backend: str = "cpp_standalone"

    @property
    def run_id(self) -> str:
        return f"{self.condition}/seed_{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "condition": self.condition,
            "seed": self.seed,
            "config": self.config.to_dict(),
            "validation_backend": self.validation_backend,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls(
            data["protocol"],
            data["condition"],
            int(data["seed"]),
            TrainConfig.from_dict(data["config"]),
            data.get("validation_backend", "cpp_standalone"),
        )


@dataclass(frozen=True)
class Protocol:
    """Conditions x seeds at one tier; explicit keyword arguments, rebuildable from :meth:`to_dict`."""

    name: str
    conditions: tuple[str, ...]
    tier: str
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    overrides: dict[str, Any] = field(default_factory=dict)
    """Extra TrainConfig fields for every run (e.g. ``network``, ``device``, ``idx_directory``)."""
    validation_backend: str = "cpp_standalone"
    """Brian2 backend every trained network is validated on."""

    def __post_init__(self) -> None:
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise ValueError(f"unknown condition(s) {unknown}; valid conditions: {', '.join(CONDITIONS)}")
        if self.tier not in PROTOCOL_TIERS:
            raise ValueError(f"unknown tier {self.tier!r}; valid tiers: {', '.join(PROTOCOL_TIERS)}")
        if not self.seeds:
            raise ValueError("a protocol needs at least one seed")

    def runs(self) -> list[RunSpec]:
        tier = PROTOCOL_TIERS[self.tier]
        specs = []
        for name in self.conditions:
            condition = CONDITIONS[name]
            for seed in self.seeds:
                fields = {
                    "tier": tier.data_tier,
                    "n_train": tier.n_train,
                    "n_test": tier.n_test,
                    "epochs": tier.epochs,
                    "batch_size": tier.batch_size,
                    "engine": tier.engine,
                    **self.overrides,  # e.g. a smaller network, another device or engine
                    "seed": seed,
                    "init_w_ei": condition.init_w_ei,
                    "init_w_ie": condition.init_w_ie,
                    "train_w_in": True,
                    "train_w_out": True,
                    "train_w_ei": condition.loop_trainable,
                    "train_w_ie": condition.loop_trainable,
                }
                config = TrainConfig(**fields)
                specs.append(RunSpec(self.name, name, seed, config, self.validation_backend))
        return specs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        return cls(
            name=data["name"],
            conditions=tuple(data["conditions"]),
            tier=data["tier"],
            seeds=tuple(data["seeds"]),
            overrides=dict(data.get("overrides", {})),
            validation_backend=data.get("validation_backend", "cpp_standalone"),
        )


PROTOCOLS = {
    "dale_pruning": tuple(CONDITIONS),
    "frozen_baseline": ("frozen_ping",),
}


def get_protocol(
    name: str,
    *,
    tier: str,
    seeds: tuple[int, ...] | None = None,
    conditions: tuple[str, ...] | None = None,
    validation_backend: str = "cpp_standalone",
    **overrides: Any,
) -> Protocol:
    """The protocol ``name`` (a key of :data:`PROTOCOLS`) at ``tier``.

    ``conditions`` selects some of the protocol's conditions (default: all);
    ``overrides`` are TrainConfig fields applied to every run (e.g. ``dtype``).
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid protocols: {', '.join(PROTOCOLS)}")
    if conditions is not None:
        foreign = [c for c in conditions if c not in PROTOCOLS[name]]
        if foreign:
            raise ValueError(
                f"condition(s) {foreign} are not part of protocol {name!r}; "
                f"its conditions: {', '.join(PROTOCOLS[name])}"
            )
    return Protocol(
        name=name,
        conditions=tuple(conditions) if conditions else PROTOCOLS[name],
        tier=tier,
        seeds=tuple(seeds or DEFAULT_SEEDS),
        overrides=overrides,
        validation_backend=validation_backend,
    )
