"""Run folders: what ``ppl-vae train`` writes and what ``load``, ``evaluate`` and ``sample`` read.

A run folder holds
``config.json`` (the resolved :class:`Config`), ``checkpoint.pt``, ``metrics.json`` (per-epoch train
and held-out ELBO), ``run.json`` (command, package versions, timing) and ``figures/``
(``reconstructions.png``, ``samples.png``, ``elbo.png``); ``ppl-vae evaluate`` adds ``eval.json``.
Every function here is the Python form of a CLI command.
"""

from __future__ import annotations

import platform
import shutil
import sys
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import pyro
import torch

from ppl_vae import plots
from ppl_vae.checkpoint import CHECKPOINT_NAME, atomic_write, load_checkpoint, read_json, save_checkpoint, write_json
from ppl_vae.compat import resolve_binarize, to_likelihood_space
from ppl_vae.config import Config
from ppl_vae.data import DataSplit, load_dataset
from ppl_vae.errors import CheckpointError, ConfigError
from ppl_vae.evaluate import EvalResult, evaluate
from ppl_vae.tabular import Scaling
from ppl_vae.train import FitResult, fit, fixed_binarization
from ppl_vae.vae import VAE

SCALING_NAME = "scaling.json"
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
    return load_dataset(config.dataset, root=config.data_root, download=config.download, image_size=config.image_size,
                        heldout_fraction=config.heldout_fraction, split_seed=config.split_seed)


def build_vae(config: Config, data_shape) -> VAE:
    """The VAE a config describes (parameters initialised from the current RNG state)."""
    return VAE(data_shape, config.latent_dim, config.hidden_dims, prior=config.prior,
               likelihood=config.likelihood, guide=config.guide)


def default_run_dir(config: Config) -> Path:
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


def train_run(config: Config, out: str | Path | None = None, *, overwrite: bool = False,
              progress: bool | None = None, command: list[str] | None = None,
              handle_signals: bool = False, distributed=None) -> TrainRun:
    """Train a VAE as ``config`` says and write a run folder (``ppl-vae train``).

    The folder is created, with a first checkpoint, when the first epoch ends (nothing is written if
    the data or the configuration is refused). From then on ``checkpoint.pt`` (weights and the full training state)
    and ``metrics.json`` are rewritten atomically every ``config.checkpoint_every`` epochs, and
    ``best.pt`` whenever the held-out ELBO improves if ``config.keep_best``. With ``overwrite`` an
    existing folder is replaced at that moment. ``handle_signals``: SIGINT/SIGTERM save a resumable
    checkpoint and raise :class:`ppl_vae.train.TrainingInterrupted`; continue with :func:`resume_run`.
    ``distributed``: a :class:`ppl_vae.distributed.Context`; every process trains, rank 0 writes.
    """
    config.validate()
    run_dir = Path(out) if out is not None else default_run_dir(config)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        if not overwrite:
            raise ConfigError(f"run folder {run_dir} already exists and is not empty; choose another --out, pass "
                              f"--overwrite, or continue it with `ppl-vae train --resume {run_dir}`")
    device = distributed.device if distributed is not None else resolve_device(config.device)
    data = load_data(config)
    pyro.set_rng_seed(config.seed)
    vae = build_vae(config, data.data_shape).to(device)
    # Record what "auto" resolved to, so that config.json says exactly what ran.
    config = replace(config, guide=vae.spec["guide"] or config.guide,
                     binarize=resolve_binarize(config.binarize, vae.likelihood))
    data, scaling = prepare_table(data, vae.likelihood)
    writer = _RunWriter(run_dir, config, vae, data, scaling, command, replace_existing=overwrite,
                        distributed=distributed)
    return writer.train(progress=progress, handle_signals=handle_signals)


