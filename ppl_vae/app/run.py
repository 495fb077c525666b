"""Run folders: what ``ppl-vae train`` writes and what ``load``, ``evaluate`` and ``sample`` read.

A run folder holds
``config.json`` (the resolved :class:`Config`), ``checkpoint.pt``, ``metrics.json`` (per-epoch train
and held-out ELBO), ``run.json`` (command, package versions, timing, and the objective used at each latent
site) and ``figures/``
(``reconstructions.png``, ``samples.png``, ``elbo.png``); ``ppl-vae evaluate`` adds ``eval.json``.
Every function here is the Python form of a CLI command.
"""

from __future__ import annotations

import contextlib
import math
import platform
import sys
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import pyro
import torch

from ppl_vae import threads
from ppl_vae.app import plots
from ppl_vae.app.checkpoint import (
    CHECKPOINT_NAME,
    atomic_write,
    load_checkpoint,
    read_json,
    save_checkpoint,
    validate_state_dict,
    write_json,
)
from ppl_vae.app.config import Config
from ppl_vae.app.folders import (
    check_output_dir,
    check_output_file,
    claimed_output_dir,
    locked,
    writing_into,
)
from ppl_vae.app.structured import RunLabels, check_condition, per_class_rows, prepare_structured
from ppl_vae.data.sources import load_dataset
from ppl_vae.data.split import DataSplit
from ppl_vae.data.tables import Scaling
from ppl_vae.errors import CheckpointError, ConfigError
from ppl_vae.guides.encoders import encoder_network
from ppl_vae.infer.distributed import shutdown
from ppl_vae.infer.evaluate import EvalResult, evaluate
from ppl_vae.infer.fit import FitResult, fit, fixed_binarization
from ppl_vae.infer.objectives import resolve_binarize, to_likelihood_space
from ppl_vae.limits import check_bytes, check_disk
from ppl_vae.models import LIKELIHOODS
from ppl_vae.models.decoders import decoder_network
from ppl_vae.models.structured import STRUCTURED_PRIORS
from ppl_vae.networks import NETWORKS, ConvDecoder, ConvEncoder, measure, resolve_network
from ppl_vae.results import Result
from ppl_vae.rng import seeded
from ppl_vae.vae import VAE
from ppl_vae.validation import BOUNDS, check_number

SCALING_NAME = "scaling.json"
#: The units in which log-densities are reported. Tables of real features are standardized for
#: training; their densities are reported for the original features (a constant shift per example).
UNITS_AS_SCORED = "for the data as the likelihood scores it"
UNITS_ORIGINAL = "for the table's features in their original units"
BEST_NAME = "best.pt"
_MODEL_FIELDS = ("latent_dim", "hidden_dims", "prior", "likelihood", "guide")


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against what this machine has."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was requested but CUDA is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return device


def load_data(config: Config) -> DataSplit:
    """The train/held-out split a config names (:func:`ppl_vae.data.load_dataset` with its fields)."""
    return load_dataset(
        config.dataset,
        root=config.data_root,
        download=config.download,
        image_size=config.image_size,
        heldout_fraction=config.heldout_fraction,
        split_seed=config.split_seed,
        grey=config.grey,
    )


def build_vae(config: Config, data_shape) -> VAE:
    """The VAE a config describes (parameters initialised from the current RNG state)."""
    return VAE(
        data_shape,
        config.latent_dim,
        config.hidden_dims,
        prior=config.prior,
        likelihood=config.likelihood,
        guide=config.guide,
        network=config.network,
    )


