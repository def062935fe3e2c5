"""A protocol at a tier: its conditions x seeds, each run's full training config.

A :class:`Protocol` is a selection of a registered protocol's conditions
(:mod:`protocols.registry`) crossed with seeds, at a tier (data size and
epochs: the ``protocol`` sizes of :data:`biosim.tiers.TIERS`), starting from
a preset (:data:`bridge.presets.PRESETS`; a condition's settings apply on
top of it). Every run is described completely by its TrainConfig
(:class:`RunSpec`), which is saved in the run's directory, so any run can be
rebuilt from there; the protocol itself is saved as ``protocol.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from biosim.tiers import TIERS
from bridge.presets import PRESETS
from bridge.train_config import TrainConfig

from .registry import CONDITIONS, DEFAULT_SEEDS, definition

__all__ = ["Protocol", "RunSpec", "estimated_minutes", "get_protocol"]


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
    preset: str = "project"
    """The recipe every run starts from (:data:`bridge.presets.PRESETS`); overrides and conditions apply on top."""

    def __post_init__(self) -> None:
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise ValueError(f"unknown condition(s) {unknown}; valid conditions: {', '.join(CONDITIONS)}")
        if self.tier not in TIERS:
            raise ValueError(f"unknown tier {self.tier!r}; valid tiers: {', '.join(TIERS)}")
        if not self.seeds:
            raise ValueError("a protocol needs at least one seed")
        repeated = sorted({s for s in self.seeds if list(self.seeds).count(s) > 1})
        if repeated:
            # A repeated seed would train the same run twice and count it twice in every mean.
            raise ValueError(f"seeds: {', '.join(map(str, repeated))} given more than once; give each seed once")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid presets: {', '.join(PRESETS)}")

    def runs(self) -> list[RunSpec]:
        tier = TIERS[self.tier].protocol
        # The preset first; the overrides on top (e.g. a smaller network, another device or
        # engine), section by section for the network, so that a smaller network keeps the
        # preset's constants.
        preset = PRESETS[self.preset].config_fields()
        base = {**preset, **self.overrides}
        base["network"] = {
            section: {**preset["network"].get(section, {}), **self.overrides.get("network", {}).get(section, {})}
            for section in sorted({*preset["network"], *self.overrides.get("network", {})})
        }
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
                    **base,
                    "seed": seed,
                    "train_w_in": True,
                    "train_w_out": True,
                }
                config = TrainConfig(**condition.apply(fields))
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
            preset=data.get("preset", "project"),
        )


def get_protocol(
    name: str,
    *,
    tier: str | None = None,
    seeds: tuple[int, ...] | None = None,
    conditions: tuple[str, ...] | None = None,
    validation_backend: str = "cpp_standalone",
    preset: str | None = None,
    **overrides: Any,
) -> Protocol:
    """The registered protocol ``name`` (:data:`protocols.registry.DEFINITIONS`) at ``tier``.

    ``tier``, ``seeds`` and ``preset`` default to the protocol's (its record's ``defaults``);
    ``conditions`` selects some of the protocol's conditions (default: all);
    ``preset`` is the recipe every run starts from (:data:`bridge.presets.PRESETS`);
    ``overrides`` are TrainConfig fields applied to every run (e.g. ``dtype``); a protocol that
    records trajectories by default (``defaults.record_every``) adds ``record_every`` unless given.
    """
    record = definition(name)
    if record.defaults.record_every and "record_every" not in overrides:
        overrides["record_every"] = record.defaults.record_every
    own = tuple(c.name for c in record.conditions)
    if conditions is not None:
        foreign = [c for c in conditions if c not in own]
        if foreign:
            raise ValueError(
                f"condition(s) {foreign} are not part of protocol {name!r}; its conditions: {', '.join(own)}"
            )
    return Protocol(
        name=name,
        conditions=tuple(conditions) if conditions else own,
        tier=record.defaults.tier if tier is None else tier,
        seeds=tuple(seeds or record.defaults.seeds),
        overrides=overrides,
        validation_backend=validation_backend,
        preset=record.defaults.preset if preset is None else preset,
    )


# Measured on the project's 2-core machine (AMD EPYC, AVX2; fused engine, float32, two runs at a time):
# seconds of one process (one thread) per training trial (forward + backward), per evaluated test trial,
# per Brian2 build, and per validated test trial (Brian2 and the float64 and float32 mirrors).
_SECONDS_PER_TRAIN_TRIAL = 0.094
_SECONDS_PER_TEST_TRIAL = 0.018
_SECONDS_PER_BRIAN2_BUILD = 30.0
_SECONDS_PER_VALIDATED_TRIAL = 0.12
_CORES = 2


def estimated_minutes(name: str, tier: str, n_seeds: int | None = None) -> float:
    """Rough wall time (min) of protocol ``name`` at ``tier`` on 2 cores, from per-trial costs measured here.

    Training trials, test evaluations after every epoch and one Brian2 validation per
    run, two runs at a time. GPU tiers (``full``) are estimated as if run on this CPU.
    ``n_seeds`` defaults to the protocol's default seeds.
    """
    record = definition(name)
    if n_seeds is None:
        n_seeds = len(record.defaults.seeds)
    t = TIERS[tier].protocol
    seconds = 0.0
    for condition in record.conditions:
        # A condition may set its own size (the ladder's batch rung); otherwise the tier's.
        size = {key: condition.settings.get(key, getattr(t, key)) for key in ("n_train", "n_test", "epochs")}
        seconds += (
            size["epochs"] * size["n_train"] * _SECONDS_PER_TRAIN_TRIAL
            + (size["epochs"] + 1) * size["n_test"] * _SECONDS_PER_TEST_TRIAL
            + size["n_train"] * _SECONDS_PER_TEST_TRIAL  # the untrained network on the training digits (epoch 0)
            + _SECONDS_PER_BRIAN2_BUILD
            + size["n_test"] * _SECONDS_PER_VALIDATED_TRIAL
        )
    return n_seeds * seconds / _CORES / 60.0
