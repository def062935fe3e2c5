"""Tests of biosim.weight_files: the versioned weight-transfer file."""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import read_raw, write_raw

from biosim.params import NetworkParams
from biosim.weight_files import (
    FORMAT,
    FORMAT_VERSION,
    UNITS,
    LoadedWeights,
    WeightFileError,
    entry_names,
    export_for_brian2,
    load_weights,
    save_weights,
)
from biosim.weights import MATRICES, NetworkWeights, init_weights

PARAMS = NetworkParams().replace(connectivity__n_e=32, connectivity__n_i=8, connectivity__n_input=50)
PROVENANCE = {"run_id": "test-run", "condition": "trainable_ping_init", "seed": 42, "epoch": np.int64(7)}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "weight_format.md"


def trained_like_weights(seed: int = 3) -> NetworkWeights:
    """Canonical weights with some stored entries pushed below zero, as training prunes them."""
    weights = init_weights(PARAMS, seed=seed)
    # Not default_rng(seed): SeedSequence(seed) equals SeedSequence([seed, 0]), the input mask's own stream.
    rng = np.random.default_rng([seed, 99])
    w_in, w_ei, w_ie = weights.w_in.copy(), weights.w_ei.copy(), weights.w_ie.copy()
    w_in[weights.input_mask & (rng.random(w_in.shape) < 0.3)] *= -1.0
    w_ei[rng.random(w_ei.shape) < 0.3] *= -1.0
    w_ie[rng.random(w_ie.shape) < 0.3] *= -1.0
    return NetworkWeights(w_in=w_in, w_ei=w_ei, w_ie=w_ie, w_out=weights.w_out, input_mask=weights.input_mask)


@pytest.fixture
def weights() -> NetworkWeights:
    return trained_like_weights()


@pytest.fixture
def saved(tmp_path: Path, weights: NetworkWeights) -> Path:
    return save_weights(tmp_path / "weights.npz", weights, PARAMS, provenance=PROVENANCE)


def assert_rejected(path: Path, *fragments: str, params: NetworkParams | None = None) -> str:
    with pytest.raises(WeightFileError) as info:
        load_weights(path, params=params)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# --- round trip ---------------------------------------------------------------


def test_round_trip_is_exact(saved: Path, weights: NetworkWeights) -> None:
    loaded = load_weights(saved, params=PARAMS)
    assert isinstance(loaded, LoadedWeights)
    assert loaded.params == PARAMS
    expected_effective = weights.effective()
    for name in (*MATRICES, "input_mask"):
        assert np.array_equal(getattr(loaded.stored, name), getattr(weights, name)), name
        assert np.array_equal(getattr(loaded.effective, name), getattr(expected_effective, name)), name
    assert loaded.metadata["format"] == FORMAT
    assert loaded.metadata["format_version"] == FORMAT_VERSION
    assert loaded.metadata["provenance"] == {**PROVENANCE, "epoch": 7}
    assert loaded.metadata["connectivity"] == PARAMS.to_dict()["connectivity"]
    for name in MATRICES:
        description = loaded.metadata["matrices"][name]
        assert description == {"units": UNITS[name], "shape": list(getattr(weights, name).shape), "layout": "pre,post"}


def test_clamp_is_exercised_and_pruned_entries_are_kept(saved: Path, weights: NetworkWeights) -> None:
    loaded = load_weights(saved)
    for name in ("w_in", "w_ei", "w_ie"):
        negative = getattr(loaded.stored, name) < 0
        assert negative.any(), f"{name}: the fixture should prune some entries"
        assert np.all(getattr(loaded.effective, name)[negative] == 0.0), name
    assert np.array_equal(loaded.effective.w_out, weights.w_out)  # readout keeps its sign


def test_file_holds_exactly_the_documented_entries(saved: Path) -> None:
    arrays, metadata = read_raw(saved)
    assert sorted(arrays) == sorted(entry_names())
    assert set(UNITS) == set(MATRICES)
    for name in MATRICES:
        assert arrays[f"stored/{name}"].dtype == np.float64
    assert arrays["input_mask"].dtype == np.bool_
    assert metadata["network_params"] == PARAMS.to_dict()


def test_docs_example_reads_the_file_with_plain_numpy(saved: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    example = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)[0]
    assert "import biosim" not in example and "from biosim" not in example
    monkeypatch.chdir(saved.parent)
    exec(compile(example, str(DOCS), "exec"), {})
    assert "uS (32, 8)" in capsys.readouterr().out


