"""Runs of models that use labels or groups: which prior ``--labelled``, ``--condition-on`` and ``--groups``
choose, and the per-example labels a run trains and evaluates with.

* ``--labelled N`` (or ``--labelled FILE``): semi-supervised (M2), prior ``semi-supervised:K:ALPHA``; the
  labels of N training examples, a seeded class-balanced choice (:func:`ppl_vae.data.select_labelled`,
  seeded by ``--seed``), or those a CSV file of ``index,label`` rows gives; the held-out labels score the
  classifier.
* ``--condition-on label``: conditional VAE, prior ``conditional:K``; every label observed.
  ``--condition-on COLUMN[,COLUMN...]`` on a table: the columns are taken out of the features and become
  real covariates, standardized with the training rows' mean and deviation, prior ``covariates:M``.
* ``--groups COLUMN``: group effects, prior ``groups:G``; the table column (name from the CSV header, or a
  0-based index) holding each row's group is taken out of the features and mapped to 0..G-1 in the sorted
  order of the training part's values.

:func:`prepare_structured` resolves all three the same way for a new run, a resumed one and every command
that reads a run folder, so that ``config.json`` records the prior that ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ppl_vae.app.config import Config
from ppl_vae.data.labels import read_label_file, select_labelled
from ppl_vae.data.split import DataSplit
from ppl_vae.errors import ConfigError, DataError

#: The registry names chosen by a flag, not by ``--prior``.
BY_FLAG = {
    "semi-supervised": "--labelled N",
    "conditional": "--condition-on label",
    "covariates": "--condition-on COLUMNS",
    "groups": "--groups COLUMN",
}


@dataclass(frozen=True)
class RunLabels:
    """The per-example labels of a run: ``role`` (``"none"``, ``"semi"``, ``"covariate"`` or ``"group"``),
    ``train`` and ``heldout`` (int64, ``-1`` for a hidden training label; float32 ``(N, M)`` standardized
    covariates; None when unused), ``classes`` (K classes, G groups or M covariates), for groups ``values``
    (the column's value of each group index), for covariates ``names`` and the training ``mean`` and
    ``std`` that standardize them."""

    role: str = "none"
    train: torch.Tensor | None = None
    heldout: torch.Tensor | None = None
    classes: int = 0
    values: list[float] | None = None
    names: list[str] | None = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None


def prepare_structured(config: Config, data: DataSplit) -> tuple[Config, DataSplit, RunLabels]:
    """The config with the prior its flags choose, the data (a group column taken out) and the labels."""
    chosen = [flag for flag, value in _flags(config).items() if value is not None]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} cannot be combined; choose one")
    name = config.prior.partition(":")[0]
    if not chosen:
        if name in BY_FLAG:
            raise ConfigError(f"the {name} prior is chosen by {BY_FLAG[name]}, not by --prior; use that flag")
        return config, data, RunLabels()
    flag = chosen[0]
    wanted = {"--labelled": "semi-supervised", "--condition-on": "conditional", "--groups": "groups"}[flag]
    if flag == "--condition-on" and config.condition_on != "label":
        wanted = "covariates"
    if name not in ("normal", wanted):
        raise ConfigError(f"{flag} sets the prior ({wanted}); drop --prior {config.prior} or {flag}")
    if flag == "--groups":
        data, labels = _group_column(config.groups, data)
        return replace(config, prior=f"groups:{labels.classes}"), data, labels
    if flag == "--condition-on" and config.condition_on != "label":
        data, labels = _covariate_columns(config.condition_on, data)
        return replace(config, prior=f"covariates:{labels.classes}"), data, labels
    classes = _classes(data, flag)
    if flag == "--condition-on":
        labels = RunLabels("covariate", data.train_labels, data.heldout_labels, classes)
        return replace(config, prior=f"conditional:{classes}"), data, labels
    if isinstance(config.labelled, int):
        if data.train_labels is None:
            raise DataError(
                f"--labelled {config.labelled} keeps labels of the data set, and {data.name} has none; give the "
                "labels you have as --labelled FILE (a CSV of index,label rows)"
            )
        train = select_labelled(data.train_labels, config.labelled, seed=config.seed)
    else:
        train = read_label_file(config.labelled, int(data.train.shape[0]), classes or None)
        classes = classes or int(train.max()) + 1
    labels = RunLabels("semi", train, data.heldout_labels, max(classes, 2))
    return replace(config, prior=f"semi-supervised:{labels.classes}:{config.alpha:g}"), data, labels


def _flags(config: Config) -> dict:
    return {"--labelled": config.labelled, "--condition-on": config.condition_on, "--groups": config.groups}


def _classes(data: DataSplit, flag: str) -> int:
    """The number of classes of the data set's labels (0 when it has none and ``flag`` can do without)."""
    if data.train_labels is None:
        if flag == "--labelled":
            return 0  # a label file may bring the labels
        raise DataError(
            f"{flag} needs class labels, and {data.name} has none; use a data set with labels (digits, "
            "MNIST family, npz with y_train/y_test, a folder of class subfolders)"
        )
    top = max(int(data.train_labels.max()), int(data.heldout_labels.max()))
    if top < 1:
        raise DataError(f"{flag}: {data.name} has a single class; a label needs at least 2 classes")
    return top + 1


def _group_column(column: str, data: DataSplit) -> tuple[DataSplit, RunLabels]:
    """Take the group column out of a table's features; map its training values to 0..G-1."""
    if data.kind != "table":
        raise ConfigError(f"--groups takes a column of a table (table:PATH); {data.name} holds images")
    index = _column_index(column, data)
    train_values, heldout_values = data.train[:, index], data.heldout[:, index]
    if not bool(torch.equal(train_values, train_values.round())) or not bool(
        torch.equal(heldout_values, heldout_values.round())
    ):
        raise DataError(f"--groups {column}: the column holds non-integer values; groups are integer codes")
    values = torch.unique(train_values)
    unseen = heldout_values[~torch.isin(heldout_values, values)]
    if unseen.numel():
        raise DataError(
            f"--groups {column}: held-out rows have group {unseen[0].item():g}, which no training row has; "
            "a group's effect is learned from its training rows (move such rows into training)"
        )
    keep = [j for j in range(data.train.shape[1]) if j != index]
    if not keep:
        raise DataError(f"--groups {column}: the table has no other column to model")
    stripped = DataSplit(data.name, data.train[:, keep].contiguous(), data.heldout[:, keep].contiguous(), kind="table")
    labels = RunLabels(
        "group",
        torch.searchsorted(values, train_values.contiguous()),
        torch.searchsorted(values, heldout_values.contiguous()),
        int(values.numel()),
        [float(v) for v in values],
    )
    return stripped, labels


def _covariate_columns(spec: str, data: DataSplit) -> tuple[DataSplit, RunLabels]:
    """Take the covariate columns out of a table's features and standardize them (training statistics)."""
    if data.kind != "table":
        raise ConfigError(
            f"--condition-on {spec}: columns are covariates of a table (table:PATH); for images use "
            "--condition-on label"
        )
    columns = [c.strip() for c in spec.split(",") if c.strip()]
    if not columns:
        raise ConfigError("--condition-on needs label or at least one column name (COLUMN[,COLUMN...])")
    indices = [_column_index(c, data, flag="--condition-on") for c in columns]
    if len(set(indices)) != len(indices):
        raise ConfigError(f"--condition-on {spec}: a column is named twice")
    keep = [j for j in range(data.train.shape[1]) if j not in indices]
    if not keep:
        raise DataError(f"--condition-on {spec}: the table has no other column to model")
    train_c, heldout_c = data.train[:, indices], data.heldout[:, indices]
    mean, std = train_c.mean(0), train_c.std(0)
    if not bool((std > 0).all()):
        constant = columns[int((std > 0).logical_not().nonzero()[0])]
        raise DataError(f"--condition-on {spec}: column {constant} is constant in the training rows; drop it")
    stripped = DataSplit(data.name, data.train[:, keep].contiguous(), data.heldout[:, keep].contiguous(), kind="table")
    labels = RunLabels(
        "covariate", (train_c - mean) / std, (heldout_c - mean) / std, len(indices), None, columns, mean, std
    )
    return stripped, labels


def _column_index(column: str, data: DataSplit, flag: str = "--groups") -> int:
    from ppl_vae.data.tables import column_names

    width = int(data.train.shape[1])
    names = column_names(data.name.split(":", 1)[1]) if data.name.startswith("table:") else None
    if names and column in names:
        return names.index(column)
    if column.isdigit() and int(column) < width:
        return int(column)
    known = f"columns {', '.join(names)}" if names else f"column indices 0..{width - 1}"
    raise ConfigError(f"{flag} {column}: no such column; the table has {known}")


def check_condition(labels: RunLabels, condition) -> int | torch.Tensor | None:
    """The ``--condition`` of ``ppl-vae sample`` as the model takes it: a class or group index, or the
    standardized covariates ``(M,)`` of ``"v1,v2,..."`` (in the columns' own units); refuses (one line)
    a condition the model cannot take or lacks."""
    if labels.names is not None:  # real covariates
        if condition is None:
            raise ConfigError(
                f"this run generates for given covariates: pass --condition with {labels.classes} numbers "
                f"for {','.join(labels.names)}, e.g. --condition {','.join(['0'] * labels.classes)}"
            )
        try:
            values = [float(v) for v in str(condition).split(",")]
        except ValueError:
            values = []
        if len(values) != labels.classes or not all(math.isfinite(v) for v in values):
            raise ConfigError(
                f"--condition {condition}: give {labels.classes} finite numbers for {','.join(labels.names)}, "
                "separated by commas"
            )
        return (torch.tensor(values) - labels.mean) / labels.std
    if condition is None:
        if labels.role in ("covariate", "group"):
            what = "class" if labels.role == "covariate" else "group"
            raise ConfigError(
                f"this run generates for a given {what}: pass --condition K with K in 0..{labels.classes - 1}"
            )
        return None
    if labels.role == "none":
        raise ConfigError("this run's model has no label or group to condition on; drop --condition")
    text = str(condition).strip()
    if not text.isdigit() or not 0 <= int(text) < labels.classes:
        raise ConfigError(f"--condition {condition}: choose a class or group in 0..{labels.classes - 1}")
    return int(text)


def per_class_rows(labels: RunLabels, per_class: int = 8) -> int | None:
    """How many samples per class a figure of samples by class shows (None: no such figure)."""
    if labels.role not in ("semi", "covariate") or labels.names is not None or labels.classes > 64:
        return None
    return max(1, min(per_class, math.floor(512 / labels.classes)))


def require_unstructured(vae, command: str, needs: str) -> None:
    """Refuse, with one line, a run whose model has a label, groups or enumerated sites, for a command that
    works on the plain VAE only (``needs`` says what it needs)."""
    role = getattr(vae, "label_role", "none")
    kind = {"semi": "a semi-supervised", "covariate": "a conditional", "group": "a group-effects"}.get(role) or (
        "a structured (mixture)" if getattr(vae, "structured", False) else None
    )
    if kind is not None:
        raise ConfigError(
            f"{command} needs {needs}; this run's model is {kind} model ({vae.spec['prior']}), which has not"
        )


def require_decoder_of_z(vae, command: str) -> None:
    """Refuse, with one line, a model whose decoder needs a label next to z (semi-supervised, conditional)."""
    if getattr(vae.prior, "code_dim", vae.latent_dim) != vae.latent_dim or vae.label_role in ("covariate", "group"):
        raise ConfigError(
            f"{command}: these figures decode and encode z alone, but this run's model ({vae.spec['prior']}) also "
            "needs each example's label or group; sample it by class with `ppl-vae sample RUN --condition K`"
        )
