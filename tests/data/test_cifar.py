"""CIFAR-10 in its binary format: small batches written here record by record (label byte, then the R,
G and B planes of 32x32), read back exactly; files that are not what they claim are refused in one line
that names the file and the fix; nothing is unpickled and nothing uses the network."""

from __future__ import annotations

import ast
import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ppl_vae.data.cifar as cifar
from ppl_vae.data import data_fingerprint, load_dataset
from ppl_vae.data.sources import DATASETS, SPEC_PREFIXES
from ppl_vae.errors import DataError

RECORD = 3073


def raises(text: str | None = None):
    return pytest.raises(DataError, match=None if text is None else re.escape(text))


def one_line(info) -> str:
    message = str(info.value)
    assert message and "\n" not in message and "; " in message, f"not one line with a fix: {message!r}"
    return message


def batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random uint8 images ``(n, 32, 32, 3)`` (height, width, RGB, as Pillow holds them) and labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The CIFAR-10 binary records of ``images (n, 32, 32, 3)``: per image its label byte, then the red
    plane, the green plane and the blue plane, each 32 rows of 32 bytes."""
    out = bytearray()
    for image, label in zip(images, labels):
        out.append(int(label))
        for channel in range(3):
            out += image[:, :, channel].tobytes()  # row-major
    return bytes(out)


def write_cifar(folder: Path, sizes=(30, 20), test_size: int = 15) -> dict:
    """``data_batch_1.bin`` ... (one per entry of ``sizes``) and ``test_batch.bin``; returns the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, n in enumerate(sizes, start=1):
        written[f"data_batch_{i}"] = batch(n, seed=i)
    written["test_batch"] = batch(test_size, seed=99)
    for name, (images, labels) in written.items():
        (folder / f"{name}.bin").write_bytes(records(images, labels))
    return written


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """What ``(n, 32, 32, 3)`` uint8 images load as: ``(n, 3, 32, 32)`` float32 k/255."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255


@pytest.fixture
def cifar_dir(tmp_path) -> tuple[Path, dict]:
    folder = tmp_path / "cifar-10-batches-bin"
    return folder, write_cifar(folder)


# --------------------------------------------------------------------------------------------------
# round trip
# --------------------------------------------------------------------------------------------------


def test_round_trip_keeps_pixels_labels_order_and_split(cifar_dir):
    folder, written = cifar_dir
    split = load_dataset(f"cifar10:{folder}")
    assert split.data_shape == (3, 32, 32) and split.kind == "image"
    assert (len(split.train), len(split.heldout)) == (50, 15)  # the data batches, then the test batch
    train_images = np.concatenate([written["data_batch_1"][0], written["data_batch_2"][0]])
    train_labels = np.concatenate([written["data_batch_1"][1], written["data_batch_2"][1]])
    assert split.train.dtype == torch.float32 and torch.equal(split.train, as_tensor(train_images))
    assert torch.equal(split.heldout, as_tensor(written["test_batch"][0]))
    assert split.train_labels.dtype == torch.int64
    assert split.train_labels.tolist() == train_labels.tolist()
    assert split.heldout_labels.tolist() == written["test_batch"][1].tolist()


def test_planes_are_red_green_blue_and_rows_are_row_major(tmp_path):
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 0, :, 0] = 255  # the top row is red
    image[0, :, 0, 2] = 128  # the left column is half blue
    folder = tmp_path / "c"
    folder.mkdir()
    for name in ("data_batch_1", "test_batch"):
        (folder / f"{name}.bin").write_bytes(records(np.repeat(image, 2, axis=0), np.array([4, 5])))
    x = load_dataset(f"cifar10:{folder}").train[0]
    assert torch.all(x[0, 0] == 1) and torch.all(x[0, 1:] == 0)
    assert torch.all(x[2, :, 0] == 128 / 255) and torch.all(x[2, :, 1:] == 0) and torch.all(x[1] == 0)


def test_spec_cifar10_reads_the_extracted_folder_under_root(cifar_dir, tmp_path, monkeypatch):
    folder, _ = cifar_dir
    explicit = load_dataset(f"cifar10:{folder}")
    for spec, kwargs in (("cifar10", {"root": tmp_path}), ("CIFAR10", {"root": str(tmp_path)})):
        split = load_dataset(spec, **kwargs)
        assert torch.equal(split.train, explicit.train) and split.name == spec
    parent = load_dataset(f"cifar10:{tmp_path}")  # the folder the archive was extracted in
    assert torch.equal(parent.heldout, explicit.heldout)
    (tmp_path / "data").mkdir()
    folder.rename(tmp_path / "data" / "cifar-10-batches-bin")
    monkeypatch.chdir(tmp_path)
    assert torch.equal(load_dataset("cifar10").train, explicit.train)  # root defaults to ./data


def test_grey_gives_pillows_luma(cifar_dir):
    folder, written = cifar_dir
    split = load_dataset(f"cifar10:{folder}", grey=True)
    assert split.data_shape == (1, 32, 32)
    images = written["test_batch"][0]
    expected = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in images])[:, None]
    assert torch.equal(split.heldout, torch.from_numpy(expected).float() / 255)


def test_image_size_resizes_and_a_missing_middle_batch_is_fine(tmp_path):
    folder = tmp_path / "c"
    write_cifar(folder, sizes=(4, 3, 5))
    (folder / "data_batch_2.bin").unlink()
    split = load_dataset(f"cifar10:{folder}", image_size=16)
    assert split.data_shape == (3, 16, 16) and len(split.train) == 9


def test_names_in_the_spec_list_and_the_unknown_spec_hint(cifar_dir):
    folder, _ = cifar_dir
    assert "cifar10" in DATASETS and "cifar10:" in SPEC_PREFIXES
    for spec in ("cifar-11", "cifar10:"):
        with raises("cifar10:PATH") as info:
            load_dataset(spec)
        one_line(info)
    with raises(f"write cifar10:{folder}"):
        load_dataset(str(folder))


def test_fingerprint_covers_the_batches_read(cifar_dir, tmp_path):
    folder, _ = cifar_dir
    first = data_fingerprint(f"cifar10:{folder}")
    assert first["files"] == 3 and first["bytes"] == (30 + 20 + 15) * RECORD
    assert data_fingerprint("cifar10", root=tmp_path)["sha256"] == first["sha256"]
    data = bytearray((folder / "test_batch.bin").read_bytes())
    data[-1] ^= 1
    (folder / "test_batch.bin").write_bytes(bytes(data))
    assert data_fingerprint(f"cifar10:{folder}")["sha256"] != first["sha256"]
    (folder / "notes.txt").write_text("not read")
    assert data_fingerprint(f"cifar10:{folder}")["files"] == 3


# --------------------------------------------------------------------------------------------------
# files that are not what they claim
# --------------------------------------------------------------------------------------------------


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def padded_to_records(data: bytes) -> bytes:
    return data + bytes(-len(data) % RECORD)


GOOD = records(*batch(3, seed=5))

BAD_BATCHES = {
    "wrong size": (GOOD + b"\x00" * 5, "not a positive multiple of 3073"),
    "truncated": (GOOD[: RECORD + 1000], "1 whole image(s) and 1000 byte(s) more"),
    "empty": (b"", "it is empty"),
    "a PNG renamed to .bin": (png_bytes(), "starts like a PNG image"),
    "a PNG padded to whole records": (padded_to_records(png_bytes()), "label 137"),
    "a gzip archive": (b"\x1f\x8b\x08" + bytes(100), "extract cifar-10-binary.tar.gz"),
    "a pickle": (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]}, protocol=2), "pickle"),
    "a pickle padded to whole records": (padded_to_records(pickle.dumps([0] * 50, protocol=4)), "label 128"),
    "CIFAR-100 records": (bytes(3074 * 4), "CIFAR-100"),
    "label 11": (GOOD[: 2 * RECORD] + b"\x0b" + GOOD[2 * RECORD + 1 :], "image 2 (counting from 0) has label 11"),
}


@pytest.mark.parametrize("which", ["data_batch_1", "test_batch"])
@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_a_bad_batch_is_refused_naming_the_file(tmp_path, monkeypatch, which, case):
    content, text = BAD_BATCHES[case]
    folder = tmp_path / "c"
    write_cifar(folder, sizes=(3,), test_size=3)
    (folder / f"{which}.bin").write_bytes(content)
    refuse_unpickling(monkeypatch)
    with raises(text) as info:
        load_dataset(f"cifar10:{folder}")
    message = one_line(info)
    assert str(folder / f"{which}.bin") in message and "cifar-10-binary.tar.gz" in message


@pytest.mark.parametrize(
    "remove, text",
    [
        (["test_batch.bin"], "lacks the test batch test_batch.bin"),
        (["data_batch_1.bin", "data_batch_2.bin"], "lacks a training batch (data_batch_1.bin ... data_batch_5.bin"),
    ],
)
def test_missing_files_are_named(tmp_path, remove, text):
    folder = tmp_path / "c"
    write_cifar(folder, sizes=(3, 3), test_size=2)
    for name in remove:
        (folder / name).unlink()
    with raises(text) as info:
        load_dataset(f"cifar10:{folder}")
    assert str(folder) in one_line(info)


def test_missing_folder_points_at_the_download_and_at_what_is_there(tmp_path):
    with raises("does not exist") as info:
        load_dataset("cifar10", root=tmp_path)
    message = one_line(info)
    assert str(tmp_path / "cifar-10-batches-bin") in message and "cifar-10-binary.tar.gz" in message
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"\x1f\x8b")
    with raises("extract it with tar xzf"):
        load_dataset("cifar10", root=tmp_path)
    python_version = tmp_path / "py" / "cifar-10-batches-py"
    python_version.mkdir(parents=True)
    (python_version / "data_batch_1").write_bytes(pickle.dumps([1]))
    with raises("pickled and is not read") as info:
        load_dataset(f"cifar10:{python_version}")
    one_line(info)


def test_a_folder_where_a_batch_should_be_is_refused(tmp_path):
    folder = tmp_path / "c"
    write_cifar(folder, sizes=(3,), test_size=2)
    (folder / "test_batch.bin").unlink()
    (folder / "test_batch.bin").mkdir()
    with raises("is a folder") as info:
        load_dataset(f"cifar10:{folder}")
    assert str(folder / "test_batch.bin") in one_line(info)


def test_memory_budget_is_checked_before_anything_is_read(cifar_dir, monkeypatch):
    folder, _ = cifar_dir
    monkeypatch.setenv("PPL_VAE_MAX_MEMORY", "300K")  # 65 images need 0.8 MB as float32 colour

    def no_reading(*args, **kwargs):
        raise AssertionError("a batch was read before the budget was checked")

    monkeypatch.setattr(cifar, "_fill_from", no_reading)
    with raises("more than the limit") as info:
        load_dataset(f"cifar10:{folder}")
    assert "CIFAR-10" in one_line(info) and "50 training and 15 test images" in str(info.value)


# --------------------------------------------------------------------------------------------------
# nothing is unpickled
# --------------------------------------------------------------------------------------------------


def refuse_unpickling(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_reading_unpickles_nothing(cifar_dir, monkeypatch):
    folder, written = cifar_dir
    refuse_unpickling(monkeypatch)
    split = load_dataset(f"cifar10:{folder}")
    assert torch.equal(split.heldout, as_tensor(written["test_batch"][0]))


def test_the_module_imports_no_unpickler():
    """cifar.py imports neither pickle nor anything that unpickles, and calls no ``load``."""
    tree = ast.parse(Path(cifar.__file__).read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal"}, imported
    calls = {
        node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert not calls & {"load", "loads", "Unpickler"}, calls
