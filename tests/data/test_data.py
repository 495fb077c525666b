"""Tests of ppl_vae.data: loading, checking, splitting and binarizing data sets. All offline."""

from __future__ import annotations

import math
import re
import socket
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from ppl_vae.data.sources import DATASETS, load_dataset
from ppl_vae.data.split import DataSplit
from ppl_vae.data.support import BINARIZE_MODES, binarize
from ppl_vae.errors import DataError, PplVaeError

N_DIGITS = 1797


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def raises_data_error(text: str | None = None):
    """pytest.raises for a DataError whose message contains ``text`` (a literal, not a regex).

    Pick ``text`` from the fixed wording of the message: tmp_path holds the test's name, so a word
    that also appears in the name could match the path instead.
    """
    return pytest.raises(DataError, match=None if text is None else re.escape(text))


def assert_one_line(error_info) -> str:
    message = str(error_info.value)
    assert message and "\n" not in message, f"message is not one line: {message!r}"
    return message


def save_npz(path: Path, **arrays_) -> str:
    np.savez(path, **arrays_)
    return f"npz:{path}"


def zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format MNIST uses (magic 0x08 << 8 | ndim, big-endian dims)."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">i", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist_like(root: Path, folder: str, n_train: int = 6, n_test: int = 4, seed: int = 0):
    """Write the four uncompressed IDX files under root/folder/raw; return the arrays written."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    x_train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    y_train = rng.integers(0, 10, size=n_train, dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    y_test = rng.integers(0, 10, size=n_test, dtype=np.uint8)
    write_idx(raw / "train-images-idx3-ubyte", x_train)
    write_idx(raw / "train-labels-idx1-ubyte", y_train)
    write_idx(raw / "t10k-images-idx3-ubyte", x_test)
    write_idx(raw / "t10k-labels-idx1-ubyte", y_test)
    return x_train, y_train, x_test, y_test


@pytest.fixture
def network_attempts(monkeypatch):
    """Make every attempt to open a connection fail and record it; yields the list of attempts."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


@pytest.fixture
def no_network(network_attempts):
    """Fail the test if it tried to open any connection."""
    yield
    assert network_attempts == [], "the code tried to use the network"


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def rows(x: torch.Tensor, y: torch.Tensor) -> list[tuple[int, bytes]]:
    """(label, image bytes) pairs, sorted: a multiset view of a labelled data set."""
    return sorted((int(label), image.numpy().tobytes()) for image, label in zip(x, y))


# ------------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DataSplit:
    return load_dataset("digits")


def test_digits_is_the_default_with_expected_shapes(digits):
    assert digits.name == "digits"
    assert digits.data_shape == (1, 8, 8)
    assert len(digits.train) + len(digits.heldout) == N_DIGITS
    assert len(digits.heldout) == round(N_DIGITS * 0.2) == 359
    assert digits.train.shape == (N_DIGITS - 359, 1, 8, 8)
    for x in (digits.train, digits.heldout):
        assert x.dtype == torch.float32
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert digits.train_labels.dtype == torch.int64 and digits.heldout_labels.dtype == torch.int64
    assert digits.train_labels.shape == (len(digits.train),)
    assert digits.heldout_labels.shape == (len(digits.heldout),)
    assert torch.equal(load_dataset().train, digits.train)


