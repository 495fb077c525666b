"""What the diagnostics need to know about a model/guide pair beyond the site/plate contract: whether the
programs take per-example labels ``c``, which latent sites the guide draws per example, and whether any
discrete site is summed out by enumeration."""

from __future__ import annotations

import torch
from pyro import poutine

from ppl_vae.errors import ConfigError
from ppl_vae.infer.labels import OBSERVED_ROLES


def label_role(*programs) -> str:
    """The ``label_role`` of the VAE the programs are bound to (``vae.model``, ``vae.guide``), or
    ``"none"`` for plain functions."""
    for program in programs:
        role = getattr(getattr(program, "__self__", None), "label_role", None)
        if isinstance(role, str):
            return role
    return "none"


def label_kwargs(model, guide, c, n: int, what: str) -> dict:
    """``{"c": c}`` for the programs' keyword arguments after checking ``c`` (``(n,)`` integer labels or
    ``(n, M)`` real covariates), or
    ``{}`` without labels; refuses, with one line, a model that needs labels (conditional, groups) when
    ``c`` is None."""
    if c is None:
        role = label_role(model, guide)
        if role in OBSERVED_ROLES:  # the programs cannot run without c
            kind = "class" if role == "covariate" else "group"
            raise ConfigError(
                f"{what} needs the {kind} of every example: this model's programs take c (a {kind} index per "
                "example); pass c="
            )
        return {}
    is_tensor = isinstance(c, torch.Tensor) and c.dtype != torch.bool
    labels = is_tensor and not c.dtype.is_floating_point and c.shape == (n,)
    covariates = is_tensor and c.dtype.is_floating_point and c.dim() == 2 and c.shape[0] == n
    if not (labels or covariates):
        shape = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
        raise ConfigError(
            f"{what}: c must be {n} integer labels (one per example) or {n} rows of covariates, got {shape}"
        )
    return {"c": c.long() if labels else c}


def rows(kwargs: dict, start: int, stop: int) -> dict:
    """The per-example keyword arguments of examples ``start:stop``."""
    return {k: v[start:stop] for k, v in kwargs.items()}


def local_guide_sites(guide, x: torch.Tensor, plate_name: str = "data", **kwargs) -> list[str]:
    """Names of the latent sites the guide draws inside ``plate_name`` (``["z"]``, or ``["y", "z"]`` for a
    guide with an amortized q(y | x)), from one trace."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(guide).get_trace(x, **kwargs)
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and plate_name in {f.name for f in site["cond_indep_stack"]}
        and not site["infer"].get("is_auxiliary")
    ]


def has_discrete_sites(model, x: torch.Tensor, **kwargs) -> bool:
    """Whether the model draws a latent site with enumerable support (which NUTS sums out), from one trace."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(model).get_trace(x, **kwargs)
    return any(
        site["type"] == "sample" and not site["is_observed"] and site["fn"].has_enumerate_support
        for site in trace.nodes.values()
    )
