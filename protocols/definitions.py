"""Protocol definitions: conditions x seeds at a tier, as data.

A protocol is a set of named conditions crossed with seeds, at a tier (data
size and epochs: the ``protocol`` sizes of :data:`biosim.tiers.TIERS`). A
condition is a mapping of settings: any field of
:class:`~bridge.train_config.TrainConfig` (``init_w_ei``, ``train_w_ie``,
``w_out_unit``, ...) or any network parameter, written
``network.SECTION.FIELD`` (``network.synapse.tau_gaba_ms``). A grid of
settings expands into named conditions (:func:`grid`). Every run is
described completely by its TrainConfig, which is saved in the run's
directory, so any run can be rebuilt from there.

Protocols (:data:`PROTOCOLS`):

- ``dale_pruning`` (the study's experiment): is the PING loop learnable? Four
  initialisations of the E-I loop, frozen or trainable.
- ``frozen_baseline``: the frozen control alone.
- ``tau_gaba`` (a follow-up): tau_GABA of 4, 6, 8, 12 and 16 ms, each with
  the loop frozen and trainable.
- ``basin_map`` (a follow-up): initial W_EI x W_IE, each at 0, 0.25, 0.5,
  1 and 2 x canonical, loop trainable: which end state each start reaches.
- ``anti_pruning`` (a follow-up): the canonical loop trainable, with a
  penalty on W_EI's distance from canonical or on low E gamma-band power
  (:mod:`bridge.regularisers`), lambda on a log grid: how strong must it be
  to keep the loop?
- ``streaming`` (a follow-up): streams of four digits back to back in one
  trial, no reset between them, one readout window per digit
  (:mod:`biosim.streams`), loop frozen and trainable (exact BPTT and with
  the reference's membrane-gradient damping): does the loop survive, and
  does it help, when the network must follow a continuous input?
- ``membrane_damping``: the four ``dale_pruning`` conditions, exact and with
  the reference study's membrane-gradient damping: does
  the stabiliser change the answer?
- ``reference_ladder``: the canonical loop, trainable, from this project's
  training recipe to the reference study's one factor at a time
  (:data:`REFERENCE_FACTORS`), every rung at the same 120 Adam steps, and
  the reference recipe with each factor set back: which factor decides
  between a rewired loop and a dismantled one (docs/reference.md)?

Every protocol starts from a preset (:data:`bridge.presets.PRESETS`,
``Protocol.preset``): ``project`` by default, ``reference`` for the
study's recipe; a condition's settings apply on top of it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from biosim.params import NetworkParams
from biosim.tiers import TIERS
from bridge.presets import PRESETS
from bridge.train_config import TrainConfig

__all__ = [
    "Condition",
    "Protocol",
    "RunSpec",
    "CONDITIONS",
    "PROTOCOL_DEFAULTS",
    "PROTOCOLS",
    "ProtocolDefaults",
    "estimated_minutes",
    "get_protocol",
    "grid",
]

_NETWORK_PREFIX = "network."


@dataclass(frozen=True)
class Condition:
    """One named set of settings; the input and readout always train.

    Attributes
    ----------
    name : str
    description : str
    settings : mapping
        TrainConfig fields, or network parameters as ``network.SECTION.FIELD``.
    """

    name: str
    description: str
    settings: Mapping[str, Any]

    def __post_init__(self) -> None:
        known = {f.name for f in dataclasses.fields(TrainConfig)} - {"network", "seed"}
        for key in self.settings:
            if key.startswith(_NETWORK_PREFIX):
                if key.count(".") != 2:
                    raise ValueError(f"condition {self.name!r}: {key!r} must read network.SECTION.FIELD")
            elif key not in known:
                raise ValueError(
                    f"condition {self.name!r}: unknown setting {key!r}; valid: TrainConfig fields "
                    f"({', '.join(sorted(known))}) or network.SECTION.FIELD"
                )

    def apply(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``fields`` (TrainConfig keyword arguments) with this condition's settings applied."""
        fields = {**fields, "network": {k: dict(v) for k, v in fields.get("network", {}).items()}}
        for key, value in self.settings.items():
            if key.startswith(_NETWORK_PREFIX):
                _, section, name = key.split(".")
                fields["network"].setdefault(section, {})[name] = value
            else:
                fields[key] = value
        return fields