def test_digits_images_and_labels_match_sklearn(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    expected = rows(torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(raw.target))
    got = rows(torch.cat([digits.train, digits.heldout]), torch.cat([digits.train_labels, digits.heldout_labels]))
    assert got == expected  # train + held-out is exactly the data set, each image with its own label
    first = torch.tensor(raw.images[:359], dtype=torch.float32).unsqueeze(1) / 16
    last = torch.tensor(raw.images[-359:], dtype=torch.float32).unsqueeze(1) / 16
    assert not torch.equal(digits.heldout, first) and not torch.equal(digits.heldout, last)  # shuffled


def test_digits_split_is_fixed_by_its_seed_and_leaves_global_rng_alone(digits):
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    again = load_dataset("digits", split_seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)  # a different global state must not change the split
    third = load_dataset("digits")
    for other in (again, third):
        assert torch.equal(other.train, digits.train) and torch.equal(other.heldout, digits.heldout)
        assert torch.equal(other.train_labels, digits.train_labels)
    different = load_dataset("digits", split_seed=1)
    assert not torch.equal(different.heldout, digits.heldout)
    assert len(different.heldout) == len(digits.heldout)


@pytest.mark.parametrize("fraction, n_heldout", [(0.5, 899), (0.001, 2), (0.0001, 1), (0.9999, N_DIGITS - 2)])
def test_digits_heldout_fraction_rounds_and_keeps_both_parts(fraction, n_heldout):
    split = load_dataset("digits", heldout_fraction=fraction)
    assert len(split.heldout) == n_heldout
    assert len(split.train) == N_DIGITS - n_heldout


def test_digits_image_size_resizes():
    split = load_dataset("digits", image_size=16)
    assert split.data_shape == (1, 16, 16)
    assert split.train.shape[0] == N_DIGITS - 359
    assert 0.0 <= float(split.train.min()) and float(split.train.max()) <= 1.0


# ------------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["nope", "MNIST2", "npz:", "folder:", "digits:extra", ""])
def test_unknown_spec_lists_the_valid_ones(spec):
    with raises_data_error() as info:
        load_dataset(spec)
    message = assert_one_line(info)
    for name in DATASETS:
        assert name in message
    assert "npz:PATH" in message and "folder:PATH" in message


def test_spec_naming_an_existing_path_gets_a_hint(tmp_path):
    with raises_data_error() as info:
        load_dataset(str(tmp_path))
    assert f"folder:{tmp_path}" in assert_one_line(info)


@pytest.mark.parametrize("fraction", [0, 1, 0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.2", None])
def test_heldout_fraction_must_be_strictly_between_0_and_1(fraction):
    with raises_data_error("heldout_fraction") as info:
        load_dataset("digits", heldout_fraction=fraction)
    assert_one_line(info)


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "8"])
def test_image_size_must_be_a_positive_int(size):
    with raises_data_error("image_size") as info:
        load_dataset("digits", image_size=size)
    assert_one_line(info)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, None])
def test_split_seed_must_be_a_non_negative_int(seed):
    with raises_data_error("split_seed"):
        load_dataset("digits", split_seed=seed)


def test_data_error_is_a_value_error_and_ppl_vae_error():
    with pytest.raises(ValueError):
        load_dataset("nope")
    with pytest.raises(PplVaeError):
        load_dataset("nope")


# ------------------------------------------------------------------------------------------------
# DataSplit
# ------------------------------------------------------------------------------------------------


def test_datasplit_checks_its_invariants():
    x = torch.rand(4, 1, 2, 2)
    split = DataSplit("t", x[:3], x[3:], None, None)
    assert split.data_shape == (1, 2, 2)
    with pytest.raises(AttributeError):
        split.train = x  # frozen
    bad = [
        dict(train=x[:3].double()),  # not float32
        dict(train=x[:3] * 2),  # outside [0, 1]
        dict(train=torch.full((3, 1, 2, 2), float("nan"))),
        dict(heldout=torch.rand(1, 1, 3, 3)),  # shape differs
        dict(train=x[:1]),  # too few training examples
        dict(heldout=x[:0]),  # nothing held out
        dict(train_labels=torch.zeros(3, dtype=torch.int64)),  # labels for one part only
        dict(train_labels=torch.zeros(3), heldout_labels=torch.zeros(1)),  # not int64
        dict(train_labels=torch.zeros(2, dtype=torch.int64), heldout_labels=torch.zeros(1).long()),
    ]
    for change in bad:
        fields = dict(name="t", train=x[:3], heldout=x[3:], train_labels=None, heldout_labels=None) | change
        with raises_data_error() as info:
            DataSplit(**fields)
        assert_one_line(info)


# ------------------------------------------------------------------------------------------------
# MNIST family (torchvision, local files only)
# ------------------------------------------------------------------------------------------------

