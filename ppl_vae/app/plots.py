"""Figures. Every function takes tensors or numbers and returns a matplotlib ``Figure``; nothing here
computes model quantities. Figures are built without pyplot, so no display or backend is needed.

Conventions every figure keeps: every axis that shows a quantity has a label with its unit (ELBOs in
nats per example), counts and epochs have integer ticks, image figures are sized to their grid, and
:func:`save_figure` crops the saved file to its content (a thin even margin, no blank bands). Image
figures take ``(N, 1, H, W)`` grey or ``(N, 3, H, W)`` colour images (see :func:`as_images`): colour is drawn
as RGB, grey with ``gray_r`` (0 white, 1 black); in both, gaps are white and tiles have grey frames.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ppl_vae.app.checkpoint import atomic_write


def as_images(x: torch.Tensor) -> torch.Tensor | None:
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


#: Value of the grey lines between tiles (drawn with ``gray_r``: 0 is white, 1 black).
FRAME = 0.35


def background_value(channels: int) -> float:
    """The value that shows as white: 0 for one channel (drawn with ``gray_r``), 1 for RGB."""
    return 0.0 if channels == 1 else 1.0


def image_grid(x: torch.Tensor, ncol: int | None = None, pad: int = 1, spacers=()) -> torch.Tensor:
    """Tile ``(N, *data_shape)`` images into one ``(H', W', C)`` array for ``imshow``.

    Tile ``i`` is at row ``i // ncol``, column ``i % ncol``, its top-left pixel at
    ``(pad + row * (h + pad), pad + col * (w + pad))``. Each image gets a ``pad``-pixel grey frame.
    Indices in ``spacers`` (gaps in a layout: their images are ignored) and the cells after the last
    image are background (:func:`background_value`, white) with no frame, so gaps do not look like tiles.
    """
    images = as_images(x)
    if images is None:
        raise ValueError(f"cannot draw examples of shape {tuple(x.shape[1:])} as images")
    n, c, h, w = images.shape
    ncol = ncol or max(1, math.ceil(math.sqrt(n)))
    nrow = max(1, math.ceil(n / ncol))
    gaps = {int(i) % n for i in spacers} if n else set()
    grid = torch.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), background_value(c))
    for i in range(n):
        if i in gaps:
            continue
        r, col = divmod(i, ncol)
        top, left = r * (h + pad), col * (w + pad)
        grid[:, top : top + h + 2 * pad, left : left + w + 2 * pad] = FRAME  # the frame around this tile
        grid[:, top + pad : top + pad + h, left + pad : left + pad + w] = images[i]
    return grid.permute(1, 2, 0)


def show_grid(ax, grid: torch.Tensor, title: str | None = None, *, fontsize: int = 10) -> None:
    """Draw an :func:`image_grid` on ``ax``: one channel with ``gray_r`` over [0, 1] (0 is white), RGB as it
    is. With a ``title``, as a bare panel: the title above the grid and no axes."""
    if grid.shape[-1] == 1:
        ax.imshow(grid[..., 0].numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(grid.numpy(), interpolation="nearest")
    if title is not None:
        ax.set_title(title, fontsize=fontsize)
        ax.axis("off")


def grid_figure(
    panels: list[tuple[torch.Tensor, str]],
    panel_width: float,
    *,
    title_height: float | None = None,
    gap: float = 0.15,
    fontsize: int = 10,
) -> Figure:
    """One row of image grids, ``panels = [(grid, title), ...]`` with each ``grid`` from :func:`image_grid`,
    in a figure shaped to the tallest grid, so that no blank bands are left around them.

    Every panel is ``panel_width`` inches wide, with ``gap`` inches between and around the panels and
    ``title_height`` inches above them for the titles (default: room for the longest title's lines)."""
    lines = max(title.count("\n") + 1 for _, title in panels)
    title_height = 0.15 + 0.2 * lines if title_height is None else title_height
    aspect = max(grid.shape[0] / grid.shape[1] for grid, _ in panels)  # height / width of the tallest grid
    width = len(panels) * panel_width + (len(panels) + 1) * gap
    height = panel_width * aspect + title_height + 2 * gap
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=gap / width,
        right=1 - gap / width,
        bottom=gap / height,
        top=1 - (title_height + gap) / height,
        wspace=gap / panel_width,
    )
    for i, (grid, title) in enumerate(panels):
        show_grid(fig.add_subplot(1, len(panels), i + 1), grid, title, fontsize=fontsize)
    return fig


