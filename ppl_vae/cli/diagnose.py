"""``ppl-vae diagnose``: every posterior diagnostic of :mod:`ppl_vae.app.diagnose` on a run folder."""

from __future__ import annotations

import argparse

from ppl_vae.validation import arg, count, path_arg


def register(sub) -> dict:
    """Add ``diagnose``; return ``{"diagnose": handler}``."""
    p = sub.add_parser(
        "diagnose",
        help="PSIS k-hat, NUTS reference, SBC and coverage, class calibration, amortization gap, collapse and "
        "predictive checks of a run",
        description="Posterior diagnostics of a trained run on its held-out data: writes "
        "diagnostics.json, inference_data.nc, nuts.nc, log_ratios.npy, report.md and "
        "figures/ (default folder: RUN_DIR/diagnostics). Models with a class site (mixture, "
        "semi-supervised) also get the calibration of p(y | x); a part that does not apply to the "
        "run's model is skipped with the reason.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", type=path_arg)
    p.add_argument("--out", type=path_arg, help="folder to write (default: RUN_DIR/diagnostics)")
    p.add_argument(
        "--num-samples",
        type=count("--num-samples", 2, 100_000),
        default=1000,
        help="guide draws per example for PSIS k-hat and log p(x)",
    )
    p.add_argument(
        "--nuts-observations",
        type=count("--nuts-observations", 0, 10_000),
        default=8,
        help="held-out examples to run NUTS on (0: skip)",
    )
    p.add_argument("--nuts-chains", type=count("--nuts-chains", 2, 64), default=4)
    p.add_argument("--nuts-warmup", type=count("--nuts-warmup", 0, 100_000), default=300)
    p.add_argument(
        "--nuts-samples", type=count("--nuts-samples", 10, 100_000), default=500, help="NUTS draws per chain"
    )
    p.add_argument("--sbc-simulations", type=count("--sbc-simulations", 20, 1_000_000), default=1000)
    p.add_argument(
        "--sbc-draws", type=count("--sbc-draws", 1, 10_000), default=99, help="guide draws per simulation (ranks 0..L)"
    )
    p.add_argument(
        "--gap-observations",
        type=count("--gap-observations", 0, 100_000),
        default=100,
        help="held-out examples for the amortization gap (0: skip)",
    )
    p.add_argument(
        "--gap-steps",
        type=count("--gap-steps", 1, 1_000_000),
        default=300,
        help="optimisation steps refining the local guides",
    )
    p.add_argument(
        "--class-particles",
        type=count("--class-particles", 1, 100_000),
        default=100,
        help="draws per estimate of p(y | x) (models with an enumerated class y: mixture, semi-supervised)",
    )
    p.add_argument(
        "--ppc-samples",
        type=count("--ppc-samples", 2, 100_000),
        default=None,
        help="replicated data sets of the posterior and prior predictive checks (default: the fewest that can "
        "flag a statistic at family level 0.01, e.g. 800 for 8 statistics)",
    )
    p.add_argument("--seed", type=arg("seed"), default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing diagnostics folder (only one ppl_vae made)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return {"diagnose": _diagnose}


def _diagnose(args) -> None:
    from ppl_vae.app.diagnose import default_diagnostics_dir, diagnose_run, summary_lines, warning_texts

    results = diagnose_run(
        args.run_dir,
        args.out,
        num_samples=args.num_samples,
        nuts_observations=args.nuts_observations,
        nuts_chains=args.nuts_chains,
        nuts_warmup=args.nuts_warmup,
        nuts_samples=args.nuts_samples,
        sbc_simulations=args.sbc_simulations,
        sbc_draws=args.sbc_draws,
        gap_observations=args.gap_observations,
        gap_steps=args.gap_steps,
        class_particles=args.class_particles,
        ppc_samples=args.ppc_samples,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    for text in warning_texts(results):  # a collapsed model, unreliable importance weights
        print(f"warning: {text}")
    for line in summary_lines(results):
        print(line)
    out = args.out or default_diagnostics_dir(args.run_dir)
    print(f"wrote {out}/ (report.md, diagnostics.json, inference_data.nc, nuts.nc, log_ratios.npy, figures/)")
