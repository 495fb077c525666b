"""Colour to grey, shared by the image sources: ITU-R 601-2 luma with the weights Pillow's mode "L" uses.

Two forms: :func:`luma_8bit` for 8-bit samples, bit for bit what ``Image.convert("L")`` gives (so a folder
of PNGs and an npz or CIFAR file of the same pixels load to the same grey levels, still on the 8-bit grid
k/255); :func:`luma` for float values in [0, 1], without rounding.
"""

from __future__ import annotations

import numpy as np

#: ITU-R 601-2 weights of R, G and B in 16-bit fixed point (they sum to 65536), as in Pillow.
LUMA_WEIGHTS_16 = (19595, 38470, 7471)

#: The same weights as floats (about 0.299, 0.587, 0.114).
LUMA_WEIGHTS = tuple(w / 65536 for w in LUMA_WEIGHTS_16)


def luma_8bit(rgb: np.ndarray, axis: int = 1) -> np.ndarray:
    """Grey levels of 8-bit RGB samples: ``(r*19595 + g*38470 + b*7471 + 32768) >> 16``, uint8.

    Args:
        rgb: integers in 0..255 with size 3 along ``axis`` (R, G, B in that order), e.g. ``(N, 3, H, W)``.
        axis: the channel axis.

    Returns:
        uint8 with size 1 along ``axis`` (kept, so ``(N, 3, H, W)`` gives ``(N, 1, H, W)``).
    """
    if rgb.shape[axis] != 3:
        raise ValueError(f"luma_8bit needs 3 channels along axis {axis}, got shape {rgb.shape}")
    total = np.full(np.delete(rgb.shape, axis), 32768, dtype=np.uint32)
    for channel, weight in enumerate(LUMA_WEIGHTS_16):
        total += np.take(rgb, channel, axis=axis).astype(np.uint32) * np.uint32(weight)
    total >>= 16
    return np.expand_dims(total.astype(np.uint8), axis)


def luma(rgb: np.ndarray, axis: int = 1) -> np.ndarray:
    """Grey values of float RGB values in [0, 1] (same weights, no rounding), float32 with size 1 along
    ``axis``."""
    if rgb.shape[axis] != 3:
        raise ValueError(f"luma needs 3 channels along axis {axis}, got shape {rgb.shape}")
    total = np.zeros(np.delete(rgb.shape, axis), dtype=np.float32)
    for channel, weight in enumerate(LUMA_WEIGHTS):
        total += np.take(rgb, channel, axis=axis).astype(np.float32) * np.float32(weight)
    np.clip(total, 0.0, 1.0, out=total)
    return np.expand_dims(total, axis)
