"""The run configuration: one flat dataclass, one comment per field, and a tiny preset for smoke runs.

A run folder stores it as ``config.json``; ``--config FILE`` (JSON or TOML) loads one, and CLI flags
override single fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ppl_vae.errors import ConfigError


@dataclass
class Config:
    # -- data
    dataset: str = "digits"          # digits | mnist | fashion-mnist | kmnist | npz:PATH | folder:PATH
    data_root: str = "data"          # folder holding MNIST-family files in torchvision's layout
    download: bool = False           # let torchvision download MNIST-family files into data_root
    image_size: int | None = None    # resize images to image_size x image_size (e.g. 28 for digits)
    binarize: str = "auto"           # auto (dynamic for binary likelihoods, else none) | dynamic | threshold | none
    heldout_fraction: float = 0.2    # share held out where the data set has no official test split
    split_seed: int = 0              # fixes the train/held-out split and the held-out binarization
    # -- model and guide
    latent_dim: int = 8              # dimension of z
    hidden_dims: list[int] = field(default_factory=lambda: [256, 128])  # encoder widths; decoder reversed
    prior: str = "normal"            # name in ppl_vae.models.PRIORS
    likelihood: str = "bernoulli"    # name in ppl_vae.models.LIKELIHOODS
    guide: str = "auto"              # name in ppl_vae.guides.GUIDES; auto: the family matching the prior's space
    # -- objective
    elbo: str = "trace"              # trace (Trace_ELBO) | meanfield (TraceMeanField_ELBO) | iwae (RenyiELBO, alpha=0)
    particles: int = 1               # draws of z per example and SVI step (the iwae bound's K)
    beta: float = 1.0                # weight of the KL part (poutine.scale on "z"); 1 is the ELBO
    kl_schedule: str = "constant"    # constant | warmup:EPOCHS | cyclical:PERIOD[:RATIO]; schedules rise to beta
    # -- training
    epochs: int = 200                # passes over the training set
    batch_size: int = 128            # examples per SVI step
    lr: float = 1e-3                 # Adam learning rate
    seed: int = 0                    # seeds parameter initialisation, batching, binarization and SVI
    device: str = "cpu"              # cpu | cuda | cuda:N
    checkpoint_every: int = 10       # write a resumable checkpoint every N epochs (and on SIGINT/SIGTERM, at the end)
    keep_best: bool = False          # also keep best.pt, the weights with the best held-out ELBO so far
    on_divergence: str = "stop"      # stop | restore (skip the step, learning rate / 10, at most 3 times)
    # -- evaluation
    num_particles: int = 1000        # K, importance samples per example for log p(x)

    @classmethod
    def tiny(cls, **overrides) -> Config:
        """A preset for smoke runs and tests: seconds, not minutes."""
        values = dict(latent_dim=2, hidden_dims=[32], epochs=2, batch_size=64, num_particles=16)
        values.update(overrides)
        return cls(**values)

    # -- validation and (de)serialisation

    def validate(self) -> Config:
        """Check every field; raise :class:`ConfigError` naming the first bad one."""
        positive_ints = ("latent_dim", "epochs", "batch_size", "num_particles", "particles", "checkpoint_every")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in self.hidden_dims):
            raise ConfigError(f"hidden_dims must be positive integers, got {self.hidden_dims!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be between 0 and 1, got {self.heldout_fraction!r}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 1):
            raise ConfigError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.binarize not in ("auto", "dynamic", "threshold", "none"):
            raise ConfigError(f"binarize must be one of auto, dynamic, threshold, none; got {self.binarize!r}")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError(f"beta must be a non-negative number, got {self.beta!r}")
        if self.on_divergence not in ("stop", "restore"):
            raise ConfigError(f"on_divergence must be stop or restore, got {self.on_divergence!r}")
        if not isinstance(self.keep_best, bool):
            raise ConfigError(f"keep_best must be true or false, got {self.keep_best!r}")
        from ppl_vae.schedules import parse_schedule

        parse_schedule(self.kl_schedule, self.beta)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "config") -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source} has unknown keys {unknown}; valid keys are: {', '.join(sorted(known))}")
        try:
            config = cls(**values)
        except TypeError as error:
            raise ConfigError(f"{source} is invalid: {error}") from None
        if isinstance(config.hidden_dims, tuple):
            config.hidden_dims = list(config.hidden_dims)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        """Read a JSON (``.json``) or TOML (``.toml``) file of field values."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass the path of a .json or .toml file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not text (binary data, e.g. a pickle or a checkpoint); "
                              "pass a .json or .toml file of config fields") from None
        try:
            values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {error}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field names to values")
        return cls.from_dict(values, source=f"config file {path}")
