"""Colour is kept: image folders and npz archives load RGB as (N, 3, H, W), grey as (N, 1, H, W), and
``grey=True`` converts colour by ITU-R 601-2 luma (Pillow's "L"). Every file is written here in its real
format (PNG/JPEG/TIFF by Pillow, npz by numpy); nothing uses the network."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ppl_vae.data import check_data_support, load_dataset
from ppl_vae.data.colour import luma, luma_8bit
from ppl_vae.errors import DataError


def raises(text: str | None = None):
    return pytest.raises(DataError, match=None if text is None else re.escape(text))


def one_line(info) -> str:
    message = str(info.value)
    assert message and "\n" not in message and "; " in message, f"not one line with a fix: {message!r}"
    return message


def all_images(split) -> torch.Tensor:
    return torch.cat([split.train, split.heldout])


def as_multiset(x: torch.Tensor) -> list[bytes]:
    """The examples of ``x`` as a sorted list of their bytes: a split shuffles, the multiset stays."""
    return sorted(image.numpy().tobytes() for image in x)


def expected_multiset(images_chw: list[np.ndarray]) -> list[bytes]:
    """What uint8 ``(C, H, W)`` images load as (float32 k/255), as :func:`as_multiset` gives it."""
    return as_multiset(torch.stack([torch.from_numpy(np.array(image)).float() / 255 for image in images_chw]))


def rgb_images(n: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """``n`` random uint8 RGB images ``(H, W, 3)``, with pure 0 and 255 somewhere in each."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(n)]
    for image in images:
        image[0, 0], image[0, 1] = (0, 0, 0), (255, 255, 255)
    return images


def write_folder(folder: Path, images: list[np.ndarray], suffix: str = ".png") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"im{i:02d}{suffix}")
    return f"folder:{folder}"


def pillow_grey(image_hwc: np.ndarray) -> np.ndarray:
    """Pillow's own grey levels (mode "L") of an RGB image, ``(1, H, W)`` uint8."""
    return np.asarray(Image.fromarray(image_hwc).convert("L"))[None]


# --------------------------------------------------------------------------------------------------
# the luma helpers
# --------------------------------------------------------------------------------------------------


def test_luma_8bit_is_pillows_L_bit_for_bit():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    pixels[0, :8] = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (1, 1, 1), (254,) * 3, (9,) * 3]
    np.testing.assert_array_equal(luma_8bit(pixels, axis=-1)[..., 0], np.asarray(Image.fromarray(pixels).convert("L")))
    grey = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(luma_8bit(np.stack([grey] * 3), axis=0)[0], grey)  # grey stays itself
    chw = pixels.transpose(2, 0, 1)[None]
    unrounded = luma(chw.astype(np.float32) / 255, axis=1)
    assert unrounded.shape == (1, 1, 256, 256) and unrounded.dtype == np.float32
    assert np.abs(unrounded * 255 - luma_8bit(chw, axis=1)).max() <= 0.5 + 1e-3  # the same weights


# --------------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------------


def test_rgb_folder_loads_in_colour_with_the_written_pixels(tmp_path):
    images = rgb_images(6)
    split = load_dataset(write_folder(tmp_path / "rgb", images), heldout_fraction=1 / 3)
    assert split.data_shape == (3, 32, 32)
    assert (len(split.train), len(split.heldout)) == (4, 2)
    assert as_multiset(all_images(split)) == expected_multiset([image.transpose(2, 0, 1) for image in images])
    check_data_support(all_images(split), "8bit", "colour images")  # still k/255: 8-bit likelihoods apply


def test_grey_true_gives_one_channel_of_luma(tmp_path):
    images = rgb_images(6, seed=2)
    split = load_dataset(write_folder(tmp_path / "rgb", images), heldout_fraction=1 / 3, grey=True)
    assert split.data_shape == (1, 32, 32)
    assert as_multiset(all_images(split)) == expected_multiset([pillow_grey(image) for image in images])
    check_data_support(all_images(split), "8bit", "grey images")


def test_grey_folder_stays_one_channel_and_grey_true_changes_nothing(tmp_path):
    rng = np.random.default_rng(3)
    spec = write_folder(tmp_path / "g", [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(4)])
    split, again = load_dataset(spec), load_dataset(spec, grey=True)
    assert split.data_shape == (1, 8, 8)
    assert torch.equal(split.train, again.train) and torch.equal(split.heldout, again.heldout)


