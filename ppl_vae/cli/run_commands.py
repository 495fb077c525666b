"""``ppl-vae train | evaluate | sample | list``: the commands of a run folder's life.

Flags are checked by :mod:`ppl_vae.validation` as argparse parses them (types and ranges); the work is
done by :mod:`ppl_vae.app.train` and :mod:`ppl_vae.app.run`, imported only when a handler runs.
"""

from __future__ import annotations

import argparse

from ppl_vae.catalog import COMPILE, NETWORKS
from ppl_vae.validation import arg, count, path_arg

#: Config fields a train flag may set (the flag is the field with - for _).
TRAIN_FIELDS = (
    "dataset",
    "data_root",
    "download",
    "image_size",
    "grey",
    "binarize",
    "latent_dim",
    "hidden_dims",
    "network",
    "prior",
    "likelihood",
    "guide",
    "labelled",
    "alpha",
    "condition_on",
    "groups",
    "elbo",
    "particles",
    "beta",
    "kl_schedule",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "device",
    "compile",
    "checkpoint_every",
    "keep_best",
    "on_divergence",
)


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a VAE and write a run folder",
        description="Train a VAE by SVI (a Pyro ELBO, see --elbo) and write a run folder with config, "
        "checkpoint, metrics and figures. With no arguments: the embedded digits data.",
    )
    # Defaults are None so that a --config file's values survive unless a flag overrides them.
    p.add_argument(
        "--dataset",
        help="digits (default) | mnist | fashion-mnist | kmnist | cifar10 | cifar10:PATH | npz:PATH | "
        "folder:PATH | table:PATH (.csv or .npz of real or count features)",
    )
    p.add_argument("--data-root", help="folder with MNIST-family files in torchvision's layout (default: data)")
    p.add_argument("--download", action="store_true", default=None, help="download MNIST-family files if missing")
    p.add_argument("--image-size", type=arg("image_size"), help="resize images to this square size (e.g. 28)")
    p.add_argument(
        "--binarize",
        choices=["auto", "dynamic", "threshold", "none"],
        help="binarization of grey "
        "images (default: auto = dynamic for binary likelihoods such as bernoulli, none otherwise)",
    )
    p.add_argument("--latent-dim", type=arg("latent_dim"), help="dimension of z (default: 8)")
    p.add_argument(
        "--hidden-dims",
        type=arg("hidden_dim"),
        nargs="*",
        help="encoder hidden widths, decoder reversed (default: 256 128); with --network conv or resnet, the "
        "fully connected layers after the convolutions",
    )
    _add_image_flags(p)
    p.add_argument("--prior", help="prior name (default: normal; see `ppl-vae list`)")
    p.add_argument("--likelihood", help="likelihood name (default: bernoulli)")
    p.add_argument("--guide", help="guide family name (default: auto, the family matching the prior's space)")
    _add_structured_flags(p)
    p.add_argument(
        "--elbo",
        help="objective: auto (default: analytic KL where registered, Monte Carlo elsewhere) | "
        "trace | meanfield | iwae",
    )
    p.add_argument(
        "--particles", type=arg("particles"), help="draws of z per example and step; K of the iwae bound (default: 1)"
    )
    p.add_argument("--beta", type=arg("beta"), help="weight of the KL part of the ELBO (default: 1)")
    p.add_argument(
        "--kl-schedule", help="constant (default) | warmup:EPOCHS | cyclical:PERIOD[:RATIO]; rises to --beta"
    )
    p.add_argument("--epochs", type=arg("epochs"), help="passes over the training data (default: 200)")
    p.add_argument("--batch-size", type=arg("batch_size"), help="examples per SVI step (default: 128)")
    p.add_argument("--lr", type=arg("lr"), help="Adam learning rate (default: 1e-3)")
    p.add_argument("--seed", type=arg("seed"), help="random seed (default: 0)")
    _add_step_flags(p)
    p.add_argument("--config", type=path_arg, help="JSON or TOML file of config fields; flags override it")
    p.add_argument("--out", type=path_arg, help="run folder to create (default: runs/<dataset>-<time>)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing run folder (only a folder ppl_vae made for a run)"
    )
    p.add_argument(
        "--resume",
        type=path_arg,
        metavar="RUN_DIR",
        help="continue an interrupted run exactly where it stopped (with --epochs N: train up to N epochs)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=arg("checkpoint_every"),
        help="write a resumable checkpoint every N epochs (default: 10; SIGINT/SIGTERM and the end of "
        "training always write one)",
    )
    p.add_argument(
        "--keep-best",
        action="store_true",
        default=None,
        help="also keep best.pt, the weights with the best held-out ELBO",
    )
    p.add_argument(
        "--on-divergence",
        choices=["stop", "restore"],
        help="on a NaN/inf gradient: stop (default) or skip the step and divide the learning rate by 10",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_step_flags(p) -> None:
    """Where and how the training steps run."""
    p.add_argument("--device", help="cpu (default) | cuda | cuda:N")
    p.add_argument(
        "--compile",
        choices=list(COMPILE),
        help="how training steps run: off = Pyro's programs eagerly every step; trace = the step's tensor "
        "operations recorded once per batch shape and replayed (the eager numbers, bit for bit); on = the "
        "recording compiled by torch.compile (seconds to minutes once, cached on disk); auto (default) = "
        "trace for a batch shape with >= 1,000 steps planned, on for an MLP with >= 2 million examples",
    )


def _add_image_flags(p) -> None:
    """The flags for images: colour kept or not, and the network (:mod:`ppl_vae.networks`)."""
    p.add_argument(
        "--grey", action="store_true", default=None, help="convert colour images to one grey channel when loading"
    )
    p.add_argument(
        "--network",
        choices=list(NETWORKS),
        help="encoder and decoder: mlp | conv | resnet (convolutional, with residual blocks) | auto (default: "
        "conv for images of at least 16x16 pixels or in colour, mlp otherwise)",
    )


def _add_structured_flags(p) -> None:
    """The flags that choose a model with labels or groups (:mod:`ppl_vae.app.structured`)."""
    p.add_argument(
        "--labelled",
        type=_labelled,
        metavar="N|FILE",
        help="semi-supervised (M2): keep the labels of N training examples (seeded by --seed, balanced over "
        "the classes) or of those a CSV of index,label rows gives; the rest are summed out",
    )
    p.add_argument(
        "--alpha",
        type=arg("alpha"),
        help="with --labelled: weight of the classification term alpha * log q(y | x) per labelled example "
        "(default: 5; see benchmarks/STRUCTURED.md)",
    )
    p.add_argument(
        "--condition-on",
        metavar="label|COLUMNS",
        help="label: a conditional VAE, p(z | class) and p(x | z, class); COLUMN[,COLUMN...] of a table: the "
        "same on real covariates (standardized); sample with --condition",
    )
    p.add_argument(
        "--groups",
        metavar="COLUMN",
        help="a table column (header name or 0-based index) holding each row's group: group effects "
        "z ~ N(mu_group, tau^2) with mu_group and tau inferred",
    )


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="held-out ELBO and importance-sampled log p(x) of a run",
        description="Evaluate a run folder on its held-out data; prints a table and writes eval.json.",
    )
    p.add_argument("run_dir", type=path_arg)
    p.add_argument(
        "--num-particles",
        "-k",
        type=arg("num_particles"),
        help="importance samples per example (default: the config's, 1000)",
    )
    p.add_argument("--batch-size", type=arg("batch_size"), help="examples per chunk (default: by memory)")
    p.add_argument("--seed", type=arg("seed"), default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="draw from a trained model into an image grid or a CSV table")
    p.add_argument("run_dir", type=path_arg)
    p.add_argument("-n", "--num-samples", type=count("--num-samples", 1, 100_000), default=64)
    p.add_argument(
        "--out",
        type=path_arg,
        help="file to write: .png image grid, or .csv rows (default: "
        "RUN_DIR/figures/samples-<seed>.png; RUN_DIR/samples/samples-<seed>.csv for tables)",
    )
    p.add_argument(
        "--mean",
        action="store_true",
        default=None,  # None: the mean for images, a draw for tables and counts (write_samples decides)
        help="write the mean of p(x | z) at each z ~ p(z) instead of a draw of x (images always show "
        "the mean; tables and counts are draws unless --mean)",
    )
    p.add_argument("--seed", type=arg("seed"), default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--condition",
        metavar="K|V1,V2,...",
        help="the class (--labelled, --condition-on label runs) or group (--groups runs) to generate for, "
        "or the covariates in their own units (--condition-on COLUMNS runs)",
    )