def default_run_dir(config: Config) -> Path:
    """``runs/<dataset>-<date>-<time>``: the run folder ``ppl-vae train`` makes when no ``--out`` is given."""
    name = config.dataset.split(":", 1)[0]
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for package in ("ppl-vae", "torch", "pyro-ppl", "arviz", "numpy", "scikit-learn", "torchvision"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


@dataclass(frozen=True)
class TrainRun:
    """What :func:`train_run` produced: the run folder, the data it used and the fit result."""

    run_dir: Path
    data: DataSplit
    result: FitResult
    units: str = UNITS_AS_SCORED  # what the ELBOs in ``result.history`` are densities of
    units_shift: float = 0.0  # add to them for the units of the data files (tables)


def train_run(
    config: Config,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    command: list[str] | None = None,
    handle_signals: bool = False,
    distributed=None,
) -> TrainRun:
    """Train a VAE as ``config`` says and write a run folder (``ppl-vae train``).

    Before any work the output is checked (:func:`ppl_vae.app.folders.check_output_dir`: never the current
    directory, a link, a file, a folder ppl_vae did not make or one holding the data). Once the data and
    the model are accepted, the folder is made with its marker and config and stays locked for the
    whole training (a second process asking for the same folder is refused); nothing is written if the
    data or the configuration is refused. The first epoch always ends with a checkpoint; from then on
    ``checkpoint.pt`` (weights and the full training state) and ``metrics.json`` are rewritten
    atomically every ``config.checkpoint_every`` epochs, and ``best.pt`` whenever the held-out ELBO
    improves if ``config.keep_best``. With ``overwrite`` an existing run folder (and only a run folder)
    is replaced when the new one is made. ``handle_signals``: SIGINT/SIGTERM save a resumable checkpoint
    and raise :class:`ppl_vae.infer.fit.TrainingInterrupted`; continue with :func:`resume_run`.
    ``distributed``: a :class:`ppl_vae.infer.distributed.Context`; every process trains, rank 0 writes.
    """
    config.validate()
    run_dir = Path(out) if out is not None else default_run_dir(config)
    main = distributed is None or distributed.is_main
    if main:  # before any work: refuse an output that would destroy something or cannot be written
        check_output_dir(run_dir, "run", overwrite=overwrite, inputs=data_paths(config))
    device = distributed.device if distributed is not None else resolve_device(config.device)
    config, data, labels = prepare_structured(config, load_data(config))
    check_model_size(config, data.data_shape)
    pyro.set_rng_seed(config.seed)
    vae = build_vae(config, data.data_shape).to(device)
    # Record what "auto" resolved to, so that config.json says exactly what ran.
    config = replace(
        config,
        guide=vae.spec["guide"] or config.guide,
        binarize=resolve_binarize(config.binarize, vae.likelihood),
        network=vae.network,
    )
    data, scaling = prepare_table(data, vae.likelihood)
    threads.adapt(step_work(vae, config.batch_size * config.particles))
    if main:  # a checkpoint (weights, Adam's two moments) twice while it is replaced, and figures
        check_disk(
            run_dir, sum(p.numel() for p in vae.parameters()) * 4 * 3 * 2 + _FIGURES_BYTES, f"run folder {run_dir}"
        )
    writer = _RunWriter(
        run_dir,
        config,
        vae,
        data,
        scaling,
        command,
        distributed=distributed,
        fingerprint=data_fingerprint(config),
        labels=labels,
    )
    if not main:
        return writer.train(progress=progress, handle_signals=handle_signals)
    with contextlib.ExitStack() as claim:

        def start() -> None:  # fit accepted the data and the model: make the folder, hold it to the end
            claim.enter_context(claimed_output_dir(run_dir, "run", replace=overwrite, action="train"))
            writer.create()

        return writer.train(progress=progress, handle_signals=handle_signals, on_start=start)


def resume_run(
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    progress: bool | None = None,
    command: list[str] | None = None,
    handle_signals: bool = False,
    device: str | None = None,
    distributed=None,
) -> TrainRun:
    """Continue an interrupted run (``ppl-vae train --resume RUN_DIR``) from its checkpoint, exactly as if
    it had not stopped, up to ``epochs`` in total (default: the configured number; more trains longer)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; pass the folder of an interrupted `ppl-vae train`")
    payload = load_checkpoint(run_dir / CHECKPOINT_NAME)
    training = payload.get("training")
    if not isinstance(training, dict):
        raise CheckpointError(
            f"checkpoint {run_dir / CHECKPOINT_NAME} holds no training state (written by an older "
            "ppl_vae); it can be evaluated and sampled but not resumed"
        )
    if distributed is not None:
        device = str(distributed.device)
    run = load_run(run_dir, device=device or read_config(run_dir).device)
    config = run.config
    if epochs is not None:
        config = replace(config, epochs=check_number(epochs, "epochs")).validate()
    fingerprint = check_same_data(run_dir, config)
    threads.adapt(step_work(run.vae, config.batch_size * config.particles))
    writer = _RunWriter(
        run_dir,
        config,
        run.vae,
        run.data,
        run.scaling,
        command,
        resume=training,
        distributed=distributed,
        fingerprint=fingerprint,
        labels=run.labels,
    )
    if distributed is not None and not distributed.is_main:
        return writer.train(progress=progress, handle_signals=handle_signals)
    with locked(run_dir, "train --resume"):
        return writer.train(progress=progress, handle_signals=handle_signals)


class _RunWriter:
    """Trains and keeps the run folder in step with training: config, checkpoints, metrics, status."""

    def __init__(
        self,
        run_dir: Path,
        config: Config,
        vae: VAE,
        data: DataSplit,
        scaling,
        command,
        *,
        resume: dict | None = None,
        distributed=None,
        fingerprint: dict | None = None,
        labels: RunLabels | None = None,
    ):
        self.run_dir, self.config, self.vae, self.data, self.scaling = run_dir, config, vae, data, scaling
        self.labels = labels or RunLabels()
        self.distributed = distributed
        self.main = distributed is None or distributed.is_main  # only rank 0 writes
        self.command = command if command is not None else sys.argv
        self.fingerprint = fingerprint
        self.resume = resume
        self.created = resume is not None  # a resumed run's folder exists already
        self.best = (
            max((r["heldout_elbo"] for r in resume["history"] if "heldout_elbo" in r), default=None)
            if resume is not None
            else None
        )
        self.started = time.time()
        self.history: list[dict] = list(resume["history"]) if resume is not None else []
        self.saved_epoch = resume["epoch"] if resume is not None else 0  # epoch of the checkpoint on disk
        self.objective = None  # the objective fit used per latent site, from its training state
        self.step_path = None  # how the steps ran (TrainStep.describe), once training has run

    def train(self, *, progress, handle_signals, on_start=None) -> TrainRun:
        from ppl_vae.errors import TrainingDiverged, TrainingInterrupted

        config = self.config
        try:
            result = fit(
                self.vae,
                self.data.train,
                self.data.heldout,
                epochs=config.epochs,
                batch_size=config.batch_size,
                lr=config.lr,
                seed=config.seed,
                binarize=config.binarize,
                elbo=config.elbo,
                num_particles=config.particles,
                beta=config.beta,
                kl_schedule=config.kl_schedule,
                heldout_seed=config.split_seed,
                progress=progress,
                on_epoch_end=self.epoch_end,
                resume=self.resume,
                on_divergence=config.on_divergence,
                handle_signals=handle_signals,
                distributed=self.distributed,
                on_start=on_start,
                labels=self.labels.train,
                heldout_labels=self.labels.heldout,
                compile=config.compile,
            )
        except TrainingInterrupted as stopped:
            self.save(stopped.state, status="interrupted")
            raise TrainingInterrupted(
                f"{stopped}; saved {self.run_dir / CHECKPOINT_NAME}; continue with "
                f"`ppl-vae train --resume {self.run_dir}`",
                stopped.state,
                stopped.signal_name,
            ) from None
        except TrainingDiverged as error:
            if self.created and self.main:
                self.write_run_json("diverged", message=str(error))
                raise TrainingDiverged(
                    f"{error}; the last good checkpoint is {self.run_dir / CHECKPOINT_NAME} (epoch {self.saved_epoch})"
                ) from None
            raise
        self.step_path = result.step
        self.save(result.state, status="complete")
        # Training needs no more collectives: leave the process group now, so that no process waits on a
        # barrier (and its timeout) while the main one draws the figures.
        shutdown(self.distributed)
        if self.main:
            write_figures(
                self.vae,
                self.data,
                result.history,
                self.run_dir / "figures",
                seed=config.seed,
                binarize=config.binarize,
                heldout_seed=config.split_seed,
                labels=self.labels,
            )
        shift, units = units_of(self.scaling)
        return TrainRun(run_dir=self.run_dir, data=self.data, result=result, units=units, units_shift=shift)

    def epoch_end(self, state: dict) -> None:
        self.history = state["history"]
        if not self.main:
            return
        self.create()
        record = self.history[-1]
        if (
            self.config.keep_best
            and "heldout_elbo" in record
            and (self.best is None or record["heldout_elbo"] > self.best)
        ):
            self.best = record["heldout_elbo"]
            self.create()
            save_checkpoint(
                self.run_dir / BEST_NAME,
                model_spec=self.vae.spec,
                state_dict=self.vae.state_dict(),
                epoch=record["epoch"],
                heldout_elbo=record["heldout_elbo"],
            )
        # The first epoch always leaves a checkpoint, so a run folder on disk can always be resumed.
        due = state["epoch"] % self.config.checkpoint_every == 0 or not (self.run_dir / CHECKPOINT_NAME).exists()
        if due and state["epoch"] < self.config.epochs:
            self.save(state, status="training")

    def create(self) -> None:
        """Write the config into the run folder (claimed by :func:`train_run`), once."""
        if self.created:
            return
        write_json(self.run_dir / "config.json", self.config.to_dict())
        if self.scaling is not None:
            write_json(self.run_dir / SCALING_NAME, self.scaling.to_dict())
        self.created = True

    def save(self, state: dict, status: str) -> None:
        """Checkpoint (weights + training state), metrics and run.json, each written atomically; the
        checkpoint first, so that metrics never describe a state that is not on disk."""
        if not self.main:
            return
        self.create()
        if self.resume is not None:  # the epoch count may have been raised on resume
            write_json(self.run_dir / "config.json", self.config.to_dict())
        save_checkpoint(
            self.run_dir / CHECKPOINT_NAME,
            model_spec=self.vae.spec,
            state_dict=self.vae.state_dict(),
            optimizer_state=state["optimizer"],
            epoch=state["epoch"],
            step=state["step"],
            training=state,
        )
        self.saved_epoch = state["epoch"]
        self.objective = state["settings"].get("objective", self.objective)
        history = state["history"]
        shift, _ = units_of(self.scaling)
        units = "ELBO per example in nats (higher is better); held-out ELBO with a fixed binarization"
        if self.scaling is not None:
            units = (
                f"ELBO per example in nats (higher is better) of the STANDARDIZED features the model is "
                f"trained on; add units_shift = {shift:.6g} for the table's original units (as "
                "`ppl-vae evaluate` reports)"
            )
        write_json(
            self.run_dir / "metrics.json",
            {
                "units": units,
                **({"units_shift": shift} if self.scaling is not None else {}),
                "history": history,
                "final": history[-1] if history else None,
            },
        )
        self.write_run_json(status, epoch=state["epoch"], step=state["step"])

    def write_run_json(self, status: str, **extra) -> None:
        path = self.run_dir / "run.json"
        previous = read_json(path, "run.json") if path.exists() else {}
        commands = previous.get("commands", [])
        if not commands or commands[-1] != list(self.command):
            commands = commands + [list(self.command)]
        write_json(
            path,
            {
                "status": status,
                **extra,
                "command": list(self.command),
                "commands": commands,
                "versions": _versions(),
                "device": str(self.vae.device),
                "threads": threads.record(),
                **({"objective": self.objective} if self.objective is not None else {}),
                **({"step": self.step_path} if self.step_path is not None else {}),
                "data": {
                    "name": self.data.name,
                    "data_shape": list(self.data.data_shape),
                    "num_train": int(self.data.train.shape[0]),
                    "num_heldout": int(self.data.heldout.shape[0]),
                    "fingerprint": self.fingerprint,
                },
                "started": previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started))),
                "train_seconds": round(sum(r.get("seconds", 0.0) for r in self.history), 3),  # the SVI steps
            },
        )


def prepare_table(data: DataSplit, likelihood, scaling: Scaling | None = None) -> tuple[DataSplit, Scaling | None]:
    """Tables: refuse image-only likelihoods, standardize real features (fitted on the training part
    unless ``scaling`` is given). Images pass through unchanged."""
    if data.kind != "table":
        return data, None
    kind = getattr(likelihood, "data_kind", "binary")
    if kind == "binary":
        raise ConfigError(
            f"{data.name} is a table of numbers; use --likelihood gaussian (real features), poisson or "
            "negative-binomial (counts)"
        )
    if kind != "real":
        return data, None
    features = math.prod(data.data_shape)
    if scaling is not None and len(scaling.loc) != features:
        raise CheckpointError(
            f"the run's scaling.json standardizes {len(scaling.loc)} features but {data.name} has "
            f"{features}; the data changed since training: restore it, or train again"
        )
    scaling = scaling or Scaling.fit(data.train)
    return replace(data, train=scaling.apply(data.train), heldout=scaling.apply(data.heldout)), scaling


def model_input(x: torch.Tensor, vae: VAE, config: Config) -> torch.Tensor:
    """Examples as the run's likelihood scores them: on the VAE's device, quantized for 8-bit
    likelihoods and binarized the fixed, seeded way used for held-out data."""
    binarize = resolve_binarize(config.binarize, vae.likelihood)
    return fixed_binarization(to_likelihood_space(x.to(vae.device), vae.likelihood), binarize, config.split_seed)


@dataclass(frozen=True)
class LoadedRun:
    """A run folder read back: the trained VAE, its config, its data (tables standardized as in
    training) and the recorded scaling (None for images and count tables)."""

    vae: VAE
    config: Config
    data: DataSplit
    scaling: Scaling | None
    labels: RunLabels = RunLabels()  # per-example labels or groups (:mod:`ppl_vae.app.structured`)


def load_run(run_dir: str | Path, *, device: str = "cpu") -> LoadedRun:
    """Everything the commands that read a run folder need (``evaluate``, ``interpolate``, ...)."""
    run_dir = Path(run_dir)
    vae = load(run_dir, device=device)
    config = read_config(run_dir)
    scaling = _read_scaling(run_dir)
    resolved, data, labels = prepare_structured(config, load_data(config))
    if resolved.prior != config.prior:
        raise CheckpointError(
            f"{run_dir / 'config.json'} says prior {config.prior!r} but its data and flags give "
            f"{resolved.prior!r} (the labels or groups changed since training); restore the data, or train again"
        )
    data, _ = prepare_table(data, vae.likelihood, scaling)
    return LoadedRun(vae=vae, config=config, data=data, scaling=scaling, labels=labels)


def units_of(scaling: Scaling | None) -> tuple[float, str]:
    """``(shift, label)``: add ``shift`` to a log-density of the data as the model scores it to get the
    one that ``label`` names (the original units of a standardized table)."""
    if scaling is None:
        return 0.0, UNITS_AS_SCORED
    return float(scaling.log_abs_det), UNITS_ORIGINAL


def load_units(run_dir: str | Path) -> tuple[float, str]:
    """:func:`units_of` for a run folder."""
    return units_of(_read_scaling(Path(run_dir)))


def _read_scaling(run_dir: Path) -> Scaling | None:
    path = run_dir / SCALING_NAME
    return Scaling.from_dict(read_json(path, "scaling"), source=str(path)) if path.exists() else None


def write_figures(
    vae: VAE,
    data: DataSplit,
    history: list[dict],
    folder: Path,
    *,
    seed: int = 0,
    binarize: str = "auto",
    heldout_seed: int = 0,
    labels: RunLabels | None = None,
) -> list[Path]:
    """Reconstructions, prior samples and the ELBO curve (only the curve when the data are not images).

    A model with a class label (semi-supervised, conditional) draws its samples by class, one row per
    class; its reconstructions use the held-out labels (the classifier's guess for semi-supervised)."""
    labels = labels or RunLabels()
    if data.kind == "table" or plots.as_images(data.heldout[:1]) is None:
        plots.save_figure(plots.elbo_figure(history), folder / "elbo.png")
        return [folder / "elbo.png"]
    device = vae.device
    binarize = resolve_binarize(binarize, vae.likelihood)
    per_class = per_class_rows(labels)
    with seeded(seed, device):
        inputs = fixed_binarization(
            to_likelihood_space(data.heldout[:32].to(device), vae.likelihood), binarize, heldout_seed
        )
        given = None if labels.heldout is None or labels.role == "semi" else labels.heldout[:32].to(device)
        recon = vae.reconstruct(inputs, given) if vae.structured else vae.reconstruct(inputs)
        if per_class is None:
            samples = vae.sample(64)
        else:
            classes = torch.arange(labels.classes, device=device).repeat_interleave(per_class)
            samples = vae.sample(len(classes), c=classes)
    paths = [folder / "reconstructions.png", folder / "samples.png", folder / "elbo.png"]
    sample_figure = (
        plots.samples_figure(samples)
        if per_class is None
        else plots.samples_figure(samples, "samples by class: row k is class k, mean of p(x | z, k)", ncol=per_class)
    )
    for fig, path in zip(
        (plots.reconstructions_figure(inputs, recon), sample_figure, plots.elbo_figure(history)), paths
    ):
        plots.save_figure(fig, path)
    return paths


def read_config(run_dir: Path) -> Config:
    """A run folder's ``config.json``: every field present and valid (a missing ``dataset`` must not
    quietly become the digits)."""
    return Config.from_dict(
        read_json(Path(run_dir) / "config.json", "config"), source=f"{Path(run_dir) / 'config.json'}", complete=True
    )


def data_paths(config: Config) -> list[Path]:
    """The files or folders a config's data set is read from (what no output may replace)."""
    kind, _, rest = config.dataset.partition(":")
    kind = kind.lower()
    if kind in ("npz", "folder", "table", "cifar10") and rest:
        return [Path(rest)]
    if kind in ("mnist", "fashion-mnist", "kmnist"):
        return [Path(config.data_root)]
    if kind == "cifar10":
        return [Path(config.data_root) / "cifar-10-batches-bin"]
    return []


def data_fingerprint(config: Config) -> dict | None:
    """A content hash of the files the config's data set is read from
    (:func:`ppl_vae.data.sources.data_fingerprint`)."""
    from ppl_vae.data.sources import data_fingerprint as fingerprint

    return fingerprint(config.dataset, root=config.data_root)


def check_same_data(run_dir: Path, config: Config) -> dict | None:
    """Refuse to resume a run whose data changed since it was trained; returns the fingerprint."""
    path = Path(run_dir) / "run.json"
    recorded = (read_json(path, "run.json").get("data") or {}).get("fingerprint") if path.exists() else None
    now = data_fingerprint(config)
    if recorded is not None and now is not None and recorded.get("sha256") != now.get("sha256"):
        raise CheckpointError(
            f"the data of {run_dir} ({config.dataset}) changed since the run was trained (content "
            "hash differs); resuming would mix two data sets: restore the data, or train a new run"
        )
    return now


#: Room for a run folder's figures and JSON files.
_FIGURES_BYTES = 8 * 1024**2

#: Bytes per float32 parameter while training: the value, its gradient and Adam's two moments.
_TRAINING_BYTES_PER_PARAMETER = 16


def _params_per_feature(likelihood: str) -> int:
    """Numbers the decoder emits per feature for a likelihood name (2 where the name is not known here)."""
    return int(getattr(LIKELIHOODS.get(likelihood.partition(":")[0]), "params_per_feature", 2))


def _layer_sizes(config: Config, data_shape) -> tuple[list[int], list[int]]:
    features = 1
    for size in data_shape:
        features *= int(size)
    hidden = [int(h) for h in config.hidden_dims]
    outputs = _params_per_feature(config.likelihood) * features
    return [features, *hidden, 2 * config.latent_dim], [config.latent_dim, *reversed(hidden), outputs]


def network_size(config: Config, data_shape) -> tuple[int, int]:
    """``(parameters, activations per example)`` of the encoder and decoder a config builds for data of
    ``data_shape``, before building them: counted from the layer widths for an MLP, measured on PyTorch's
    meta device (shapes only, nothing allocated) for the convolutional networks. The guide's head is taken
    as ``2 * latent_dim`` outputs (the normal family)."""
    network = resolve_network(config.network, data_shape)
    if network == "mlp":
        encoder, decoder = _layer_sizes(config, data_shape)
        params = sum(a * b + b for layers in (encoder, decoder) for a, b in zip(layers, layers[1:]))
        return params, sum(encoder) + sum(decoder)
    hidden = [int(h) for h in config.hidden_dims]
    k = _params_per_feature(config.likelihood)
    with torch.device("meta"):
        encoder = encoder_network(network, data_shape, hidden, 2 * config.latent_dim)
        decoder = decoder_network(network, config.latent_dim, hidden[::-1], data_shape, k)
    work = [measure(encoder, data_shape), measure(decoder, (config.latent_dim,))]
    return sum(w.parameters for w in work), sum(w.activations for w in work)


def check_model_size(config: Config, data_shape) -> None:
    """Refuse, before building anything, a network or a batch that would not fit the memory budget
    (:mod:`ppl_vae.limits`): the parameters with their gradients and Adam moments, and one batch's
    activations (:func:`network_size`). A convolutional network asked for data that are not images is
    refused here too (:func:`ppl_vae.networks.resolve_network`)."""
    params, width = network_size(config, data_shape)
    check_bytes(
        params * _TRAINING_BYTES_PER_PARAMETER,
        f"a network of {params:,} parameters (latent_dim "
        f"{config.latent_dim}, hidden_dims {config.hidden_dims}, data of shape {tuple(data_shape)})",
    )
    rows = config.batch_size * config.particles
    check_bytes(
        rows * width * 4 * 3,
        f"a batch of {config.batch_size} examples x {config.particles} particles "
        f"through layers of {width:,} units in all",
    )


def step_work(vae: VAE, rows: int) -> float:
    """Multiply-adds of one training step, roughly, for the thread choice: examples x (the parameters of the
    fully connected parts, each used once per example, + the multiply-adds of the convolutional networks,
    whose weights are used at every position of the image)."""
    convs = [m for m in vae.modules() if isinstance(m, (ConvEncoder, ConvDecoder))]
    inside = {id(p) for m in convs for p in m.parameters()}
    work = sum(p.numel() for p in vae.parameters() if id(p) not in inside)
    work += sum(measure(m, m.input_shape).multiply_adds for m in convs)
    return float(work) * rows


def load(run_dir: str | Path, *, device: str = "cpu") -> VAE:
    """The trained VAE of a run folder, checked against its config; loading executes no code."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; pass the folder `ppl-vae train` printed")
    config = read_config(run_dir)
    payload = load_checkpoint(run_dir / CHECKPOINT_NAME)
    spec = payload.get("model_spec") or {}
    for name in _MODEL_FIELDS:
        if spec.get(name) != getattr(config, name):
            raise CheckpointError(
                f"checkpoint {run_dir / CHECKPOINT_NAME} does not match {run_dir / 'config.json'}: {name} is "
                f"{spec.get(name)!r} in the checkpoint but {getattr(config, name)!r} in the config; restore the config"
            )
    network = spec.get("network", "mlp")  # checkpoints from before the convolutional networks: MLPs
    if spec.get("decoder") != network or network not in NETWORKS or not spec.get("data_shape"):
        raise CheckpointError(
            f"checkpoint {run_dir / CHECKPOINT_NAME} holds a VAE built from custom objects; "
            "rebuild it in Python and call vae.load_state_dict(...)"
        )
    _check_network(config, spec, network, run_dir)
    vae = VAE(
        spec["data_shape"],
        spec["latent_dim"],
        spec["hidden_dims"],
        prior=spec["prior"],
        likelihood=spec["likelihood"],
        guide=spec["guide"],
        network=network,
    )
    validate_state_dict(payload["state_dict"], vae.state_dict(), run_dir / CHECKPOINT_NAME)
    try:
        vae.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint {run_dir / CHECKPOINT_NAME} does not fit the architecture in its config ({first}); train again"
        ) from None
    vae.eval()
    return vae.to(resolve_device(device))


def _check_network(config: Config, spec: dict, network: str, run_dir: Path) -> None:
    """Refuse a checkpoint whose network is not the one its config.json names."""
    try:
        named = resolve_network(config.network, spec["data_shape"])
    except ConfigError:
        named = config.network
    if named != network:
        raise CheckpointError(
            f"checkpoint {run_dir / CHECKPOINT_NAME} does not match {run_dir / 'config.json'}: network is "
            f"{network!r} in the checkpoint but {config.network!r} in the config; restore the config"
        )


def evaluate_run(
    run_dir: str | Path,
    *,
    num_particles: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> EvalResult:
    """Evaluate a run folder on its held-out data and write ``eval.json`` (``ppl-vae evaluate``), holding the
    run folder's lock from loading to writing (refused at once while train --resume or diagnose hold it)."""
    run_dir = Path(run_dir)
    with writing_into(run_dir, [run_dir / "eval.json"], "evaluate"):
        return _evaluate_and_write(run_dir, num_particles, batch_size, seed, device, progress)


def _evaluate_and_write(run_dir: Path, num_particles, batch_size, seed, device, progress) -> EvalResult:
    """:func:`evaluate_run` once the run folder is locked."""
    run = load_run(run_dir, device=device)
    vae, config, data, scaling = run.vae, run.config, run.data, run.scaling
    heldout = model_input(data.heldout, vae, config)
    num_particles = config.num_particles if num_particles is None else check_number(num_particles, "num_particles")
    threads.adapt(step_work(vae, num_particles))
    result = evaluate(
        vae,
        heldout,
        num_particles=num_particles,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        c=None if run.labels.heldout is None else run.labels.heldout.to(vae.device),
    )
    if scaling is not None:  # report log-densities of the original, unscaled features
        shift = scaling.log_abs_det
        result = replace(
            result,
            elbo=result.elbo + shift,
            log_likelihood=result.log_likelihood + shift,
            reconstruction=result.reconstruction + shift,
            joint_elbo=result.joint_elbo + shift,
            per_example={k: v + shift for k, v in result.per_example.items()},
        )
    _, label = units_of(scaling)
    write_json(
        run_dir / "eval.json",
        {
            **result.to_dict(),
            "seed": seed,
            "dataset": data.name,
            "units": f"per example, nats, {label}; *_se: Monte Carlo standard error; "
            "*_data_se: standard error over examples",
        },
    )
    return result


def evaluation_lines(result: EvalResult, units: str, prior: str = "normal") -> list[str]:
    """``ppl-vae evaluate``'s table of a :func:`evaluate_run` result (per example, in nats, of ``units``),
    with a warning line when the model ignores its latent code (posterior collapse). ``prior``: the run's
    prior name; for a structured prior the KL row covers every latent site (y and z), and says so."""
    from ppl_vae.infer.evaluate import COLLAPSE_NATS, ELBO

    given_globals = result.elbo_kind != ELBO
    rows = [
        (
            "ELBO given q(globals), not a bound" if given_globals else "ELBO",
            result.elbo,
            result.elbo_se,
            result.elbo_data_se,
        ),
        (
            f"log p(x), IWAE K={result.num_particles}",
            result.log_likelihood,
            result.log_likelihood_se,
            result.log_likelihood_data_se,
        ),
        ("reconstruction E_q[log p(x|z)]", result.reconstruction, result.reconstruction_se, None),
        (
            "KL part, every latent site" if prior.partition(":")[0] in STRUCTURED_PRIORS else "KL(q(z|x) || p(z))",
            result.kl,
            result.kl_se,
            None,
        ),
    ]
    if given_globals:  # the bound on the data set's evidence includes KL(q(globals) || p(globals)) / N
        rows.insert(1, ("joint ELBO (bound on log p(x_1..N)/N)", result.joint_elbo, result.joint_elbo_se, None))
    if result.bits_per_dim is not None:  # 8-bit data: the field's unit, -log2 p(x) per value
        per_nat = result.bits_per_dim / -result.log_likelihood if result.log_likelihood else 0.0
        data_se = result.log_likelihood_data_se * per_nat
        rows.insert(
            2, ("-log p(x) in bits/dim (lower is better)", result.bits_per_dim, result.bits_per_dim_se, data_se)
        )
    lines = [
        f"{result.num_examples} held-out examples, per example in nats, {units}",
        f"{'quantity':<40}{'mean':>12}{'MC s.e.':>10}{'s.e. over examples':>20}",
    ]
    for name, mean, se, data_se in rows:
        lines.append(f"{name:<40}{mean:>12.3f}{se:>10.3f}{'' if data_se is None else f'{data_se:>20.3f}'}")
    if result.accuracy is not None:
        lines.append(
            f"{'accuracy of q(y | x) (share, not nats)':<40}{result.accuracy:>12.3f}{'':>10}{result.accuracy_se:>20.3f}"
        )
    if result.kl < COLLAPSE_NATS:
        lines.append(
            f"warning: posterior collapse: KL(q(z|x) || p(z)) is {result.kl:.3f} nats per example, so the "
            "model ignores its latent code and decodes every x the same way; the numbers above describe a "
            "model that does not use z"
        )
    return lines


def default_sample_path(run_dir: str | Path, seed: int = 0, condition: int | str | None = None) -> Path:
    """Where ``ppl-vae sample`` writes by default: an image grid, or a CSV table for table runs
    (``samples-<seed>``, or ``samples-c<condition>-<seed>`` for one class or group)."""
    table = str(read_config(Path(run_dir)).dataset).startswith("table:")
    stem = f"samples-{seed}" if condition is None else f"samples-c{str(condition).replace(',', '_')}-{seed}"
    return Path(run_dir) / ("samples" if table else "figures") / f"{stem}.{'csv' if table else 'png'}"


def sample_run(
    run_dir: str | Path,
    num_samples: int = 64,
    out: str | Path | None = None,
    *,
    seed: int = 0,
    device: str = "cpu",
    mean: bool | None = None,
    condition: int | str | None = None,
) -> torch.Tensor:
    """Draw ``num_samples`` examples from a trained model, ``(num_samples, *data_shape)``; with ``out``,
    also write them (``ppl-vae sample``): a ``.png`` image grid or ``.csv`` rows with the table's header.

    ``condition``: the class (semi-supervised, conditional) or group (group effects) to generate for, or
    ``"v1,v2"`` the covariates (in their own units) of a ``--condition-on COLUMNS`` run; required by
    conditional, covariate and group-effects models, refused by models without labels.

    ``mean``: the mean of p(x | z) at each z ~ p(z) instead of a draw of x. Default: the mean for an image
    grid (what figures show), a draw otherwise (a count table's samples are counts, not rates).
    """
    run_dir = Path(run_dir)
    check_number(num_samples, "the number of samples", BOUNDS["num_samples"])
    check_number(seed, "seed")
    if out is not None:  # before any work: an output that cannot be written, or would replace an input
        check_output_file(
            out,
            inputs=[run_dir / CHECKPOINT_NAME, run_dir / "config.json", *data_paths(read_config(run_dir))],
            suffixes=(".png", ".csv"),
        )
    with writing_into(run_dir, [out], "sample"):  # no lock when nothing is written into the run folder
        return _draw_samples(run_dir, num_samples, out, seed=seed, device=device, mean=mean, condition=condition)


def _draw_samples(run_dir: Path, num_samples: int, out, *, seed, device, mean, condition) -> torch.Tensor:
    """:func:`sample_run` once its output is checked (and the run folder locked, if written)."""
    run = load_run(run_dir, device=device)
    vae = run.vae
    given = check_condition(run.labels, condition)
    check_bytes(
        num_samples * math.prod(vae.data_shape) * 4 * 4, f"{num_samples} samples of shape {tuple(vae.data_shape)}"
    )
    scaling = _read_scaling(run_dir)
    table = out is not None and Path(out).suffix.lower() == ".csv"
    if (
        out is not None
        and not table
        and (plots.as_images(torch.zeros(1, *vae.data_shape)) is None or scaling is not None)
    ):
        raise ConfigError(
            f"the samples are rows of a table, not images; write them with --out {Path(out).with_suffix('.csv')}"
        )
    if mean is None:
        mean = out is not None and not table
    with seeded(seed, vae.device):
        samples = (
            vae.sample(num_samples, mean=mean, c=given) if given is not None else vae.sample(num_samples, mean=mean)
        ).cpu()
    if scaling is not None:
        samples = scaling.invert(samples)  # back to the original units
    if out is not None:
        if table:
            _write_csv(Path(out), samples.reshape(num_samples, -1), _column_names(read_config(run_dir)))
        else:
            plots.save_figure(plots.samples_figure(samples), Path(out))
    return samples


@dataclass(frozen=True)
class SamplesWritten(Result):
    """What :func:`write_samples` wrote: ``num_samples`` samples to ``path``."""

    path: Path
    num_samples: int


def write_samples(
    run_dir: str | Path,
    num_samples: int = 64,
    out: str | Path | None = None,
    *,
    seed: int = 0,
    device: str = "cpu",
    mean: bool | None = None,
    condition: int | str | None = None,
) -> SamplesWritten:
    """``ppl-vae sample``: :func:`sample_run` into ``out``, by default :func:`default_sample_path` (an image
    grid, or a CSV table for runs trained on tables)."""
    out = Path(out) if out is not None else default_sample_path(run_dir, seed, condition)
    sample_run(run_dir, num_samples, out, seed=seed, device=device, mean=mean, condition=condition)
    return SamplesWritten(path=out, num_samples=num_samples)


def _column_names(config: Config) -> list[str] | None:
    """The table's column names, without the group column of a ``--groups`` run (not a feature)."""
    from ppl_vae.data.tables import column_names

    spec = config.dataset
    names = column_names(spec.split(":", 1)[1]) if spec.startswith("table:") else None
    taken = [config.groups] if config.groups is not None else []
    if config.condition_on not in (None, "label"):
        taken += [c.strip() for c in config.condition_on.split(",")]
    if names and taken:
        names = [n for i, n in enumerate(names) if n not in taken and str(i) not in taken]
    return names


def _write_csv(path: Path, rows: torch.Tensor, names: list[str] | None) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names if names and len(names) == rows.shape[1] else [f"x{j}" for j in range(rows.shape[1])])
    integral = bool(torch.all(rows == rows.round()))
    for row in rows.tolist():
        writer.writerow([f"{v:.0f}" if integral else f"{v:.6g}" for v in row])
    atomic_write(path, lambda handle: handle.write(buffer.getvalue().encode()))
