"""Faults a new user meets: oversized or duplicated weight-file members, weights float32 cannot hold,
settings that do nothing, tracebacks instead of named errors, messages that do not say what is wrong."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from biosim import weight_files
from biosim.params import NetworkParams
from biosim.weight_files import FLOAT32_MAX, WeightFileError, load_weights, save_weights
from biosim.weights import init_weights

PARAMS = NetworkParams().replace(connectivity__n_e=32, connectivity__n_i=8, connectivity__n_input=50)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_weights(tmp_path / "weights.npz", init_weights(PARAMS, seed=1), PARAMS, provenance={"seed": 1})


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _rewrite(path: Path, extra: dict[str, bytes], replace: dict[str, bytes] | None = None) -> Path:
    """The archive at ``path`` with members replaced and extra members appended (duplicates allowed)."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members |= replace or {}
    with pytest.warns(UserWarning, match="Duplicate name") if set(extra) & set(members) else _nothing():
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in [*members.items(), *extra.items()]:
                archive.writestr(name, data)
    return path


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --- the weight loader checks the zip directory and the .npy headers before reading --------------------


def test_a_duplicate_member_is_refused_naming_it(saved: Path) -> None:
    _rewrite(saved, {"stored/w_out.npy": _npy_bytes(np.full((32, 10), 5.0))})
    with pytest.raises(WeightFileError, match=r"weights\.npz: stored/w_out\.npy: expected one member .*found it twice"):
        load_weights(saved)


def test_a_header_declaring_a_huge_shape_is_refused_before_reading(saved: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**7, 10**7)})
    _rewrite(saved, {}, replace={"stored/w_ei.npy": header.getvalue() + bytes(64)})
    with pytest.raises(WeightFileError, match=r"stored/w_ei: expected 8\d{14} bytes .*found \d+ declared"):
        load_weights(saved)


def test_a_wrong_shape_is_refused_from_the_header_without_reading_any_matrix(saved: Path, monkeypatch) -> None:
    _rewrite(saved, {}, replace={"effective/w_ie.npy": _npy_bytes(np.zeros((800, 320)))})
    read = []
    original = weight_files._read_member
    monkeypatch.setattr(
        weight_files,
        "_read_member",
        lambda source, archive, name, members: read.append(name) or original(source, archive, name, members),
    )
    with pytest.raises(
        WeightFileError, match=r"effective/w_ie: expected shape \(8, 32\) \(pre, post\), found \(800, 320\)"
    ):
        load_weights(saved)
    assert read == ["metadata"]


def test_an_unknown_member_is_skipped_unread_with_a_warning(saved: Path, monkeypatch) -> None:
    _rewrite(saved, {"bomb.npy": _npy_bytes(np.zeros(1 << 20))})
    read = []
    original = weight_files._read_member
    monkeypatch.setattr(
        weight_files,
        "_read_member",
        lambda source, archive, name, members: read.append(name) or original(source, archive, name, members),
    )
    with pytest.warns(UserWarning, match=r"weights\.npz: ignoring entries .*'bomb\.npy'"):
        load_weights(saved, params=PARAMS)
    assert "bomb" not in read and "bomb.npy" not in read


def test_entries_larger_than_memory_are_refused(saved: Path, monkeypatch) -> None:
    monkeypatch.setattr(weight_files, "available_memory_bytes", lambda: 1000)
    with pytest.raises(WeightFileError, match=r"weights\.npz: expected entries that fit in memory, found .* declared"):
        load_weights(saved)


# --- weights float32 cannot hold ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [1e300, -1e39, FLOAT32_MAX * 1.0000001])
def test_weights_beyond_float32_are_refused_naming_the_entry(saved: Path, value: float) -> None:
    with np.load(saved, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["stored/w_ei"][0, 0] = value
    arrays["effective/w_ei"][0, 0] = max(value, 0.0)
    np.savez_compressed(saved, **arrays)
    with pytest.raises(WeightFileError, match=r"stored/w_ei: expected values float32 can hold .*found 1 beyond it"):
        load_weights(saved)


def test_saving_weights_beyond_float32_is_refused(tmp_path: Path) -> None:
    weights = init_weights(PARAMS, seed=1)
    weights.w_ei[0, 0] = 1e300
    with pytest.raises(WeightFileError, match="stored/w_ei: expected values float32 can hold"):
        save_weights(tmp_path / "w.npz", weights, PARAMS)
    assert not (tmp_path / "w.npz").exists()


def test_the_largest_float32_is_accepted(saved: Path) -> None:
    with np.load(saved, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["stored/w_out"][0, 0] = arrays["effective/w_out"][0, 0] = FLOAT32_MAX
    np.savez_compressed(saved, **arrays)
    assert load_weights(saved).stored.w_out[0, 0] == FLOAT32_MAX
    assert json.loads(str(arrays["metadata"]))["format_version"] == 1
