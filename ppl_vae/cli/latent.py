"""``ppl-vae interpolate | traverse | latent-map``: latent-space figures of a trained run.

``register(sub)`` adds the three subcommands to an ``argparse`` subparsers object and returns their
handlers, ``{"interpolate": fn, "traverse": fn, "latent-map": fn}``; each ``fn(args)`` loads the run
folder, writes PNG figures (by default into ``RUN_DIR/figures/``) and prints what it wrote. Bad input
raises :class:`ppl_vae.errors.ConfigError` with a one-line message.
"""

from __future__ import annotations

from pathlib import Path

from ppl_vae.app.folders import check_figure_dir, check_output_file
from ppl_vae.errors import ConfigError
from ppl_vae.validation import arg, count, path_arg, positive_real

#: Limits of the figure sizes: a row per pair, a column per step, a grid of images per side.
MAX_PAIRS, MAX_STEPS, MAX_GRID = 256, 256, 100


def _add_interpolate(sub) -> None:
    p = sub.add_parser("interpolate", help="decoded paths between the latent codes of held-out pairs",
                       description="Pick random pairs of held-out examples, interpolate between their posterior "
                                   "means and draw the decoded paths, one row per pair.")
    p.add_argument("run_dir", type=path_arg)
    p.add_argument("--pairs", type=count("--pairs", 1, MAX_PAIRS), default=8,
                   help="pairs of held-out examples, one row each (default: 8)")
    p.add_argument("--steps", type=count("--steps", 2, MAX_STEPS), default=10,
                   help="points on each path, ends included (default: 10)")
    p.add_argument("--method", choices=["linear", "slerp"], default="linear",
                   help="linear, or slerp (spherical; keeps the norm, suits Gaussian priors) (default: linear)")
    p.add_argument("--seed", type=arg("seed"), default=0, help="seed of the choice of pairs (default: 0)")
    p.add_argument("--out", type=path_arg,
                   help="PNG to write (default: RUN_DIR/figures/interpolate-<method>-<seed>.png)")


def _add_traverse(sub) -> None:
    p = sub.add_parser("traverse", help="decode z with one latent coordinate swept, one row per dimension",
                       description="Latent traversals: start from z = 0 (or the posterior mean of one held-out "
                                   "example with --index) and sweep one coordinate over [-F, F].")
    p.add_argument("run_dir", type=path_arg)
    p.add_argument("--dims", type=count("--dims", 0, 4095), nargs="+",
                   help="latent dimensions to sweep (default: all, at most 16)")
    p.add_argument("--range", type=positive_real("--range", 1e6), default=3.0, dest="range",
                   help="sweep each coordinate over [-F, F] (default: 3)")
    p.add_argument("--steps", type=count("--steps", 2, MAX_STEPS), default=9, help="values per dimension (default: 9)")
    p.add_argument("--index", type=count("--index", 0, 10 ** 9), help="start from the posterior mean of this "
                   "held-out example (default: z = 0)")
    p.add_argument("--out", type=path_arg, help="PNG to write (default: RUN_DIR/figures/traverse.png)")


def _add_latent_map(sub) -> None:
    p = sub.add_parser("latent-map", help="scatter of held-out latent codes and the decoded latent manifold",
                       description="Write a scatter of the held-out posterior means coloured by label (projected "
                                   "to 2-D when latent_dim > 2) and, when latent_dim >= 2, the decoded grid over "
                                   "two latent dimensions: by default the two with the largest KL to the prior on "
                                   "held-out data (or the largest activity when the KL does not split by dimension).")
    p.add_argument("run_dir", type=path_arg)
    p.add_argument("--method", choices=["pca", "tsne"], default="pca",
                   help="projection when latent_dim > 2 (default: pca)")
    p.add_argument("--grid", type=count("--grid", 2, MAX_GRID), default=15,
                   help="images per side of the manifold grid (default: 15)")
    p.add_argument("--extent", type=positive_real("--extent", 1e6), default=2.0,
                   help="the manifold grid spans [-F, F] in both dimensions (default: 2)")
    p.add_argument("--dims", type=count("--dims", 0, 4095), nargs=2, metavar=("I", "J"),
                   help="latent dimensions of the manifold grid (default: the two most informative on held-out data)")
    p.add_argument("--out-dir", type=path_arg, help="folder to write into (default: RUN_DIR/figures)")


# ---------------------------------------------------------------------------------------------

def _load_images_run(run_dir: Path):
    """The trained VAE, its held-out inputs as the model sees them (``(N, *data_shape)``) and the
    held-out labels (or None); refuses runs whose data are not images."""
    from ppl_vae.app import plots
    from ppl_vae.app.run import load_run, model_input, read_config

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if str(config.dataset).startswith("table:"):
        raise ConfigError(f"run {run_dir} was trained on a table of numbers ({config.dataset}), not images; "
                          "latent figures need a run trained on image data")
    run = load_run(run_dir)
    vae, data = run.vae, run.data
    if data.kind == "table" or plots.as_images(data.heldout[:1]) is None:
        raise ConfigError(f"run {run_dir} holds examples of shape {tuple(data.data_shape)}, not images; latent "
                          "figures need a run trained on image data")
    heldout = model_input(data.heldout, vae, run.config)
    return vae, heldout, data.heldout_labels


def _run_inputs(run_dir) -> list[Path]:
    return [Path(run_dir) / "checkpoint.pt", Path(run_dir) / "config.json"]


