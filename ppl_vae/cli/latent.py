"""``ppl-vae interpolate | traverse | latent-map``: latent-space figures of a trained run.

``register(sub)`` adds the three subcommands to an ``argparse`` subparsers object and returns their
handlers, ``{"interpolate": fn, "traverse": fn, "latent-map": fn}``; each ``fn(args)`` calls
:mod:`ppl_vae.app.latent`, which writes PNG figures (by default into ``RUN_DIR/figures/``), prints what
it wrote and returns the paths. Bad input raises :class:`ppl_vae.errors.ConfigError` with a one-line
message.
"""

from __future__ import annotations

from pathlib import Path

from ppl_vae.validation import arg, count, path_arg, positive_real

#: Limits of the figure sizes: a row per pair, a column per step, a grid of images per side.
MAX_PAIRS, MAX_STEPS, MAX_GRID = 256, 256, 100


def _add_interpolate(sub) -> None:
    p = sub.add_parser(
        "interpolate",
        help="decoded paths between the latent codes of held-out pairs",
        description="Pick random pairs of held-out examples, interpolate between their posterior "
        "means and draw the decoded paths, one row per pair.",
    )
    p.add_argument("run_dir", type=path_arg)
    p.add_argument(
        "--pairs",
        type=count("--pairs", 1, MAX_PAIRS),
        default=8,
        help="pairs of held-out examples, one row each (default: 8)",
    )
    p.add_argument(
        "--steps",
        type=count("--steps", 2, MAX_STEPS),
        default=10,
        help="points on each path, ends included (default: 10)",
    )
    p.add_argument(
        "--method",
        choices=["linear", "slerp"],
        default="linear",
        help="linear, or slerp (spherical; keeps the norm, suits Gaussian priors) (default: linear)",
    )
    p.add_argument("--seed", type=arg("seed"), default=0, help="seed of the choice of pairs (default: 0)")
    p.add_argument(
        "--out", type=path_arg, help="PNG to write (default: RUN_DIR/figures/interpolate-<method>-<seed>.png)"
    )


def _add_traverse(sub) -> None:
    p = sub.add_parser(
        "traverse",
        help="decode z with one latent coordinate swept, one row per dimension",
        description="Latent traversals: start from z = 0 (or the posterior mean of one held-out "
        "example with --index) and sweep one coordinate over [-F, F].",
    )
    p.add_argument("run_dir", type=path_arg)
    p.add_argument(
        "--dims", type=count("--dims", 0, 4095), nargs="+", help="latent dimensions to sweep (default: all, at most 16)"
    )
    p.add_argument(
        "--range",
        type=positive_real("--range", 1e6),
        default=3.0,
        dest="range",
        help="sweep each coordinate over [-F, F] (default: 3)",
    )
    p.add_argument("--steps", type=count("--steps", 2, MAX_STEPS), default=9, help="values per dimension (default: 9)")
    p.add_argument(
        "--index",
        type=count("--index", 0, 10**9),
        help="start from the posterior mean of this held-out example (default: z = 0)",
    )
    p.add_argument("--out", type=path_arg, help="PNG to write (default: RUN_DIR/figures/traverse.png)")


def _add_latent_map(sub) -> None:
    p = sub.add_parser(
        "latent-map",
        help="scatter of held-out latent codes and the decoded latent manifold",
        description="Write a scatter of the held-out posterior means coloured by label (projected "
        "to 2-D when latent_dim > 2) and, when latent_dim >= 2, the decoded grid over "
        "two latent dimensions: by default the two with the largest KL to the prior on "
        "held-out data (or the largest activity when the KL does not split by dimension).",
    )
    p.add_argument("run_dir", type=path_arg)
    p.add_argument(
        "--method", choices=["pca", "tsne"], default="pca", help="projection when latent_dim > 2 (default: pca)"
    )
    p.add_argument(
        "--grid",
        type=count("--grid", 2, MAX_GRID),
        default=15,
        help="images per side of the manifold grid (default: 15)",
    )
    p.add_argument(
        "--extent",
        type=positive_real("--extent", 1e6),
        default=2.0,
        help="the manifold grid spans [-F, F] in both dimensions (default: 2)",
    )
    p.add_argument(
        "--dims",
        type=count("--dims", 0, 4095),
        nargs=2,
        metavar=("I", "J"),
        help="latent dimensions of the manifold grid (default: the two most informative on held-out data)",
    )
    p.add_argument("--out-dir", type=path_arg, help="folder to write into (default: RUN_DIR/figures)")


# ---------------------------------------------------------------------------------------------


def _interpolate(args) -> list[Path]:
    from ppl_vae.app.latent import interpolate_run

    done = interpolate_run(
        args.run_dir, pairs=args.pairs, steps=args.steps, method=args.method, seed=args.seed, out=args.out
    )
    print(f"wrote {done.pairs} {done.method} interpolations of {done.steps} steps to {done.path}")
    return [done.path]


def _traverse(args) -> list[Path]:
    from ppl_vae.app.latent import traverse_run

    done = traverse_run(
        args.run_dir, dims=args.dims, extent=args.range, steps=args.steps, index=args.index, out=args.out
    )
    print(
        f"wrote traversals of latent dimensions {', '.join(map(str, done.dims))} over [{-done.extent:g}, "
        f"{done.extent:g}] to {done.path}"
    )
    return [done.path]


def _latent_map(args) -> list[Path]:
    from ppl_vae.app.latent import latent_map_run

    done = latent_map_run(
        args.run_dir,
        method=args.method,
        grid=args.grid,
        extent=args.extent,
        dims=getattr(args, "dims", None),
        out_dir=args.out_dir,
    )
    print(f"wrote the posterior means of {done.num_examples} held-out examples to {done.scatter}")
    if done.manifold is not None:
        print(
            f"wrote the decoded {done.grid}x{done.grid} latent grid over z[{done.dims[0]}], z[{done.dims[1]}] in "
            f"[{-done.extent:g}, {done.extent:g}] ({done.why}) to {done.manifold}"
        )
    return done.paths


def register(sub) -> dict:
    """Add ``interpolate``, ``traverse`` and ``latent-map`` to ``sub`` (from ``add_subparsers``) and
    return their handlers by command name."""
    _add_interpolate(sub)
    _add_traverse(sub)
    _add_latent_map(sub)
    return {"interpolate": _interpolate, "traverse": _traverse, "latent-map": _latent_map}
