"""What the diagnostics need to know about a model/guide pair beyond the site/plate contract: whether the
programs take per-example labels ``c``, which latent sites the guide draws per example, and whether any
discrete site is summed out by enumeration."""

from __future__ import annotations

import torch
from pyro import poutine

from ppl_vae.errors import ConfigError

#: Label roles whose programs cannot run without ``c`` (a conditional model's class, a group index).
REQUIRED_ROLES = ("covariate", "group")


def label_role(*programs) -> str:
    """The ``label_role`` of the VAE the programs are bound to (``vae.model``, ``vae.guide``), or
    ``"none"`` for plain functions."""
    for program in programs:
        role = getattr(getattr(program, "__self__", None), "label_role", None)
        if isinstance(role, str):
            return role
    return "none"


def label_kwargs(model, guide, c, n: int, what: str) -> dict:
    """``{"c": c}`` for the programs' keyword arguments after checking ``c`` (``(n,)`` integer labels), or
    ``{}`` without labels; refuses, with one line, a model that needs labels (conditional, groups) when
    ``c`` is None."""
    if c is None:
        role = label_role(model, guide)
        if role in REQUIRED_ROLES:
            kind = "class" if role == "covariate" else "group"
            raise ConfigError(
                f"{what} needs the {kind} of every example: this model's programs take c (a {kind} index per "
                "example); pass c="
            )
        return {}
    if not isinstance(c, torch.Tensor) or c.dtype.is_floating_point or c.dtype == torch.bool or c.shape != (n,):
        shape = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
        raise ConfigError(f"{what}: c must be a tensor of {n} integer labels (one per example), got {shape}")
    return {"c": c.long()}


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
