"""``ppl-vae compare-ae``: the autoencoder-versus-VAE experiment of :mod:`ppl_vae.app.compare_ae`."""

from __future__ import annotations

from ppl_vae.validation import arg, path_arg

#: The defaults of :func:`ppl_vae.app.compare_ae.compare_ae_run`, repeated here so that ``--help`` needs no
#: torch; a test holds them equal.
DEFAULT_EPOCHS = 150
DEFAULT_BETAS = (0.0, 0.1, 0.5, 1.0, 2.0, 4.0)


def _handle(args):
    from ppl_vae.app.compare_ae import (
        collapse_paragraph,
        compare_ae_run,
        markdown_table,
        verdict,
    )

    result = compare_ae_run(
        args.out,
        dataset=args.dataset,
        epochs=args.epochs,
        betas=tuple(args.betas),
        latent_dim=args.latent_dim,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(markdown_table(result))
    print()
    print(verdict(result))
    for line in collapse_paragraph(result)[:1]:
        print(line)
    print(f"wrote {result.out_dir}/ (comparison.json, comparison.md, figures/) in {result.seconds:.0f} s")
    return result


def register(sub) -> dict:
    """Add ``compare-ae``; return ``{"compare-ae": handler}``."""
    p = sub.add_parser(
        "compare-ae",
        help="train an autoencoder and VAEs over beta, and measure smoothness, sample quality and coverage",
        description="Train a plain autoencoder (delta guide, beta=0) and Normal-guide VAEs for "
        "several betas on the same data, budget and seed; write comparison.json, "
        "comparison.md and figures/.",
    )
    p.add_argument("--dataset", default="digits", help="data set spec (default: digits)")
    p.add_argument(
        "--epochs", type=arg("epochs"), default=DEFAULT_EPOCHS, help=f"epochs per model (default: {DEFAULT_EPOCHS})"
    )
    p.add_argument("--out", type=path_arg, help="folder to write (default: runs/compare-ae-<dataset>-<time>)")
    p.add_argument(
        "--betas",
        type=arg("beta"),
        nargs="+",
        default=list(DEFAULT_BETAS),
        help="KL weights of the Normal-guide models (default: 0 0.1 0.5 1 2 4)",
    )
    p.add_argument("--latent-dim", type=arg("latent_dim"), default=2, help="latent dimension (default: 2)")
    p.add_argument("--seed", type=arg("seed"), default=0, help="seed of every model and measurement (default: 0)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing comparison folder (only one ppl_vae made)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output while training")
    return {"compare-ae": _handle}
