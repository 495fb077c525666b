"""``ppl-vae``: a thin command-line layer over the Python API in :mod:`ppl_vae.run`.

Errors caused by input print one line to standard error and exit with code 2 (``--debug`` shows the
traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from ppl_vae.config import Config
from ppl_vae.errors import ConfigError, PplVaeError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130          # 128 + SIGINT, the shell's convention
EXIT_SIGTERM = 143              # 128 + SIGTERM


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a VAE and write a run folder",
                       description="Train a VAE by SVI (Trace_ELBO) and write a run folder with config, checkpoint, "
                                   "metrics and figures. With no arguments: the embedded digits data.")
    # Defaults are None so that a --config file's values survive unless a flag overrides them.
    p.add_argument("--dataset", help="digits (default) | mnist | fashion-mnist | kmnist | npz:PATH | folder:PATH | "
                   "table:PATH (.csv or .npz of real or count features)")
    p.add_argument("--data-root", help="folder with MNIST-family files in torchvision's layout (default: data)")
    p.add_argument("--download", action="store_true", default=None, help="download MNIST-family files if missing")
    p.add_argument("--image-size", type=int, help="resize images to this square size (e.g. 28)")
    p.add_argument("--binarize", choices=["auto", "dynamic", "threshold", "none"], help="binarization of grey "
                   "images (default: auto = dynamic for binary likelihoods such as bernoulli, none otherwise)")
    p.add_argument("--latent-dim", type=int, help="dimension of z (default: 8)")
    p.add_argument("--hidden-dims", type=int, nargs="*", help="encoder hidden widths, decoder reversed (default: 256 128)")
    p.add_argument("--prior", help="prior name (default: normal; see `ppl-vae list`)")
    p.add_argument("--likelihood", help="likelihood name (default: bernoulli)")
    p.add_argument("--guide", help="guide family name (default: auto, the family matching the prior's space)")
    p.add_argument("--elbo", help="objective: trace (default) | meanfield | iwae")
    p.add_argument("--particles", type=int, help="draws of z per example and step; K of the iwae bound (default: 1)")
    p.add_argument("--beta", type=float, help="weight of the KL part of the ELBO (default: 1)")
    p.add_argument("--kl-schedule", help="constant (default) | warmup:EPOCHS | cyclical:PERIOD[:RATIO]; rises to --beta")
    p.add_argument("--epochs", type=int, help="passes over the training data (default: 200)")
    p.add_argument("--batch-size", type=int, help="examples per SVI step (default: 128)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--seed", type=int, help="random seed (default: 0)")
    p.add_argument("--device", help="cpu (default) | cuda | cuda:N")
    p.add_argument("--config", type=Path, help="JSON or TOML file of config fields; flags override it")
    p.add_argument("--out", type=Path, help="run folder to create (default: runs/<dataset>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue an interrupted run exactly where it stopped (with --epochs N: train up to N epochs)")
    p.add_argument("--checkpoint-every", type=int, help="write a resumable checkpoint every N epochs (default: 10; "
                   "SIGINT/SIGTERM and the end of training always write one)")
    p.add_argument("--keep-best", action="store_true", default=None,
                   help="also keep best.pt, the weights with the best held-out ELBO")
    p.add_argument("--on-divergence", choices=["stop", "restore"],
                   help="on a NaN/inf gradient: stop (default) or skip the step and divide the learning rate by 10")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="held-out ELBO and importance-sampled log p(x) of a run",
                       description="Evaluate a run folder on its held-out data; prints a table and writes eval.json.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--num-particles", "-k", type=int, help="importance samples per example (default: the config's, 1000)")
    p.add_argument("--batch-size", type=int, help="examples per chunk (default: by memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="draw from a trained model into an image grid")
    p.add_argument("run_dir", type=Path)
    p.add_argument("-n", "--num-samples", type=int, default=64)
    p.add_argument("--out", type=Path, help="file to write: .png image grid, or .csv rows (default: "
                   "RUN_DIR/figures/samples-<seed>.png; RUN_DIR/samples/samples-<seed>.csv for tables)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def _add_list(sub) -> None:
    sub.add_parser("list", help="every prior, guide, likelihood and objective, one line each")


def _list(args) -> None:
    from ppl_vae.compat import OBJECTIVES
    from ppl_vae.guides import GUIDES
    from ppl_vae.models import LIKELIHOODS, PRIOR_DESCRIPTIONS, PRIORS

    def first_line(obj):
        return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""

    sections = [
        ("priors (--prior)", {name: PRIOR_DESCRIPTIONS.get(name, "") for name in PRIORS}),
        ("guides (--guide)", {name: first_line(getattr(f, "__self__", f)) for name, f in GUIDES.items()}),
        ("likelihoods (--likelihood)", {name: first_line(f) for name, f in LIKELIHOODS.items()}),
        ("objectives (--elbo)", OBJECTIVES),
    ]
    for title, rows in sections:
        print(title)
        for name, text in rows.items():
            print(f"  {name:<22}{text}")


#: Modules that contribute subcommands through ``register(subparsers) -> {name: handler}``.
COMMAND_MODULES = ("ppl_vae.latent_cli", "ppl_vae.compare", "ppl_vae.gradvar", "ppl_vae.diagnose")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The parser and the handler of every subcommand."""
    parser = argparse.ArgumentParser(prog="ppl-vae", description="The VAE as a Pyro model and guide.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_evaluate(sub)
    _add_sample(sub)
    _add_list(sub)
    handlers = {"train": _train, "evaluate": _evaluate, "sample": _sample, "list": _list}
    for name in COMMAND_MODULES:
        handlers.update(importlib.import_module(name).register(sub))
    for command in sub.choices.values():
        command.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice; 1 is "
                             "often fastest for small models on a busy machine)")
    return parser, handlers


