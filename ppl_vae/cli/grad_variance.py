"""``ppl-vae grad-variance``: the spread of the encoder's ELBO gradient under three estimators
(:mod:`ppl_vae.diagnostics.gradients`)."""

from __future__ import annotations

from ppl_vae.validation import arg, count, path_arg

#: :data:`ppl_vae.diagnostics.gradients.DEFAULT_LOO_PARTICLES`, repeated so that ``--help`` needs no torch (a test holds
#: them equal).
DEFAULT_LOO_PARTICLES = 8


def _grad_variance(args) -> None:
    from ppl_vae.app.grad_variance import format_table, grad_variance_run

    report = grad_variance_run(
        args.run_dir, num_examples=args.examples, num_repeats=args.repeats, seed=args.seed, loo_particles=args.particles
    )
    print(
        f"encoder gradient variance, {report['num_params']} parameters, batch {report['batch_size']}, "
        f"{report['num_repeats']} draws per estimator"
    )
    print(format_table(report))
    for path in report["paths"]:
        print(f"wrote {path}")


def register(sub) -> dict:
    """Add ``grad-variance RUN_DIR [--examples N] [--repeats N] [--seed N] [--particles K]``."""
    p = sub.add_parser(
        "grad-variance",
        help="variance of reparameterized vs score-function ELBO gradients",
        description="Measure the spread of the encoder's ELBO gradient under the reparameterized, "
        "score-function and score-function with a leave-one-out baseline over K "
        "particles estimators; writes grad_variance.json and figures/grad_variance.png "
        "into the run folder.",
    )
    p.add_argument("run_dir", type=path_arg, metavar="RUN_DIR")
    p.add_argument(
        "--examples",
        type=count("--examples", 1, 100_000),
        default=32,
        help="training examples in the batch (default 32)",
    )
    p.add_argument(
        "--repeats", type=count("--repeats", 2, 100_000), default=200, help="gradient draws per estimator (default 200)"
    )
    p.add_argument("--seed", type=arg("seed"), default=0)
    p.add_argument(
        "--particles",
        type=count("--particles", 2, 10_000),
        default=DEFAULT_LOO_PARTICLES,
        help=f"K, particles per step of the leave-one-out baseline (default {DEFAULT_LOO_PARTICLES})",
    )
    return {"grad-variance": _grad_variance}
