"""Data fidelity and bounded reading: image modes, CSV encodings, support checks over all rows, the data
fingerprint, and refusing oversized inputs from their headers before anything is allocated. All offline;
every file is written here in its real format."""

from __future__ import annotations

import io
import re
import struct
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ppl_vae.data import check_data_support, data_fingerprint
from ppl_vae.data.sources import load_dataset
from ppl_vae.errors import DataError


def one_line(info) -> str:
    message = str(info.value)
    assert message and "\n" not in message, f"message is not one line: {message!r}"
    return message


def raises(text: str | None = None):
    return pytest.raises(DataError, match=None if text is None else re.escape(text))


def all_images(split) -> torch.Tensor:
    """Every image of a split, in file order (the folder loader keeps each part in file order)."""
    return torch.cat([split.train, split.heldout])


def folder_of(tmp_path: Path, image: Image.Image, suffix: str = ".png", copies: int = 3, **save) -> str:
    """A folder holding ``copies`` copies of ``image``: every example is the same image."""
    folder = tmp_path / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(copies):
        image.save(folder / f"im{i}{suffix}", **save)
    return f"folder:{folder}"


def loaded_pixels(spec: str, grey: bool = False) -> np.ndarray:
    """The image every example of a folder of copies loads as: (H, W) when grey, (H, W, 3) in colour."""
    x = all_images(load_dataset(spec, grey=grey))
    assert torch.equal(x, x[:1].expand_as(x))
    return x[0, 0].numpy() if x.shape[1] == 1 else x[0].permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------------------------------
# 1. image modes are read into values in [0, 1] correctly (colour kept; grey by luma when asked)
# --------------------------------------------------------------------------------------------------


