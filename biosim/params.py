"""The network's parameters: one frozen, typed object, the single source of truth.

Every field carries its unit in its name (``_mv``, ``_ms``, ``_us``, ``_nf``,
``_hz``). The Brian2 builder (:mod:`biosim.network`) and the PyTorch mirror
(:mod:`bridge`) both read this object; units are converted to Brian2
quantities in exactly one place, :func:`to_brian2_namespace`.

Internal unit system (used by the mirror and by the weight files): voltage in
mV, time in ms, conductance in uS, capacitance in nF. It is self-consistent:
uS * mV = nA and nA * ms / nF = mV, so ``dv/dt [mV/ms] = g [uS] * (E - v) [mV]
/ C [nF]`` needs no conversion factors.

The defaults are the calibrated PING network described in ``docs/model.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MembraneParams",
    "SynapseParams",
    "ConnectivityParams",
    "InitParams",
    "InputParams",
    "ReadoutParams",
    "SimulationParams",
    "NetworkParams",
    "ParameterError",
    "small_network",
    "to_brian2_namespace",
    "from_brian2_namespace",
]


class ParameterError(ValueError):
    """A parameter value is out of its valid range or of the wrong type.

    ``field`` is the offending field when there is one, ``detail`` the message
    without its ``owner.field:`` prefix; :class:`NetworkParams` uses them to
    name the section (``membrane_i.c_m_nf`` rather than ``MembraneParams.c_m_nf``).
    """

    def __init__(self, message: str, *, field: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.detail = detail if detail is not None else message


def _check(condition: bool, owner: str, message: str, field: str | None = None) -> None:
    """Raise ``ParameterError("owner.field: message")`` (or ``"owner: message"``) unless ``condition``."""
    if not condition:
        prefix = f"{owner}.{field}" if field else owner
        raise ParameterError(f"{prefix}: {message}", field=field, detail=message)


def _is_real(value: Any) -> bool:
    """A real number that is not a bool (``True`` is an ``int`` to Python, never a parameter value)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy's bool_ is no Real


def _check_types(obj: Any) -> None:
    """Every field of a section is a finite number; ``int`` fields are whole numbers (never bools).

    The annotation (``"float"`` or ``"int"``) says which; the message names
    the field, the expected kind and the value found.
    """
    owner = type(obj).__name__
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.type == "int":
            _check(
                isinstance(value, numbers.Integral) and _is_real(value),
                owner,
                f"expected an int, got {value!r} ({type(value).__name__})",
                f.name,
            )
        else:
            _check(_is_real(value), owner, f"expected a number, got {value!r} ({type(value).__name__})", f.name)
            _check(math.isfinite(value), owner, f"expected a finite number, got {value!r}", f.name)


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(value > 0, type(obj).__name__, f"must be > 0, got {value!r}", name)