def test_save_overwrites_atomically_and_creates_parents(tmp_path: Path, weights: NetworkWeights) -> None:
    path = tmp_path / "run" / "epoch_1" / "weights.npz"
    save_weights(path, init_weights(PARAMS, seed=1), PARAMS)
    save_weights(path, weights, PARAMS, provenance={"epoch": 2})
    assert load_weights(path).metadata["provenance"] == {"epoch": 2}
    assert np.array_equal(load_weights(path).stored.w_ei, weights.w_ei)
    assert [p.name for p in path.parent.iterdir()] == ["weights.npz"]  # no temporary file left


def test_float32_weights_are_saved_exactly_as_float64(tmp_path: Path, weights: NetworkWeights) -> None:
    as_float32 = NetworkWeights(
        **{name: getattr(weights, name).astype(np.float32) for name in MATRICES}, input_mask=weights.input_mask
    )
    loaded = load_weights(save_weights(tmp_path / "w.npz", as_float32, PARAMS))
    assert loaded.stored.w_ie.dtype == np.float64
    assert np.array_equal(loaded.stored.w_ie, as_float32.w_ie)


# --- the two simulators ---------------------------------------------------------


def test_effective_weights_pass_the_brian2_builder_checks(saved: Path) -> None:
    loaded = load_weights(saved)
    brian2_weights = export_for_brian2(saved, params=PARAMS)
    brian2_weights.check_shapes(PARAMS)
    brian2_weights.check_dale()
    for name in (*MATRICES, "input_mask"):
        assert np.array_equal(getattr(brian2_weights, name), getattr(loaded.effective, name)), name
    assert export_for_brian2(loaded, params=PARAMS) is loaded.effective


def test_brian2_network_builds_from_the_file(saved: Path) -> None:
    import brian2 as b2
    from brian2.utils.logger import catch_logs

    from biosim.inputs import make_trials
    from biosim.network import build_network

    b2.prefs.codegen.target = "numpy"  # no compilation: this test only builds (the autouse fixture resets prefs)
    images = np.random.default_rng(0).integers(0, 256, size=(1, PARAMS.connectivity.n_input))
    trials = make_trials(images, np.array([3]), PARAMS, seed=0)
    effective = export_for_brian2(saved)
    with catch_logs():  # built but never run: Brian2 warns about unused objects when they are collected
        network = build_network(PARAMS, effective, trials)
        synapses = {s.name: s for s in network.network.objects if s.name.startswith("syn_")}
        # Pruned (clamped) edges are not instantiated: one synapse per positive effective weight.
        counts = {name: len(synapses[name]) for name in ("syn_in_e", "syn_e_i", "syn_i_e")}
        del network, synapses
        gc.collect()
    assert counts == {
        "syn_in_e": np.count_nonzero(effective.w_in),
        "syn_e_i": np.count_nonzero(effective.w_ei),
        "syn_i_e": np.count_nonzero(effective.w_ie),
    }


def test_stored_weights_can_seed_the_torch_trainer(saved: Path) -> None:
    torch = pytest.importorskip("torch")
    stored = load_weights(saved).stored
    for name in MATRICES:
        array = getattr(stored, name)
        assert array.dtype == np.float64 and array.flags.c_contiguous and array.flags.writeable, name
        tensor = torch.from_numpy(array)
        assert tensor.dtype == torch.float64
        assert torch.equal(torch.clamp(tensor, min=0.0), torch.from_numpy(np.maximum(array, 0.0)))


# --- params --------------------------------------------------------------------


def test_params_mismatch_names_the_fields(saved: Path) -> None:
    other = PARAMS.replace(synapse__tau_gaba_ms=12.0, connectivity__n_i=16)
    message = assert_rejected(
        saved, "synapse.tau_gaba_ms", "connectivity.n_i", "expected 12.0, found 8.0", params=other
    )
    assert "membrane_e" not in message
    with pytest.raises(WeightFileError, match="synapse.tau_gaba_ms"):
        export_for_brian2(load_weights(saved), params=PARAMS.replace(synapse__tau_gaba_ms=12.0))


def test_save_checks_shapes_against_params_and_writes_nothing(tmp_path: Path, weights: NetworkWeights) -> None:
    path = tmp_path / "w.npz"
    bigger = PARAMS.replace(connectivity__n_i=16)
    with pytest.raises(WeightFileError, match=r"stored/w_ei: expected shape \(32, 16\) \(pre, post\), found \(32, 8\)"):
        save_weights(path, weights, bigger)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("field", "value", "fragments"),
    [
        ("w_ei", np.full((32, 8), np.nan), ("stored/w_ei", "expected finite values", "nan")),
        ("input_mask", np.ones((50, 32), dtype=np.int8), ("input_mask", "expected dtype bool", "int8")),
        ("w_out", np.zeros((32, 10), dtype=np.int64), ("stored/w_out", "floating-point", "int64")),
    ],
)
def test_save_rejects_bad_weights(tmp_path: Path, weights: NetworkWeights, field, value, fragments) -> None:
    bad = NetworkWeights(**{**weights.as_dict(), field: value})
    with pytest.raises(WeightFileError) as info:
        save_weights(tmp_path / "w.npz", bad, PARAMS)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_w_in_outside_the_mask(tmp_path: Path, weights: NetworkWeights) -> None:
    w_in = weights.w_in.copy()
    w_in[~weights.input_mask] = 0.5
    bad = NetworkWeights(**{**weights.as_dict(), "w_in": w_in})
    with pytest.raises(WeightFileError, match="stored/w_in: expected 0 outside input_mask"):
        save_weights(tmp_path / "w.npz", bad, PARAMS)


