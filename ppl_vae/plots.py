"""Figures. Every function takes tensors or numbers and returns a matplotlib ``Figure``; nothing here
computes model quantities. Figures are built without pyplot, so no display or backend is needed."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from matplotlib.figure import Figure

from ppl_vae.checkpoint import atomic_write


def _as_images(x: torch.Tensor) -> torch.Tensor | None:
    """``(N, *data_shape)`` -> ``(N, C, H, W)`` in [0, 1], or None when the data are not images."""
    x = x.detach().float().cpu()
    if x.dim() == 4 and x.shape[1] in (1, 3):
        return x.clamp(0, 1)
    if x.dim() == 3:
        return x.unsqueeze(1).clamp(0, 1)
    if x.dim() == 2:
        side = math.isqrt(x.shape[1])
        if side * side == x.shape[1]:
            return x.reshape(-1, 1, side, side).clamp(0, 1)
    return None


def image_grid(x: torch.Tensor, ncol: int | None = None, pad: int = 1) -> torch.Tensor:
    """Tile ``(N, *data_shape)`` images into one ``(H', W', C)`` array for ``imshow``."""
    images = _as_images(x)
    if images is None:
        raise ValueError(f"cannot draw examples of shape {tuple(x.shape[1:])} as images")
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = torch.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), 0.35)  # grey frame
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
    return grid.permute(1, 2, 0)


def _show(ax, grid: torch.Tensor, title: str) -> None:
    if grid.shape[-1] == 1:
        ax.imshow(grid[..., 0].numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(grid.numpy(), interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def samples_figure(samples: torch.Tensor, title: str = "samples from the prior: mean of p(x | z), z ~ p(z)") -> Figure:
    fig = Figure(figsize=(6, 6.4))
    _show(fig.add_subplot(1, 1, 1), image_grid(samples), title)
    fig.tight_layout()
    return fig


def reconstructions_figure(inputs: torch.Tensor, reconstructions: torch.Tensor) -> Figure:
    """Inputs in the top row of each pair, reconstructions (decoded posterior means) below."""
    n = inputs.shape[0]
    ncol = min(n, 16)
    pairs = []
    for first in range(0, n, ncol):
        pairs += [inputs[first:first + ncol], reconstructions[first:first + ncol]]
    fig = Figure(figsize=(8, 1.1 * len(pairs) + 0.6))
    _show(fig.add_subplot(1, 1, 1), image_grid(torch.cat(pairs), ncol=ncol),
          "held-out inputs (odd rows) and reconstructions, mean of p(x | z = E[z | x]) (even rows)")
    fig.tight_layout()
    return fig


def elbo_figure(history: list[dict]) -> Figure:
    """Train and held-out ELBO per epoch (nats per example, higher is better)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_elbo"] for r in history], label="train (running, during the epoch)")
    if history and "heldout_elbo" in history[0]:
        ax.plot(epochs, [r["heldout_elbo"] for r in history], label="held-out (end of epoch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per example (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> None:
    """Write a figure (format from the suffix), atomically."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