def _non_negative(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(value >= 0, type(obj).__name__, f"must be >= 0, got {value!r}", name)


@dataclass(frozen=True)
class MembraneParams:
    """Leaky integrate-and-fire membrane with conductance-based synapses.

    ``C dv/dt = g_leak (e_leak - v) + ge (e_exc - v) + gi (e_inh - v)``;
    a spike is emitted when ``v > v_threshold`` (outside the refractory
    period), after which ``v`` is set to ``v_reset`` and held there for
    ``refractory_ms``.
    """

    c_m_nf: float = 0.2
    """Membrane capacitance (nF)."""
    g_leak_us: float = 0.01
    """Leak conductance (uS); ``tau_m = c_m / g_leak``."""
    e_leak_mv: float = -65.0
    """Leak reversal potential (mV)."""
    v_threshold_mv: float = -50.0
    """Spike threshold (mV)."""
    v_reset_mv: float = -65.0
    """Reset potential (mV)."""
    refractory_ms: float = 2.0
    """Absolute refractory period (ms); must be a whole number of time steps."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_types(self)
        _positive(self, "c_m_nf", "g_leak_us")
        _check(
            self.v_reset_mv < self.v_threshold_mv,
            name,
            f"must lie below v_threshold_mv ({self.v_threshold_mv}), got {self.v_reset_mv}",
            "v_reset_mv",
        )
        _non_negative(self, "refractory_ms")

    @property
    def tau_m_ms(self) -> float:
        """Membrane time constant (ms)."""
        return self.c_m_nf / self.g_leak_us


@dataclass(frozen=True)
class SynapseParams:
    """Exponentially decaying conductances and their reversal potentials."""

    e_exc_mv: float = 0.0
    """AMPA reversal potential (mV)."""
    e_inh_mv: float = -80.0
    """GABA_A reversal potential (mV)."""
    tau_ampa_ms: float = 2.0
    """Decay time constant of ``ge`` (ms)."""
    tau_gaba_ms: float = 8.0
    """Decay time constant of ``gi`` (ms)."""

    def __post_init__(self) -> None:
        _check_types(self)
        _positive(self, "tau_ampa_ms", "tau_gaba_ms")
        _check(
            self.e_inh_mv < self.e_exc_mv,
            type(self).__name__,
            f"must lie below e_exc_mv ({self.e_exc_mv}), got {self.e_inh_mv}",
            "e_inh_mv",
        )


@dataclass(frozen=True)
class ConnectivityParams:
    """Population sizes and which blocks exist.

    Input -> E is sparse (a fixed random mask); E -> I and I -> E are dense
    with probability ``p_ei`` / ``p_ie`` (1.0 = all to all). The recurrent
    E -> E and I -> I blocks are optional (the study's network has neither): ``p_ee`` /
    ``p_ii`` = 0 (the default) means the block does not exist; above 0 it
    exists with that connection probability (no autapses).
    """

    n_input: int = 784
    n_e: int = 1024
    n_i: int = 256
    n_classes: int = 10
    p_input: float = 0.05
    """Probability that an input -> E edge exists (95 % sparsity)."""
    p_ei: float = 1.0
    p_ie: float = 1.0
    p_ee: float = 0.0
    """Probability of an E -> E edge (excitatory, onto ``ge`` of E); 0: no E -> E block."""
    p_ii: float = 0.0
    """Probability of an I -> I edge (inhibitory, onto ``gi`` of I); 0: no I -> I block."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_types(self)
        for attr in ("n_input", "n_e", "n_i", "n_classes"):
            value = getattr(self, attr)
            _check(value > 0, name, f"must be a positive int, got {value!r}", attr)
        for attr in ("p_input", "p_ei", "p_ie"):
            value = getattr(self, attr)
            _check(0.0 < value <= 1.0, name, f"must lie in (0, 1], got {value!r}", attr)
        for attr in ("p_ee", "p_ii"):
            value = getattr(self, attr)
            _check(0.0 <= value <= 1.0, name, f"must lie in [0, 1] (0: no block), got {value!r}", attr)

    @property
    def has_ee(self) -> bool:
        """Whether the network has an E -> E block (``p_ee > 0``)."""
        return self.p_ee > 0

    @property
    def has_ii(self) -> bool:
        """Whether the network has an I -> I block (``p_ii > 0``)."""
        return self.p_ii > 0


@dataclass(frozen=True)
class InitParams:
    """Canonical ("biophysical") initialisation, fan-in normalised.

    ``W_EI ~ N(w_ei_mean, w_ei_std) uS / n_e`` per edge,
    ``W_IE ~ N(w_ie_mean, w_ie_std) uS / n_i`` per edge,
    ``W_in ~ N(w_in_mean, w_in_std) * input_scale_us`` per existing edge,
    and for the optional recurrent blocks (:class:`ConnectivityParams`
    ``p_ee``, ``p_ii``) ``W_EE ~ N(w_ee_mean, w_ee_std) uS / n_e`` and
    ``W_II ~ N(w_ii_mean, w_ii_std) uS / n_i`` per existing edge.
    Samples are drawn once; negative draws are kept as stored values (Dale's
    law clamps them to 0 in the forward pass).
    """

    w_ei_mean_us: float = 1.0
    w_ei_std_us: float = 0.1
    w_ie_mean_us: float = 2.0
    w_ie_std_us: float = 0.2
    w_in_mean: float = 1.2
    w_in_std: float = 0.12
    input_scale_us: float = 0.026
    """Conductance (uS) of one unit of ``W_in``; set by calibration."""
    w_out_std: float = 0.01
    """Std of the readout weights (dimensionless, zero-mean normal)."""
    w_ee_mean_us: float = 0.5
    """E -> E (used only when ``connectivity.p_ee > 0``): summed conductance if all-to-all, / n_e per edge."""
    w_ee_std_us: float = 0.05
    w_ii_mean_us: float = 1.0
    """I -> I (used only when ``connectivity.p_ii > 0``): summed conductance if all-to-all, / n_i per edge."""
    w_ii_std_us: float = 0.1

    def __post_init__(self) -> None:
        _check_types(self)
        # Means too: a negative mean conductance would be mostly pruned (clamped to 0) from the start.
        _non_negative(self, "w_ei_mean_us", "w_ie_mean_us", "w_in_mean", "w_ee_mean_us", "w_ii_mean_us")
        _non_negative(self, "w_ei_std_us", "w_ie_std_us", "w_in_std", "w_out_std", "w_ee_std_us", "w_ii_std_us")
        _positive(self, "input_scale_us")


@dataclass(frozen=True)
class InputParams:
    """MNIST pixels as Poisson spike trains: rate = intensity / 255 * max_rate."""

    max_rate_hz: float = 100.0

    def __post_init__(self) -> None:
        _check_types(self)
        _positive(self, "max_rate_hz")


@dataclass(frozen=True)
class ReadoutParams:
    """Ten non-spiking leaky units driven by E spikes ("mem-mean" readout).

    ``du/dt = -u / tau_readout``; each E spike adds ``W_out[j, c]`` to ``u_c``;
    the class score is the mean of ``u_c`` sampled at the end of every step.
    """

    tau_readout_ms: float = 20.0

    def __post_init__(self) -> None:
        _check_types(self)
        _positive(self, "tau_readout_ms")


@dataclass(frozen=True)
class SimulationParams:
    """Time grid of one trial and the analysis window."""

    dt_ms: float = 0.1
    trial_ms: float = 200.0
    transient_ms: float = 50.0
    """Initial part of each trial excluded from rates and spectra (the
    network starts from a random state and needs a few gamma cycles to lock)."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_types(self)
        _positive(self, "dt_ms", "trial_ms")
        _check(
            _is_whole(self.trial_ms / self.dt_ms),
            name,
            f"must be a whole number of steps of dt_ms ({self.dt_ms}), got {self.trial_ms}",
            "trial_ms",
        )
        _check(
            0 <= self.transient_ms < self.trial_ms,
            name,
            f"must lie in [0, trial_ms) = [0, {self.trial_ms}), got {self.transient_ms}",
            "transient_ms",
        )

    @property
    def n_steps(self) -> int:
        """Time steps per trial."""
        return round(self.trial_ms / self.dt_ms)


def _is_whole(x: float) -> bool:
    return abs(x - round(x)) < 1e-9


@dataclass(frozen=True)
class NetworkParams:
    """Everything that defines the PING network and one trial of it."""

    membrane_e: MembraneParams = field(default_factory=MembraneParams)
    membrane_i: MembraneParams = field(
        # Fast-spiking interneurons: short membrane time constant (2.5 ms), so
        # they fire on a coincident E volley rather than on background drive.
        default_factory=lambda: MembraneParams(c_m_nf=0.5, g_leak_us=0.2, refractory_ms=1.0)
    )
    synapse: SynapseParams = field(default_factory=SynapseParams)
    connectivity: ConnectivityParams = field(default_factory=ConnectivityParams)
    init: InitParams = field(default_factory=InitParams)
    input: InputParams = field(default_factory=InputParams)
    readout: ReadoutParams = field(default_factory=ReadoutParams)
    simulation: SimulationParams = field(default_factory=SimulationParams)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, expected = getattr(self, f.name), _section_type(f)
            if not isinstance(value, expected):
                hint = " (plain data goes through NetworkParams.from_dict)" if isinstance(value, dict) else ""
                raise ParameterError(
                    f"NetworkParams.{f.name}: expected a {expected.__name__}, got {type(value).__name__} "
                    f"{value!r}{hint}",
                    field=f.name,
                )
        dt = self.simulation.dt_ms
        for label, membrane in (("membrane_e", self.membrane_e), ("membrane_i", self.membrane_i)):
            if not _is_whole(membrane.refractory_ms / dt):
                raise ParameterError(
                    f"{label}.refractory_ms: {membrane.refractory_ms} is not a whole number of time steps of "
                    f"{dt} ms (simulation.dt_ms); the mirror counts refractoriness in steps",
                    field=f"{label}.refractory_ms",
                )

    def refractory_steps(self, population: str) -> int:
        """Refractory period of population ``"e"`` or ``"i"`` in time steps."""
        membrane = {"e": self.membrane_e, "i": self.membrane_i}[population]
        return round(membrane.refractory_ms / self.simulation.dt_ms)

    def replace(self, **sections: Any) -> NetworkParams:
        """Return a copy with whole sections or ``section__field`` values replaced.

        >>> NetworkParams().replace(synapse__tau_gaba_ms=8.0).synapse.tau_gaba_ms
        8.0
        """
        updates: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in sections.items():
            if "__" in key:
                section, attr = key.split("__", 1)
                nested.setdefault(section, {})[attr] = value
            else:
                updates[key] = value
        sections_by_name = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(updates) - set(sections_by_name)) + sorted(set(nested) - set(sections_by_name))
        if unknown:
            raise ParameterError(
                f"NetworkParams has no section(s) {unknown}; valid sections: {', '.join(sections_by_name)}"
            )
        for section, attrs in nested.items():
            base = updates.get(section, getattr(self, section))
            if not isinstance(base, _section_type(sections_by_name[section])):
                break  # __post_init__ names the section of the wrong type
            _check_known_fields(section, type(base), attrs)
            updates[section] = _named(section, lambda base=base, attrs=attrs: dataclasses.replace(base, **attrs))
        return dataclasses.replace(self, **updates)

    # --- serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkParams:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error."""
        if not isinstance(data, dict):
            raise ParameterError(f"network parameters must be a mapping, got {type(data).__name__}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            section_type = _section_type(f)
            section = data[f.name]
            if not isinstance(section, dict):
                raise ParameterError(f"section {f.name!r} must be a mapping, got {section!r}", field=f.name)
            if not all(isinstance(key, str) for key in section):
                raise ParameterError(
                    f"section {f.name!r}: field names must be strings, got {sorted(map(repr, section))}"
                )
            _check_known_fields(f.name, section_type, section)
            # Missing fields keep this section's defaults (membrane_i's differ from MembraneParams').
            default = f.default_factory()  # type: ignore[misc]
            kwargs[f.name] = _named(
                f.name, lambda default=default, section=section: dataclasses.replace(default, **section)
            )
        unknown_sections = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown_sections:
            raise ParameterError(f"unknown section(s) {unknown_sections} in network parameters")
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def small_network(trial_ms: float = 40.0, transient_ms: float = 10.0) -> NetworkParams:
    """A 64 E / 16 I network with short trials: the examples' ``--small`` (seconds per run, not a result)."""
    return NetworkParams().replace(
        connectivity__n_e=64,
        connectivity__n_i=16,
        simulation__trial_ms=trial_ms,
        simulation__transient_ms=transient_ms,
    )


def _section_type(f: dataclasses.Field) -> type:
    """The class of a :class:`NetworkParams` section field."""
    return type(f.default_factory())  # type: ignore[misc]


def _check_known_fields(section: str, section_type: type, values: dict[str, Any]) -> None:
    known = {g.name for g in dataclasses.fields(section_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ParameterError(f"unknown field(s) {unknown} in section {section!r}; valid fields: {sorted(known)}")


def _named(section: str, build: Any) -> Any:
    """``build()``, with a section's :class:`ParameterError` renamed from its class to ``section``.

    ``MembraneParams.c_m_nf: must be > 0`` becomes ``membrane_i.c_m_nf: must be > 0``.
    """
    try:
        return build()
    except ParameterError as error:
        if error.field is None:
            raise ParameterError(f"{section}: {error.detail}", detail=error.detail) from None
        raise ParameterError(
            f"{section}.{error.field}: {error.detail}", field=error.field, detail=error.detail
        ) from None


# --- unit conversion: the one place ---------------------------------------

# Field-name suffix -> factor to the SI base unit of the Brian2 quantity.
_SUFFIX_TO_SI = {"_mv": 1e-3, "_ms": 1e-3, "_us": 1e-6, "_nf": 1e-9, "_hz": 1.0}


def to_brian2_namespace(params: NetworkParams, group: str) -> dict[str, Any]:
    """Brian2 namespace of one group for the equation strings of :mod:`biosim.equations`.

    ``group`` is ``"e"`` or ``"i"`` (membrane of that population plus the
    synaptic constants) or ``"readout"``. Keys are the field names without
    their unit suffix (``c_m``, ``tau_gaba``, ...), values Brian2 quantities.
    """
    import brian2 as b2

    unit = {"_mv": b2.mV, "_ms": b2.ms, "_us": b2.uS, "_nf": b2.nF, "_hz": b2.Hz}
    sections = {
        "e": (params.membrane_e, params.synapse),
        "i": (params.membrane_i, params.synapse),
        "readout": (params.readout,),
    }
    if group not in sections:
        raise ParameterError(f"unknown group {group!r}; valid groups: {sorted(sections)}")
    namespace: dict[str, Any] = {}
    for obj in sections[group]:
        for f in dataclasses.fields(obj):
            suffix = f.name[f.name.rfind("_") :]
            namespace[f.name[: -len(suffix)]] = getattr(obj, f.name) * unit[suffix]
    return namespace


def from_brian2_namespace(namespaces: dict[str, dict[str, Any]], base: NetworkParams | None = None) -> NetworkParams:
    """Inverse of :func:`to_brian2_namespace` over all groups (tests the round trip)."""
    base = base or NetworkParams()
    updates: dict[str, Any] = {}
    for group, sections in (("e", ("membrane_e", "synapse")), ("i", ("membrane_i",)), ("readout", ("readout",))):
        for section in sections:
            for f in dataclasses.fields(getattr(base, section)):
                suffix = f.name[f.name.rfind("_") :]
                value = namespaces[group][f.name[: -len(suffix)]]
                updates[f"{section}__{f.name}"] = float(value) / _SUFFIX_TO_SI[suffix]
    return base.replace(**updates)


def exp_decay(dt_ms: float, tau_ms: float) -> float:
    """Per-step decay factor ``exp(-dt / tau)``."""
    return math.exp(-dt_ms / tau_ms)
