"""The weight-transfer file: trained networks as one versioned, self-describing ``.npz``.

A weight file carries everything needed to rebuild a trained network in either
simulator, and is readable with plain ``numpy`` and ``json`` (no torch, no
pickles). It holds the stored (unconstrained) weights the trainer optimises,
the effective weights the network uses (``max(w, 0)`` for conductances,
masked for ``w_in``), the input mask, and a JSON metadata entry with units,
shapes, layout, the full :class:`~biosim.params.NetworkParams` and the
caller's provenance. The format is specified in ``docs/weight_format.md``.

Both directions validate with the same function, so :func:`save_weights`
never writes a file that :func:`load_weights` would reject. Nothing is ever
converted on load: a file in other units, another layout or another format
version is an error that names the entry, what was expected and what was found.

Example::

    params = NetworkParams().replace(connectivity__n_e=32, connectivity__n_i=8, connectivity__n_input=50)
    save_weights("net.npz", init_weights(params, seed=1), params, provenance={"seed": 1, "epoch": 0})
    loaded = load_weights("net.npz", params=params)   # stored, effective, params, metadata
    build_network(params, export_for_brian2(loaded), trials)  # Brian2 gets the effective weights
"""

from __future__ import annotations

import json
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from .memory import available_memory_bytes, format_bytes
from .params import ConnectivityParams, NetworkParams, ParameterError
from .records import atomic_output, jsonable
from .weights import MATRICES, RECURRENT_BLOCKS, NetworkWeights, expected_shapes, is_conductance

__all__ = [
    "FLOAT32_MAX",
    "FORMAT",
    "FORMAT_VERSION",
    "LAYOUT",
    "UNITS",
    "LoadedWeights",
    "WeightFileError",
    "entry_names",
    "export_for_brian2",
    "load_weights",
    "save_weights",
]

FORMAT = "biosim-weights"
"""Value of ``metadata["format"]``: identifies a biosim weight file."""
FORMAT_VERSION = 1
"""The only ``metadata["format_version"]`` this reader understands."""
LAYOUT = "pre,post"
"""Axis order of every matrix: row = presynaptic, column = postsynaptic neuron."""
UNITS = {"w_in": "uS", "w_ei": "uS", "w_ie": "uS", "w_out": "1"}
"""Unit of each matrix every network has: conductances in microsiemens, the readout dimensionless."""
BLOCK_UNITS = {"w_ee": "uS", "w_ii": "uS"}
"""Unit of each optional recurrent block (present in a file when its network has it)."""

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The largest magnitude a weight may have: training and the float32 mirror hold weights in float32."""

_KINDS = ("stored", "effective")
_MASK = "input_mask"
_METADATA = "metadata"


class WeightFileError(ValueError):
    """A weight file (or the weights about to be written) is missing, unreadable or inconsistent.

    The message starts with the file and names the entry at fault, what was
    expected and what was found.
    """


@dataclass(frozen=True)
class LoadedWeights:
    """Contents of a validated weight file."""

    stored: NetworkWeights
    """Unconstrained values as trained (float64, uS / dimensionless); seed the trainer with these."""
    effective: NetworkWeights
    """What the network uses, ``max(stored, 0)`` (masked for ``w_in``); what Brian2 receives."""
    params: NetworkParams
    """The network the weights were trained for (``metadata["network_params"]``)."""
    metadata: dict[str, Any]
    """The decoded metadata entry, including the caller's ``provenance``."""


def entry_names(params: NetworkParams | None = None) -> list[str]:
    """Names of the array entries of a version-1 file (``metadata`` excluded).

    Without ``params``: those of a network without recurrent blocks; with
    them, also ``stored/w_ee`` etc. for the blocks that network has.
    """
    names = MATRICES if params is None else tuple(expected_shapes(params))
    return [f"{kind}/{name}" for kind in _KINDS for name in names] + [_MASK]


def _unit(name: str) -> str:
    return UNITS[name] if name in UNITS else BLOCK_UNITS[name]


# --- writing ----------------------------------------------------------------