def samples_figure(
    samples: torch.Tensor, title: str = "samples from the prior: mean of p(x | z), z ~ p(z)", ncol: int | None = None
) -> Figure:
    """``ncol`` images per row (by default a square grid): one row per class for samples by class."""
    return grid_figure([(image_grid(samples, ncol), title)], panel_width=6)


def reconstructions_figure(inputs: torch.Tensor, reconstructions: torch.Tensor) -> Figure:
    """Inputs in the top row of each pair, reconstructions (decoded posterior means) below; a short last
    group is padded with blank (spacer) cells so that each reconstruction stays under its input."""
    n = inputs.shape[0]
    ncol = min(n, 16)
    rows, spacers, count = [], [], 0
    for first in range(0, n, ncol):
        for part in (inputs[first : first + ncol], reconstructions[first : first + ncol]):
            missing = ncol - part.shape[0]
            rows.append(torch.cat([part, part[:1].expand(missing, *part.shape[1:])]) if missing else part)
            spacers += range(count + part.shape[0], count + ncol)
            count += ncol
    title = "held-out inputs (odd rows) and reconstructions,\nmean of p(x | z = E[z | x]) (even rows)"
    return grid_figure([(image_grid(torch.cat(rows), ncol=ncol, spacers=spacers), title)], panel_width=8)


def elbo_figure(history: list[dict]) -> Figure:
    """Train and held-out ELBO per epoch (nats per example, higher is better)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    epochs = [r["epoch"] for r in history]
    marker = "o" if len(epochs) <= 20 else None  # a run of one epoch is a point, not a line
    ax.plot(epochs, [r["train_elbo"] for r in history], marker=marker, ms=3, label="train (running, during the epoch)")
    if history and "heldout_elbo" in history[0]:
        ax.plot(epochs, [r["heldout_elbo"] for r in history], marker=marker, ms=3, label="held-out (end of epoch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per example, higher is better)")
    if 0 < len(set(epochs)) <= 10:
        ax.set_xticks(sorted(set(epochs)))  # every epoch, and only whole epochs
        if len(set(epochs)) == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> None:
    """Write a figure (format from the suffix), atomically, cropped to its content with a thin margin."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight", pad_inches=0.06)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def khat_figure(khat, thresholds: dict[str, float]) -> Figure:
    """Pareto k-hat per observation (sorted) and its histogram, with the usual thresholds."""
    import numpy as np

    khat = np.asarray(khat, dtype=float)
    finite = khat[np.isfinite(khat)]
    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.plot(np.arange(len(khat)), khat, ".", ms=3, color="C0")
    ax1.set_xlabel("held-out observation (index)")
    ax1.set_ylabel("Pareto k-hat (dimensionless)")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_title("k-hat of q(z | x) as a proposal for p(z | x)", fontsize=10)
    ax2.hist(finite, bins=40, color="C0", alpha=0.8)
    ax2.set_xlabel("Pareto k-hat (dimensionless)")
    ax2.set_ylabel("observations")
    ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
    for (label, value), color in zip(thresholds.items(), ("C2", "C1", "C3")):
        for ax, line in ((ax1, ax1.axhline), (ax2, ax2.axvline)):
            line(value, color=color, ls="--", lw=1, label=label)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    return fig