def _loop(name: str, description: str, init: str | float, trainable: bool, **extra: Any) -> Condition:
    settings = {"init_w_ei": init, "init_w_ie": init, "train_w_ei": trainable, "train_w_ie": trainable, **extra}
    return Condition(name, description, settings)


def _number_text(value: float) -> str:
    return f"{value:g}".replace(".", "p")


def grid(prefix: str, description: str, axes: Mapping[str, tuple[Any, ...]], **fixed: Any) -> tuple[Condition, ...]:
    """Every combination of the values of ``axes`` as a named condition.

    >>> [c.name for c in grid("tau", "", {"network.synapse.tau_gaba_ms": (4.0, 8.0)})]
    ['tau_tau_gaba_ms_4', 'tau_tau_gaba_ms_8']
    """
    conditions = []
    for values in itertools.product(*axes.values()):
        settings = dict(zip(axes, values, strict=True))
        parts = [
            f"{key.rsplit('.', 1)[-1]}_{_number_text(v) if isinstance(v, float) else v}" for key, v in settings.items()
        ]
        label = ", ".join(f"{key.rsplit('.', 1)[-1]} = {v}" for key, v in settings.items())
        conditions.append(Condition(f"{prefix}_{'__'.join(parts)}", f"{description} ({label})", {**fixed, **settings}))
    return tuple(conditions)


DALE_PRUNING = (
    _loop("frozen_ping", "control: canonical loop, frozen", "canonical", False),
    _loop("trainable_ping_init", "canonical loop, trainable", "canonical", True),
    _loop("trainable_zero_init", "loop starts at zero, trainable", "zero", True),
    _loop("trainable_small_init", "loop starts at 0.1 x canonical, trainable", 0.1, True),
)
TAU_GABA = tuple(
    _loop(
        f"tau_gaba_{_number_text(tau)}_{'trainable' if trainable else 'frozen'}",
        f"tau_GABA = {tau:g} ms, loop {'trainable' if trainable else 'frozen'}",
        "canonical",
        trainable,
        **{"network.synapse.tau_gaba_ms": tau},
    )
    for tau in (4.0, 6.0, 8.0, 12.0, 16.0)
    for trainable in (False, True)
)
BASIN_MAP = grid(
    "basin",
    "loop trainable from an initial multiple of canonical",
    {"init_w_ei": (0.0, 0.25, 0.5, 1.0, 2.0), "init_w_ie": (0.0, 0.25, 0.5, 1.0, 2.0)},
    train_w_ei=True,
    train_w_ie=True,
)

REFERENCE_DAMPING = PRESETS["reference"].recipe["membrane_grad_scale"]
"""The reference study's membrane-gradient damping ("v-grad dampen 1000"), from its preset."""
MEMBRANE_DAMPING = DALE_PRUNING + tuple(
    Condition(
        f"damped_{c.name}",
        f"{c.description}; membrane gradient x {REFERENCE_DAMPING:g} per step",
        {**c.settings, "membrane_grad_scale": REFERENCE_DAMPING},
    )
    for c in DALE_PRUNING
)

ANTI_PRUNING_LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0)
ANTI_PRUNING = (
    _loop("anti_pruning_off", "canonical loop, trainable, no penalty", "canonical", True),
    *grid(
        "anti_pruning",
        "canonical loop, trainable, W_EI distance from canonical penalised",
        {"reg_w_ei_distance": ANTI_PRUNING_LAMBDAS},
        train_w_ei=True,
        train_w_ie=True,
    ),
    *grid(
        "anti_pruning",
        "canonical loop, trainable, low E gamma-band power penalised",
        {"reg_gamma_power": ANTI_PRUNING_LAMBDAS},
        train_w_ei=True,
        train_w_ie=True,
    ),
)

# --- the reference recipe, one factor at a time -------------------------------------------
# Each factor by which the reference study's recipe (bridge.presets, "reference") differs from
# this project's, with both values written out, so that a rung means the same under any preset.
_PROJECT_NETWORK = NetworkParams()


