"""Per-example class labels for models with a label site: checked before training, and the classifier's
held-out accuracy.

A model's ``label_role`` (:attr:`ppl_vae.VAE.label_role`) says what labels are to it: ``"semi"`` (the
label y of Kingma et al.'s M2, observed where known, ``-1`` where missing and then summed out),
``"covariate"`` (a conditional model's class, always observed), ``"group"`` (the group of each
example for group effects, always observed) or ``"none"``.
"""

from __future__ import annotations

import math

import torch

from ppl_vae.errors import ConfigError

__all__ = ["OBSERVED_ROLES", "accuracy", "check_covariates", "check_fit_labels", "check_labels"]

#: Label roles whose labels are always observed inputs of the programs (passed as ``c`` in training and
#: evaluation): a conditional model's class and a group-effects model's group.
OBSERVED_ROLES = ("covariate", "group")


def check_labels(labels, n: int, num_classes: int, what: str, *, missing_allowed: bool = False) -> torch.Tensor:
    """``labels`` as an int64 tensor after checking: ``(n,)`` integers in ``0..K-1`` (or ``-1`` for a
    missing label where allowed). Raises :class:`ConfigError` with one line otherwise."""
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ConfigError(f"{what} must be a tensor of integer class labels, got {type(labels).__name__}")
    if tuple(labels.shape) != (n,):
        raise ConfigError(f"{what} must have one label per example, shape ({n},), got {tuple(labels.shape)}")
    low = -1 if missing_allowed else 0
    if n and (int(labels.min()) < low or int(labels.max()) >= num_classes):
        allowed = f"{low}..{num_classes - 1}" + (" (-1: missing)" if missing_allowed else "")
        raise ConfigError(
            f"{what} holds labels from {int(labels.min())} to {int(labels.max())}, but this model has "
            f"{num_classes} classes: use {allowed}"
        )
    return labels.long()


def check_covariates(c, n: int, m: int, what: str) -> torch.Tensor:
    """``c`` as float32 after checking: ``(n, m)`` finite real covariates; :class:`ConfigError` otherwise."""
    if not isinstance(c, torch.Tensor) or not c.dtype.is_floating_point:
        raise ConfigError(f"{what} must be a float tensor of covariates, got {type(c).__name__}")
    if tuple(c.shape) != (n, m):
        raise ConfigError(f"{what} must have {m} covariates per example, shape ({n}, {m}), got {tuple(c.shape)}")
    if not bool(torch.isfinite(c).all()):
        raise ConfigError(f"{what} holds NaN or infinite values; give finite covariates")
    return c.float()


def check_fit_labels(vae, train, heldout, labels, heldout_labels, device, distributed=None):
    """The training and held-out labels :func:`ppl_vae.infer.fit.fit` uses (on ``device``), or
    ``(None, None)``; refuses labels for a model without a label site and missing ones where required."""
    role = getattr(vae, "label_role", "none")
    if role == "none":
        if labels is not None or heldout_labels is not None:
            raise ConfigError(
                "labels were given but this model has no label site; use a semi-supervised or conditional "
                "prior (--labelled N, --condition-on label), or leave the labels out"
            )
        return None, None
    if distributed is not None:
        raise ConfigError(
            "data-parallel training of a model with a label site is not supported; train it in one process"
        )
    covariates = getattr(vae.prior, "covariate_dim", None)
    if covariates is not None:
        if labels is None or (heldout is not None and heldout_labels is None):
            raise ConfigError(
                "a covariate model needs the covariates of every example; pass labels= and heldout_labels="
            )
        labels = check_covariates(labels, train.shape[0], covariates, "training covariates").to(device)
        if heldout_labels is not None:
            heldout_labels = check_covariates(heldout_labels, heldout.shape[0], covariates, "held-out covariates")
        return labels, None if heldout_labels is None else heldout_labels.to(device)
    k = int(vae.prior.num_classes)
    if role in OBSERVED_ROLES:
        if labels is None or (heldout is not None and heldout_labels is None):
            what = "label" if role == "covariate" else "group"
            raise ConfigError(
                f"a {'conditional' if role == 'covariate' else 'group-effects'} model needs the {what} of every "
                "training and held-out example; pass labels= and heldout_labels="
            )
    elif labels is None:
        labels = torch.full((train.shape[0],), -1, dtype=torch.long)
    labels = check_labels(labels, train.shape[0], k, "training labels", missing_allowed=role == "semi").to(device)
    if heldout_labels is not None:
        if heldout is None:
            raise ConfigError("held-out labels were given without held-out data; pass heldout= too")
        heldout_labels = check_labels(heldout_labels, heldout.shape[0], k, "held-out labels").to(device)
    return labels, heldout_labels


@torch.no_grad()
def accuracy(vae, x: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """The classifier's accuracy on ``x`` with true ``labels`` (the argmax of q(y | x), a semi-supervised
    model's ``prior.classify``) and its standard error over examples, sqrt(acc (1 - acc) / n), over the
    n examples whose label is known (``-1`` marks a missing one)."""
    classify = getattr(getattr(vae, "prior", None), "classify", None)
    if classify is None:
        raise ConfigError("this model has no classifier q(y | x) to measure an accuracy with")
    labels = labels.to(x.device)
    known = labels >= 0  # -1: no label, left out
    n = int(known.sum())
    if n < 1:
        raise ConfigError("accuracy needs at least one labelled example")
    correct = (classify(x[known]).argmax(-1) == labels[known]).double().mean().item()
    return correct, math.sqrt(correct * (1 - correct) / n)
