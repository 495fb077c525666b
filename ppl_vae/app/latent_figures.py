"""Figures of the latent space (interpolations, traversals, the decoded manifold, 2-D scatter), built as
matplotlib Figure objects without pyplot from the results of :mod:`ppl_vae.diagnostics.latent_space`.
Decoded images with 3 channels are drawn in colour, with 1 in grey (:func:`ppl_vae.app.plots.show_grid`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

from ppl_vae.app.plots import as_images, grid_figure, image_grid, show_grid
from ppl_vae.diagnostics.latent_space import symmetric_values
from ppl_vae.errors import ConfigError


def _cell_centres(count: int, size: int, pad: int = 1) -> list[float]:
    """Pixel coordinates of the centres of ``count`` cells of ``size`` pixels in an ``image_grid``."""
    return [pad + i * (size + pad) + (size - 1) / 2 for i in range(count)]


def _require_images(x: torch.Tensor) -> torch.Tensor:
    images = as_images(x)
    if images is None:
        raise ConfigError(f"examples of shape {tuple(x.shape[1:])} cannot be drawn as images")
    return images


def interpolation_figure(paths: torch.Tensor, inputs: torch.Tensor | None = None, method: str = "linear") -> Figure:
    """Interpolation strips, one row per pair.

    Args:
        paths: ``(P, S, *data_shape)`` decoded paths (:func:`interpolate_inputs` for each pair).
        inputs: optional ``(P, 2, *data_shape)``, the two inputs of each pair, drawn at the ends of
            their row (left of and right of the path, after a gap column).
    """
    p = paths.shape[0]
    _require_images(paths[0, :1])
    rows = []
    blank = torch.zeros_like(paths[0, :1])
    for i in range(p):
        row = [paths[i]]
        if inputs is not None:
            row = [inputs[i, :1], blank, paths[i], blank, inputs[i, 1:]]
        rows.append(torch.cat(row))
    ncol = rows[0].shape[0]
    # the gap columns are spacers: background, no tile frames
    spacers = [r * ncol + c for r in range(p) for c in (1, ncol - 2)] if inputs is not None else []
    grid = image_grid(torch.cat(rows), ncol=ncol, spacers=spacers)
    title = f"{method} interpolation between posterior means E[z | x],\ndecoded (mean of p(x | z))"
    if inputs is not None:
        title += "; inputs at both ends"
    return grid_figure([(grid, title)], panel_width=min(0.2 + 0.5 * ncol, 15.8), gap=0.1, fontsize=9)


def traversal_figure(images: torch.Tensor, dims: Sequence[int], values) -> Figure:
    """Latent traversals: row ``i`` decodes latent dimension ``dims[i]`` set to each of ``values``.

    Args:
        images: ``(len(dims), len(values), *data_shape)`` (:func:`traverse` per dimension).
    """
    rows, cols = images.shape[:2]
    values = [float(v) for v in torch.as_tensor(values).reshape(-1)]
    flat = images.reshape(rows * cols, *images.shape[2:])
    pictures = _require_images(flat[:1])
    h, w = pictures.shape[-2:]
    fig = Figure(figsize=(min(1.2 + 0.6 * cols, 16), 0.8 + 0.6 * rows))
    ax = fig.add_subplot(1, 1, 1)
    show_grid(ax, image_grid(flat, ncol=cols))
    ax.set_yticks(_cell_centres(rows, h), [f"z[{d}]" for d in dims])
    ax.set_xticks(_cell_centres(cols, w), [f"{v:.3g}" for v in values], fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("value of the latent coordinate (the others held fixed)")
    ax.set_title("latent traversals: mean of p(x | z)", fontsize=10)
    fig.tight_layout()
    return fig


def manifold_figure(
    images: torch.Tensor, num_per_side: int, extent: float, dims: Sequence[int] = (0, 1), why: str | None = None
) -> Figure:
    """The decoded latent grid of :func:`latent_grid`, ``images (n * n, *data_shape)``, with axes in
    latent units: ``z[dims[0]]`` to the right, ``z[dims[1]]`` upwards. The title names the two dimensions
    and, with ``why``, why they were chosen (e.g. the ``reason`` of :func:`informative_dims`)."""
    n = num_per_side
    pictures = _require_images(images[:1])
    h, w = pictures.shape[-2:]
    values = symmetric_values(extent, n).tolist()
    ticks = sorted({0, n // 2, n - 1}) if n % 2 else [0, n - 1]  # the middle cell is z = 0 only for odd n
    fig = Figure(figsize=(7, 7.3))
    ax = fig.add_subplot(1, 1, 1)
    show_grid(ax, image_grid(images, ncol=n))
    xc, yc = _cell_centres(n, w), _cell_centres(n, h)
    ax.set_xticks([xc[i] for i in ticks], [f"{values[i]:.3g}" for i in ticks])
    ax.set_yticks([yc[i] for i in ticks], [f"{values[n - 1 - i]:.3g}" for i in ticks])
    ax.set_xlabel(f"z[{dims[0]}]")
    ax.set_ylabel(f"z[{dims[1]}]")
    title = f"latent manifold over z[{dims[0]}], z[{dims[1]}]: mean of p(x | z) on a grid (other coordinates fixed)"
    ax.set_title(title if why is None else f"{title}\n{why}", fontsize=9)
    fig.tight_layout()
    return fig


def scatter_figure(
    points: torch.Tensor, labels: torch.Tensor | None = None, *, latent_dim: int = 2, method: str = "pca"
) -> Figure:
    """Scatter of 2-D points ``(N, 2)`` (posterior means, projected when ``latent_dim > 2``),
    coloured by integer ``labels (N,)``: a legend for up to 20 classes, a colour bar beyond."""
    points = torch.as_tensor(points).detach().cpu().double()
    fig = Figure(figsize=(6.4, 5.6))
    ax = fig.add_subplot(1, 1, 1)
    if labels is None:
        ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=8, alpha=0.7)
    else:
        labels = torch.as_tensor(labels).detach().cpu().reshape(-1)
        classes = torch.unique(labels).tolist()
        if len(classes) <= 20:
            from matplotlib import colormaps

            cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
            for i, c in enumerate(classes):
                mask = (labels == c).numpy()
                ax.scatter(
                    points[mask, 0].numpy(), points[mask, 1].numpy(), s=8, alpha=0.7, color=cmap(i), label=str(c)
                )
            ax.legend(title="label", fontsize=7, markerscale=2, loc="best", ncol=2 if len(classes) > 10 else 1)
        else:
            sc = ax.scatter(
                points[:, 0].numpy(), points[:, 1].numpy(), s=8, alpha=0.7, c=labels.numpy(), cmap="viridis"
            )
            fig.colorbar(sc, ax=ax, label="label")
    if latent_dim <= 2:
        ax.set_xlabel("E[z_0 | x]")
        ax.set_ylabel("E[z_1 | x]" if latent_dim == 2 else "(none: latent_dim is 1)")
        title = "held-out posterior means"
    elif method == "pca":
        ax.set_xlabel("principal component 1")
        ax.set_ylabel("principal component 2")
        title = f"held-out posterior means ({latent_dim}-D), PCA"
    else:
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        title = f"held-out posterior means ({latent_dim}-D), t-SNE"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