def test_save_rejects_non_json_provenance(tmp_path: Path, weights: NetworkWeights) -> None:
    with pytest.raises(WeightFileError, match="provenance"):
        save_weights(tmp_path / "w.npz", weights, PARAMS, provenance={"loss": float("nan")})
    with pytest.raises(WeightFileError, match="provenance"):
        save_weights(tmp_path / "w.npz", weights, PARAMS, provenance={"weights": object()})


# --- bad files -------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.npz"
    assert_rejected(path, str(path), "no such weight file")


def test_directory_is_not_a_weight_file(tmp_path: Path) -> None:
    assert_rejected(tmp_path, str(tmp_path), "expected a weight file")


@pytest.mark.parametrize("content", [b"hello, not an archive", b"PK\x03\x04truncated zip"])
def test_unreadable_file_names_the_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    assert_rejected(path, str(path), "expected an .npz archive")


def test_truncated_archive_is_rejected(saved: Path) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    assert_rejected(saved, str(saved), "expected an .npz archive")


def test_damaged_entry_is_rejected(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)  # zero a block inside a compressed member
    saved.write_bytes(bytes(data))
    assert_rejected(saved, str(saved), "expected a readable .npy entry, found a damaged one")


def test_single_npy_is_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "w.npy"
    np.save(path, np.zeros(3))
    assert_rejected(path, "expected an .npz archive, found a single .npy array")


def test_pickled_entry_is_refused(saved: Path) -> None:
    arrays, metadata = read_raw(saved)
    arrays["stored/w_ei"] = np.array([{"w": 1.0}], dtype=object)
    np.savez(saved, metadata=np.array(json.dumps(metadata)), **arrays)
    assert_rejected(saved, "stored/w_ei", "pickled object array")


@pytest.mark.parametrize(
    ("key", "value", "fragments"),
    [
        ("format", "other-weights", ("metadata.format", "expected 'biosim-weights'", "found 'other-weights'")),
        ("format_version", 2, ("metadata.format_version", "expected 1", "found 2")),
        ("format_version", "1", ("metadata.format_version", "expected 1", "found '1'")),
        ("format_version", True, ("metadata.format_version", "found True")),
    ],
)
def test_wrong_format_or_version(saved: Path, key: str, value, fragments) -> None:
    arrays, metadata = read_raw(saved)
    write_raw(saved, arrays, {**metadata, key: value})
    assert_rejected(saved, *fragments)


def test_missing_metadata(saved: Path) -> None:
    arrays, _ = read_raw(saved)
    write_raw(saved, arrays, None)
    assert_rejected(saved, "metadata", "found it missing")


def test_metadata_not_json(saved: Path) -> None:
    arrays, _ = read_raw(saved)
    np.savez_compressed(saved, metadata=np.array("{not json"), **arrays)
    assert_rejected(saved, "metadata", "expected JSON")


def test_bad_network_params(saved: Path) -> None:
    arrays, metadata = read_raw(saved)
    metadata["network_params"]["synapse"]["tau_gaba"] = 8.0
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, "metadata.network_params", "tau_gaba")


def test_connectivity_inconsistent_with_network_params(saved: Path) -> None:
    arrays, metadata = read_raw(saved)
    metadata["connectivity"]["n_e"] = 64
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, "metadata.connectivity", "'n_e': 32", "'n_e': 64")


@pytest.mark.parametrize("entry", [*entry_names()])
def test_missing_entry(saved: Path, entry: str) -> None:
    arrays, metadata = read_raw(saved)
    del arrays[entry]
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, entry, "found it missing")


@pytest.mark.parametrize(
    ("name", "shape"), [("w_in", (50, 32)), ("w_ei", (32, 8)), ("w_ie", (8, 32)), ("w_out", (32, 10))]
)
def test_wrong_shape(saved: Path, name: str, shape: tuple[int, int]) -> None:
    arrays, metadata = read_raw(saved)
    arrays[f"effective/{name}"] = arrays[f"effective/{name}"][:, :-1]
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, f"effective/{name}", f"expected shape {shape}", f"found {(shape[0], shape[1] - 1)}")


