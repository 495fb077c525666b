"""The run configuration: one flat dataclass, one comment per field, and a tiny preset for smoke runs.

A run folder stores it as ``config.json``; ``--config FILE`` (JSON or TOML) loads one, and CLI flags
override single fields.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ppl_vae.catalog import COMPILE, NETWORKS
from ppl_vae.errors import ConfigError
from ppl_vae.validation import check_bool, check_hidden_dims, check_number, check_string

#: Fields added after run folders were first written, whose defaults switch their feature off: a
#: ``config.json`` without them (an older run) means exactly the defaults.
OFF_BY_DEFAULT = ("labelled", "alpha", "condition_on", "groups", "grey")  # alpha: used only with labelled

#: Fields added later whose absence from a run folder's ``config.json`` means the value every older run
#: had (not the default of a new run): runs before ``network`` existed were all MLPs, whatever ``"auto"``
#: would choose for their data today. Likewise ``grey``: an older run on an image folder (``folder:PATH``)
#: read it as grey, whatever its colours (npz and other sources kept their channels: ``grey`` False).
#: ``compile``: older runs took eager steps (with unfused Adam), and a resumed older run continues so.
OLDER_RUNS = {"network": "mlp", "compile": "off"}

#: A config file holds a few dozen fields; anything larger is not one.
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass
class Config:
    """The configuration of a run. A JSON or TOML file given to ``ppl-vae train --config`` may set any
    field, and the command's flags override it (``--latent-dim`` for ``latent_dim``); the run folder's
    ``config.json`` holds it, resolved. The defaults are the README's default run; :meth:`tiny` is a preset
    for smoke runs."""

    # -- data
    dataset: str = "digits"  #: digits | mnist | fashion-mnist | kmnist | npz:PATH | folder:PATH | table:PATH
    data_root: str = "data"  #: folder holding MNIST-family files in torchvision's layout
    download: bool = False  #: let torchvision download MNIST-family files into data_root
    image_size: int | None = None  #: resize images to image_size x image_size (e.g. 28 for digits)
    grey: bool = False  #: convert colour images to one grey channel (luminance) when loading
    binarize: str = "auto"  #: auto (dynamic for binary likelihoods, else none) | dynamic | threshold | none
    heldout_fraction: float = 0.2  #: share held out where the data set has no official test split
    split_seed: int = 0  #: fixes the train/held-out split and the held-out binarization
    # -- model and guide
    latent_dim: int = 8  #: dimension of z
    hidden_dims: list[int] = field(default_factory=lambda: [256, 128])  #: encoder widths; decoder reversed
    network: str = "auto"  #: mlp | conv | resnet | auto (conv for images >= 16x16 or colour, else mlp); saved resolved
    prior: str = "normal"  #: name in ppl_vae.models.PRIORS
    likelihood: str = "bernoulli"  #: name in ppl_vae.models.LIKELIHOODS
    guide: str = "auto"  #: name in ppl_vae.guides.GUIDES; auto: the family matching the prior's space
    # -- labels and groups (each sets the prior; see ppl_vae.app.structured)
    labelled: int | str | None = None  #: semi-supervised (M2): N labelled examples (class-balanced) or a CSV FILE
    alpha: float = 5.0  #: weight of M2's classification term alpha * log q(y | x), per labelled example
    condition_on: str | None = None  #: "label" (the data's classes) or COLUMN[,COLUMN] of a table: p(z | c) p(x | z, c)
    groups: str | None = None  #: a table column holding each row's group: group effects z ~ N(mu_group, tau^2)
    # -- objective
    elbo: str = "auto"  #: auto | trace (Trace_ELBO) | meanfield (TraceMeanField_ELBO) | iwae (RenyiELBO)
    particles: int = 1  #: draws of z per example and SVI step (the iwae bound's K)
    beta: float = 1.0  #: weight of the KL part (poutine.scale on "z"); 1 is the ELBO
    kl_schedule: str = "constant"  #: constant | warmup:EPOCHS | cyclical:PERIOD[:RATIO]; schedules rise to beta
    # -- training
    epochs: int = 200  #: passes over the training set
    batch_size: int = 128  #: examples per SVI step
    lr: float = 1e-3  #: Adam learning rate
    seed: int = 0  #: seeds parameter initialisation, batching, binarization and SVI
    device: str = "cpu"  #: cpu | cuda | cuda:N
    compile: str = "auto"  #: auto | on | trace | off: how training steps run (see ppl_vae.infer.compiled)
    checkpoint_every: int = 10  #: write a resumable checkpoint every N epochs (and on SIGINT/SIGTERM, at the end)
    keep_best: bool = False  #: also keep best.pt, the weights with the best held-out ELBO so far
    on_divergence: str = "stop"  #: stop | restore (skip the step, learning rate / 10, at most 3 times)
    # -- evaluation
    num_particles: int = 1000  #: K, importance samples per example for log p(x)

    @classmethod
    def tiny(cls, **overrides) -> Config:
        """A preset for smoke runs and tests: seconds, not minutes."""
        values = dict(latent_dim=2, hidden_dims=[32], epochs=2, batch_size=64, num_particles=16)
        values.update(overrides)
        return cls(**values)

    # -- validation and (de)serialisation

    def validate(self) -> Config:
        """Check every field's type and range (:mod:`ppl_vae.validation`); raise :class:`ConfigError`
        naming the first bad one. Names of priors, guides and likelihoods are checked where they are
        built, against their registries."""
        for name in (
            "latent_dim",
            "epochs",
            "batch_size",
            "num_particles",
            "particles",
            "checkpoint_every",
            "lr",
            "beta",
            "heldout_fraction",
            "seed",
            "split_seed",
        ):
            check_number(getattr(self, name), name)
        if self.image_size is not None:
            check_number(self.image_size, "image_size")
        self._validate_structured()
        self.hidden_dims = check_hidden_dims(self.hidden_dims)
        for name in ("dataset", "data_root", "prior", "likelihood", "guide", "elbo", "kl_schedule", "device"):
            check_string(getattr(self, name), name)
        check_string(self.binarize, "binarize", choices=("auto", "dynamic", "threshold", "none"))
        check_string(self.on_divergence, "on_divergence", choices=("stop", "restore"))
        check_string(self.network, "network", choices=tuple(NETWORKS))
        check_string(self.compile, "compile", choices=tuple(COMPILE))
        check_bool(self.download, "download")
        check_bool(self.grey, "grey")
        check_bool(self.keep_best, "keep_best")
        from ppl_vae.infer.schedules import parse_schedule

        parse_schedule(self.kl_schedule, self.beta)
        return self

    def _validate_structured(self) -> None:
        if isinstance(self.labelled, str):
            check_string(self.labelled, "labelled")
        elif self.labelled is not None:
            check_number(self.labelled, "labelled")
        check_number(self.alpha, "alpha")
        if self.condition_on is not None:
            check_string(self.condition_on, "condition_on")  # "label", or columns of a table
        if self.groups is not None:
            check_string(self.groups, "groups")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "config", complete: bool = False) -> Config:
        """A Config from ``values``; unknown keys are refused. ``complete``: every field must be present
        (a run folder's ``config.json`` records all of them; a missing one would silently fall back to
        its default, e.g. train on the digits), except those added later: :data:`OFF_BY_DEFAULT` take their
        default and :data:`OLDER_RUNS` the value older runs had."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source} has unknown keys {unknown}; valid keys are: {', '.join(sorted(known))}")
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in values and f.name not in OFF_BY_DEFAULT and f.name not in OLDER_RUNS
        ]
        missing = missing if complete else []
        if complete:  # an older run folder: what it ran with
            values = {**OLDER_RUNS, **values}
            if "grey" not in values and str(values.get("dataset", "")).startswith("folder:"):
                values["grey"] = True  # image folders were read as grey before colour was kept
        if missing:
            raise ConfigError(
                f"{source} lacks {', '.join(missing)}; a run folder's config.json records every field "
                "(restore it from a copy, or train again)"
            )
        try:
            config = cls(**values)
        except TypeError as error:
            raise ConfigError(f"{source} is invalid: {error}") from None
        if isinstance(config.hidden_dims, tuple):
            config.hidden_dims = list(config.hidden_dims)
        try:
            return config.validate()
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        """Read a JSON (``.json``) or TOML (``.toml``) file of field values."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass the path of a .json or .toml file")
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_CONFIG_BYTES + 1)
        except OSError as error:
            raise ConfigError(
                f"config file {path} cannot be read ({error.strerror or error}); check its permissions"
            ) from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB; a config holds a "
                "few dozen fields, pass a .json or .toml file of config fields"
            )
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigError(
                f"config file {path} is not text (binary data, e.g. a pickle or a checkpoint); "
                "pass a .json or .toml file of config fields"
            ) from None
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        try:
            values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"config file {path} is not valid {kind}: {first}") from None
        except (RecursionError, ValueError) as error:  # absurd nesting, integers of thousands of digits
            raise ConfigError(
                f"config file {path} is not a usable {kind} file of config fields "
                f"({type(error).__name__}); pass a flat mapping of field names to values"
            ) from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field names to values")
        return cls.from_dict(values, source=f"config file {path}")


def resolve_config(config_file: str | Path | None = None, overrides: dict | None = None) -> Config:
    """The config of a new run: the fields of ``config_file`` (JSON or TOML; default: every default), with
    ``overrides`` (field name -> value, e.g. from command-line flags) replacing single fields, validated."""
    config = Config.from_file(config_file) if config_file is not None else Config()
    values = config.to_dict()
    for name, value in (overrides or {}).items():
        if name in values and value is not None:
            values[name] = value
    return Config.from_dict(values, source="flags and config").validate()