def config_from_args(args: argparse.Namespace) -> Config:
    config = Config.from_file(args.config) if args.config is not None else Config()
    values = config.to_dict()
    for name in values:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    return Config.from_dict(values).validate()


def _train(args) -> None:
    from ppl_vae import distributed
    from ppl_vae.run import read_config, resume_run, train_run

    progress = False if args.quiet else None
    command = ["ppl-vae", *args.argv]
    if args.resume is not None:
        given = [name for name in Config().to_dict() if name != "epochs" and getattr(args, name, None) is not None]
        if given or args.config is not None or args.out is not None or args.overwrite:
            extra = [f"--{n.replace('_', '-')}" for n in given] + (["--config"] if args.config else []) + \
                (["--out"] if args.out else []) + (["--overwrite"] if args.overwrite else [])
            raise ConfigError(f"--resume continues {args.resume} as configured in its config.json; drop "
                              f"{' '.join(extra)} (only --epochs may change, to train longer)")
        config = read_config(args.resume)
    else:
        config = config_from_args(args)
    context = distributed.init_from_environment(config.device)     # torchrun: join the process group
    failed = True
    try:
        if args.resume is not None:
            run = resume_run(args.resume, epochs=args.epochs, progress=progress, command=command,
                             handle_signals=True, distributed=context)
            config = read_config(run.run_dir)
        else:
            if context is not None and args.out is None:
                raise ConfigError("distributed training needs --out RUN_DIR, the same for every process")
            run = train_run(config, args.out, overwrite=args.overwrite, progress=progress, command=command,
                            handle_signals=True, distributed=context)
        failed = False
    finally:
        distributed.shutdown(context, wait=not failed)
    if context is not None and not context.is_main:
        return
    final = run.result.history[-1]
    processes = f", {context.world_size} processes" if context is not None else ""
    print(f"trained on {run.data.name}: {run.data.train.shape[0]} train / {run.data.heldout.shape[0]} held-out "
          f"examples of shape {tuple(run.data.data_shape)}, {config.epochs} epochs{processes}")
    print(f"held-out ELBO {final['heldout_elbo']:.2f} nats per example (train {final['train_elbo']:.2f})")
    print(f"run folder: {run.run_dir}  (next: ppl-vae evaluate {run.run_dir})")


def _evaluate(args) -> None:
    from ppl_vae.run import evaluate_run

    result = evaluate_run(args.run_dir, num_particles=args.num_particles, batch_size=args.batch_size, seed=args.seed,
                          device=args.device, progress=not args.quiet)
    rows = [("ELBO", result.elbo, result.elbo_se, result.elbo_data_se),
            (f"log p(x), IWAE K={result.num_particles}", result.log_likelihood, result.log_likelihood_se,
             result.log_likelihood_data_se),
            ("reconstruction E_q[log p(x|z)]", result.reconstruction, result.reconstruction_se, None),
            ("KL(q(z|x) || p(z))", result.kl, result.kl_se, None)]
    print(f"{result.num_examples} held-out examples, per example in nats")
    print(f"{'quantity':<34}{'mean':>12}{'MC s.e.':>10}{'s.e. over examples':>20}")
    for name, mean, se, data_se in rows:
        print(f"{name:<34}{mean:>12.3f}{se:>10.3f}{'' if data_se is None else f'{data_se:>20.3f}'}")
    print(f"wrote {args.run_dir / 'eval.json'}")


def _sample(args) -> None:
    from ppl_vae.run import sample_run

    if args.out is None:
        from ppl_vae.checkpoint import read_json

        table = str(read_json(args.run_dir / "config.json", "config").get("dataset", "")).startswith("table:")
        args.out = args.run_dir / ("samples" if table else "figures") / f"samples-{args.seed}.{'csv' if table else 'png'}"
    out = args.out
    sample_run(args.run_dir, args.num_samples, out, seed=args.seed, device=args.device)
    print(f"wrote {args.num_samples} samples to {out}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if args.threads is not None:
        if args.threads < 1:
            print(f"ppl-vae {args.command}: error: --threads must be a positive integer, got {args.threads}",
                  file=sys.stderr)
            return EXIT_USAGE
        import torch

        torch.set_num_threads(args.threads)
    from ppl_vae.train import TrainingInterrupted

    try:
        handlers[args.command](args)
    except TrainingInterrupted as stopped:
        print(f"ppl-vae {args.command}: {stopped}", file=sys.stderr)
        return EXIT_SIGTERM if stopped.signal_name == "SIGTERM" else EXIT_INTERRUPTED
    except PplVaeError as error:
        if args.debug:
            raise
        print(f"ppl-vae {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"ppl-vae {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