def _labelled(text: str):
    """``--labelled``: a number of examples, or the path of a label file."""
    if text.strip().lstrip("+-").isdigit():
        return arg("labelled")(text)
    return str(path_arg(text))


def train_overrides(args: argparse.Namespace) -> dict:
    """The config fields the train flags set (field -> value), in the order of :data:`TRAIN_FIELDS`."""
    return {name: getattr(args, name) for name in TRAIN_FIELDS if getattr(args, name, None) is not None}


def _train(args) -> None:
    from ppl_vae.app.train import train_command

    done = train_command(
        overrides=train_overrides(args),
        config_file=args.config,
        out=args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=False if args.quiet else None,
        command=["ppl-vae", *args.argv],
        handle_signals=True,
    )
    if not done.is_main:
        return
    processes = f", {done.processes} processes" if done.processes is not None else ""
    print(
        f"trained on {done.dataset}: {done.num_train} train / {done.num_heldout} held-out examples of shape "
        f"{done.data_shape}, {done.epochs} epochs{processes}"
    )
    print(f"held-out ELBO {done.heldout_elbo:.2f} nats per example, {done.units} (train {done.train_elbo:.2f})")
    if done.heldout_bits_per_dim is not None:
        print(f"held-out ELBO in bits/dim: {done.heldout_bits_per_dim:.3f} (an upper bound on -log2 p(x) per value)")
    if done.heldout_accuracy is not None:
        print(f"held-out accuracy of q(y | x) {done.heldout_accuracy:.3f} (s.e. {done.heldout_accuracy_se:.3f})")
    print(f"run folder: {done.run_dir}  (next: ppl-vae evaluate {done.run_dir})")


