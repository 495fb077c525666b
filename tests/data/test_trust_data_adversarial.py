"""An adversarial pass over ``load_dataset``: damaged, truncated, empty, mistyped and unusual files.

Every broken input must end in a one-line DataError that names the file; every unusual but valid
input must load with the right values. Each file is written here in its real format (npz via numpy
and zipfile, images via Pillow, IDX bytes, CSV bytes).
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ppl_vae.data.sources import load_dataset
from ppl_vae.errors import DataError

GOOD = np.random.default_rng(0).integers(0, 256, (5, 4, 4)).astype(np.uint8)
TEST = np.zeros((2, 4, 4), np.uint8)


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def header(shape, descr: str = "|u1") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def zip_npz(path: Path, **members) -> Path:
    """An npz written member by member, so that a member can hold any bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in members.items():
            archive.writestr(f"{key}.npy", value if isinstance(value, bytes) else npy(value))
    return path


def patched_zip(path: Path, local_offset: int, central_offset: int, value: int, *, bits: bool = False) -> Path:
    """A valid npz whose local and central zip headers have one 2-byte field replaced (or OR-ed)."""
    np.savez(path, x_train=GOOD, x_test=TEST)
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            old = struct.unpack_from("<H", data, start + offset)[0]
            struct.pack_into("<H", data, start + offset, old | value if bits else value)
            start += 4
    path.write_bytes(bytes(data))
    return path