def _interpolate(args) -> list[Path]:
    import torch

    from ppl_vae.app import latent_figures, plots
    from ppl_vae.diagnostics import latent_space as latent

    out = args.out or Path(args.run_dir) / "figures" / f"interpolate-{args.method}-{args.seed}.png"
    check_output_file(out, inputs=_run_inputs(args.run_dir), suffixes=(".png",))
    vae, heldout, _ = _load_images_run(args.run_dir)
    n = heldout.shape[0]
    if 2 * args.pairs > n:
        raise ConfigError(f"--pairs {args.pairs} needs {2 * args.pairs} held-out examples but the run has {n}; "
                          f"use --pairs {n // 2} or fewer")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))[:2 * args.pairs]
    pairs = order.reshape(args.pairs, 2)
    paths = torch.stack([latent.interpolate_inputs(vae, heldout[i], heldout[j], args.steps, args.method)
                         for i, j in pairs.tolist()])
    inputs = heldout[pairs]                                           # (P, 2, *data_shape)
    plots.save_figure(latent_figures.interpolation_figure(paths.cpu(), inputs.cpu(), args.method), out)
    print(f"wrote {args.pairs} {args.method} interpolations of {args.steps} steps to {out}")
    return [out]


def _traverse(args) -> list[Path]:
    import torch

    from ppl_vae.app import latent_figures, plots
    from ppl_vae.diagnostics import latent_space as latent

    out = args.out or Path(args.run_dir) / "figures" / "traverse.png"
    check_output_file(out, inputs=_run_inputs(args.run_dir), suffixes=(".png",))
    vae, heldout, _ = _load_images_run(args.run_dir)
    d = vae.latent_dim
    dims = args.dims if args.dims is not None else list(range(min(d, 16)))
    for dim in dims:
        if not 0 <= dim < d:
            raise ConfigError(f"--dims {dim} is out of range; this run's latent space has dimensions 0 to {d - 1}")
    if args.index is None:
        base = torch.zeros(d)
    else:
        if not 0 <= args.index < heldout.shape[0]:
            raise ConfigError(f"--index {args.index} is out of range; the run has held-out examples 0 to "
                              f"{heldout.shape[0] - 1}")
        base = vae.encode(heldout[args.index:args.index + 1])[0][0].cpu()
    values = latent.symmetric_values(args.range, args.steps)
    images = torch.stack([latent.traverse(vae, base, dim, values) for dim in dims]).cpu()
    plots.save_figure(latent_figures.traversal_figure(images, dims, values), out)
    print(f"wrote traversals of latent dimensions {', '.join(map(str, dims))} over [{-args.range:g}, "
          f"{args.range:g}] to {out}")
    return [out]


def _latent_map(args) -> list[Path]:
    import torch

    from ppl_vae.app import latent_figures, plots
    from ppl_vae.diagnostics import latent_space as latent

    out_dir = args.out_dir or Path(args.run_dir) / "figures"
    check_figure_dir(out_dir, inputs=_run_inputs(args.run_dir))
    vae, heldout, labels = _load_images_run(args.run_dir)
    d = vae.latent_dim
    chosen = getattr(args, "dims", None)
    if chosen is not None:
        if d < 2:
            raise ConfigError(f"--dims needs a latent space of at least 2 dimensions; this run's has {d}")
        bad = [j for j in chosen if not 0 <= j < d]
        if bad:
            raise ConfigError(f"--dims {bad[0]} is out of range; this run's latent space has dimensions 0 to {d - 1}")
        if chosen[0] == chosen[1]:
            raise ConfigError(f"--dims {chosen[0]} {chosen[1]}: choose two different latent dimensions")
    means = torch.cat([vae.encode(chunk)[0] for chunk in heldout.split(1024)]).cpu()
    points = latent.project_2d(means, args.method)
    scatter = out_dir / ("latent-scatter.png" if d <= 2 else f"latent-scatter-{args.method}.png")
    check_output_file(scatter, suffixes=(".png",))
    plots.save_figure(latent_figures.scatter_figure(points, labels, latent_dim=d, method=args.method), scatter)
    written = [scatter]
    print(f"wrote the posterior means of {means.shape[0]} held-out examples to {scatter}")
    if d >= 2:
        info = latent.informative_dims(vae, heldout, k=2)
        if chosen is None:
            dims, why = info["dims"], info["reason"]
        else:
            dims = list(chosen)
            what = "KL" if info["criterion"] == "kl" else "activity"
            why = "chosen with --dims; held-out " + what + ": " + ", ".join(
                f"z[{j}] {info['scores'][j]:.2f}" for j in dims) + (" nats" if what == "KL" else "")
            dead = [j for j in dims if info["scores"][j] <= latent.COLLAPSED_BELOW]
            if dead:
                why += f"; z[{'], z['.join(map(str, dead))}] collapsed"
            best = info["dims"]
            if sorted(dims) != best:
                why += f"; most informative: z[{best[0]}], z[{best[1]}]"
        images = latent.latent_grid(vae, args.grid, args.extent, dims=dims).cpu()
        manifold = out_dir / "latent-manifold.png"
        check_output_file(manifold, suffixes=(".png",))
        plots.save_figure(latent_figures.manifold_figure(images, args.grid, args.extent, dims, why=why), manifold)
        written.append(manifold)
        print(f"wrote the decoded {args.grid}x{args.grid} latent grid over z[{dims[0]}], z[{dims[1]}] in "
              f"[{-args.extent:g}, {args.extent:g}] ({why}) to {manifold}")
    return written


def register(sub) -> dict:
    """Add ``interpolate``, ``traverse`` and ``latent-map`` to ``sub`` (from ``add_subparsers``) and
    return their handlers by command name."""
    _add_interpolate(sub)
    _add_traverse(sub)
    _add_latent_map(sub)
    return {"interpolate": _interpolate, "traverse": _traverse, "latent-map": _latent_map}