def test_transposed_matrix_is_a_wrong_shape(saved: Path) -> None:
    arrays, metadata = read_raw(saved)
    arrays["stored/w_ie"] = arrays["stored/w_ie"].T
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, "stored/w_ie", "expected shape (8, 32)", "found (32, 8)")


def test_wrong_mask_shape(saved: Path) -> None:
    arrays, metadata = read_raw(saved)
    arrays["input_mask"] = arrays["input_mask"][:10]
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, "input_mask", "expected shape (50, 32)", "found (10, 32)")


def test_metadata_shape_disagrees(saved: Path) -> None:
    arrays, metadata = read_raw(saved)
    metadata["matrices"]["w_ie"]["shape"] = [32, 8]
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, "metadata.matrices.w_ie.shape", "expected [8, 32]", "found [32, 8]")


@pytest.mark.parametrize(("name", "units"), [("w_ei", "nS"), ("w_ei", "siemens"), ("w_in", "nS"), ("w_out", "uS")])
def test_wrong_units_are_never_converted(saved: Path, name: str, units: str) -> None:
    arrays, metadata = read_raw(saved)
    metadata["matrices"][name]["units"] = units
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, name, f"expected units {UNITS[name]!r}", f"found {units!r}")


def test_wrong_layout(saved: Path) -> None:
    arrays, metadata = read_raw(saved)
    metadata["matrices"]["w_ie"]["layout"] = "post,pre"
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, "w_ie", "expected 'pre,post'", "found 'post,pre'")


@pytest.mark.parametrize("name", ["w_in", "w_ei", "w_ie"])
def test_negative_effective_conductance_breaks_dale(saved: Path, name: str) -> None:
    arrays, metadata = read_raw(saved)
    effective, stored = arrays[f"effective/{name}"], arrays[f"stored/{name}"]
    index = tuple(np.argwhere(effective > 0)[0])  # an existing edge, inside the input mask for w_in
    effective[index] = stored[index] = -1e-4
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, f"effective/{name}", "expected conductances >= 0 uS", "found 1 negative", "-0.0001")


@pytest.mark.parametrize("name", ["w_in", "w_ei", "w_ie", "w_out"])
def test_effective_inconsistent_with_stored(saved: Path, name: str) -> None:
    arrays, metadata = read_raw(saved)
    effective = arrays[f"effective/{name}"]
    index = tuple(np.argwhere(effective > 0)[0])
    effective[index] *= 2.0
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, f"effective/{name}", "expected ", "1 entries that differ", "inconsistent file")


def test_pruned_entry_left_negative_in_effective_is_caught(saved: Path) -> None:
    """An exporter that forgot the clamp writes effective == stored."""
    arrays, metadata = read_raw(saved)
    arrays["effective/w_ei"] = arrays["stored/w_ei"].copy()
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, "effective/w_ei", "Dale's law")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("entry", ["stored/w_ei", "effective/w_ie", "stored/w_out"])
def test_non_finite_values(saved: Path, entry: str, value: float) -> None:
    arrays, metadata = read_raw(saved)
    arrays[entry][0, 0] = value
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, entry, "expected finite values", "found 1 non-finite", "(0, 0)")


def test_integer_matrix_is_rejected(saved: Path) -> None:
    arrays, metadata = read_raw(saved)
    arrays["stored/w_ei"] = np.ones((32, 8), dtype=np.int64)
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, "stored/w_ei", "floating-point", "int64")


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_input_mask_not_boolean(saved: Path, dtype) -> None:
    arrays, metadata = read_raw(saved)
    arrays["input_mask"] = arrays["input_mask"].astype(dtype)
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, "input_mask", "expected dtype bool", f"found {np.dtype(dtype)}")


@pytest.mark.parametrize("kind", ["stored", "effective"])
def test_w_in_nonzero_outside_mask(saved: Path, kind: str) -> None:
    arrays, metadata = read_raw(saved)
    mask = arrays["input_mask"]
    index = tuple(np.argwhere(~mask)[0])
    arrays["stored/w_in"][index] = 0.01
    if kind == "effective":
        arrays["effective/w_in"][index] = 0.01
        arrays["stored/w_in"][index] = 0.0
    write_raw(saved, arrays, metadata)
    assert_rejected(saved, f"{kind}/w_in", "expected 0 outside input_mask", "found 1 nonzero")


def test_unknown_extra_entries_and_keys_are_ignored(saved: Path, weights: NetworkWeights) -> None:
    """Versioning policy: additions do not bump format_version and old readers skip them."""
    arrays, metadata = read_raw(saved)
    arrays["optimizer/adam_step"] = np.array(100)
    write_raw(saved, arrays, {**metadata, "comment": "added later"})
    assert np.array_equal(load_weights(saved, params=PARAMS).stored.w_ie, weights.w_ie)