def rank_histograms_figure(ranks, num_draws: int, num_bins: int, p_values=None) -> Figure:
    """SBC rank histograms, one panel per latent dimension, with the 99% band of a uniform histogram."""
    import numpy as np
    from scipy import stats

    ranks = np.asarray(ranks)
    n, d = ranks.shape
    nrow = math.ceil(d / 4)
    ncol = math.ceil(d / nrow)  # rows as full as possible: no empty band of missing panels
    fig = Figure(figsize=(3.3 * ncol, 2.7 * nrow + 0.5))
    edges = np.linspace(0, num_draws + 1, num_bins + 1)
    expected = n / num_bins
    low, high = stats.binom.ppf([0.005, 0.995], n, 1 / num_bins)
    for j in range(d):
        ax = fig.add_subplot(nrow, ncol, j + 1)
        ax.axhspan(low, high, color="0.85", lw=0, zorder=0)
        ax.hist(ranks[:, j], bins=edges, histtype="stepfilled", color="C0", alpha=0.55, zorder=1)
        for bound in (low, high):  # the band's edges drawn over the bars, so a bar below it shows
            ax.axhline(bound, color="0.35", lw=0.8, ls="--", zorder=3)
        ax.axhline(expected, color="0.35", lw=1, zorder=3)
        title = f"z[{j}]" + ("" if p_values is None else f"  p = {p_values[j]:.2g}")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([0, num_draws])
        ax.set_xlim(0, num_draws + 1)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"rank of the true value among the {num_draws} guide draws", fontsize=7)
        ax.set_ylabel("simulations", fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle(
        f"SBC rank histograms of the true z, {n} simulations (grey, dashed: 99% band if calibrated)", fontsize=10
    )
    fig.tight_layout()
    return fig


def pair_figure(nuts, guide, title: str, dims=None, max_dims: int = 4) -> Figure:
    """Corner plot of NUTS draws and guide draws of one observation's z: ``(S, d)`` arrays; ``dims``
    picks the latent dimensions to show (default: the first ``max_dims``)."""
    import numpy as np

    dims = list(range(min(np.shape(nuts)[-1], max_dims))) if dims is None else list(dims)[:max_dims]
    nuts, guide = np.asarray(nuts)[:, dims], np.asarray(guide)[:, dims]
    d = len(dims)
    fig = Figure(figsize=(2.2 * d + 0.4, 2.2 * d + 0.6))
    for i in range(d):
        for j in range(i + 1):
            ax = fig.add_subplot(d, d, i * d + j + 1)
            if i == j:
                bins = np.histogram_bin_edges(np.concatenate([nuts[:, i], guide[:, i]]), bins=30)
                ax.hist(nuts[:, i], bins=bins, density=True, alpha=0.6, color="C0", label="NUTS")
                ax.hist(guide[:, i], bins=bins, density=True, alpha=0.6, color="C1", label="guide q(z|x)")
            else:
                ax.plot(nuts[:, j], nuts[:, i], ".", ms=1.5, alpha=0.3, color="C0")
                ax.plot(guide[:, j], guide[:, i], ".", ms=1.5, alpha=0.3, color="C1")
            if i == d - 1:
                ax.set_xlabel(f"z[{dims[j]}]", fontsize=8)
            if i == j:
                ax.set_ylabel("density", fontsize=7)
            elif j == 0:
                ax.set_ylabel(f"z[{dims[i]}]", fontsize=8)
            ax.tick_params(labelsize=6)
    fig.axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def comparison_figure(records: list, num_examples: int) -> Figure:
    """A forest of each model's difference to the best, per example in nats: the point, ±2 paired s.e.
    (thin bar) and ±2 Monte Carlo s.e. (thick bar); the best model sits at 0. ``records``: those of a
    comparison (:class:`ppl_vae.diagnostics.comparison.Comparison`), whose errors are totals over
    ``num_examples`` examples."""
    import numpy as np

    n = max(1, len(records))
    fig = Figure(figsize=(7.5, 0.9 + 0.45 * n))
    ax = fig.add_subplot(1, 1, 1)
    examples = num_examples
    y = np.arange(n)[::-1]
    for yi, r in zip(y, records):
        diff = -r["elpd_diff_per_example"]  # below 0: worse than the best
        ax.errorbar(diff, yi, xerr=2 * r["dse"] / examples, fmt="o", color="C0", ms=4, capsize=3, lw=1)
        ax.errorbar(diff, yi, xerr=2 * r["dse_mc"] / examples, fmt="none", color="C1", lw=4, alpha=0.8)
    ax.axvline(0, color="0.5", lw=1, ls="--")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['name']}{' (collapsed)' if r.get('collapsed') else ''}" for r in records], fontsize=9)
    ax.set_xlabel("elpd difference to the best model (nats per held-out example; higher is better)")
    ax.set_title("paired differences: ±2 s.e. over examples (thin), ±2 Monte Carlo s.e. (thick)", fontsize=10)
    fig.tight_layout()
    return fig
