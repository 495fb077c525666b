"""Latent-space figures of a trained run folder (``ppl-vae interpolate | traverse | latent-map``).

Each function checks its outputs before any work (by default PNG files in ``RUN_DIR/figures/``), loads
the run, writes its figures and returns what it drew as a :class:`~ppl_vae.results.Result`. Writing into
the run folder, it holds the folder's lock from loading to the last write
(:func:`ppl_vae.app.folders.writing_into`), so it never runs beside ``train --resume`` or ``diagnose``.
Bad input raises :class:`ppl_vae.errors.ConfigError` with a one-line message; runs trained on tables are
refused (their examples are not images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ppl_vae.app import latent_figures, plots
from ppl_vae.app.folders import check_figure_dir, check_output_file, writing_into
from ppl_vae.diagnostics import latent_space as latent
from ppl_vae.errors import ConfigError
from ppl_vae.results import Result


@dataclass(frozen=True)
class Interpolation(Result):
    """What :func:`interpolate_run` wrote: ``pairs`` rows of ``steps`` decoded points by ``method``."""

    path: Path
    pairs: int
    steps: int
    method: str


@dataclass(frozen=True)
class Traversal(Result):
    """What :func:`traverse_run` wrote: one row per latent dimension of ``dims`` over [-extent, extent]."""

    path: Path
    dims: list[int]
    extent: float


@dataclass(frozen=True)
class LatentMap(Result):
    """What :func:`latent_map_run` wrote: the scatter of ``num_examples`` held-out posterior means and, for a
    latent space of at least 2 dimensions, the decoded ``grid`` x ``grid`` manifold over ``dims`` in
    [-extent, extent], chosen for the reason ``why`` (``manifold``, ``dims`` and ``why`` are None otherwise)."""

    scatter: Path
    num_examples: int
    manifold: Path | None
    dims: list[int] | None
    why: str | None
    grid: int
    extent: float

    @property
    def paths(self) -> list[Path]:
        """The files written, the scatter first."""
        return [self.scatter] + ([self.manifold] if self.manifold is not None else [])


def load_image_run(run_dir: str | Path):
    """The trained VAE, its held-out inputs as the model sees them (``(N, *data_shape)``) and the
    held-out labels (or None); refuses runs whose data are not images."""
    from ppl_vae.app.run import load_run, model_input, read_config
    from ppl_vae.app.structured import require_decoder_of_z

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if str(config.dataset).startswith("table:"):
        raise ConfigError(
            f"run {run_dir} was trained on a table of numbers ({config.dataset}), not images; "
            "latent figures need a run trained on image data"
        )
    run = load_run(run_dir)
    vae, data = run.vae, run.data
    require_decoder_of_z(vae, "interpolate, traverse and latent-map")
    if data.kind == "table" or plots.as_images(data.heldout[:1]) is None:
        raise ConfigError(
            f"run {run_dir} holds examples of shape {tuple(data.data_shape)}, not images; latent "
            "figures need a run trained on image data"
        )
    heldout = model_input(data.heldout, vae, run.config)
    return vae, heldout, data.heldout_labels


def run_inputs(run_dir: str | Path) -> list[Path]:
    """The files of a run folder that latent figures read (which no output may replace)."""
    return [Path(run_dir) / "checkpoint.pt", Path(run_dir) / "config.json"]


def interpolate_run(
    run_dir: str | Path,
    *,
    pairs: int = 8,
    steps: int = 10,
    method: str = "linear",
    seed: int = 0,
    out: str | Path | None = None,
) -> Interpolation:
    """Decoded paths between the posterior means of ``pairs`` random pairs of held-out examples (drawn
    with ``seed``), ``steps`` points each, one row per pair; written to ``out`` (default:
    ``RUN_DIR/figures/interpolate-<method>-<seed>.png``)."""
    out = Path(out) if out is not None else Path(run_dir) / "figures" / f"interpolate-{method}-{seed}.png"
    check_output_file(out, inputs=run_inputs(run_dir), suffixes=(".png",))
    with writing_into(run_dir, [out], "interpolate"):
        vae, heldout, _ = load_image_run(run_dir)
        n = heldout.shape[0]
        if 2 * pairs > n:
            raise ConfigError(
                f"--pairs {pairs} needs {2 * pairs} held-out examples but the run has {n}; "
                f"use --pairs {n // 2} or fewer"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: 2 * pairs]
        chosen = order.reshape(pairs, 2)
        paths = torch.stack(
            [latent.interpolate_inputs(vae, heldout[i], heldout[j], steps, method) for i, j in chosen.tolist()]
        )
        inputs = heldout[chosen]  # (P, 2, *data_shape)
        plots.save_figure(latent_figures.interpolation_figure(paths.cpu(), inputs.cpu(), method), out)
    return Interpolation(path=out, pairs=pairs, steps=steps, method=method)


def _check_dims(dims, latent_dim: int) -> None:
    for dim in dims:
        if not 0 <= dim < latent_dim:
            raise ConfigError(
                f"--dims {dim} is out of range; this run's latent space has dimensions 0 to {latent_dim - 1}"
            )


def traverse_run(
    run_dir: str | Path,
    *,
    dims=None,
    extent: float = 3.0,
    steps: int = 9,
    index: int | None = None,
    out: str | Path | None = None,
) -> Traversal:
    """Decode z with one coordinate of ``dims`` (default: the first 16) swept over [-extent, extent] in
    ``steps`` values, one row per dimension, starting from z = 0 or from the posterior mean of held-out
    example ``index``; written to ``out`` (default: ``RUN_DIR/figures/traverse.png``)."""
    out = Path(out) if out is not None else Path(run_dir) / "figures" / "traverse.png"
    check_output_file(out, inputs=run_inputs(run_dir), suffixes=(".png",))
    with writing_into(run_dir, [out], "traverse"):
        vae, heldout, _ = load_image_run(run_dir)
        d = vae.latent_dim
        dims = list(dims) if dims is not None else list(range(min(d, 16)))
        _check_dims(dims, d)
        if index is None:
            base = torch.zeros(d)
        else:
            if not 0 <= index < heldout.shape[0]:
                raise ConfigError(
                    f"--index {index} is out of range; the run has held-out examples 0 to {heldout.shape[0] - 1}"
                )
            base = vae.encode(heldout[index : index + 1])[0][0].cpu()
        values = latent.symmetric_values(extent, steps)
        images = torch.stack([latent.traverse(vae, base, dim, values) for dim in dims]).cpu()
        plots.save_figure(latent_figures.traversal_figure(images, dims, values), out)
    return Traversal(path=out, dims=dims, extent=extent)


def _check_manifold_dims(dims, latent_dim: int) -> None:
    if latent_dim < 2:
        raise ConfigError(f"--dims needs a latent space of at least 2 dimensions; this run's has {latent_dim}")
    _check_dims(dims, latent_dim)
    if dims[0] == dims[1]:
        raise ConfigError(f"--dims {dims[0]} {dims[1]}: choose two different latent dimensions")


def manifold_dims(vae, heldout: torch.Tensor, chosen=None) -> tuple[list[int], str]:
    """The two latent dimensions of the manifold grid and why: by default the two most informative on
    held-out data (:func:`ppl_vae.diagnostics.latent_space.informative_dims`); for ``chosen`` ones, their
    held-out scores, which of them collapsed and which would have been the most informative."""
    info = latent.informative_dims(vae, heldout, k=2)
    best = [int(j) for j in info["dims"]]
    if chosen is None:
        return best, info["reason"]
    dims = list(chosen)
    what = "KL" if info["criterion"] == "kl" else "activity"
    why = (
        "chosen with --dims; held-out "
        + what
        + ": "
        + ", ".join(f"z[{j}] {info['scores'][j]:.2f}" for j in dims)
        + (" nats" if what == "KL" else "")
    )
    dead = [j for j in dims if info["scores"][j] <= latent.COLLAPSED_BELOW]
    if dead:
        why += f"; z[{'], z['.join(map(str, dead))}] collapsed"
    if sorted(dims) != best:
        why += f"; most informative: z[{best[0]}], z[{best[1]}]"
    return dims, why


def latent_map_run(
    run_dir: str | Path,
    *,
    method: str = "pca",
    grid: int = 15,
    extent: float = 2.0,
    dims=None,
    out_dir: str | Path | None = None,
) -> LatentMap:
    """Write into ``out_dir`` (default: ``RUN_DIR/figures``) the scatter of the held-out posterior means,
    coloured by label and projected to 2-D by ``method`` when the latent space has more dimensions, and,
    for a latent space of at least 2 dimensions, the decoded ``grid`` x ``grid`` manifold over [-extent,
    extent] in the two latent dimensions ``dims`` (default: see :func:`manifold_dims`). Both outputs are
    checked before anything is computed."""
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / "figures"
    check_figure_dir(out_dir, inputs=run_inputs(run_dir))
    with writing_into(run_dir, [out_dir], "latent-map"):
        return _draw_latent_map(run_dir, out_dir, method=method, grid=grid, extent=extent, dims=dims)


def _draw_latent_map(run_dir, out_dir: Path, *, method: str, grid: int, extent: float, dims) -> LatentMap:
    """:func:`latent_map_run` once its output folder is checked (and the run folder locked, if written)."""
    vae, heldout, labels = load_image_run(run_dir)
    d = vae.latent_dim
    if dims is not None:
        _check_manifold_dims(dims, d)
    scatter = check_output_file(
        out_dir / ("latent-scatter.png" if d <= 2 else f"latent-scatter-{method}.png"), suffixes=(".png",)
    )
    manifold = check_output_file(out_dir / "latent-manifold.png", suffixes=(".png",)) if d >= 2 else None
    means = torch.cat([vae.encode(chunk)[0] for chunk in heldout.split(1024)]).cpu()
    points = latent.project_2d(means, method)
    plots.save_figure(latent_figures.scatter_figure(points, labels, latent_dim=d, method=method), scatter)
    why = None
    if manifold is not None:
        dims, why = manifold_dims(vae, heldout, dims)
        images = latent.latent_grid(vae, grid, extent, dims=dims).cpu()
        plots.save_figure(latent_figures.manifold_figure(images, grid, extent, dims, why=why), manifold)
    return LatentMap(
        scatter=scatter,
        num_examples=int(means.shape[0]),
        manifold=manifold,
        dims=None if manifold is None else list(dims),
        why=why,
        grid=grid,
        extent=extent,
    )