def test_mixed_grey_and_colour_folder_loads_as_colour(tmp_path):
    """Grey images in a colour folder are repeated in R, G and B; with grey=True all are one channel."""
    rng = np.random.default_rng(4)
    colour = rgb_images(3, size=8, seed=4)
    grey = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(3)]
    spec = write_folder(tmp_path / "mixed", [*colour, *grey])
    split = load_dataset(spec, heldout_fraction=1 / 3)
    assert split.data_shape == (3, 8, 8)
    expected = [image.transpose(2, 0, 1) for image in colour] + [np.repeat(g[None], 3, axis=0) for g in grey]
    assert as_multiset(all_images(split)) == expected_multiset(expected)
    as_grey = load_dataset(spec, heldout_fraction=1 / 3, grey=True)
    assert as_grey.data_shape == (1, 8, 8)
    assert as_multiset(all_images(as_grey)) == expected_multiset(
        [pillow_grey(c) for c in colour] + [g[None] for g in grey]
    )


def test_class_folders_in_colour_keep_their_labels(tmp_path):
    for label, name in enumerate(("cat", "dog")):
        images = rgb_images(3, size=8, seed=10 + label)
        for image in images:
            image[4, 4] = (200 * label, 0, 0)  # the label in channel R of one pixel
        write_folder(tmp_path / name, images)
    split = load_dataset(f"folder:{tmp_path}", heldout_fraction=1 / 3)
    assert split.data_shape == (3, 8, 8)
    for x, y in ((split.train, split.train_labels), (split.heldout, split.heldout_labels)):
        assert (x[:, 0, 4, 4] * 255).round().long().tolist() == (200 * y).tolist()


def test_rgba_drops_alpha_and_a_palette_goes_to_its_colours(tmp_path):
    rgb = rgb_images(1, size=6, seed=5)[0]
    alpha = np.random.default_rng(5).integers(0, 256, (6, 6, 1), dtype=np.uint8)
    rgba = Image.fromarray(np.concatenate([rgb, alpha], axis=-1), mode="RGBA")
    palette = Image.fromarray(rgb).quantize(colors=16)  # mode P: indices into 16 colours
    through_palette = np.asarray(palette.convert("RGB")).transpose(2, 0, 1)
    for name, image, expected in (("rgba", rgba, rgb.transpose(2, 0, 1)), ("p", palette, through_palette)):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(3):
            image.save(folder / f"{i}.png")
        x = all_images(load_dataset(f"folder:{folder}"))
        assert x.shape == (3, 3, 6, 6), name
        assert as_multiset(x) == expected_multiset([expected] * 3), name


def test_16bit_grey_beside_colour_is_scaled_by_its_depth(tmp_path):
    folder = tmp_path / "deep"
    write_folder(folder, rgb_images(2, size=4, seed=6))
    deep = np.array([[0, 257, 65535, 1000]] * 4, dtype=np.uint16)
    Image.fromarray(deep).save(folder / "deep.png")
    x = all_images(load_dataset(f"folder:{folder}"))
    assert x.shape == (3, 3, 4, 4)
    wanted = torch.from_numpy(deep.astype(np.float32) / 65535)
    assert any(torch.allclose(image, wanted.expand(3, 4, 4), atol=1e-7) for image in x)


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    folder = tmp_path / "cmyk"
    folder.mkdir()
    for i in range(3):
        Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(folder / f"{i}.jpg", quality=100)  # magenta + yellow ink
    x = all_images(load_dataset(f"folder:{folder}"))
    assert x.shape == (3, 3, 4, 4)
    red = torch.tensor([1.0, 0.0, 0.0])[:, None, None].expand(3, 4, 4)
    assert torch.allclose(x, red.expand_as(x), atol=3 / 255)


def test_colour_folder_resizes_every_channel(tmp_path):
    images = [np.zeros((8, 8, 3), np.uint8) for _ in range(3)]
    for image in images:
        image[..., 1] = 255  # pure green
    split = load_dataset(write_folder(tmp_path / "g", images), image_size=4)
    x = all_images(split)
    assert x.shape == (3, 3, 4, 4)
    green = torch.tensor([0.0, 1.0, 0.0])[:, None, None]
    assert torch.allclose(x, green.expand_as(x), atol=1e-6)


def test_colour_counts_three_channels_in_the_memory_budget(tmp_path, monkeypatch):
    """12 RGB images of 100x100 need 1.4 MB as float32 colour, 0.5 MB as grey: a 1M budget refuses the
    first, naming the count and channels, before any image is decoded, and accepts the second."""
    spec = write_folder(tmp_path / "many", rgb_images(12, size=100, seed=7))
    monkeypatch.setenv("PPL_VAE_MAX_MEMORY", "1M")
    with raises("more than the limit") as info:
        load_dataset(spec)
    assert "12 images" in one_line(info) and "3 channel(s)" in str(info.value)
    assert load_dataset(spec, grey=True).data_shape == (1, 100, 100)