def _network_difference(network: NetworkParams) -> tuple[dict[str, Any], dict[str, Any]]:
    """``network.SECTION.FIELD`` settings where ``network`` differs from the defaults: (project's, network's)."""
    project, other = {}, {}
    for section, values in network.to_dict().items():
        defaults = getattr(_PROJECT_NETWORK, section)
        for name, value in values.items():
            if value != getattr(defaults, name):
                project[f"network.{section}.{name}"] = getattr(defaults, name)
                other[f"network.{section}.{name}"] = value
    return project, other


def _recipe_factor(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One TrainConfig field: (project's default, reference value)."""
    return {name: TrainConfig.__dataclass_fields__[name].default}, {name: PRESETS["reference"].recipe[name]}


LADDER_BATCH = {key: getattr(TIERS["study256"].protocol, key) for key in ("batch_size", "n_train", "epochs")}
"""The reference's batch at the study tier's 120 Adam steps (the ``study256`` tier): 6 batches of 256, 20 epochs."""

REFERENCE_FACTORS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "constants": (
        "the study's membrane constants, 25 Hz input, calibrated input scale",
        *_network_difference(PRESETS["reference"].network),
    ),
    "damping": ("membrane gradient x 1e-3 per step", *_recipe_factor("membrane_grad_scale")),
    "global_clip": ("one global gradient-norm clip", *_recipe_factor("grad_clip_mode")),
    "readout_unit": ("readout trained in its own unit", *_recipe_factor("w_out_unit")),
    "batch": (
        "batch 256 (1536 digits x 20 epochs: the same 120 Adam steps)",
        {},  # the tier's batch
        LADDER_BATCH,
    ),
}
"""Factor -> (what the reference does, the project's settings, the reference's), in the ladder's order."""


def _ladder_condition(name: str, description: str, reference: tuple[str, ...]) -> Condition:
    """The canonical loop, trainable, with the factors in ``reference`` at the reference's values."""
    settings: dict[str, Any] = {}
    for factor, (_, project, other) in REFERENCE_FACTORS.items():
        settings.update(other if factor in reference else project)
    return _loop(name, description, "canonical", True, **settings)


_RECIPE_FACTORS = tuple(f for f in REFERENCE_FACTORS if f != "batch")
# The reference with its last recipe factor set back is the rung before it (rung 3): no condition of its own.
_REVERSED_FACTORS = _RECIPE_FACTORS[:-1]
REFERENCE_LADDER = (
    _ladder_condition("ladder_0_project", "canonical loop, trainable; the project's recipe", ()),
    *(
        _ladder_condition(
            f"ladder_{k}_{factor}",
            f"canonical loop, trainable; rung {k - 1} + {REFERENCE_FACTORS[factor][0]}",
            tuple(REFERENCE_FACTORS)[:k],
        )
        for k, factor in enumerate(REFERENCE_FACTORS, start=1)
    ),
    *(
        _ladder_condition(
            f"reverse_{factor}",
            f"canonical loop, trainable; the reference recipe with the project's {factor.replace('_', ' ')}",
            tuple(f for f in _RECIPE_FACTORS if f != factor),
        )
        for factor in _REVERSED_FACTORS
    ),
)
"""The matched-steps ladder on trainable_ping_init: project recipe -> reference, one factor per rung
(rung 4 is the reference recipe at batch 16, rung 5 at batch 256), and the reference recipe with
each factor set back (``reverse_*``; with the readout unit set back it is rung 3). Every run takes
120 Adam steps at the study tier."""

STREAM_DIGITS = 4
"""Digits per stream of the ``streaming`` protocol (800 ms trials of 200 ms digits)."""
STREAMING = (
    _loop(
        "stream_frozen",
        f"streams of {STREAM_DIGITS} digits, no reset between them; canonical loop, frozen",
        "canonical",
        False,
        stream_digits=STREAM_DIGITS,
    ),
    _loop(
        "stream_trainable",
        f"streams of {STREAM_DIGITS} digits, no reset between them; canonical loop, trainable",
        "canonical",
        True,
        stream_digits=STREAM_DIGITS,
    ),
    # BPTT through 8000 steps explodes more often than through 2000 (one of three exact
    # trainable streams diverged): is that what stops it, and does bounding it change the loop?
    _loop(
        "stream_trainable_damped",
        f"streams of {STREAM_DIGITS} digits, no reset between them; canonical loop, trainable; "
        f"membrane gradient x {REFERENCE_DAMPING:g} per step",
        "canonical",
        True,
        stream_digits=STREAM_DIGITS,
        membrane_grad_scale=REFERENCE_DAMPING,
    ),
)

PROTOCOLS: dict[str, tuple[Condition, ...]] = {
    "dale_pruning": DALE_PRUNING,
    "frozen_baseline": DALE_PRUNING[:1],
    "tau_gaba": TAU_GABA,
    "basin_map": BASIN_MAP,
    "anti_pruning": ANTI_PRUNING,
    "membrane_damping": MEMBRANE_DAMPING,
    "streaming": STREAMING,
    "reference_ladder": REFERENCE_LADDER,
}
"""Each protocol's conditions."""

CONDITIONS: dict[str, Condition] = {c.name: c for conditions in PROTOCOLS.values() for c in conditions}
"""Every condition of every protocol, by name (names are unique across protocols)."""


DEFAULT_SEEDS = (42, 43, 44)


@dataclass(frozen=True)
class ProtocolDefaults:
    """What ``biosim protocol run NAME`` uses when no tier or seeds are given."""

    tier: str
    seeds: tuple[int, ...] = DEFAULT_SEEDS


PROTOCOL_DEFAULTS: dict[str, ProtocolDefaults] = {
    "dale_pruning": ProtocolDefaults("study"),
    "frozen_baseline": ProtocolDefaults("study"),
    # Sweeps: one seed per grid point at the survey tier; more seeds or tiers on request (--seeds, --tier).
    "tau_gaba": ProtocolDefaults("survey", (42,)),
    "basin_map": ProtocolDefaults("survey", (42,)),
    "anti_pruning": ProtocolDefaults("survey", (42,)),
    "membrane_damping": ProtocolDefaults("survey", (42,)),
    # The study tier's digits, seeds and Adam steps, so each run pairs with a dale_pruning run
    # (frozen_ping, trainable_ping_init) that differs only by the resets between digits.
    "streaming": ProtocolDefaults("study"),
    # One seed per rung by default (the batch rung alone is 16 study-tier runs of training);
    # the rungs that decide take --seeds 42 43 44 (docs/reference.md).
    "reference_ladder": ProtocolDefaults("study", (42,)),
}
"""Default tier and seeds of each protocol; each default finishes in an hour on 2 cores."""


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
    preset: str = "project",
    **overrides: Any,
) -> Protocol:
    """The protocol ``name`` (a key of :data:`PROTOCOLS`) at ``tier``.

    ``tier`` and ``seeds`` default to the protocol's (:data:`PROTOCOL_DEFAULTS`);
    ``conditions`` selects some of the protocol's conditions (default: all);
    ``preset`` is the recipe every run starts from (:data:`bridge.presets.PRESETS`);
    ``overrides`` are TrainConfig fields applied to every run (e.g. ``dtype``).
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid protocols: {', '.join(PROTOCOLS)}")
    defaults = PROTOCOL_DEFAULTS[name]
    own = tuple(c.name for c in PROTOCOLS[name])
    if conditions is not None:
        foreign = [c for c in conditions if c not in own]
        if foreign:
            raise ValueError(
                f"condition(s) {foreign} are not part of protocol {name!r}; its conditions: {', '.join(own)}"
            )
    return Protocol(
        name=name,
        conditions=tuple(conditions) if conditions else own,
        tier=defaults.tier if tier is None else tier,
        seeds=tuple(seeds or defaults.seeds),
        overrides=overrides,
        validation_backend=validation_backend,
        preset=preset,
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
    if n_seeds is None:
        n_seeds = len(PROTOCOL_DEFAULTS[name].seeds)
    t = TIERS[tier].protocol
    seconds = 0.0
    for condition in PROTOCOLS[name]:
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