def test_16bit_png_is_scaled_by_65535(tmp_path):
    values = np.array([[0, 1, 255, 256], [1000, 32768, 65000, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    pixels = loaded_pixels(folder_of(tmp_path, image))
    np.testing.assert_allclose(pixels, values / 65535.0, rtol=0, atol=1e-7)
    assert (pixels < 1).sum() == 7  # the old loader saturated everything >= 255 to 1.0


def test_16bit_tiff_is_scaled_by_65535(tmp_path):
    values = np.array([[0, 300, 40000], [65535, 7, 12345]], dtype=np.uint16)
    pixels = loaded_pixels(folder_of(tmp_path, Image.fromarray(values), suffix=".tif"))
    np.testing.assert_allclose(pixels, values / 65535.0, rtol=0, atol=1e-7)


def test_32bit_float_tiff_keeps_its_values_in_0_1(tmp_path):
    values = np.array([[0.0, 0.125, 0.5], [0.75, 0.999, 1.0]], dtype=np.float32)
    image = Image.fromarray(values)
    assert image.mode == "F"
    pixels = loaded_pixels(folder_of(tmp_path, image, suffix=".tif"))
    np.testing.assert_allclose(pixels, values, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "values, text",
    [(np.array([[0.0, 2.0], [0.5, 0.1]]), "from 0 to 2"), (np.array([[0.0, np.nan], [0.5, 0.1]]), "NaN")],
)
def test_float_image_outside_0_1_is_refused_naming_the_file(tmp_path, values, text):
    spec = folder_of(tmp_path, Image.fromarray(values.astype(np.float32)), suffix=".tif")
    with raises(text) as info:
        load_dataset(spec)
    assert "im0.tif" in one_line(info)


def test_32bit_int_tiff_is_scaled_by_its_bit_depth(tmp_path):
    top = 2**31 - 1  # signed 32-bit samples (Pillow mode "I")
    values = np.array([[0, 2**30, top], [2**16, 1, top // 4]], dtype=np.int32)
    image = Image.fromarray(values)
    assert image.mode == "I"
    pixels = loaded_pixels(folder_of(tmp_path, image, suffix=".tif"))
    np.testing.assert_allclose(pixels, values / top, rtol=1e-6, atol=1e-7)


def test_negative_int_image_is_refused(tmp_path):
    values = np.array([[0, -5], [7, 9]], dtype=np.int32)
    with raises("negative") as info:
        load_dataset(folder_of(tmp_path, Image.fromarray(values), suffix=".tif"))
    assert "im0.tif" in one_line(info)


PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (10, 200, 90)]


def palette_image() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A palette image, the grey levels of its pixels (ITU-R 601-2 luma of the palette colours) and its
    colours (H, W, 3) in [0, 1]."""
    index = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    image = Image.new("P", (3, 2))
    image.putpalette([c for rgb in PALETTE for c in rgb] + [0] * 3 * (256 - len(PALETTE)))
    image.putdata(index.ravel().tolist())
    rgb = np.array([PALETTE[i] for i in index.ravel()], dtype=np.uint8).reshape(2, 3, 3)
    grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    return image, grey, rgb / 255


def test_palette_png_goes_through_its_palette(tmp_path):
    image, grey, colours = palette_image()
    spec = folder_of(tmp_path, image)
    pixels = loaded_pixels(spec, grey=True)
    np.testing.assert_allclose(pixels, grey, atol=1e-7)
    assert len(set(pixels.ravel().tolist())) == len(PALETTE)  # not the palette indices
    np.testing.assert_allclose(loaded_pixels(spec), colours, atol=1e-7)  # colour kept by default


@pytest.mark.parametrize("transparency", [1, bytes([255, 0, 128, 255, 255, 0])])
def test_palette_png_with_transparency_drops_alpha_quietly(tmp_path, transparency):
    image, grey, colours = palette_image()
    spec = folder_of(tmp_path, image, transparency=transparency)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns when P+transparency goes straight to L or RGB
        pixels = loaded_pixels(spec, grey=True)
        in_colour = loaded_pixels(spec)
    np.testing.assert_allclose(pixels, grey, atol=1e-7)
    np.testing.assert_allclose(in_colour, colours, atol=1e-7)


def test_la_and_rgba_drop_alpha(tmp_path):
    grey = np.array([[0, 50, 100], [150, 200, 255]], dtype=np.uint8)
    alpha = np.array([[0, 255, 7], [128, 0, 255]], dtype=np.uint8)
    la = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
    np.testing.assert_allclose(loaded_pixels(folder_of(tmp_path / "la", la)), grey / 255, atol=1e-7)
    rgb = np.stack([grey, grey[::-1], np.full_like(grey, 30)], axis=-1)
    rgba = Image.fromarray(np.concatenate([rgb, alpha[..., None]], axis=-1), mode="RGBA")
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    spec = folder_of(tmp_path / "rgba", rgba)
    np.testing.assert_allclose(loaded_pixels(spec, grey=True), expected, atol=1e-7)
    np.testing.assert_allclose(loaded_pixels(spec), rgb / 255, atol=1e-7)


def test_1bit_png_is_0_or_1(tmp_path):
    bits = np.array([[0, 1, 1, 0], [1, 0, 0, 1]], dtype=bool)
    image = Image.fromarray(bits)
    assert image.mode == "1"
    np.testing.assert_array_equal(loaded_pixels(folder_of(tmp_path, image)), bits.astype(np.float32))


# --------------------------------------------------------------------------------------------------
# 2. CSV encodings
# --------------------------------------------------------------------------------------------------

TABLE = np.arange(24, dtype=np.float64).reshape(8, 3) / 4


def csv_text(header: bool) -> str:
    lines = (["alpha,beta,gamma"] if header else []) + [",".join(repr(float(v)) for v in row) for row in TABLE]
    return "\n".join(lines) + "\n"


def table_values(path: Path) -> np.ndarray:
    split = load_dataset(f"table:{path}", heldout_fraction=0.25)
    return np.sort(torch.cat([split.train, split.heldout]).numpy(), axis=0)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le-bom", "utf-16-be-bom", "utf-32"])
@pytest.mark.parametrize("header", [False, True])
def test_csv_with_a_byte_order_mark_keeps_every_row(tmp_path, encoding, header):
    text = csv_text(header)
    if encoding.endswith("-bom"):  # explicit byte order + BOM
        codec = encoding[: -len("-bom")]
        data = "\ufeff".encode(codec) + text.encode(codec)
    else:
        data = text.encode(encoding)
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    np.testing.assert_array_equal(table_values(path), TABLE.astype(np.float32))


def test_latin1_header_is_a_one_line_error_naming_the_file_and_the_fix(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("température,pression,durée\n".encode("latin-1") + csv_text(False).encode())
    with raises("UTF-8") as info:
        load_dataset(f"table:{path}")
    message = one_line(info)
    assert str(path) in message and "iconv" in message


def test_utf16_without_bom_is_a_one_line_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(csv_text(True).encode("utf-16-le"))
    with raises("UTF-8") as info:
        load_dataset(f"table:{path}")
    assert str(path) in one_line(info)


# --------------------------------------------------------------------------------------------------
# 3. support over all rows
# --------------------------------------------------------------------------------------------------


class Counts:
    name, data_kind = "poisson", "count"


class Binary:
    name, data_kind = "bernoulli", "binary"


def test_support_check_finds_an_offending_row_far_past_the_first_256():
    x = torch.ones(1000, 3)
    check_data_support(x, Counts(), "training data")
    x[700, 2] = 0.5
    x[900, 0] = -1.0
    with raises("row 700") as info:
        check_data_support(x, Counts(), "training data", chunk_rows=64)
    message = one_line(info)
    assert "feature 2" in message and "0.5" in message and "poisson" in message and "training data" in message


def test_support_check_of_binary_data_with_and_without_binarizing():
    x = torch.zeros(600, 1, 2, 2)
    x[555, 0, 1, 0] = 0.25
    check_data_support(x, Binary(), "training data", binarize="dynamic")  # grey levels are fine to binarize
    with raises("row 555") as info:
        check_data_support(x, Binary(), "training data", binarize="none")
    assert "(0, 1, 0)" in one_line(info) and "--binarize" in str(info.value)
    x[599, 0, 0, 0] = 1.5
    with raises("row 599"):
        check_data_support(x, Binary(), "training data", binarize="threshold")


@pytest.mark.parametrize(
    "kind, bad",
    [("real", float("inf")), ("unit", float("nan")), ("unit", -0.1), ("8bit", 0.5), ("count", float("nan"))],
)
def test_support_check_by_data_kind(kind, bad):
    x = torch.full((300, 4), 1.0)
    check_data_support(x, kind)
    x[299, 3] = bad
    with raises("row 299"):
        check_data_support(x, kind, "held-out data", chunk_rows=100)


def test_support_check_uses_a_custom_likelihoods_own_check():
    class Positive:
        name = "positive"

        def check_support(self, x):
            if not bool((x > 0).all()):
                raise DataError("the positive likelihood needs positive values; shift the data")

    x = torch.ones(500, 2)
    check_data_support(x, Positive())
    x[321, 1] = 0.0
    with raises("row 321") as info:
        check_data_support(x, Positive(), "training data", chunk_rows=50)
    assert "shift the data" in one_line(info)


# --------------------------------------------------------------------------------------------------
# 4. the data fingerprint
# --------------------------------------------------------------------------------------------------


def flip_one_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def test_fingerprint_of_an_npz_and_a_table_follows_their_bytes(tmp_path):
    np.savez(tmp_path / "a.npz", x_train=np.zeros((4, 2, 2), np.uint8), x_test=np.ones((2, 2, 2), np.uint8))
    (tmp_path / "b.npz").write_bytes((tmp_path / "a.npz").read_bytes())
    a, b = data_fingerprint(f"npz:{tmp_path / 'a.npz'}"), data_fingerprint(f"npz:{tmp_path / 'b.npz'}")
    assert a["sha256"] == b["sha256"] and len(a["sha256"]) == 64
    assert a["bytes"] == (tmp_path / "a.npz").stat().st_size and a["files"] == 1
    flip_one_byte(tmp_path / "b.npz", 100)
    assert data_fingerprint(f"npz:{tmp_path / 'b.npz'}")["sha256"] != a["sha256"]
    csv = tmp_path / "t.csv"
    csv.write_text(csv_text(True))
    before = data_fingerprint(f"table:{csv}")
    assert before == data_fingerprint(f"table:{csv}")
    flip_one_byte(csv, len(csv_text(True)) - 2)
    assert data_fingerprint(f"table:{csv}")["sha256"] != before["sha256"]


def test_fingerprint_of_a_folder_covers_contents_names_and_classes(tmp_path):
    folder = tmp_path / "f"
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((3, 3), 40 * i, np.uint8)).save(folder / cls / f"{i}.png")
    (folder / "cat" / "notes.txt").write_text("not read, not hashed")
    spec = f"folder:{folder}"
    first = data_fingerprint(spec)
    assert first["files"] == 4 and first == data_fingerprint(spec)
    (folder / "cat" / "notes.txt").write_text("changed: still not read")
    assert data_fingerprint(spec) == first
    flip_one_byte(folder / "dog" / "1.png", 40)
    changed = data_fingerprint(spec)
    assert changed["sha256"] != first["sha256"]
    flip_one_byte(folder / "dog" / "1.png", 40)
    assert data_fingerprint(spec) == first
    (folder / "dog" / "1.png").rename(folder / "cat" / "9.png")  # same bytes, another class
    assert data_fingerprint(spec)["sha256"] != first["sha256"]


def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.asarray(array, dtype=np.uint8)
    path.write_bytes(
        struct.pack(">i", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    )


def write_mnist(root: Path, n_train: int = 6, n_test: int = 4) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train))
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test))
    return raw


def test_fingerprint_of_mnist_files_and_of_digits(tmp_path):
    raw = write_mnist(tmp_path)
    first = data_fingerprint("mnist", tmp_path)
    assert first["files"] == 4
    assert first["bytes"] == sum(p.stat().st_size for p in raw.iterdir())
    flip_one_byte(raw / "t10k-labels-idx1-ubyte", 9)
    assert data_fingerprint("mnist", tmp_path)["sha256"] != first["sha256"]
    digits = data_fingerprint("digits")
    assert digits == data_fingerprint("digits") and len(digits["sha256"]) == 64
    with raises("missing"):
        data_fingerprint("kmnist", tmp_path)


# --------------------------------------------------------------------------------------------------
# 5. bounded reading: refused from headers and directories, before allocating
# --------------------------------------------------------------------------------------------------


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header(shape, descr: str = "<f8", fortran: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buffer.getvalue()


@pytest.fixture
def quick():
    """Fail a test that takes more than 2 s: refusals must come from headers, not from reading data."""
    start = time.perf_counter()
    yield
    assert time.perf_counter() - start < 2.0


def test_npz_member_declaring_a_huge_shape_is_refused_from_its_header(tmp_path, quick):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", npy_header((10**7, 10**6)))
        archive.writestr("x_test.npy", npy_bytes(np.zeros((2, 4, 4), np.uint8)))
    assert path.stat().st_size < 1000
    with raises("'x_train'") as info:
        load_dataset(f"npz:{path}")
    message = one_line(info)
    assert str(path) in message and "more than the limit" in message and "--max-memory" in message


def test_table_npz_member_declaring_a_huge_shape_is_refused(tmp_path, quick):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", npy_header((10**9, 10**5), "<f4"))
    with raises("more than the limit") as info:
        load_dataset(f"table:{path}")
    assert str(path) in one_line(info)


def deflated_zeros_member(archive: zipfile.ZipFile, name: str, shape: tuple[int, ...]) -> None:
    """A member holding a valid float64 .npy of zeros, streamed so the test never holds it in memory."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as member:
        member.write(npy_header(shape))
        block = bytes(1 << 20)
        left = int(np.prod(shape)) * 8
        while left:
            member.write(block[: min(left, len(block))])
            left -= min(left, len(block))


def test_zip_bomb_member_is_refused_from_the_zip_directory(tmp_path, monkeypatch, quick):
    path = tmp_path / "zipbomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        deflated_zeros_member(archive, "x_train.npy", (60_000, 125))  # 60 MB of zeros
        archive.writestr("x_test.npy", npy_bytes(np.zeros((2, 125))))
    assert path.stat().st_size < 1_000_000
    monkeypatch.setenv("PPL_VAE_MAX_MEMORY", "50M")
    with raises("'x_train'") as info:
        load_dataset(f"npz:{path}")
    assert "more than the limit" in one_line(info)


def test_npz_whose_members_together_exceed_the_budget_is_refused(tmp_path, monkeypatch, quick):
    path = tmp_path / "two.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        deflated_zeros_member(archive, "x_train.npy", (30_000, 125))  # 30 MB each: 60 MB together
        deflated_zeros_member(archive, "x_test.npy", (30_000, 125))
    monkeypatch.setenv("PPL_VAE_MAX_MEMORY", "50M")
    with raises("more than the limit") as info:
        load_dataset(f"npz:{path}")
    assert str(path) in one_line(info)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def blank_png(path: Path, width: int, height: int, bit_depth: int = 8) -> None:
    """A valid all-black grey PNG, written row by row (a big image is a few kilobytes on disk)."""
    row = bytes(1 + (width * bit_depth + 7) // 8)
    deflate = zlib.compressobj(1)
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0))
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def test_100_megapixel_image_is_refused_before_decoding(tmp_path, quick):
    folder = tmp_path / "big"
    folder.mkdir()
    blank_png(folder / "huge.png", 10_000, 10_000, bit_depth=1)
    for i in range(3):
        blank_png(folder / f"small{i}.png", 4, 4)
    assert (folder / "huge.png").stat().st_size < 100_000
    with raises("huge.png") as info:
        load_dataset(f"folder:{folder}")
    assert "pixels" in one_line(info) and "decompression" in str(info.value)


def test_image_over_the_budget_is_refused_before_decoding(tmp_path, monkeypatch, quick):
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(3):
        blank_png(folder / f"im{i}.png", 3000, 3000)  # 9 Mpx, valid, under Pillow's limit
    monkeypatch.setenv("PPL_VAE_MAX_MEMORY", "50M")
    with raises("more than the limit") as info:
        load_dataset(f"folder:{folder}")
    assert "im0.png" in one_line(info)


def test_folder_whose_images_together_exceed_the_budget_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(12):
        blank_png(folder / f"im{i:02d}.png", 100, 100)  # 40 kB each as float32
    monkeypatch.setenv("PPL_VAE_MAX_MEMORY", "400K")
    with raises("12 images") as info:
        load_dataset(f"folder:{folder}")
    assert "more than the limit" in one_line(info)
    monkeypatch.setenv("PPL_VAE_MAX_MEMORY", "1M")
    assert load_dataset(f"folder:{folder}").data_shape == (1, 100, 100)


@pytest.mark.parametrize("size", [10**6, 10**5])
def test_absurd_image_size_is_refused_by_the_budget(tmp_path, quick, size):
    with raises("--image-size") as info:
        load_dataset("digits", image_size=size)
    assert "more than the limit" in one_line(info)
    np.savez(tmp_path / "a.npz", x_train=np.zeros((3, 4, 4), np.uint8), x_test=np.zeros((2, 4, 4), np.uint8))
    with raises("more than the limit"):
        load_dataset(f"npz:{tmp_path / 'a.npz'}", image_size=size)
    folder = tmp_path / "f"
    folder.mkdir()
    for i in range(3):
        blank_png(folder / f"{i}.png", 4, 4)
    with raises("more than the limit"):
        load_dataset(f"folder:{folder}", image_size=size)


def test_mnist_files_over_the_budget_are_refused_before_reading(tmp_path, monkeypatch, quick):
    write_mnist(tmp_path, n_train=200, n_test=10)  # 200 * 784 * 4 = 627 kB as float32
    monkeypatch.setenv("PPL_VAE_MAX_MEMORY", "300K")
    with raises("train-images-idx3-ubyte") as info:
        load_dataset("mnist", root=tmp_path)
    assert "more than the limit" in one_line(info)


def test_mnist_header_claiming_more_images_than_the_file_holds(tmp_path, quick):
    raw = write_mnist(tmp_path)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">iiii", 0x0803, 10**8, 28, 28) + path.read_bytes()[16:])
    with raises("train-images-idx3-ubyte") as info:
        load_dataset("mnist", root=tmp_path)
    assert "100000000" in one_line(info)


def test_column_names_of_a_csv_with_a_byte_order_mark(tmp_path):
    from ppl_vae.data.tables import column_names

    path = tmp_path / "t.csv"
    path.write_bytes(csv_text(True).encode("utf-8-sig"))
    assert column_names(str(path)) == ["alpha", "beta", "gamma"]
    path.write_bytes(csv_text(False).encode("utf-16"))
    assert column_names(str(path)) is None


def test_support_check_agrees_with_every_registered_likelihood():
    from ppl_vae.models.likelihoods import LIKELIHOODS

    probes = [
        torch.tensor([[0.0, 1.0, 1.0, 0.0]]),
        torch.tensor([[0.0, 0.2, 1.0, 0.4]]),
        torch.tensor([[0.0, 128 / 255, 1.0, 3 / 255]]),
        torch.tensor([[3.0, 0.0, 7.0, 1.0]]),
        torch.tensor([[-1.5, 2.0, 0.0, 1e6]]),
        torch.tensor([[0.0, float("nan"), 1.0, 0.0]]),
        torch.tensor([[0.0, float("inf"), 1.0, 0.0]]),
        torch.tensor([[1.0005, 0.0, 0.5, 0.5]]),
    ]
    for name, factory in LIKELIHOODS.items():
        likelihood = factory((4,))
        for probe in probes:
            x = torch.cat([torch.zeros(300, 4) if likelihood.data_kind != "real" else torch.ones(300, 4), probe])
            try:
                likelihood.check_support(x)
                accepted = True
            except DataError:
                accepted = False
            try:
                check_data_support(x, likelihood, "data", chunk_rows=128)
                ours = True
            except DataError as error:
                ours = False
                assert "row 300" in str(error), (name, probe, str(error))
            assert ours == accepted, (name, probe)  # the likelihood's own check decides