def resume_run(run_dir: str | Path, *, epochs: int | None = None, progress: bool | None = None,
               command: list[str] | None = None, handle_signals: bool = False, device: str | None = None,
               distributed=None) -> TrainRun:
    """Continue an interrupted run (``ppl-vae train --resume RUN_DIR``) from its checkpoint, exactly as if
    it had not stopped, up to ``epochs`` in total (default: the configured number; more trains longer)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; pass the folder of an interrupted `ppl-vae train`")
    payload = load_checkpoint(run_dir / CHECKPOINT_NAME)
    training = payload.get("training")
    if not isinstance(training, dict):
        raise CheckpointError(f"checkpoint {run_dir / CHECKPOINT_NAME} holds no training state (written by an older "
                              "ppl_vae); it can be evaluated and sampled but not resumed")
    if distributed is not None:
        device = str(distributed.device)
    run = load_run(run_dir, device=device or read_config(run_dir).device)
    config = run.config
    if epochs is not None:
        config = replace(config, epochs=epochs).validate()
    writer = _RunWriter(run_dir, config, run.vae, run.data, run.scaling, command, resume=training,
                        distributed=distributed)
    return writer.train(progress=progress, handle_signals=handle_signals)


class _RunWriter:
    """Trains and keeps the run folder in step with training: config, checkpoints, metrics, status."""

    def __init__(self, run_dir: Path, config: Config, vae: VAE, data: DataSplit, scaling, command,
                 *, replace_existing: bool = False, resume: dict | None = None, distributed=None):
        self.run_dir, self.config, self.vae, self.data, self.scaling = run_dir, config, vae, data, scaling
        self.distributed = distributed
        self.main = distributed is None or distributed.is_main      # only rank 0 writes
        self.command = command if command is not None else sys.argv
        self.replace_existing = replace_existing
        self.resume = resume
        self.created = resume is not None          # a resumed run's folder exists already
        self.best = max((r["heldout_elbo"] for r in resume["history"] if "heldout_elbo" in r), default=None) \
            if resume is not None else None
        self.started = time.time()
        self.history: list[dict] = list(resume["history"]) if resume is not None else []
        self.saved_epoch = resume["epoch"] if resume is not None else 0   # epoch of the checkpoint on disk

    def train(self, *, progress, handle_signals) -> TrainRun:
        from ppl_vae.train import TrainingDiverged, TrainingInterrupted

        config = self.config
        try:
            result = fit(self.vae, self.data.train, self.data.heldout, epochs=config.epochs,
                         batch_size=config.batch_size, lr=config.lr, seed=config.seed, binarize=config.binarize,
                         elbo=config.elbo, num_particles=config.particles, beta=config.beta,
                         kl_schedule=config.kl_schedule, heldout_seed=config.split_seed, progress=progress,
                         on_epoch_end=self.epoch_end, resume=self.resume, on_divergence=config.on_divergence,
                         handle_signals=handle_signals, distributed=self.distributed)
        except TrainingInterrupted as stopped:
            self.save(stopped.state, status="interrupted")
            raise TrainingInterrupted(f"{stopped}; saved {self.run_dir / CHECKPOINT_NAME}; continue with "
                                      f"`ppl-vae train --resume {self.run_dir}`", stopped.state,
                                      stopped.signal_name) from None
        except TrainingDiverged as error:
            if self.created and self.main:
                self.write_run_json("diverged", message=str(error))
                raise TrainingDiverged(f"{error}; the last good checkpoint is {self.run_dir / CHECKPOINT_NAME} "
                                       f"(epoch {self.saved_epoch})") from None
            raise
        self.save(result.state, status="complete")
        if self.main:
            write_figures(self.vae, self.data, result.history, self.run_dir / "figures", seed=config.seed,
                          binarize=config.binarize, heldout_seed=config.split_seed)
        return TrainRun(run_dir=self.run_dir, data=self.data, result=result)

    def epoch_end(self, state: dict) -> None:
        self.history = state["history"]
        if not self.main:
            return
        self.create()
        record = self.history[-1]
        if self.config.keep_best and "heldout_elbo" in record and (self.best is None or record["heldout_elbo"] > self.best):
            self.best = record["heldout_elbo"]
            self.create()
            save_checkpoint(self.run_dir / BEST_NAME, model_spec=self.vae.spec, state_dict=self.vae.state_dict(),
                            epoch=record["epoch"], heldout_elbo=record["heldout_elbo"])
        # The first epoch always leaves a checkpoint, so a run folder on disk can always be resumed.
        due = state["epoch"] % self.config.checkpoint_every == 0 or not (self.run_dir / CHECKPOINT_NAME).exists()
        if due and state["epoch"] < self.config.epochs:
            self.save(state, status="training")

    def create(self) -> None:
        """Make the run folder with its config (once; replacing an old folder if asked)."""
        if self.created:
            return
        if self.replace_existing and self.run_dir.exists():
            shutil.rmtree(self.run_dir) if self.run_dir.is_dir() else self.run_dir.unlink()
        self.run_dir.mkdir(parents=True, exist_ok=True)
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
        if self.resume is not None:               # the epoch count may have been raised on resume
            write_json(self.run_dir / "config.json", self.config.to_dict())
        save_checkpoint(self.run_dir / CHECKPOINT_NAME, model_spec=self.vae.spec, state_dict=self.vae.state_dict(),
                        optimizer_state=state["optimizer"], epoch=state["epoch"], step=state["step"], training=state)
        self.saved_epoch = state["epoch"]
        history = state["history"]
        write_json(self.run_dir / "metrics.json", {
            "units": "ELBO per example in nats (higher is better); held-out ELBO with a fixed binarization",
            "history": history,
            "final": history[-1] if history else None,
        })
        self.write_run_json(status, epoch=state["epoch"], step=state["step"])

    def write_run_json(self, status: str, **extra) -> None:
        path = self.run_dir / "run.json"
        previous = read_json(path, "run.json") if path.exists() else {}
        commands = previous.get("commands", [])
        if not commands or commands[-1] != list(self.command):
            commands = commands + [list(self.command)]
        write_json(path, {
            "status": status,
            **extra,
            "command": list(self.command),
            "commands": commands,
            "versions": _versions(),
            "device": str(self.vae.device),
            "threads": torch.get_num_threads(),
            "data": {"name": self.data.name, "data_shape": list(self.data.data_shape),
                     "num_train": int(self.data.train.shape[0]), "num_heldout": int(self.data.heldout.shape[0])},
            "started": previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started))),
            "train_seconds": round(sum(r.get("seconds", 0.0) for r in self.history), 3),   # the SVI steps
        })


def prepare_table(data: DataSplit, likelihood, scaling: Scaling | None = None) -> tuple[DataSplit, Scaling | None]:
    """Tables: refuse image-only likelihoods, standardize real features (fitted on the training part
    unless ``scaling`` is given). Images pass through unchanged."""
    if data.kind != "table":
        return data, None
    kind = getattr(likelihood, "data_kind", "binary")
    if kind == "binary":
        raise ConfigError(f"{data.name} is a table of numbers; use --likelihood gaussian (real features), poisson or "
                          "negative-binomial (counts)")
    if kind != "real":
        return data, None
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


def load_run(run_dir: str | Path, *, device: str = "cpu") -> LoadedRun:
    """Everything the commands that read a run folder need (``evaluate``, ``interpolate``, ...)."""
    run_dir = Path(run_dir)
    vae = load(run_dir, device=device)
    config = read_config(run_dir)
    scaling = _read_scaling(run_dir)
    data, _ = prepare_table(load_data(config), vae.likelihood, scaling)
    return LoadedRun(vae=vae, config=config, data=data, scaling=scaling)


def _read_scaling(run_dir: Path) -> Scaling | None:
    path = run_dir / SCALING_NAME
    return Scaling.from_dict(read_json(path, "scaling")) if path.exists() else None


def write_figures(vae: VAE, data: DataSplit, history: list[dict], folder: Path, *, seed: int = 0,
                  binarize: str = "auto", heldout_seed: int = 0) -> list[Path]:
    """Reconstructions, prior samples and the ELBO curve (only the curve when the data are not images)."""
    if data.kind == "table" or plots._as_images(data.heldout[:1]) is None:
        plots.save_figure(plots.elbo_figure(history), folder / "elbo.png")
        return [folder / "elbo.png"]
    device = vae.device
    binarize = resolve_binarize(binarize, vae.likelihood)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inputs = fixed_binarization(to_likelihood_space(data.heldout[:32].to(device), vae.likelihood), binarize,
                                    heldout_seed)
        recon = vae.reconstruct(inputs)
        samples = vae.sample(64)
    paths = [folder / "reconstructions.png", folder / "samples.png", folder / "elbo.png"]
    for fig, path in zip((plots.reconstructions_figure(inputs, recon), plots.samples_figure(samples),
                          plots.elbo_figure(history)), paths):
        plots.save_figure(fig, path)
    return paths


def read_config(run_dir: Path) -> Config:
    return Config.from_dict(read_json(run_dir / "config.json", "config"), source=f"{run_dir / 'config.json'}")


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
                f"{spec.get(name)!r} in the checkpoint but {getattr(config, name)!r} in the config; restore the config")
    if spec.get("decoder") != "mlp" or not spec.get("data_shape"):
        raise CheckpointError(f"checkpoint {run_dir / CHECKPOINT_NAME} holds a VAE built from custom objects; "
                              "rebuild it in Python and call vae.load_state_dict(...)")
    vae = VAE(spec["data_shape"], spec["latent_dim"], spec["hidden_dims"], prior=spec["prior"],
              likelihood=spec["likelihood"], guide=spec["guide"])
    try:
        vae.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {run_dir / CHECKPOINT_NAME} does not fit the architecture in its config "
                              f"({first}); train again") from None
    vae.eval()
    return vae.to(resolve_device(device))


def evaluate_run(run_dir: str | Path, *, num_particles: int | None = None, batch_size: int | None = None,
                 seed: int = 0, device: str = "cpu", progress: bool = False) -> EvalResult:
    """Evaluate a run folder on its held-out data and write ``eval.json`` (``ppl-vae evaluate``)."""
    run_dir = Path(run_dir)
    run = load_run(run_dir, device=device)
    vae, config, data, scaling = run.vae, run.config, run.data, run.scaling
    heldout = model_input(data.heldout, vae, config)
    result = evaluate(vae, heldout, num_particles=num_particles or config.num_particles, batch_size=batch_size,
                      seed=seed, progress=progress)
    if scaling is not None:       # report log-densities of the original, unscaled features
        shift = scaling.log_abs_det
        result = replace(result, elbo=result.elbo + shift, log_likelihood=result.log_likelihood + shift,
                         reconstruction=result.reconstruction + shift,
                         per_example={k: v + shift for k, v in result.per_example.items()})
    write_json(run_dir / "eval.json", {**result.to_dict(), "seed": seed, "dataset": data.name,
                                       "units": "per example, nats; *_se: Monte Carlo standard error; "
                                                "*_data_se: standard error over examples"})
    return result


def sample_run(run_dir: str | Path, num_samples: int = 64, out: str | Path | None = None, *, seed: int = 0,
               device: str = "cpu") -> torch.Tensor:
    """Draw from a trained model; with ``out``, also write an image grid (``ppl-vae sample``)."""
    if num_samples < 1:
        raise ConfigError(f"the number of samples must be positive, got {num_samples}")
    vae = load(run_dir, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        samples = vae.sample(num_samples).cpu()
    scaling = _read_scaling(Path(run_dir))
    if scaling is not None:
        samples = scaling.invert(samples)                 # back to the original units
    if out is not None:
        out = Path(out)
        if out.suffix.lower() == ".csv":
            rows = "\n".join(",".join(f"{v:.6g}" for v in row) for row in samples.reshape(num_samples, -1).tolist())
            atomic_write(out, lambda handle: handle.write((rows + "\n").encode()))
        elif plots._as_images(samples[:1]) is None or scaling is not None:
            raise ConfigError(f"the samples are rows of a table, not images; write them with --out {out.with_suffix('.csv')}")
        else:
            plots.save_figure(plots.samples_figure(samples), out)
    return samples