MNIST_FOLDERS = [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"), ("kmnist", "KMNIST")]


@pytest.mark.parametrize("spec, folder", MNIST_FOLDERS)
def test_mnist_family_reads_local_idx_files(tmp_path, no_network, capsys, spec, folder):
    x_train, y_train, x_test, y_test = write_mnist_like(tmp_path, folder)
    split = load_dataset(spec, root=tmp_path)
    assert split.name == spec
    assert split.data_shape == (1, 28, 28)
    assert torch.equal(split.train, torch.from_numpy(x_train).float().unsqueeze(1) / 255)
    assert torch.equal(split.heldout, torch.from_numpy(x_test).float().unsqueeze(1) / 255)
    assert split.train.dtype == torch.float32
    assert split.train_labels.tolist() == y_train.tolist() and split.train_labels.dtype == torch.int64
    assert split.heldout_labels.tolist() == y_test.tolist()
    assert capsys.readouterr() == ("", "")


def test_mnist_download_true_with_files_present_does_not_download(tmp_path, no_network):
    x_train, *_ = write_mnist_like(tmp_path, "MNIST")
    split = load_dataset("mnist", root=str(tmp_path), download=True)
    assert torch.equal(split.train, torch.from_numpy(x_train).float().unsqueeze(1) / 255)


def test_mnist_failed_download_is_a_data_error(tmp_path, network_attempts):
    with raises_data_error("could not download or read kmnist into") as info:
        load_dataset("kmnist", root=tmp_path, download=True)
    assert str(tmp_path / "KMNIST" / "raw") in assert_one_line(info)
    assert network_attempts  # download=True did try


def test_mnist_image_size(tmp_path, no_network):
    write_mnist_like(tmp_path, "KMNIST")
    split = load_dataset("kmnist", root=tmp_path, image_size=14)
    assert split.data_shape == (1, 14, 14) and len(split.train) == 6 and len(split.heldout) == 4


@pytest.mark.parametrize("spec, folder", MNIST_FOLDERS)
def test_mnist_missing_files_error_names_the_folder(tmp_path, no_network, capsys, spec, folder):
    with raises_data_error() as info:
        load_dataset(spec, root=tmp_path)
    message = assert_one_line(info)
    assert str(tmp_path / folder / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "download" in message
    assert not (tmp_path / folder).exists()  # nothing created
    assert capsys.readouterr() == ("", "")


def test_mnist_partly_missing_and_gz_only(tmp_path, no_network):
    write_mnist_like(tmp_path, "MNIST")
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").rename(raw / "t10k-labels-idx1-ubyte.gz")
    with raises_data_error() as info:
        load_dataset("mnist", root=tmp_path)
    message = assert_one_line(info)
    assert "missing t10k-labels-idx1-ubyte" in message and "gunzip" in message
    assert "missing train-images" not in message


def test_mnist_default_root_is_data_in_the_working_directory(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    with raises_data_error() as info:
        load_dataset("fashion-mnist")
    assert str(tmp_path / "data" / "FashionMNIST" / "raw") in assert_one_line(info)
    write_mnist_like(tmp_path / "data", "FashionMNIST")
    assert load_dataset("fashion-mnist").data_shape == (1, 28, 28)


def test_mnist_damaged_file_is_a_data_error(tmp_path, no_network):
    write_mnist_like(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with raises_data_error() as info:
        load_dataset("mnist", root=tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in assert_one_line(info)


def test_mnist_labels_not_matching_images_is_a_data_error(tmp_path, no_network):
    write_mnist_like(tmp_path, "MNIST")
    write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    with raises_data_error("labels, not N uint8 images with N labels") as info:
        load_dataset("mnist", root=tmp_path)
    assert_one_line(info)


# ------------------------------------------------------------------------------------------------
# npz files
# ------------------------------------------------------------------------------------------------


def test_npz_uint8_round_trip_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    y_train, y_test = np.array([3, 1, 4, 1, 5]), np.array([9, 2, 6], dtype=np.uint8)
    spec = save_npz(tmp_path / "a.npz", x_train=x_train, x_test=x_test, y_train=y_train, y_test=y_test)
    split = load_dataset(spec)
    assert split.name == spec
    assert split.data_shape == (1, 28, 28)
    assert torch.equal(split.train, torch.from_numpy(x_train).float().unsqueeze(1) / 255)
    assert torch.equal(split.heldout, torch.from_numpy(x_test).float().unsqueeze(1) / 255)
    assert split.train_labels.tolist() == [3, 1, 4, 1, 5] and split.train_labels.dtype == torch.int64
    assert split.heldout_labels.tolist() == [9, 2, 6] and split.heldout_labels.dtype == torch.int64


def test_npz_without_labels_and_float_values(tmp_path):
    rng = np.random.default_rng(1)
    x_train, x_test = rng.random((4, 6, 5)), rng.random((2, 6, 5)).astype(np.float32)
    x_train[0, 0, 0], x_train[0, 0, 1] = 0.0, 1.0
    split = load_dataset(save_npz(tmp_path / "f.npz", x_train=x_train, x_test=x_test))
    assert split.train_labels is None and split.heldout_labels is None
    assert split.data_shape == (1, 6, 5)
    assert torch.equal(split.train, torch.from_numpy(x_train.astype(np.float32)).unsqueeze(1))
    assert torch.equal(split.heldout, torch.from_numpy(x_test).unsqueeze(1))


@pytest.mark.parametrize("channels", [1, 3])
def test_npz_channel_last_layout(tmp_path, channels):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(5, 4, 7, channels), dtype=np.uint8)
    split = load_dataset(save_npz(tmp_path / "c.npz", x_train=x[:3], x_test=x[3:]))
    assert split.data_shape == (channels, 4, 7)
    expected = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(split.train, expected[:3]) and torch.equal(split.heldout, expected[3:])
    assert split.train.is_contiguous()


@pytest.mark.parametrize("shape", [(5, 3, 4, 7), (5, 1, 28, 28)])
def test_npz_channel_first_layout_when_last_axis_is_not_a_channel(tmp_path, shape):
    x = np.random.default_rng(3).integers(0, 256, size=shape, dtype=np.uint8)
    split = load_dataset(save_npz(tmp_path / "c.npz", x_train=x[:3], x_test=x[3:]))
    assert split.data_shape == shape[1:]
    assert torch.equal(split.train, torch.from_numpy(x[:3]).float() / 255)


def test_npz_channel_last_wins_when_both_axes_could_be_channels(tmp_path):
    x = np.random.default_rng(4).integers(0, 256, size=(4, 3, 8, 3), dtype=np.uint8)
    split = load_dataset(save_npz(tmp_path / "c.npz", x_train=x[:3], x_test=x[3:]))
    assert split.data_shape == (3, 3, 8)
    assert torch.equal(split.heldout, torch.from_numpy(x[3:]).permute(0, 3, 1, 2).float() / 255)


def test_npz_four_dims_without_channel_axis_is_an_error(tmp_path):
    x = np.zeros((4, 5, 7, 9), dtype=np.uint8)
    with raises_data_error("no channel axis of size 1 or 3") as info:
        load_dataset(save_npz(tmp_path / "c.npz", x_train=x, x_test=x))
    assert_one_line(info)


def test_npz_flat_square_vectors_become_images(tmp_path):
    x = np.random.default_rng(5).integers(0, 256, size=(5, 64), dtype=np.uint8)
    split = load_dataset(save_npz(tmp_path / "s.npz", x_train=x[:3], x_test=x[3:]))
    assert split.data_shape == (1, 8, 8)
    assert torch.equal(split.train, torch.from_numpy(x[:3]).float().reshape(3, 1, 8, 8) / 255)


def test_npz_flat_non_square_vectors_stay_flat(tmp_path):
    x = np.random.default_rng(6).random((5, 10))
    spec = save_npz(tmp_path / "v.npz", x_train=x[:3], x_test=x[3:])
    split = load_dataset(spec)
    assert split.data_shape == (10,)
    assert torch.equal(split.heldout, torch.from_numpy(x[3:]).float())
    with raises_data_error("image_size only applies to images") as info:
        load_dataset(spec, image_size=4)
    assert_one_line(info)


@pytest.mark.parametrize("shape", [(6,), (2, 2, 2, 2, 2)])
def test_npz_wrong_number_of_dims(tmp_path, shape):
    x = np.zeros(shape, dtype=np.uint8)
    with raises_data_error("dimension(s) (shape") as info:
        load_dataset(save_npz(tmp_path / "d.npz", x_train=x, x_test=x))
    assert_one_line(info)


def test_npz_missing_key_lists_the_keys_found(tmp_path):
    x = np.zeros((3, 4, 4), dtype=np.uint8)
    with raises_data_error() as info:
        load_dataset(save_npz(tmp_path / "k.npz", x_train=x, images=x))
    message = assert_one_line(info)
    assert "'x_test'" in message and "x_train" in message and "images" in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_npz_non_finite_values(tmp_path, bad):
    x = np.full((3, 4, 4), 0.5)
    x[1, 2, 3] = bad
    with raises_data_error("contains NaN or infinite values") as info:
        load_dataset(save_npz(tmp_path / "n.npz", x_train=np.full((3, 4, 4), 0.5), x_test=x))
    assert_one_line(info)


def test_npz_floats_above_one_suggest_dividing_by_255(tmp_path):
    x = np.full((3, 4, 4), 200.0, dtype=np.float32)
    with raises_data_error("divide by 255") as info:
        load_dataset(save_npz(tmp_path / "r.npz", x_train=x, x_test=x))
    assert "x_train" in assert_one_line(info)


def test_npz_negative_floats(tmp_path):
    x = np.full((3, 4, 4), -0.5)
    with raises_data_error("but must lie in [0, 1]; rescale the data") as info:
        load_dataset(save_npz(tmp_path / "r.npz", x_train=x, x_test=x))
    assert "divide by 255" not in assert_one_line(info)


def test_npz_integer_dtypes(tmp_path):
    x = np.arange(48, dtype=np.int64).reshape(3, 4, 4) * 5  # 0..235
    split = load_dataset(save_npz(tmp_path / "i.npz", x_train=x, x_test=x.astype(np.int16)))
    assert torch.equal(split.train, torch.from_numpy(x).float().unsqueeze(1) / 255)
    assert torch.equal(split.heldout, split.train)
    for bad in (x - 1, x + 30):
        with raises_data_error("0..255") as info:
            load_dataset(save_npz(tmp_path / "j.npz", x_train=bad.astype(np.int16), x_test=x))
        assert_one_line(info)


def test_npz_bool_images(tmp_path):
    x = np.random.default_rng(7).random((4, 5, 5)) > 0.5
    split = load_dataset(save_npz(tmp_path / "b.npz", x_train=x[:3], x_test=x[3:]))
    assert torch.equal(split.train, torch.from_numpy(x[:3]).float().unsqueeze(1))


@pytest.mark.parametrize(
    "y_train, y_test, match",
    [
        (np.arange(4), np.arange(2), "'y_train' has shape (4,) but there are 3 images"),
        (np.arange(3), np.arange(3), "'y_test' has shape (3,) but there are 2 images"),
        (np.array([0.5, 1, 2]), np.arange(2), "'y_train' holds non-integer labels"),
        (np.array(["a", "b", "c"]), np.arange(2), "'y_train' holds non-integer labels"),
        (np.array([0, -1, 2]), np.arange(2), "'y_train' has labels outside"),
        (np.zeros((3, 2), dtype=np.int64), np.arange(2), "'y_train' has shape (3, 2)"),
        (np.arange(3), None, "has y_train but no y_test"),
    ],
)
def test_npz_bad_labels(tmp_path, y_train, y_test, match):
    arrays_ = dict(x_train=np.zeros((3, 4, 4), dtype=np.uint8), x_test=np.zeros((2, 4, 4), dtype=np.uint8))
    arrays_["y_train"] = y_train
    if y_test is not None:
        arrays_["y_test"] = y_test
    with raises_data_error(match) as info:
        load_dataset(save_npz(tmp_path / "y.npz", **arrays_))
    assert_one_line(info)


def test_npz_column_and_whole_float_labels_are_accepted(tmp_path):
    spec = save_npz(
        tmp_path / "y.npz",
        x_train=np.zeros((3, 4, 4), dtype=np.uint8),
        x_test=np.zeros((2, 4, 4), dtype=np.uint8),
        y_train=np.array([[2], [0], [1]], dtype=np.uint8),
        y_test=np.array([7.0, 3.0]),
    )
    split = load_dataset(spec)
    assert split.train_labels.tolist() == [2, 0, 1] and split.heldout_labels.tolist() == [7, 3]
    assert split.heldout_labels.dtype == torch.int64


def test_npz_ragged_object_array(tmp_path):
    ragged = np.empty(3, dtype=object)
    ragged[:] = [np.zeros((4, 4)), np.zeros((5, 5)), np.zeros((4, 4))]
    path = tmp_path / "o.npz"
    np.savez(path, x_train=ragged, x_test=np.zeros((2, 4, 4)))  # np.savez pickles object arrays
    with raises_data_error("is an object array (ragged or mixed types)") as info:
        load_dataset(f"npz:{path}")
    assert_one_line(info)


def test_npz_not_a_zip_file(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"this is not a zip file at all")
    with raises_data_error("not a valid .npz") as info:
        load_dataset(f"npz:{path}")
    assert str(path) in assert_one_line(info)
    assert "pickle" not in str(info.value)  # never suggest unpickling an untrusted file
    np.save(tmp_path / "single.npy", np.zeros((3, 4, 4)))
    with raises_data_error("holds a single .npy array"):
        load_dataset(f"npz:{tmp_path / 'single.npy'}")


def test_npz_missing_file_or_folder(tmp_path):
    for path in (tmp_path / "absent.npz", tmp_path):
        with raises_data_error("does not exist") as info:
            load_dataset(f"npz:{path}")
        assert str(path) in assert_one_line(info)


def test_npz_train_and_test_shapes_must_match(tmp_path):
    spec = save_npz(tmp_path / "m.npz", x_train=zeros(3, 4, 4), x_test=zeros(2, 5, 5))
    with raises_data_error("but x_test examples (1, 5, 5)") as info:
        load_dataset(spec)
    assert "--image-size" in assert_one_line(info)
    assert load_dataset(spec, image_size=3).data_shape == (1, 3, 3)  # resizing makes them agree


@pytest.mark.parametrize("x_train, x_test", [((0, 4, 4), (2, 4, 4)), ((3, 4, 4), (0, 4, 4)), ((3, 0, 4), (2, 0, 4))])
def test_npz_empty_arrays(tmp_path, x_train, x_test):
    spec = save_npz(tmp_path / "e.npz", x_train=zeros(*x_train), x_test=zeros(*x_test))
    with raises_data_error("is empty (shape") as info:
        load_dataset(spec)
    assert_one_line(info)


def test_npz_needs_two_training_examples(tmp_path):
    spec = save_npz(tmp_path / "t.npz", x_train=zeros(1, 4, 4), x_test=zeros(2, 4, 4))
    with raises_data_error("has 1 training and 2 held-out examples") as info:
        load_dataset(spec)
    assert_one_line(info)


def test_npz_image_size_resizes_28_to_14(tmp_path):
    ramp = np.linspace(0, 1, 28)
    smooth = np.stack([np.outer(ramp, ramp), np.outer(ramp, 1 - ramp), np.full((28, 28), 0.6)])
    split = load_dataset(save_npz(tmp_path / "z.npz", x_train=smooth, x_test=smooth[:1]), image_size=14)
    assert split.data_shape == (1, 14, 14) and split.train.shape == (3, 1, 14, 14)
    assert float(split.train.min()) >= 0 and float(split.train.max()) <= 1
    block_means = torch.from_numpy(smooth).float().reshape(3, 14, 2, 14, 2).mean(dim=(2, 4))
    assert torch.allclose(split.train[:, 0], block_means, atol=0.03)  # fails if e.g. transposed
    assert torch.allclose(split.train[2], torch.full((1, 14, 14), 0.6), atol=1e-5)
    stripes = np.zeros((3, 28, 28), dtype=np.uint8)
    stripes[:, :, ::4] = 255  # one bright column in four: mean 0.25
    split = load_dataset(save_npz(tmp_path / "s.npz", x_train=stripes, x_test=stripes), image_size=7)
    interior = split.train[:, 0, 1:-1, 1:-1]
    assert torch.allclose(interior, torch.full_like(interior, 0.25), atol=0.02)  # antialiased, not sampled


# ------------------------------------------------------------------------------------------------
# image folders
# ------------------------------------------------------------------------------------------------


def test_folder_with_class_subfolders_gives_labels(tmp_path):
    rng = np.random.default_rng(8)
    counts = {"b_one": 4, "a_zero": 3, "c_two": 5}  # labels follow sorted names: a_zero=0, b_one=1, c_two=2
    for label, (name, count) in enumerate(sorted(counts.items())):
        for i in range(count):
            image = rng.integers(0, 256, size=(6, 7), dtype=np.uint8)
            image[0, 0] = 50 * label  # the label, readable from the pixel
            save_png(tmp_path / name / f"img{i}.PNG", image)
    (tmp_path / "a_zero" / "notes.txt").write_text("not an image")
    (tmp_path / "b_one" / ".hidden.png").write_bytes(b"junk")
    split = load_dataset(f"folder:{tmp_path}", heldout_fraction=0.25)
    assert split.data_shape == (1, 6, 7)
    assert len(split.train) + len(split.heldout) == 12 and len(split.heldout) == 3
    labels = torch.cat([split.train_labels, split.heldout_labels])
    assert sorted(labels.tolist()) == [0] * 3 + [1] * 4 + [2] * 5
    for x, y in ((split.train, split.train_labels), (split.heldout, split.heldout_labels)):
        assert (x[:, 0, 0, 0] * 255).round().long().tolist() == (50 * y).tolist()
    again = load_dataset(f"folder:{tmp_path}", heldout_fraction=0.25)
    assert torch.equal(again.train, split.train) and torch.equal(again.heldout_labels, split.heldout_labels)


def test_folder_flat_has_no_labels_and_grey_converts_colour(tmp_path):
    rng = np.random.default_rng(9)
    grey = [rng.integers(0, 256, size=(5, 4), dtype=np.uint8) for _ in range(3)]
    for i, image in enumerate(grey):
        save_png(tmp_path / f"g{i}.png", image)
    rgb = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    save_png(tmp_path / "rgb.png", rgb)
    Image.fromarray(grey[0]).save(tmp_path / "g0_copy.bmp")
    split = load_dataset(f"folder:{tmp_path}", heldout_fraction=0.4, grey=True)
    assert split.train_labels is None and split.heldout_labels is None
    assert split.data_shape == (1, 5, 4)
    assert len(split.train) == 3 and len(split.heldout) == 2
    expected = [*grey, grey[0], np.array(Image.fromarray(rgb).convert("L"))]
    got = sorted(image.numpy().tobytes() for image in torch.cat([split.train, split.heldout]))
    assert got == sorted((torch.from_numpy(e).float()[None] / 255).numpy().tobytes() for e in expected)
    # Without grey=True the colour image keeps its channels and the grey ones are repeated in R, G, B.
    colour = load_dataset(f"folder:{tmp_path}", heldout_fraction=0.4)
    assert colour.data_shape == (3, 5, 4)
    as_rgb = [np.repeat(e[None], 3, axis=0) for e in expected[:-1]] + [rgb.transpose(2, 0, 1)]
    got = sorted(image.numpy().tobytes() for image in torch.cat([colour.train, colour.heldout]))
    assert got == sorted((torch.from_numpy(e).float() / 255).numpy().tobytes() for e in as_rgb)


def test_folder_mixed_sizes_need_image_size(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((8, 8)))
    save_png(tmp_path / "b.png", np.full((6, 10), 255))
    save_png(tmp_path / "c.png", np.zeros((8, 8)))
    with raises_data_error("--image-size") as info:
        load_dataset(f"folder:{tmp_path}")
    message = assert_one_line(info)
    assert "a.png" in message and "b.png" in message and "10x6" in message
    split = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert split.data_shape == (1, 8, 8)
    values = sorted(float(image.mean()) for image in torch.cat([split.train, split.heldout]))
    assert values == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)


def test_folder_corrupt_image_names_the_file(tmp_path):
    save_png(tmp_path / "ok1.png", np.zeros((4, 4)))
    save_png(tmp_path / "ok2.png", np.zeros((4, 4)))
    (tmp_path / "broken.png").write_bytes(np.random.default_rng(10).bytes(300))
    with raises_data_error() as info:
        load_dataset(f"folder:{tmp_path}")
    assert str(tmp_path / "broken.png") in assert_one_line(info)


def test_folder_empty_missing_mixed_and_too_small(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with raises_data_error("has no images") as info:
        load_dataset(f"folder:{tmp_path / 'empty'}")
    assert_one_line(info)
    with raises_data_error("does not exist"):
        load_dataset(f"folder:{tmp_path / 'absent'}")
    mixed = tmp_path / "mixed"
    save_png(mixed / "cls" / "a.png", np.zeros((4, 4)))
    save_png(mixed / "loose.png", np.zeros((4, 4)))
    with raises_data_error("mixes class subfolders (cls) with loose images") as info:
        load_dataset(f"folder:{mixed}")
    assert "loose.png" in assert_one_line(info)
    classes = tmp_path / "classes"
    save_png(classes / "cat" / "a.png", np.zeros((4, 4)))
    (classes / "dog").mkdir()
    with raises_data_error(f"class folder {classes / 'dog'} has no images"):
        load_dataset(f"folder:{classes}")
    small = tmp_path / "small"
    save_png(small / "a.png", np.zeros((4, 4)))
    save_png(small / "b.png", np.zeros((4, 4)))
    with raises_data_error("has 2 example(s)") as info:
        load_dataset(f"folder:{small}")
    assert_one_line(info)


# ------------------------------------------------------------------------------------------------
# binarize
# ------------------------------------------------------------------------------------------------


def test_binarize_threshold_and_none():
    x = torch.tensor([[0.0, 0.2, 0.5], [0.50001, 0.9, 1.0]])
    assert torch.equal(binarize(x, "threshold"), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    assert binarize(x, "threshold").dtype == torch.float32
    assert torch.equal(binarize(x, "none"), x)
    assert binarize(x.double(), "none").dtype == torch.float64  # float64 models (e.g. PPCA) keep their dtype
    assert binarize(x.double(), "threshold").dtype == torch.float64
    assert binarize((x * 255).to(torch.uint8), "none").dtype == torch.float32


def test_binarize_dynamic_is_bernoulli():
    # (x must not come from the stream that binarize draws from, or the draws would be correlated with x)
    x = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(12345)) * 0.45  # all below 0.5
    x[0, 0, 0] = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    torch.manual_seed(4)
    b = binarize(x, "dynamic", torch.Generator().manual_seed(1))
    assert b.shape == x.shape and b.dtype == torch.float32
    assert set(b.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(b[0, 0, 0], x[0, 0, 0])  # p = 0 and p = 1 are certain
    standard_error = math.sqrt(float((x * (1 - x)).sum())) / x.numel()
    assert abs(float(b.mean() - x.mean())) < 5 * standard_error
    torch.manual_seed(5)  # the global state must not matter when a generator is given
    same = binarize(x, "dynamic", torch.Generator().manual_seed(1))
    assert torch.equal(same, b)
    assert not torch.equal(binarize(x, "dynamic", torch.Generator().manual_seed(2)), b)


@pytest.mark.parametrize("mode", ["Dynamic", "binary", "", None])
def test_binarize_unknown_mode(mode):
    with raises_data_error() as info:
        binarize(torch.rand(3), mode)
    message = assert_one_line(info)
    assert all(name in message for name in BINARIZE_MODES)


# ------------------------------------------------------------------------------------------------
# property: any npz either loads into a valid DataSplit or raises DataError
# ------------------------------------------------------------------------------------------------

DTYPES = ["uint8", "int16", "int64", "float32", "float64", "bool"]


def element_strategy(dtype: str, tame: bool):
    """Values for an array: 'tame' ones are valid pixel values, the others anything the dtype holds."""
    if dtype == "bool":
        return st.booleans()
    if dtype.startswith("float"):
        width = 32 if dtype == "float32" else 64
        if tame:
            return st.floats(0, 1, width=width)
        return st.floats(width=width, allow_nan=True, allow_infinity=True) | st.floats(0, 1, width=width)
    info = np.iinfo(dtype)
    if tame:
        return st.integers(0, 255)
    low, high = int(info.min), int(info.max)
    return st.integers(low, high) | st.integers(max(low, -2), min(high, 300))


@st.composite
def npz_contents(draw):
    """An .npz's arrays (and an image_size): about half of them valid, the rest broken in some way."""

    def often() -> bool:  # True 3 times in 4
        return draw(st.sampled_from([True, True, True, False]))

    ndim = draw(st.integers(2, 4)) if often() else draw(st.sampled_from([1, 5]))
    dim = st.integers(1, 5) | st.sampled_from([1, 3]) if often() else st.integers(0, 5)
    example_shape = tuple(draw(st.lists(dim, min_size=ndim - 1, max_size=ndim - 1)))
    test_shape = example_shape if often() else tuple(draw(st.lists(dim, max_size=4)))
    contents = {}
    dtype = draw(st.sampled_from(DTYPES))
    for key, shape, sizes in (("x_train", example_shape, (2, 4)), ("x_test", test_shape, (1, 3))):
        dtype = dtype if often() else draw(st.sampled_from(DTYPES))
        n = draw(st.integers(*sizes)) if often() else draw(st.integers(0, 2))
        elements = element_strategy(dtype, tame=often())
        contents[key] = draw(arrays(np.dtype(dtype), (n, *shape), elements=elements))
    labels = (
        draw(st.sampled_from(["none", "good"]))
        if often()
        else draw(st.sampled_from(["wrong_length", "fractional", "train_only"]))
    )
    if labels != "none":
        for key, x_key in (("y_train", "x_train"), ("y_test", "x_test")):
            n = len(contents[x_key]) + (labels == "wrong_length")
            contents[key] = np.arange(n) + (0.5 if labels == "fractional" else 0)
        if labels == "train_only":
            del contents["y_test"]
    image_size = None if often() else draw(st.integers(1, 6))
    return contents, image_size


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("property") / "case.npz"


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=npz_contents())
def test_any_npz_loads_validly_or_raises_data_error(npz_path, case):
    contents, image_size = case
    np.savez(npz_path, **contents)
    try:
        split = load_dataset(f"npz:{npz_path}", image_size=image_size)
    except DataError as error:
        assert str(error) and "\n" not in str(error)
        event("DataError")
        return
    event(f"loaded, data_shape of length {len(split.data_shape)}")
    x_train, x_test = contents["x_train"], contents["x_test"]
    assert isinstance(split, DataSplit)
    for x, source in ((split.train, x_train), (split.heldout, x_test)):
        assert x.dtype == torch.float32
        assert bool(torch.isfinite(x).all()) and float(x.min()) >= 0 and float(x.max()) <= 1
        assert x.shape[1:] == split.data_shape and len(x) == len(source)
        if image_size is None:  # the same values, only rearranged
            scale = 255 if source.dtype.kind in "iu" else 1
            expected = np.sort((source.astype(np.float32) / scale).ravel())
            assert np.array_equal(np.sort(x.numpy().ravel()), expected)
    assert len(split.train) >= 2 and len(split.heldout) >= 1
    assert len(split.data_shape) == 1 or (len(split.data_shape) == 3 and split.data_shape[0] in (1, 3))
    if image_size is not None:
        assert split.data_shape[1:] == (image_size, image_size)
    if "y_train" in contents:
        assert split.train_labels.tolist() == contents["y_train"].astype(np.int64).tolist()
        assert split.heldout_labels.tolist() == contents["y_test"].astype(np.int64).tolist()
    else:
        assert split.train_labels is None and split.heldout_labels is None