# --------------------------------------------------------------------------------------------------
# npz archives
# --------------------------------------------------------------------------------------------------


def test_npz_channel_last_rgb_keeps_colour_and_grey_matches_a_folder(tmp_path):
    images = rgb_images(6, size=8, seed=8)
    x = np.stack(images)  # (N, H, W, 3) uint8, keras' layout
    np.savez(tmp_path / "c.npz", x_train=x[:4], x_test=x[4:])
    split = load_dataset(f"npz:{tmp_path / 'c.npz'}")
    assert split.data_shape == (3, 8, 8)
    assert torch.equal(split.train, torch.from_numpy(x[:4].transpose(0, 3, 1, 2)).float() / 255)
    grey = load_dataset(f"npz:{tmp_path / 'c.npz'}", grey=True)
    assert grey.data_shape == (1, 8, 8)
    assert torch.equal(grey.train, torch.from_numpy(np.stack([pillow_grey(i) for i in images[:4]])).float() / 255)
    # the same pixels from a folder of PNGs give the same grey levels, bit for bit
    from_folder = load_dataset(write_folder(tmp_path / "f", images), grey=True)
    assert as_multiset(all_images(from_folder)) == as_multiset(torch.cat([grey.train, grey.heldout]))


def test_npz_channel_first_float_rgb_and_grey(tmp_path):
    rng = np.random.default_rng(9)
    x = rng.uniform(size=(5, 3, 6, 6))  # (N, C, H, W) float64 in [0, 1]
    np.savez(tmp_path / "f.npz", x_train=x[:3], x_test=x[3:])
    split = load_dataset(f"npz:{tmp_path / 'f.npz'}")
    assert split.data_shape == (3, 6, 6)
    torch.testing.assert_close(split.train, torch.from_numpy(x[:3]).float())
    grey = load_dataset(f"npz:{tmp_path / 'f.npz'}", grey=True)
    expected = 0.299 * x[:3, 0] + 0.587 * x[:3, 1] + 0.114 * x[:3, 2]  # unrounded for float data
    torch.testing.assert_close(grey.train[:, 0], torch.from_numpy(expected).float(), atol=1e-4, rtol=0)


def test_npz_grey_images_are_unchanged_by_grey_and_flat_vectors_are_refused(tmp_path):
    x = np.random.default_rng(10).integers(0, 256, (5, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", x_train=x[:3], x_test=x[3:])
    plain, grey = load_dataset(f"npz:{tmp_path / 'g.npz'}"), load_dataset(f"npz:{tmp_path / 'g.npz'}", grey=True)
    assert torch.equal(plain.train, grey.train) and grey.data_shape == (1, 4, 4)
    np.savez(tmp_path / "flat.npz", x_train=np.zeros((3, 5), np.uint8), x_test=np.zeros((2, 5), np.uint8))
    with raises("grey only applies to images") as info:
        load_dataset(f"npz:{tmp_path / 'flat.npz'}", grey=True)
    assert "flat.npz" in one_line(info)


def test_npz_out_of_range_values_are_refused_before_any_grey_conversion(tmp_path):
    x = np.zeros((4, 4, 4, 3), dtype=np.int16)
    x[1, 2, 2, 0] = -40  # luma would hide the negative red under the green and blue
    x[1, 2, 2, 1:] = 200
    np.savez(tmp_path / "bad.npz", x_train=x, x_test=x[:1])
    with raises("values from -40 to 200") as info:
        load_dataset(f"npz:{tmp_path / 'bad.npz'}", grey=True)
    one_line(info)


# --------------------------------------------------------------------------------------------------
# the grey argument itself
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_grey_must_be_a_bool(value):
    with raises("grey must be True or False") as info:
        load_dataset("digits", grey=value)
    one_line(info)


def test_grey_is_refused_for_tables_and_a_no_op_for_digits(tmp_path, digits):
    (tmp_path / "t.csv").write_text("1,2\n3,4\n5,6\n")
    with raises("--grey applies to images only") as info:
        load_dataset(f"table:{tmp_path / 't.csv'}", grey=True)
    one_line(info)
    grey = load_dataset("digits", grey=True)
    assert torch.equal(grey.train, digits.train) and grey.data_shape == (1, 8, 8)