def _evaluate(args) -> None:
    from ppl_vae.app.run import evaluate_run, evaluation_lines, load_units, read_config

    result = evaluate_run(
        args.run_dir,
        num_particles=args.num_particles,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
    )
    for line in evaluation_lines(result, load_units(args.run_dir)[1], read_config(args.run_dir).prior):
        print(line)
    print(f"wrote {args.run_dir / 'eval.json'}")


def _sample(args) -> None:
    from ppl_vae.app.run import write_samples

    done = write_samples(
        args.run_dir,
        args.num_samples,
        args.out,
        seed=args.seed,
        device=args.device,
        mean=args.mean,
        condition=args.condition,
    )
    print(f"wrote {done.num_samples} samples to {done.path}")


def _list(args) -> None:
    from ppl_vae.catalog import CATALOG
    from ppl_vae.plugins import prior_plugins

    for title, rows in CATALOG.items():
        print(title)
        for name, text in rows.items():
            print(f"  {name:<22}{text}")
        if title.startswith("priors"):
            for name, value in sorted(prior_plugins().items()):
                if name not in rows:
                    print(f"  {name:<22}from an installed package: {value} (entry point ppl_vae.priors)")


def register(sub) -> dict:
    """Add ``train``, ``evaluate``, ``sample`` and ``list``; return their handlers by command name."""
    _add_train(sub)
    _add_evaluate(sub)
    _add_sample(sub)
    sub.add_parser("list", help="every prior, guide, likelihood and objective, one line each")
    return {"train": _train, "evaluate": _evaluate, "sample": _sample, "list": _list}
