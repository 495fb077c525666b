"""Likelihoods p(x | z): turn the decoder's output into a distribution over one example.

A likelihood is an ``nn.Module`` built for a fixed ``data_shape``. The decoder emits
``params_per_feature * prod(data_shape)`` numbers per latent draw; ``forward`` turns them, shape
``(..., params_per_feature * D)``, into a distribution with batch shape ``(...)`` and event shape
``data_shape``. Every likelihood here is a normalized density (or mass function) on its support, so
log-likelihoods are comparable across likelihoods on the same data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.errors import DataError


def _num_features(data_shape: Sequence[int]) -> int:
    return math.prod(data_shape)


class Bernoulli(nn.Module):
    """Independent Bernoulli pixels; the decoder emits one logit per feature.

    For binary data (binarized images). ``mean`` gives the pixel probabilities.
    """

    params_per_feature = 1

    def __init__(self, data_shape: Sequence[int]):
        super().__init__()
        self.data_shape = tuple(data_shape)

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        logits = params.reshape(params.shape[:-1] + self.data_shape)  # (..., D) -> (..., *data_shape)
        return dist.Bernoulli(logits=logits).to_event(len(self.data_shape))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params.reshape(params.shape[:-1] + self.data_shape))

    def check_support(self, x: torch.Tensor) -> None:
        """Raise :class:`DataError` unless every value of ``x`` is 0 or 1."""
        if not bool(((x == 0) | (x == 1)).all()):
            raise DataError(
                "the bernoulli likelihood needs binary data but the data has grey levels; "
                "binarize it (--binarize dynamic or threshold)"
            )


class Gaussian(nn.Module):
    """Independent Normal features with the decoder output as mean and one shared scale.

    The scale is learned (stored as its logarithm) unless ``learn_scale=False``, in which case it is
    fixed at ``scale`` (probabilistic PCA with known noise, for instance).
    """

    params_per_feature = 1

    def __init__(self, data_shape: Sequence[int], scale: float = 1.0, learn_scale: bool = True):
        super().__init__()
        self.data_shape = tuple(data_shape)
        log_scale = torch.tensor(float(scale)).log()
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        loc = params.reshape(params.shape[:-1] + self.data_shape)  # (..., D) -> (..., *data_shape)
        return dist.Normal(loc, self.log_scale.exp()).to_event(len(self.data_shape))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params.reshape(params.shape[:-1] + self.data_shape)

    def check_support(self, x: torch.Tensor) -> None:
        if not bool(torch.isfinite(x).all()):
            raise DataError("the gaussian likelihood needs finite data; remove NaN and inf values")


#: Likelihoods by CLI name; each factory takes ``data_shape`` and returns a module.
LIKELIHOODS = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
}