def image_folder(tmp_path: Path, extra: dict[str, bytes | str]) -> Path:
    """Three good 4x4 PNGs plus ``extra`` entries: bytes, "DIR" (a folder) or "LOOP" (a symlink loop)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((4, 4), 60 * i, np.uint8)).save(folder / f"ok{i}.png")
    for name, content in extra.items():
        if content == "DIR":
            (folder / name).mkdir()
        elif content == "LOOP":
            os.symlink(folder / name, folder / name)
        else:
            (folder / name).write_bytes(content)
    return folder


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + png_chunk(b"IEND", b"")
    )


def good_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> None:
    path.write_bytes(
        struct.pack(">i", (code << 8) | array.ndim) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    )


def mnist_root(tmp_path: Path) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((6, 28, 28), np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(6, np.uint8))
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    return raw


# Three valid CIFAR-10 records: a label byte, then 3072 pixel bytes.
CIFAR_RECORDS = b"".join(bytes([label]) + bytes([25 * label]) * 3072 for label in (0, 3, 9))


def cifar_folder(tmp_path: Path, **files: bytes | None) -> Path:
    """A CIFAR-10 binary folder with data_batch_1.bin and test_batch.bin; ``files`` replaces (bytes) or
    leaves out (None) either of them. The message must name the folder, which holds every file."""
    folder = tmp_path / "cifar"
    folder.mkdir()
    for name, content in {"data_batch_1": CIFAR_RECORDS, "test_batch": CIFAR_RECORDS, **files}.items():
        if content is not None:
            (folder / f"{name}.bin").write_bytes(content)
    return folder


def table(tmp_path: Path, content: bytes, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def table_npz(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "t.npz"
    np.savez(path, **arrays)
    return path


def truncated_npz(tmp_path: Path, keep: float) -> Path:
    np.savez(tmp_path / "full.npz", x_train=GOOD, x_test=TEST)
    data = (tmp_path / "full.npz").read_bytes()
    return table(tmp_path, data[: int(len(data) * keep)], "cut.npz")


def crc_damaged_npz(tmp_path: Path) -> Path:
    np.savez(tmp_path / "d.npz", x_train=GOOD, x_test=TEST)
    data = bytearray((tmp_path / "d.npz").read_bytes())
    data[data.find(b"x_train.npy") + 11 + 140] ^= 0xFF  # a byte of x_train's pixels (stored, not deflated)
    return table(tmp_path, bytes(data), "d.npz")


def mnist_case(mutate):
    def build(tmp_path):
        raw = mnist_root(tmp_path)
        return ("mnist", tmp_path, mutate(raw))

    return build


def replace_with_folder(path: Path) -> Path:
    path.unlink()
    path.mkdir()
    return path


# name -> builder(tmp_path) returning the file (npz:), the folder path with "folder:" / "table:" prefix
# via a (kind, path) pair, or ("mnist", root, file_to_name).
BROKEN = {
    # npz archives
    "npz: complex images": lambda p: ("npz", zip_npz(p / "c.npz", x_train=GOOD.astype(np.complex64), x_test=TEST)),
    "npz: string images": lambda p: ("npz", zip_npz(p / "s.npz", x_train=np.array([["a"] * 4] * 3), x_test=TEST)),
    "npz: bytes images": lambda p: ("npz", zip_npz(p / "b.npz", x_train=np.array([[b"a"] * 4] * 3), x_test=TEST)),
    "npz: structured dtype": lambda p: ("npz", zip_npz(p / "r.npz", x_train=np.zeros(3, "f4,i4"), x_test=TEST)),
    "npz: datetime dtype": lambda p: ("npz", zip_npz(p / "d.npz", x_train=np.zeros((3, 4), "M8[s]"), x_test=TEST)),
    "npz: void dtype": lambda p: ("npz", zip_npz(p / "v.npz", x_train=np.zeros((3, 4), "V4"), x_test=TEST)),
    "npz: 0-d array": lambda p: ("npz", zip_npz(p / "z.npz", x_train=np.float32(0.5), x_test=TEST)),
    "npz: negative shape": lambda p: ("npz", zip_npz(p / "n.npz", x_train=header((-3, 4)), x_test=TEST)),
    "npz: header without data": lambda p: ("npz", zip_npz(p / "h.npz", x_train=header((3, 4, 4)), x_test=TEST)),
    "npz: data cut short": lambda p: ("npz", zip_npz(p / "h.npz", x_train=header((3, 4, 4)) + bytes(10), x_test=TEST)),
    "npz: garbage header": lambda p: (
        "npz",
        zip_npz(p / "g.npz", x_train=b"\x93NUMPY\x01\x00\x10\x00{garbage}      \n", x_test=TEST),
    ),
    "npz: member not .npy": lambda p: ("npz", zip_npz(p / "m.npz", x_train=b"not an npy file", x_test=TEST)),
    "npz: empty member": lambda p: ("npz", zip_npz(p / "e.npz", x_train=b"", x_test=TEST)),
    "npz: header length 2 GiB": lambda p: (
        "npz",
        zip_npz(p / "l.npz", x_train=b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{", x_test=TEST),
    ),
    "npz: unknown npy version": lambda p: (
        "npz",
        zip_npz(p / "u.npz", x_train=b"\x93NUMPY\x09\x00" + bytes(20), x_test=TEST),
    ),
    "npz: 40 dimensions": lambda p: ("npz", zip_npz(p / "k.npz", x_train=header((1,) * 40) + b"\0", x_test=TEST)),
    "npz: infinite floats": lambda p: ("npz", zip_npz(p / "i.npz", x_train=np.full((3, 4, 4), np.inf), x_test=TEST)),
    "npz: complex labels": lambda p: (
        "npz",
        zip_npz(p / "y.npz", x_train=GOOD, x_test=TEST, y_train=np.ones(5, np.complex64), y_test=np.ones(2)),
    ),
    "npz: labels declaring 10**12 entries": lambda p: (
        "npz",
        zip_npz(p / "y.npz", x_train=GOOD, x_test=TEST, y_train=header((10**12,), "<i8"), y_test=np.ones(2, int)),
    ),
    "npz: truncated archive": lambda p: ("npz", truncated_npz(p, 0.5)),
    "npz: last bytes missing": lambda p: ("npz", truncated_npz(p, 0.97)),
    "npz: empty file": lambda p: ("npz", table(p, b"", "e.npz")),
    "npz: damaged data (CRC)": lambda p: ("npz", crc_damaged_npz(p)),
    "npz: unknown compression method": lambda p: ("npz", patched_zip(p / "m.npz", 8, 10, 99)),
    "npz: encrypted members": lambda p: ("npz", patched_zip(p / "x.npz", 6, 8, 1, bits=True)),
    "npz: a folder": lambda p: ("npz", replace_with_folder(table(p, b"", "dir.npz"))),
    "npz: a symlink loop": lambda p: ("npz", (os.symlink(p / "loop.npz", p / "loop.npz"), p / "loop.npz")[1]),
    "npz: a fifo": lambda p: ("npz", (os.mkfifo(p / "fifo.npz"), p / "fifo.npz")[1]),
    # image folders
    "folder: zero-byte png": lambda p: ("folder", image_folder(p, {"bad.png": b""}), "bad.png"),
    "folder: text named .png": lambda p: ("folder", image_folder(p, {"bad.png": b"hello"}), "bad.png"),
    "folder: png cut inside its header": lambda p: ("folder", image_folder(p, {"bad.png": good_png()[:40]}), "bad.png"),
    "folder: png without pixel data": lambda p: (
        "folder",
        image_folder(p, {"bad.png": png_header_only(4, 4)}),
        "bad.png",
    ),
    "folder: png of width 0": lambda p: ("folder", image_folder(p, {"bad.png": png_header_only(0, 4)}), "bad.png"),
    "folder: png claiming 2**31 x 2**31": lambda p: (
        "folder",
        image_folder(p, {"bad.png": png_header_only(2**31 - 1, 2**31 - 1)}),
        "bad.png",
    ),
    # (a LAB TIFF was refused while folders were read as grey; it now loads in colour, through Pillow)
    # CIFAR-10 binary batches (more in test_cifar.py)
    "cifar10: truncated batch": lambda p: ("cifar10", cifar_folder(p, data_batch_1=CIFAR_RECORDS[:-100])),
    "cifar10: a PNG named .bin": lambda p: ("cifar10", cifar_folder(p, test_batch=good_png())),
    "cifar10: label 11": lambda p: ("cifar10", cifar_folder(p, data_batch_1=b"\x0b" + CIFAR_RECORDS[1:])),
    "cifar10: no test batch": lambda p: ("cifar10", cifar_folder(p, test_batch=None)),
    # tables
    "table: empty csv": lambda p: ("table", table(p, b"")),
    "table: header only": lambda p: ("table", table(p, b"a,b\n")),
    "table: blank lines only": lambda p: ("table", table(p, b"\n\n  \n")),
    "table: NUL bytes": lambda p: ("table", table(p, b"1,2\n3,\x004\n5,6\n")),
    "table: one huge field": lambda p: ("table", table(p, b"1" * 200_000 + b"\n")),
    "table: value overflowing float32": lambda p: ("table", table(p, b"1,2\n3,1e39\n4,5\n")),
    "table: NaN cell": lambda p: ("table", table(p, b"1,2\nnan,3\n4,5\n")),
    "table: empty cell": lambda p: ("table", table(p, b"1,2\n3,\n4,5\n")),
    "table: semicolons": lambda p: ("table", table(p, b"1;2\n3;4\n5;6\n")),
    "table: binary junk": lambda p: ("table", table(p, bytes(range(256)) * 4)),
    "table: broken UTF-16 after its BOM": lambda p: ("table", table(p, b"\xff\xfe1\x00,\x00\x00\xd8")),
    "table: header wider than rows": lambda p: ("table", table(p, b"a,b,c\n1,2\n3,4\n5,6\n")),
    "table: a folder": lambda p: ("table", replace_with_folder(table(p, b""))),
    "table: a symlink loop": lambda p: ("table", (os.symlink(p / "l.csv", p / "l.csv"), p / "l.csv")[1]),
    "table: npz of complex": lambda p: ("table", table_npz(p, x=np.ones((5, 3), np.complex128))),
    "table: npz of strings": lambda p: ("table", table_npz(p, x=np.array([["a", "b"]] * 5))),
    "table: npz of datetimes": lambda p: ("table", table_npz(p, x=np.zeros((5, 3), "M8[s]"))),
    "table: npz beyond float32": lambda p: ("table", table_npz(p, x=np.full((5, 3), 1e300))),
    "table: npz 1-d": lambda p: ("table", table_npz(p, x=np.ones(5))),
    "table: npz no columns": lambda p: ("table", table_npz(p, x=np.ones((5, 0)))),
    "table: npz no rows": lambda p: ("table", table_npz(p, x=np.ones((0, 3)))),
    "table: npz garbage": lambda p: ("table", table(p, b"garbage", "t.npz")),
    # MNIST-family IDX files
    "mnist: empty file": mnist_case(
        lambda raw: ((raw / "train-images-idx3-ubyte").write_bytes(b""), "train-images-idx3-ubyte")[1]
    ),
    "mnist: bad magic": mnist_case(
        lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes(b"\x01\x02\x08\x03") and "t10k-images-idx3-ubyte"
    ),
    "mnist: int32 images": mnist_case(
        lambda raw: write_idx(raw / "train-images-idx3-ubyte", np.zeros((6, 28, 28), ">i4"), 0x0C) or "MNIST"
    ),
    "mnist: 2-d labels": mnist_case(
        lambda raw: write_idx(raw / "train-labels-idx1-ubyte", np.zeros((6, 1), np.uint8)) or "train-labels-idx1-ubyte"
    ),
    "mnist: header cut short": mnist_case(
        lambda raw: (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0") and "t10k-labels-idx1-ubyte"
    ),
    "mnist: zero images": mnist_case(
        lambda raw: (
            write_idx(raw / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8)),
            write_idx(raw / "train-labels-idx1-ubyte", np.zeros(0, np.uint8)),
            "MNIST",
        )[2]
    ),
    "mnist: a folder instead of a file": mnist_case(
        lambda raw: replace_with_folder(raw / "t10k-labels-idx1-ubyte") and "t10k-labels-idx1-ubyte"
    ),
}


def tiff_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    return buffer.getvalue()


def spec_of(built) -> tuple[str, dict, str]:
    """(spec, load_dataset keyword arguments, text the message must contain)."""
    if built[0] == "mnist":
        return "mnist", {"root": built[1]}, built[2]
    kind, path = built[0], built[1]
    named = built[2] if len(built) > 2 else path.name
    return f"{kind}:{path}", {}, named


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_input_is_a_one_line_data_error_naming_the_file(tmp_path, case):
    spec, kwargs, named = spec_of(BROKEN[case](tmp_path))
    with pytest.raises(DataError) as info:
        load_dataset(spec, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message, message
    assert named in message, message
    assert "; " in message, f"no fix after the problem: {message}"


def test_the_adversarial_pass_covers_many_cases():
    assert len(BROKEN) >= 60


# ------------------------------------------------------------------------------------------------
# unusual but valid inputs load with the right values
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "convert",
    [np.asfortranarray, lambda x: (x / 255).astype(">f8"), lambda x: (x / 255).astype(np.float16), lambda x: x > 100],
)
def test_unusual_npz_layouts_and_dtypes_load_right(tmp_path, convert):
    stored = convert(GOOD)
    split = load_dataset(f"npz:{zip_npz(tmp_path / 'u.npz', x_train=stored, x_test=TEST)}")
    expected = np.asarray(stored, dtype=np.float64)
    if stored.dtype == np.uint8:
        expected = expected / 255
    np.testing.assert_allclose(split.train[:, 0].numpy(), expected, rtol=0, atol=1e-7)


def test_animated_gif_uses_its_first_frame_and_cmyk_jpeg_loads(tmp_path):
    frames = [Image.new("L", (4, 4), 40 * (i + 1)).convert("P") for i in range(3)]
    for i in range(3):
        frames[0].save(tmp_path / f"a{i}.gif", save_all=True, append_images=frames[1:])
    x = torch.cat([(s := load_dataset(f"folder:{tmp_path}")).train, s.heldout])
    assert torch.allclose(x, torch.full_like(x, 40 / 255), atol=1e-6)
    cmyk = tmp_path / "cmyk"
    cmyk.mkdir()
    for i in range(3):
        Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(cmyk / f"c{i}.jpg", quality=100)
    x = torch.cat([(s := load_dataset(f"folder:{cmyk}")).train, s.heldout])
    assert torch.allclose(x, torch.ones_like(x), atol=2 / 255)  # no ink is white


def test_entries_that_are_not_regular_files_are_skipped(tmp_path):
    folder = image_folder(tmp_path, {"loop.png": "LOOP", ".hidden.png": b"junk"})
    os.mkfifo(folder / "fifo.png")
    split = load_dataset(f"folder:{folder}")
    assert len(split.train) + len(split.heldout) == 3


def test_csv_with_carriage_returns_only_and_one_column(tmp_path):
    path = table(tmp_path, b"1\r2\r3\r4\r")
    split = load_dataset(f"table:{path}", heldout_fraction=0.25)
    assert sorted(torch.cat([split.train, split.heldout])[:, 0].tolist()) == [1, 2, 3, 4]


def test_unreadable_folder_is_a_data_error(tmp_path, monkeypatch):
    folder = image_folder(tmp_path, {})
    real_listdir = os.listdir

    def refuse(path="."):
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", refuse)
    with pytest.raises(DataError, match="Permission denied") as info:
        load_dataset(f"folder:{folder}")
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files without permission")
@pytest.mark.parametrize("kind", ["npz", "table"])
def test_unreadable_file_is_a_data_error(tmp_path, kind):
    path = tmp_path / ("t.npz" if kind == "npz" else "t.csv")
    if kind == "npz":
        np.savez(path, x_train=GOOD, x_test=TEST)
    else:
        path.write_text("1,2\n3,4\n5,6\n")
    path.chmod(0)
    with pytest.raises(DataError) as info:
        load_dataset(f"{kind}:{path}")
    assert str(path) in str(info.value) and "\n" not in str(info.value)
