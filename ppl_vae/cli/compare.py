"""``ppl-vae compare RUN RUN [...]``: paired comparison of trained runs on their common held-out data."""

from __future__ import annotations

import argparse

from ppl_vae.validation import arg, count, path_arg


def register(sub) -> dict:
    """Add ``compare``; return ``{"compare": handler}``."""
    p = sub.add_parser(
        "compare",
        help="which run predicts held-out data best: elpd, paired differences with s.e., stacking weights",
        description="Score every run on the same held-out examples (importance-sampled log p(x) per example) "
        "and print a table in the form of ArviZ's compare: elpd, difference to the best with its paired "
        "standard error and Monte Carlo part, stacking and pseudo-BMA+ weights, share of unreliable "
        "importance estimates (k-hat > 0.7). Runs on different data, splits or binarizations are refused. "
        "With --out, writes comparison.json, comparison.md, figures/ and inference_data/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dirs", nargs="+", type=path_arg, metavar="RUN", help="two or more run folders")
    p.add_argument("--out", type=path_arg, help="folder to write (default: print only)")
    p.add_argument(
        "--num-samples", type=count("--num-samples", 2, 100_000), default=1000, help="guide draws per example"
    )
    p.add_argument("--seed", type=arg("seed"), default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="replace a comparison folder ppl_vae made")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return {"compare": _compare}


def _compare(args) -> None:
    from ppl_vae.app.compare import compare_runs, text_table, verdict_lines

    result = compare_runs(
        args.run_dirs,
        args.out,
        num_samples=args.num_samples,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(
        f"{result.num_examples} held-out examples of {result.dataset}, S = {result.num_samples} draws each; "
        f"{result.units}"
    )
    for line in text_table(result.records):
        print(line)
    for line in verdict_lines(result):
        print(line)
    if args.out:
        print(f"wrote {args.out}/ (comparison.json, comparison.md, figures/, inference_data/)")