def save_weights(
    path: str | Path,
    weights: NetworkWeights,
    params: NetworkParams,
    *,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``weights`` and their effective values to a weight file, atomically.

    Parameters
    ----------
    path : str or Path
        Destination, used as given (no suffix is added; ``.npz`` is the
        convention). Parent directories are created. An existing file is
        replaced only once the new one is complete.
    weights : NetworkWeights
        *Stored* (unconstrained) weights: conductances ``w_in``, ``w_ei``,
        ``w_ie`` (and the recurrent blocks ``w_ee``, ``w_ii`` where
        ``params`` has them) in uS, readout ``w_out`` dimensionless, boolean
        ``input_mask``, layout ``(pre, post)``. Real floating arrays are
        written as float64 (a float32 tensor's values are kept exactly).
        The effective weights are computed here with
        :meth:`NetworkWeights.effective`.
    params : NetworkParams
        The network the weights belong to; its shapes are checked and the
        whole object is recorded.
    provenance : mapping, optional
        Free-form, JSON-serialisable record of where the weights come from
        (run id, condition, seed, epoch, ...). Numpy scalars and arrays and
        paths are converted; tuples come back as lists.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    WeightFileError
        Before anything is written, if the weights would make an invalid file
        (wrong shape, non-finite value, non-boolean mask, ``w_in`` nonzero
        outside the mask) or ``provenance`` is not JSON-serialisable.
    """
    path = Path(path)
    source = f"{path} (while saving)"
    shapes = expected_shapes(params)
    _check_blocks(source, {name for name in RECURRENT_BLOCKS if getattr(weights, name) is not None}, shapes)
    stored = {name: _as_float64(source, f"stored/{name}", getattr(weights, name)) for name in shapes}
    mask = np.asarray(weights.input_mask)
    # Check shapes before effective(), which would fail on mismatched ones with a bare numpy error.
    _check_mask(source, mask, shapes["w_in"])
    for name in shapes:
        _check_array(source, f"stored/{name}", stored[name], shapes[name])
    effective = NetworkWeights(**stored, input_mask=mask).effective()

    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "matrices": {
            name: {"units": _unit(name), "shape": list(stored[name].shape), "layout": LAYOUT} for name in shapes
        },
        "connectivity": params.to_dict()["connectivity"],
        "network_params": params.to_dict(),
        "provenance": dict(provenance or {}),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "biosim_version": _biosim_version(),
    }
    try:
        # allow_nan=False: NaN/Infinity are not JSON, and other readers would reject the file.
        text = json.dumps(meta, sort_keys=True, allow_nan=False, default=jsonable)
    except (TypeError, ValueError) as error:
        raise WeightFileError(f"{source}: provenance: expected JSON-serialisable values, found {error}") from error

    arrays = {f"stored/{name}": stored[name] for name in shapes}
    arrays |= {f"effective/{name}": getattr(effective, name) for name in shapes}
    arrays[_MASK] = mask
    arrays[_METADATA] = np.array(text)
    # The same checks as on load, so a file that is written can always be read back.
    _validate(source, arrays, params=params)
    _atomic_savez(path, arrays)
    return path


def _check_blocks(source: str, found: set[str], shapes: dict[str, tuple[int, int]]) -> None:
    """The recurrent blocks present (``found``) are exactly those the network has (``shapes``)."""
    for name in RECURRENT_BLOCKS:
        probability = {"w_ee": "p_ee", "w_ii": "p_ii"}[name]
        if name in found and name not in shapes:
            raise WeightFileError(
                f"{source}: stored/{name}: expected no such matrix (network_params.connectivity.{probability} = 0: "
                "the network has no such block), found one"
            )
        if name in shapes and name not in found:
            raise WeightFileError(
                f"{source}: stored/{name}: expected a matrix of shape {shapes[name]} "
                f"(network_params.connectivity.{probability} > 0), found none"
            )


def _as_float64(source: str, entry: str, value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind != "f" or not np.can_cast(array.dtype, np.float64, "safe"):
        raise WeightFileError(
            f"{source}: {entry}: expected a floating-point array (float64), found dtype {array.dtype}"
        )
    return np.ascontiguousarray(array, dtype=np.float64)


def _biosim_version() -> str:
    try:
        return importlib_metadata.version("biosim")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` into a temporary file beside ``path``, then rename over it."""
    with atomic_output(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


# --- reading ----------------------------------------------------------------


def load_weights(
    path: str | Path, *, params: NetworkParams | None = None, params_from: str = "the given params"
) -> LoadedWeights:
    """Read and validate a weight file.

    Parameters
    ----------
    path : str or Path
    params : NetworkParams, optional
        The network the weights are meant for. If given, the file's
        ``network_params`` must equal it field by field and the matrices must
        have its shapes. To reuse weights under other non-structural
        parameters (say another ``tau_gaba_ms``), load without ``params`` and
        check ``loaded.effective.check_shapes(other_params)``.
    params_from : str
        Where ``params`` come from, for the error message (e.g. ``"the run's
        config.json"``). The parameters are compared before the matrices, so
        a file for another network size is reported as such.

    Returns
    -------
    LoadedWeights
        Stored and effective weights as float64 (conductances in uS), the
        boolean input mask in both, the file's parameters and metadata.
        ``effective`` is exactly ``stored.effective()``.

    Raises
    ------
    WeightFileError
        The file is missing or not an ``.npz`` archive; holds a pickled entry;
        has another ``format`` or an unsupported ``format_version``; lacks an
        entry (a recurrent block its parameters have included) or holds a
        recurrent block its parameters do not have; has a matrix of the wrong shape, units or layout, a non-finite
        value, a negative effective conductance (Dale's law), effective
        weights other than ``max(stored, 0)`` (masked for ``w_in``), a
        non-boolean ``input_mask`` or ``w_in`` nonzero outside it; or its
        parameters differ from ``params`` (the message lists the fields).
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise WeightFileError(f"{source}: no such weight file")
    if not path.is_file():
        raise WeightFileError(f"{source}: expected a weight file, found a directory or special file")
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise WeightFileError(_not_an_archive(source, path, error)) from None
    with archive:
        members = _members(source, archive)
        # Everything is checked from the zip directory and the .npy headers before any array is read,
        # so a file that declares more data than it should is refused before it takes the memory.
        headers = {name: _read_header(source, archive, name, info) for name, info in members.items()}
        meta_header = headers.get(_METADATA)
        if meta_header is not None and meta_header.nbytes > _METADATA_MAX_BYTES:
            raise WeightFileError(
                f"{source}: {_METADATA}: expected at most {format_bytes(_METADATA_MAX_BYTES)} of JSON, "
                f"found {format_bytes(meta_header.nbytes)} declared"
            )
        metadata = {_METADATA: _read_member(source, archive, _METADATA, members)} if meta_header else {}
        meta = _read_metadata(source, metadata)
        file_params = _read_params(source, meta)
        if params is not None:
            _check_params(source, file_params, params, params_from)
        shapes = expected_shapes(file_params)
        _check_blocks(source, {name for name in RECURRENT_BLOCKS if f"stored/{name}" in members}, shapes)
        wanted = entry_names(file_params)
        for entry in wanted:
            if entry in headers:
                header = headers[entry]
                if entry == _MASK:
                    _check_mask_header(source, header.dtype, header.shape, shapes["w_in"])
                else:
                    _check_header(source, entry, header.dtype, header.shape, shapes[entry.partition("/")[2]])
        total = sum(headers[entry].nbytes for entry in wanted if entry in headers)
        available = available_memory_bytes()
        if total > available:
            raise WeightFileError(
                f"{source}: expected entries that fit in memory, found {format_bytes(total)} declared "
                f"against {format_bytes(available)} available"
            )
        arrays = metadata | {
            entry: _read_member(source, archive, entry, members) for entry in wanted if entry in members
        }
    return _validate(source, arrays, params=params, params_from=params_from)


_METADATA_MAX_BYTES = 64 << 20
"""The metadata entry is a few kilobytes of JSON; anything far larger is not a weight file's."""


@dataclass(frozen=True)
class _Header:
    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int


def _not_an_archive(source: str, path: Path, error: Exception) -> str:
    try:
        with path.open("rb") as handle:
            magic = handle.read(6)
    except OSError:
        magic = b""
    if magic == b"\x93NUMPY":
        return f"{source}: expected an .npz archive, found a single .npy array"
    return f"{source}: expected an .npz archive, found an unreadable file ({error})"


def _all_entries() -> set[str]:
    names = (*MATRICES, *RECURRENT_BLOCKS)
    return {f"{kind}/{name}" for kind in _KINDS for name in names} | {_MASK, _METADATA}


def _members(source: str, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's known entries by name; duplicates refused, unknown ones skipped unread with a warning."""
    known = _all_entries()
    members: dict[str, zipfile.ZipInfo] = {}
    unknown = []
    for info in archive.infolist():
        name = info.filename.removesuffix(".npy")
        if name not in known or not info.filename.endswith(".npy"):
            unknown.append(info.filename)
            continue
        if name in members:
            # zipfile and numpy would silently use the last one: which copy was meant cannot be known.
            raise WeightFileError(
                f"{source}: {info.filename}: expected one member of that name, found it twice (refused: "
                "which copy is meant cannot be told)"
            )
        members[name] = info
    if unknown:
        # Versioning: entries added later are ignored by this reader; they are not read at all.
        warnings.warn(
            f"{source}: ignoring entries this reader does not know (not read): {sorted(unknown)}", stacklevel=3
        )
    return members


def _read_header(source: str, archive: zipfile.ZipFile, name: str, info: zipfile.ZipInfo) -> _Header:
    """dtype and shape from the member's .npy header, checked against the size the zip directory declares."""
    try:
        with archive.open(info) as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle, max_header_size=_HEADER_MAX)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle, max_header_size=_HEADER_MAX)
            offset = handle.tell()
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise WeightFileError(
            f"{source}: {name}: expected a readable .npy entry, found a damaged one ({error})"
        ) from error
    except ValueError as error:
        raise WeightFileError(f"{source}: {name}: expected a readable .npy entry, found: {error}") from error
    if dtype.hasobject:
        # allow_pickle=False refuses object arrays: a weight file never needs pickle.
        raise WeightFileError(
            f"{source}: {name}: expected a plain numeric/boolean/string array, found a pickled object array "
            f"(dtype {dtype}; refused unread)"
        )
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if info.file_size != offset + nbytes:
        raise WeightFileError(
            f"{source}: {name}: expected {offset + nbytes} bytes (the .npy header's shape {shape} of {dtype}), "
            f"found {info.file_size} declared in the zip directory"
        )
    return _Header(dtype=dtype, shape=tuple(shape), nbytes=nbytes)


_HEADER_MAX = 10_000
"""numpy's own limit on an .npy header's length when it reads without pickle."""


def _read_member(source: str, archive: zipfile.ZipFile, name: str, members: dict[str, zipfile.ZipInfo]) -> np.ndarray:
    try:
        with archive.open(members[name]) as handle:
            return np.lib.format.read_array(handle, allow_pickle=False, max_header_size=_HEADER_MAX)
    except ValueError as error:
        raise WeightFileError(f"{source}: {name}: expected a readable .npy entry, found: {error}") from error
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        # A damaged member (CRC mismatch, corrupt deflate stream) only shows when it is read.
        raise WeightFileError(
            f"{source}: {name}: expected a readable .npy entry, found a damaged one ({error})"
        ) from error


def export_for_brian2(
    path_or_loaded: str | Path | LoadedWeights, *, params: NetworkParams | None = None
) -> NetworkWeights:
    """Effective weights of a weight file, ready for :func:`biosim.network.build_network`.

    Parameters
    ----------
    path_or_loaded : str, Path or LoadedWeights
        A weight file (read and validated with :func:`load_weights`) or the
        result of an earlier :func:`load_weights`.
    params : NetworkParams, optional
        Passed to :func:`load_weights`; also checked against an already loaded
        file's shapes.

    Returns
    -------
    NetworkWeights
        Conductances in uS, all >= 0, ``w_in`` zero outside ``input_mask``;
        passes :meth:`NetworkWeights.check_shapes` and
        :meth:`NetworkWeights.check_dale`.
    """
    if isinstance(path_or_loaded, LoadedWeights):
        loaded = path_or_loaded
        if params is not None:
            _check_params("loaded weight file", loaded.params, params)
    else:
        loaded = load_weights(path_or_loaded, params=params)
    return loaded.effective


# --- validation: one function for both directions ----------------------------


def _validate(
    source: str,
    arrays: Mapping[str, np.ndarray],
    *,
    params: NetworkParams | None,
    params_from: str = "the given params",
) -> LoadedWeights:
    meta = _read_metadata(source, arrays)
    file_params = _read_params(source, meta)
    if params is not None:
        _check_params(source, file_params, params, params_from)
    shapes = expected_shapes(file_params)
    matrices = meta.get("matrices")
    if not isinstance(matrices, dict):
        raise WeightFileError(
            f"{source}: metadata.matrices: expected a mapping of matrix descriptions, found {matrices!r}"
        )

    mask = _require(source, arrays, _MASK)
    _check_mask(source, mask, shapes["w_in"])
    _check_blocks(source, {name for name in RECURRENT_BLOCKS if f"stored/{name}" in arrays}, shapes)
    loaded: dict[str, dict[str, np.ndarray]] = {kind: {} for kind in _KINDS}
    for name in shapes:
        _check_description(source, name, matrices.get(name), shapes[name])
        for kind in _KINDS:
            entry = f"{kind}/{name}"
            array = _require(source, arrays, entry)
            _check_array(source, entry, array, shapes[name])
            # Lossless for float16/32 (checked in _check_array); the trainer and Brian2 expect float64.
            loaded[kind][name] = np.asarray(array, dtype=np.float64)

    outside = ~mask
    for kind in _KINDS:
        n_outside = int(np.count_nonzero(loaded[kind]["w_in"][outside]))
        if n_outside:
            raise WeightFileError(
                f"{source}: {kind}/w_in: expected 0 outside input_mask (edges that do not exist), "
                f"found {n_outside} nonzero entries there"
            )
    for name in filter(is_conductance, shapes):
        effective = loaded["effective"][name]
        n_negative = int(np.count_nonzero(effective < 0))
        if n_negative:
            raise WeightFileError(
                f"{source}: effective/{name}: expected conductances >= 0 uS (Dale's law), "
                f"found {n_negative} negative entries (min {float(effective.min()):.6g} uS)"
            )

    stored = NetworkWeights(**loaded["stored"], input_mask=mask)
    effective = NetworkWeights(**loaded["effective"], input_mask=mask)
    recomputed = stored.effective()
    for name in shapes:
        expected, found = getattr(recomputed, name), getattr(effective, name)
        if not np.array_equal(expected, found):
            rule = "stored/w_out (unclamped)" if name == "w_out" else f"max(stored/{name}, 0)"
            rule += " masked by input_mask" if name == "w_in" else ""
            differs = np.argwhere(expected != found)
            index = tuple(int(i) for i in differs[0])
            raise WeightFileError(
                f"{source}: effective/{name}: expected {rule}, found {len(differs)} entries that differ "
                f"(first at {index}: expected {float(expected[index])!r}, found {float(found[index])!r}); "
                "inconsistent file"
            )
    return LoadedWeights(stored=stored, effective=effective, params=file_params, metadata=meta)


def _require(source: str, arrays: Mapping[str, np.ndarray], entry: str) -> np.ndarray:
    if entry not in arrays:
        raise WeightFileError(
            f"{source}: {entry}: expected an entry of that name, found it missing (entries: {sorted(arrays)})"
        )
    return arrays[entry]


def _read_metadata(source: str, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    raw = _require(source, arrays, _METADATA)
    if raw.ndim != 0 or raw.dtype.kind != "U":
        raise WeightFileError(
            f"{source}: {_METADATA}: expected a 0-d unicode array holding JSON, "
            f"found dtype {raw.dtype}, shape {raw.shape}"
        )
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as error:
        raise WeightFileError(f"{source}: {_METADATA}: expected JSON, found invalid text ({error})") from error
    if not isinstance(meta, dict):
        raise WeightFileError(f"{source}: {_METADATA}: expected a JSON object, found {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise WeightFileError(f"{source}: metadata.format: expected {FORMAT!r}, found {meta.get('format')!r}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise WeightFileError(
            f"{source}: metadata.format_version: expected {FORMAT_VERSION} (the only version this reader "
            f"supports), found {version!r}"
        )
    return meta


def _read_params(source: str, meta: dict[str, Any]) -> NetworkParams:
    if "network_params" not in meta:
        raise WeightFileError(f"{source}: metadata.network_params: expected NetworkParams.to_dict(), found it missing")
    try:
        file_params = NetworkParams.from_dict(meta["network_params"])
    except (ParameterError, TypeError) as error:
        raise WeightFileError(
            f"{source}: metadata.network_params: expected valid NetworkParams, found: {error}"
        ) from error
    expected = file_params.to_dict()["connectivity"]
    found = meta.get("connectivity")
    if isinstance(found, dict):  # fields added since the file was written (p_ee, p_ii) have their defaults
        found = {**{name: getattr(ConnectivityParams(), name) for name in _ADDED_CONNECTIVITY}, **found}
    if found != expected:
        raise WeightFileError(
            f"{source}: metadata.connectivity: expected network_params.connectivity {expected}, "
            f"found {meta.get('connectivity')!r}"
        )
    return file_params


_ADDED_CONNECTIVITY = ("p_ee", "p_ii")
"""Connectivity fields newer than the format: a file without them was written for a network without the blocks."""


def _check_params(
    source: str, found: NetworkParams, expected: NetworkParams, expected_from: str = "the given params"
) -> None:
    found_fields, expected_fields = _flatten(found.to_dict()), _flatten(expected.to_dict())
    differing = [name for name in expected_fields if found_fields.get(name) != expected_fields[name]]
    if differing:
        details = "; ".join(
            f"{name}: expected {expected_fields[name]!r}, found {found_fields.get(name)!r}" for name in differing
        )
        expected_label = "given" if expected_from == "the given params" else "there"
        raise WeightFileError(
            f"{source}: metadata.network_params differ from {expected_from} in {differing} "
            f"(expected = {expected_label}, found = file): {details}"
        )


def _flatten(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{section}.{name}": value for section, values in sections.items() for name, value in values.items()}


def _check_description(source: str, name: str, description: Any, shape: tuple[int, int]) -> None:
    prefix = f"{source}: metadata.matrices.{name}"
    if not isinstance(description, dict):
        raise WeightFileError(f"{prefix}: expected a description with units, shape and layout, found {description!r}")
    if description.get("units") != _unit(name):
        # Never rescale: a file in other units was written by something that does not follow this format.
        raise WeightFileError(
            f"{prefix}.units: {name} expected units {_unit(name)!r}, found {description.get('units')!r} "
            "(weight files are not converted on load)"
        )
    if description.get("layout") != LAYOUT:
        raise WeightFileError(f"{prefix}.layout: {name} expected {LAYOUT!r}, found {description.get('layout')!r}")
    if description.get("shape") != list(shape):
        raise WeightFileError(
            f"{prefix}.shape: {name} expected {list(shape)} from network_params, found {description.get('shape')!r}"
        )


def _check_header(source: str, entry: str, dtype: np.dtype, found: tuple[int, ...], shape: tuple[int, int]) -> None:
    if dtype.kind != "f" or not np.can_cast(dtype, np.float64, "safe"):
        raise WeightFileError(f"{source}: {entry}: expected a floating-point array (float64), found dtype {dtype}")
    if found != shape:
        raise WeightFileError(f"{source}: {entry}: expected shape {shape} (pre, post), found {found}")


def _check_array(source: str, entry: str, array: np.ndarray, shape: tuple[int, int]) -> None:
    _check_header(source, entry, array.dtype, array.shape, shape)
    finite = np.isfinite(array)
    if not finite.all():
        index = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise WeightFileError(
            f"{source}: {entry}: expected finite values, found {int(np.count_nonzero(~finite))} non-finite "
            f"(first {float(array[index])!r} at {index})"
        )
    # The trainer and the float32 mirror hold weights in float32: a larger value would become inf there
    # while Brian2 (float64) runs it, and the two would disagree without either failing.
    too_large = np.abs(array) > FLOAT32_MAX
    if too_large.any():
        index = tuple(int(i) for i in np.argwhere(too_large)[0])
        raise WeightFileError(
            f"{source}: {entry}: expected values float32 can hold (|w| <= {FLOAT32_MAX:.6g}), found "
            f"{int(np.count_nonzero(too_large))} beyond it (first {float(array[index])!r} at {index})"
        )


def _check_mask(source: str, mask: np.ndarray, shape: tuple[int, int]) -> None:
    _check_mask_header(source, mask.dtype, mask.shape, shape)


def _check_mask_header(source: str, dtype: np.dtype, found: tuple[int, ...], shape: tuple[int, int]) -> None:
    if dtype != np.bool_:
        raise WeightFileError(f"{source}: {_MASK}: expected dtype bool, found {dtype}")
    if found != shape:
        raise WeightFileError(f"{source}: {_MASK}: expected shape {shape} (pre, post), found {found}")
