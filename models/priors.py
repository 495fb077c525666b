"""Priors p(z) over the latent site ``"z"``.

A prior is anything the model can turn into a Pyro distribution with event shape ``(latent_dim,)``:
either such a distribution itself, or an ``nn.Module`` whose ``forward()`` (no arguments) returns one.
A module is the way to give a prior learnable parameters or buffers that follow ``.to(device)``.
No subclassing of anything in this package is needed.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class StandardNormal(nn.Module):
    """p(z) = N(0, I) with event shape ``(latent_dim,)``; no learnable parameters."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


#: Priors by CLI name; each factory takes ``latent_dim`` and returns a module.
PRIORS = {
    "normal": StandardNormal,
}
