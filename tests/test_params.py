import dataclasses

import pytest

from biosim.params import NetworkParams, ParameterError, from_brian2_namespace, to_brian2_namespace


def test_namespace_round_trip():
    params = NetworkParams().replace(synapse__tau_gaba_ms=11.5, membrane_i__c_m_nf=0.7, readout__tau_readout_ms=9.0)
    namespaces = {group: to_brian2_namespace(params, group) for group in ("e", "i", "readout")}
    assert from_brian2_namespace(namespaces) == params


def test_namespace_has_brian2_units():
    import brian2 as b2

    namespace = to_brian2_namespace(NetworkParams(), "i")
    assert namespace["tau_gaba"] == NetworkParams().synapse.tau_gaba_ms * b2.ms
    assert namespace["c_m"].dim == b2.farad.dim
    assert namespace["g_leak"].dim == b2.siemens.dim


def test_unknown_group_lists_valid_ones():
    with pytest.raises(ParameterError, match="valid groups"):
        to_brian2_namespace(NetworkParams(), "x")


def test_dict_round_trip_and_unknown_field():
    params = NetworkParams().replace(synapse__tau_gaba_ms=4.0)
    assert NetworkParams.from_dict(params.to_dict()) == params
    data = params.to_dict()
    data["synapse"]["tau_gabba_ms"] = 3.0
    with pytest.raises(ParameterError, match="tau_gabba_ms"):
        NetworkParams.from_dict(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"membrane_e__c_m_nf": -1.0}, "c_m_nf"),
        ({"membrane_e__v_reset_mv": -40.0}, "v_reset_mv"),
        ({"synapse__tau_gaba_ms": 0.0}, "tau_gaba_ms"),
        ({"membrane_i__refractory_ms": 0.25}, "whole number of time steps"),
        ({"connectivity__p_input": 1.5}, "p_input"),
    ],
)
def test_invalid_values_name_the_field(change, message):
    with pytest.raises(ParameterError, match=message):
        NetworkParams().replace(**change)


def test_params_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        NetworkParams().synapse.tau_gaba_ms = 3.0  # type: ignore[misc]
