"""Likelihoods p(x | z): turn the decoder's output into a distribution over one example.

A likelihood is an ``nn.Module`` built for a fixed ``data_shape`` as ``LIKELIHOODS[name](data_shape)``.
Every one has

* ``name``: its registry name (used in messages);
* ``params_per_feature``: how many numbers the decoder emits per feature. The decoder's output has
  shape ``(..., params_per_feature * D)`` with ``D = prod(data_shape)``. When ``params_per_feature = k
  > 1`` it is read as ``(..., k, *data_shape)``: the first ``D`` numbers are the first parameter of
  every feature, the next ``D`` the second, and so on (see each class for what the k parameters are);
* ``data_kind``: the kind of data it models, a key of :data:`DATA_KINDS` (``"binary"``, ``"unit"``,
  ``"8bit"``, ``"real"`` or ``"count"``). The training pipeline uses it to decide whether to binarize;
* ``forward(params)``: a distribution with batch shape ``(...)`` and event shape ``data_shape``. Every
  one is a normalized density (continuous kinds) or mass function (discrete kinds) on its support, so
  log-likelihoods are comparable across likelihoods of the same data kind. (A density and a mass
  function are not comparable with each other: for 8-bit images compare ``discretized-logistic`` and
  ``categorical-256``, or dequantize the data before using a density.);
* ``mean(params)``: the mean of p(x | z) in data units, ``(..., *data_shape)`` (what figures show);
* ``check_support(x)``: raises :class:`~ppl_vae.errors.DataError` with a one-line message that names
  the likelihood and the fix when some value of ``x`` lies outside the support.

Learned global parameters (shared scales, dispersions) are ``nn.Parameter`` s of the module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch import nn
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from ppl_vae.errors import DataError

#: The kinds of data a likelihood can model, with what the values must be.
DATA_KINDS = {
    "binary": "values 0 or 1 (the training pipeline binarizes grey images for these)",
    "unit": "grey levels in [0, 1]",
    "8bit": "8-bit grey levels k/255, k = 0..255, as floats in [0, 1]",
    "real": "any finite real number",
    "count": "non-negative integers",
}


def _split_params(params: torch.Tensor, k: int, data_shape: tuple[int, ...]) -> torch.Tensor:
    """``(..., k * D) -> (..., k, *data_shape)``: parameter j of every feature is ``out[..., j, ...]``."""
    return params.reshape(params.shape[:-1] + (k,) + data_shape)


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(-d))`` for ``d > 0``, accurate for small and large ``d``."""
    return torch.where(d < math.log(2.0), torch.log(-torch.expm1(-d)), torch.log1p(-torch.exp(-d)))


# --------------------------------------------------------------------------------------------------
# Data checks, one per data kind
# --------------------------------------------------------------------------------------------------


def _on_grid(x: torch.Tensor, num_bins: int = 256, tol: float = 1e-3) -> torch.Tensor:
    """Elementwise: is ``x`` one of ``k / (num_bins - 1)`` (to within ``tol`` of a bin)?"""
    scaled = x * (num_bins - 1)
    return (x >= 0) & (x <= 1) & ((scaled - scaled.round()).abs() <= tol)


def check_data_kind(x: torch.Tensor, kind: str, name: str) -> None:
    """Raise :class:`DataError` naming likelihood ``name`` unless ``x`` is data of ``kind``."""
    if kind == "binary":
        if not bool(((x == 0) | (x == 1)).all()):
            raise DataError(
                f"the {name} likelihood needs binary data but the data has grey levels; "
                "binarize it (--binarize dynamic or threshold)"
            )
    elif kind == "unit":
        if not bool(((x >= 0) & (x <= 1)).all()):  # False for NaN too
            raise DataError(
                f"the {name} likelihood needs grey levels in [0, 1]; rescale the data to [0, 1] "
                "(divide 8-bit images by 255) and remove NaN values"
            )
    elif kind == "8bit":
        if not bool(_on_grid(x).all()):
            raise DataError(
                f"the {name} likelihood needs 8-bit grey levels k/255 in [0, 1]; quantize the data "
                "with torch.round(x * 255) / 255 (after any resizing)"
            )
    elif kind == "real":
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"the {name} likelihood needs finite data; remove NaN and inf values")
    elif kind == "count":
        if not bool(((x >= 0) & (x == x.round()) & torch.isfinite(x)).all()):
            raise DataError(
                f"the {name} likelihood needs non-negative integer counts; pass the raw count table "
                "(no binarizing, rescaling or normalizing) without NaN values"
            )
    else:
        raise ValueError(f"unknown data kind {kind!r}; one of {', '.join(DATA_KINDS)}")


class _Likelihood(nn.Module):
    """Shared plumbing: ``data_shape``, ``check_support`` from ``data_kind``."""

    name: str
    data_kind: str
    params_per_feature: int = 1
    #: Whether a registry spec may carry an option after a colon (``name:option``); the VAE passes the
    #: text after the colon to ``__init__`` as ``option``.
    accepts_option: bool = False

    def __init__(self, data_shape: Sequence[int]):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)

    def _features(self, params: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., *data_shape)`` for one parameter per feature."""
        return params.reshape(params.shape[:-1] + self.data_shape)

    def check_support(self, x: torch.Tensor) -> None:
        """Raise :class:`DataError` unless every value of ``x`` is in the support (see ``data_kind``)."""
        check_data_kind(x, self.data_kind, self.name)

    def extra_repr(self) -> str:
        return f"data_shape={self.data_shape}"


# --------------------------------------------------------------------------------------------------
# Distributions that torch / Pyro do not provide (or not exactly)
# --------------------------------------------------------------------------------------------------


class _Grid(constraints.Constraint):
    """The values ``k / (num_bins - 1)``, ``k = 0 .. num_bins - 1`` (integer bins, stored as floats)."""

    is_discrete = True
    event_dim = 0

    def __init__(self, num_bins: int):
        self.num_bins = num_bins
        super().__init__()

    def check(self, value):
        return _on_grid(value, self.num_bins)

    def __repr__(self):
        return f"{type(self).__name__}(num_bins={self.num_bins})"


class ExactContinuousBernoulli(TorchDistribution):
    r"""The continuous Bernoulli on [0, 1] (Loaiza-Ganem & Cunningham, 2019), parameterized by logits.

    ``p(x | \lambda) = C(\lambda) \exp(\lambda x)`` with ``C(\lambda) = \lambda / (e^\lambda - 1)``,
    which is the usual ``C(p) p^x (1 - p)^{1 - x}`` with ``\lambda = logit(p)``.

    Why not ``pyro.distributions.ContinuousBernoulli``: torch clamps ``p`` to ``[eps, 1 - eps]`` in the
    normalizing constant and the mean but not in the ``x log p + (1 - x) log(1 - p)`` term, so in float32
    its density integrates to 0.99 at logit 15, 0.64 at logit 25 and 0.40 at logit 40, and its mean
    saturates at 0.937. Here the log-normalizer, mean and inverse CDF are written in forms that are
    exact and finite for every logit (series near 0, and the symmetry ``x -> 1 - x``, ``\lambda -> -\lambda``).
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, logits: torch.Tensor, validate_args=None):
        self.logits = torch.as_tensor(logits)
        super().__init__(self.logits.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ExactContinuousBernoulli, _instance)
        new.logits = self.logits.expand(torch.Size(batch_shape))
        super(ExactContinuousBernoulli, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _log_normalizer(self) -> torch.Tensor:
        """``log((e^l - 1) / l) = max(l, 0) + log(1 - e^{-|l|}) - log|l|``; its series near 0."""
        lam = self.logits
        small = lam.abs() < 1e-2
        a = torch.where(small, torch.ones_like(lam), lam.abs())
        exact = lam.clamp(min=0) + torch.log(-torch.expm1(-a)) - torch.log(a)
        lam2 = lam * lam
        return torch.where(small, lam / 2 + lam2 / 24 - lam2 * lam2 / 2880, exact)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        lam, value = broadcast_all(self.logits, value)
        return lam * value - self._log_normalizer().expand(lam.shape)

    @property
    def mean(self):
        # mean(l) = e^l / (e^l - 1) - 1 / l, evaluated at -|l| (no overflow) and reflected for l > 0.
        lam = self.logits
        small = lam.abs() < 0.1
        a = torch.where(small, -torch.ones_like(lam), -lam.abs())
        low = torch.exp(a) / torch.expm1(a) - 1 / a  # mean at a <= 0, in [0, 1/2)
        exact = torch.where(lam > 0, 1 - low, low)
        series = 0.5 + lam / 12 - lam**3 / 720 + lam**5 / 30240
        return torch.where(small, series, exact)

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        lam = self.logits.expand(shape)
        u = torch.rand(shape, dtype=lam.dtype, device=lam.device)
        # Inverse CDF at a = -|l| <= 0, where expm1(a) is in (-1, 0]: x = log1p(u expm1(a)) / a; the
        # draw for l > 0 is 1 minus a draw for -l (u and 1 - u have the same law).
        small = lam.abs() < 1e-6
        a = torch.where(small, -torch.ones_like(lam), -lam.abs())
        low = torch.log1p(u * torch.expm1(a)) / a
        x = torch.where(lam > 0, 1 - low, low)
        return torch.where(small, u, x).clamp(0, 1)


class DiscretizedLogisticDistribution(TorchDistribution):
    r"""A logistic distribution discretized to ``num_bins`` equal bins on [0, 1] (PixelCNN++, one component).

    Values are the bin centres ``c_k = k / (num_bins - 1)`` (8-bit grey levels for 256 bins), stored as
    floats; ``log_prob`` is a log-probability *mass*, and the masses of the ``num_bins`` values sum to 1.
    Bin ``k`` covers ``[c_k - h, c_k + h)`` with ``h = 1 / (2 (num_bins - 1))``; the first and last bins
    also take the tails below ``h`` and above ``1 - h``::

        P(k) = F(c_k + h) - F(c_k - h),   P(0) = F(h),   P(K - 1) = 1 - F(1 - h),
        F(t) = sigmoid((t - loc) / exp(log_scale)).

    ``loc`` is in data units (the logistic's location on [0, 1]); ``log_scale`` is the log of the
    logistic's scale in the same units, clamped to ``[min_log_scale, max_log_scale]`` (default
    ``[-10, 10]``, i.e. from 1/90 of a bin, where the centre bin holds all the mass, to 22,000 data
    ranges). Differences of sigmoids are computed as
    ``log sigmoid(a) + log sigmoid(-b) + log(1 - exp(-(a - b)))``, exact and finite in float32 far
    into the tails, with no branch on the data.
    """

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}
    has_enumerate_support = True

    def __init__(
        self,
        loc,
        log_scale,
        num_bins: int = 256,
        min_log_scale: float = -10.0,
        max_log_scale: float = 10.0,
        validate_args=None,
    ):
        self.loc, self.log_scale = broadcast_all(loc, log_scale)
        self.num_bins = int(num_bins)
        self.min_log_scale, self.max_log_scale = float(min_log_scale), float(max_log_scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return _Grid(self.num_bins)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogisticDistribution, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc, new.log_scale = self.loc.expand(batch_shape), self.log_scale.expand(batch_shape)
        new.num_bins, new.min_log_scale, new.max_log_scale = self.num_bins, self.min_log_scale, self.max_log_scale
        super(DiscretizedLogisticDistribution, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def _inv_scale(self) -> torch.Tensor:
        return torch.exp(-self.log_scale.clamp(self.min_log_scale, self.max_log_scale))

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        last = self.num_bins - 1
        k = (value * last).round().clamp(0, last)
        loc, inv_scale, k = broadcast_all(self.loc, self._inv_scale, k)
        # Bin k lies between the boundaries b_{k-1} and b_k, b_j = (j + 1/2) / (K - 1), each computed by
        # the same expression whichever bin it bounds: bin k's upper edge and bin k + 1's lower edge are
        # the same float, and the width term below uses the rounded edges, so the masses telescope and sum
        # to 1 up to the rounding of each term, in float32 too (with the exact width 1 / (K - 1) instead,
        # a float32 loc within rounding of a boundary at the smallest scale gave sums off by 3e-4).
        upper = ((k + 0.5) / last - loc) * inv_scale  # standardized b_k
        lower = ((k - 0.5) / last - loc) * inv_scale  # standardized b_{k-1}
        width = upper - lower
        width = torch.where(width > 0, width, inv_scale / last)  # edges merged by rounding (|loc| > ~1e5)
        log_cdf_upper = F.logsigmoid(upper)  # log F(b_k)
        log_sf_lower = F.logsigmoid(-lower)  # log (1 - F(b_{k-1}))
        log_middle = log_cdf_upper + log_sf_lower + _log1mexp(width)
        return torch.where(k == 0, log_cdf_upper, torch.where(k == last, log_sf_lower, log_middle))

    @property
    def mean(self):
        # Summation by parts: E[x] = 1 - (1 / (K - 1)) * sum_{j=0}^{K-2} F(b_j), b_j = (j + 1/2) / (K - 1)
        # are the inner bin boundaries. A loop keeps memory at one batch-sized tensor.
        last = self.num_bins - 1
        inv_scale = self._inv_scale
        total = torch.zeros_like(self.loc)
        for j in range(last):
            total = total + torch.sigmoid(((j + 0.5) / last - self.loc) * inv_scale)
        return 1 - total / last

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-7, 1 - 1e-7)
            scale = self.log_scale.clamp(self.min_log_scale, self.max_log_scale).exp()
            t = self.loc + scale * (torch.log(u) - torch.log1p(-u))  # a logistic draw
            last = self.num_bins - 1
            return (t * last).round().clamp(0, last) / last  # its bin (edge bins take the tails)

    def enumerate_support(self, expand=True):
        values = torch.arange(self.num_bins, dtype=self.loc.dtype, device=self.loc.device) / (self.num_bins - 1)
        values = values.reshape((-1,) + (1,) * len(self.batch_shape))
        return values.expand((-1,) + self.batch_shape) if expand else values


class DiscretizedLogisticMixtureDistribution(TorchDistribution):
    r"""A mixture of ``K`` discretized logistics on the ``num_bins`` levels ``k / (num_bins - 1)``
    (PixelCNN++'s likelihood of one sub-pixel, Salimans et al. 2017).

    ``logits``, ``loc`` and ``log_scale`` have shape ``(..., K)``, the component in the last dimension;
    the batch shape is ``(...)``. The mass of level ``k`` is

        P(k) = sum_j softmax(logits)_j P_j(k),

    where ``P_j`` is :class:`DiscretizedLogisticDistribution` with ``loc[..., j]`` and
    ``log_scale[..., j]`` (edge bins take the tails, log-scales clamped to ``[min_log_scale,
    max_log_scale]``). Each component's masses sum to one and the weights sum to one, so the mixture's
    do too; ``log_prob`` is computed as ``logsumexp_j(log_softmax(logits)_j + log P_j(k))``, finite
    however far a level lies in every component's tail. ``mean`` is the exact mean of the mass function
    (the weighted component means), ``sample`` draws a component and then its level.
    """

    arg_constraints = {
        "logits": constraints.real_vector,
        "loc": constraints.real_vector,
        "log_scale": constraints.real_vector,
    }
    has_enumerate_support = True

    def __init__(
        self,
        logits,
        loc,
        log_scale,
        num_bins: int = 256,
        min_log_scale: float = -10.0,
        max_log_scale: float = 10.0,
        validate_args=None,
    ):
        self.logits, self.loc, self.log_scale = broadcast_all(logits, loc, log_scale)
        if self.loc.dim() < 1:
            raise ValueError("logits, loc and log_scale need a last dimension of components, shape (..., K)")
        self.num_bins = int(num_bins)
        self.min_log_scale, self.max_log_scale = float(min_log_scale), float(max_log_scale)
        super().__init__(self.loc.shape[:-1], validate_args=validate_args)

    @property
    def num_components(self) -> int:
        return self.loc.shape[-1]

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return _Grid(self.num_bins)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogisticMixtureDistribution, _instance)
        batch_shape = torch.Size(batch_shape)
        shape = batch_shape + (self.num_components,)
        new.logits, new.loc, new.log_scale = (t.expand(shape) for t in (self.logits, self.loc, self.log_scale))
        new.num_bins, new.min_log_scale, new.max_log_scale = self.num_bins, self.min_log_scale, self.max_log_scale
        super(DiscretizedLogisticMixtureDistribution, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _components(self, loc=None, log_scale=None) -> DiscretizedLogisticDistribution:
        """The components as one discretized logistic with batch shape ``(..., K)``."""
        return DiscretizedLogisticDistribution(
            self.loc if loc is None else loc,
            self.log_scale if log_scale is None else log_scale,
            num_bins=self.num_bins,
            min_log_scale=self.min_log_scale,
            max_log_scale=self.max_log_scale,
            validate_args=False,
        )

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        log_mass = self._components().log_prob(value.unsqueeze(-1))  # (..., K): every component's mass
        return (self.logits.log_softmax(-1) + log_mass).logsumexp(-1)

    @property
    def mean(self):
        return (self.logits.softmax(-1) * self._components().mean).sum(-1)

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape) + (self.num_components,)
        with torch.no_grad():
            # The component of every draw (Gumbel-max), then a draw of that component's level.
            u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device).clamp(1e-12, 1 - 1e-7)
            pick = (self.logits.expand(shape) - torch.log(-torch.log(u))).argmax(-1, keepdim=True)
            loc = self.loc.expand(shape).gather(-1, pick).squeeze(-1)
            log_scale = self.log_scale.expand(shape).gather(-1, pick).squeeze(-1)
            return self._components(loc, log_scale).sample()

    def enumerate_support(self, expand=True):
        values = torch.arange(self.num_bins, dtype=self.loc.dtype, device=self.loc.device) / (self.num_bins - 1)
        values = values.reshape((-1,) + (1,) * len(self.batch_shape))
        return values.expand((-1,) + self.batch_shape) if expand else values


class GridCategorical(TorchDistribution):
    """A categorical distribution over the ``K`` values ``k / (K - 1)`` on [0, 1] (8-bit grey levels for
    ``K = 256``), with one logit per value in the last dimension of ``logits (..., K)``.

    Unlike ``torch.distributions.Categorical`` it never stores normalized logits: ``log_prob`` is
    ``logits[k] - logsumexp(logits)`` computed on demand, so the only ``K``-sized tensors are the
    decoder's output and autograd's own buffers.
    """

    arg_constraints = {"logits": constraints.real_vector}
    has_enumerate_support = True

    def __init__(self, logits: torch.Tensor, validate_args=None):
        self.logits = logits
        super().__init__(logits.shape[:-1], validate_args=validate_args)

    @property
    def num_bins(self) -> int:
        return self.logits.shape[-1]

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return _Grid(self.num_bins)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(GridCategorical, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + (self.num_bins,))
        super(GridCategorical, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        last = self.num_bins - 1
        k = (value * last).round().clamp(0, last).long()
        shape = torch.broadcast_shapes(k.shape, self.batch_shape)
        logits = self.logits.expand(shape + (self.num_bins,))
        chosen = logits.gather(-1, k.expand(shape).unsqueeze(-1)).squeeze(-1)
        return chosen - self.logits.logsumexp(-1).expand(shape)

    @property
    def probs(self):
        return self.logits.softmax(-1)

    @property
    def mean(self):
        values = torch.linspace(0, 1, self.num_bins, dtype=self.logits.dtype, device=self.logits.device)
        return self.probs @ values

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            k = torch.distributions.Categorical(logits=self.logits).sample(torch.Size(sample_shape))
            return k.to(self.logits.dtype) / (self.num_bins - 1)

    def enumerate_support(self, expand=True):
        values = torch.arange(self.num_bins, dtype=self.logits.dtype, device=self.logits.device) / (self.num_bins - 1)
        values = values.reshape((-1,) + (1,) * len(self.batch_shape))
        return values.expand((-1,) + self.batch_shape) if expand else values


class SqueezedBeta(TorchDistribution):
    r"""A Beta distribution stretched from [0, 1] onto ``[-d, 1 + d]``, ``d = eps / (1 - 2 eps)``.

    ``y ~ Beta(alpha, beta)``, ``x = (y - eps) / (1 - 2 eps)``; so ``x`` in [0, 1] is scored at
    ``y = eps + (1 - 2 eps) x`` in ``[eps, 1 - eps]``, where the Beta density is finite::

        log p(x) = log Beta(eps + (1 - 2 eps) x | alpha, beta) + log(1 - 2 eps).

    This is an exactly normalized density of ``x`` (on the stretched interval). In ``log_prob``, ``y``
    is kept a float rounding step inside (0, 1): draws within rounding of the outer ends, where
    ``y`` would round to exactly 0 or 1, score finitely; values in [0, 1] are unaffected.
    """

    arg_constraints = {"concentration1": constraints.positive, "concentration0": constraints.positive}
    has_rsample = True

    def __init__(self, concentration1, concentration0, eps: float = 1e-3, validate_args=None):
        self.concentration1, self.concentration0 = broadcast_all(concentration1, concentration0)
        self.eps = float(eps)
        super().__init__(self.concentration1.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        d = self.eps / (1 - 2 * self.eps)
        return constraints.interval(-d, 1 + d)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(SqueezedBeta, _instance)
        batch_shape = torch.Size(batch_shape)
        new.concentration1 = self.concentration1.expand(batch_shape)
        new.concentration0 = self.concentration0.expand(batch_shape)
        new.eps = self.eps
        super(SqueezedBeta, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _beta(self):
        return dist.Beta(self.concentration1, self.concentration0, validate_args=False)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        width = 1 - 2 * self.eps
        finfo = torch.finfo(value.dtype if value.is_floating_point() else torch.get_default_dtype())
        y = (self.eps + width * value).clamp(finfo.tiny, 1 - finfo.eps)
        return self._beta().log_prob(y) + math.log(width)

    def rsample(self, sample_shape=torch.Size()):
        y = self._beta().rsample(sample_shape)
        return (y - self.eps) / (1 - 2 * self.eps)

    @property
    def mean(self):
        beta_mean = self.concentration1 / (self.concentration1 + self.concentration0)
        return (beta_mean - self.eps) / (1 - 2 * self.eps)


class _Float64NegativeBinomial(dist.NegativeBinomial):
    """Pyro's NegativeBinomial with ``lgamma(r + x) - lgamma(r)`` in float64.

    In float32 that difference loses digits as ``r`` grows (``lgamma(1000)`` is about 5900, so its
    rounding error is 5e-4 per feature, and 0.1 at ``r = 1e5``), which matters as the NB approaches a
    Poisson. The result is returned in the parameters' dtype.
    """

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(_Float64NegativeBinomial, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        r, logits, value = broadcast_all(self.total_count, self.logits, value)
        r64, x64 = r.double(), value.double()
        log_binom = (torch.lgamma(r64 + x64) - torch.lgamma(r64) - torch.lgamma(x64 + 1)).to(r.dtype)
        return log_binom + r * F.logsigmoid(-logits) + value * F.logsigmoid(logits)


# --------------------------------------------------------------------------------------------------
# The likelihoods
# --------------------------------------------------------------------------------------------------


class Bernoulli(_Likelihood):
    """Independent Bernoulli pixels; the decoder emits one logit per feature.

    For binary data (binarized images). ``mean`` gives the pixel probabilities.
    """

    name = "bernoulli"
    data_kind = "binary"
    params_per_feature = 1

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        logits = self._features(params)  # (..., D) -> (..., *data_shape)
        return dist.Bernoulli(logits=logits).to_event(len(self.data_shape))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self._features(params))


class ContinuousBernoulli(_Likelihood):
    """Continuous Bernoulli grey levels in [0, 1] (Loaiza-Ganem & Cunningham, 2019); one logit per feature.

    The density ``C(l) exp(l x)`` on [0, 1] includes its normalizing constant (see
    :class:`ExactContinuousBernoulli`, which is exact for every logit). ``mean`` is the mean of that
    density, which is *not* ``sigmoid(logit)``: it lies closer to 1/2 (e.g. 0.81 at logit 5 where the
    Bernoulli probability is 0.993). Figures should show it, not the sigmoid.
    """

    name = "continuous-bernoulli"
    data_kind = "unit"
    params_per_feature = 1

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return ExactContinuousBernoulli(self._features(params)).to_event(len(self.data_shape))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return ExactContinuousBernoulli(self._features(params)).mean


class Gaussian(_Likelihood):
    """Independent Normal features with the decoder output as mean and one shared scale.

    The scale is learned (stored as its logarithm, ``log_scale``, shape ``()``) unless
    ``learn_scale=False``, in which case it is fixed at ``scale`` (probabilistic PCA with known noise, for
    instance).
    """

    name = "gaussian"
    data_kind = "real"
    params_per_feature = 1
    _scale_shape: tuple = ()  # shape of log_scale, broadcast against data_shape

    def __init__(self, data_shape: Sequence[int], scale: float = 1.0, learn_scale: bool = True):
        super().__init__(data_shape)
        shape = self.data_shape if self._scale_shape is None else self._scale_shape
        log_scale = torch.full(shape, float(scale)).log()
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        loc = self._features(params)  # (..., D) -> (..., *data_shape)
        return dist.Normal(loc, self.log_scale.exp()).to_event(len(self.data_shape))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._features(params)


class GaussianPerFeature(Gaussian):
    """Independent Normal features with the decoder output as mean and one learned scale per feature
    (``log_scale`` has shape ``data_shape``; all start at ``scale``). Shared by all examples: the scale
    of feature i is a global parameter, not a function of z."""

    name = "gaussian-per-feature"
    _scale_shape = None  # = data_shape


class Laplace(_Likelihood):
    """Independent Laplace features with the decoder output as location (= mean) and one shared scale,
    learned as ``log_scale`` (shape ``()``) unless ``learn_scale=False``. Heavier tails than the
    Gaussian: the reconstruction term is an L1 loss."""

    name = "laplace"
    data_kind = "real"
    params_per_feature = 1

    def __init__(self, data_shape: Sequence[int], scale: float = 1.0, learn_scale: bool = True):
        super().__init__(data_shape)
        log_scale = torch.tensor(float(scale)).log()
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return dist.Laplace(self._features(params), self.log_scale.exp()).to_event(len(self.data_shape))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._features(params)


class Beta(_Likelihood):
    r"""Beta grey levels in [0, 1]; two parameters per feature.

    Layout: params ``(..., 2 * D)`` -> ``(..., 2, *data_shape)``; ``[..., 0, ...]`` gives the
    concentration ``alpha`` (of x) and ``[..., 1, ...]`` gives ``beta`` (of 1 - x), each as
    ``softplus(param) + min_concentration``.

    Edge values: grey images have many values of exactly 0 or 1, where a Beta density is 0 or infinite
    (and the likelihood unbounded). Refusing them would make this likelihood unusable on ordinary image
    data, and clamping them to [eps, 1 - eps] gives a function of x that is not a normalized density.
    Instead the model is: ``y ~ Beta(alpha, beta)``, ``x = (y - eps) / (1 - 2 eps)``, i.e. the Beta is
    placed on the interval ``[-d, 1 + d]``, ``d = eps / (1 - 2 eps)``, slightly wider than [0, 1].
    ``log_prob(x) = log Beta(eps + (1 - 2 eps) x) + log(1 - 2 eps)``: the density of the squeezed value
    plus the Jacobian of the squeeze, so it is an exactly normalized density of x itself (on the wider
    interval, which contains [0, 1]), finite at 0 and 1, and comparable with the other [0, 1] densities
    (mass outside [0, 1] only lowers it); see :class:`SqueezedBeta`. Draws can fall up to ``d`` outside [0, 1];
    ``check_support`` accepts that interval; clip for display. ``eps`` defaults to 1e-3 (about a
    quarter of an 8-bit grey step).
    """

    name = "beta"
    data_kind = "unit"
    params_per_feature = 2

    def __init__(self, data_shape: Sequence[int], eps: float = 1e-3, min_concentration: float = 1e-3):
        super().__init__(data_shape)
        if not 0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 1/2), got {eps}")
        self.eps = float(eps)
        self.min_concentration = float(min_concentration)

    @property
    def margin(self) -> float:
        """How far outside [0, 1] the support reaches on each side: ``eps / (1 - 2 eps)``."""
        return self.eps / (1 - 2 * self.eps)

    def _concentrations(self, params):
        p = _split_params(params, 2, self.data_shape)
        c = F.softplus(p) + self.min_concentration
        return c.select(-len(self.data_shape) - 1, 0), c.select(-len(self.data_shape) - 1, 1)

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        alpha, beta = self._concentrations(params)
        return SqueezedBeta(alpha, beta, eps=self.eps).to_event(len(self.data_shape))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        alpha, beta = self._concentrations(params)
        return SqueezedBeta(alpha, beta, eps=self.eps).mean

    def check_support(self, x: torch.Tensor) -> None:
        # The model's support is [-margin, 1 + margin] (so its own draws pass); the data should be in [0, 1].
        m = self.margin
        if not bool(((x >= -m) & (x <= 1 + m)).all()):  # False for NaN too
            raise DataError(
                f"the {self.name} likelihood needs grey levels in [0, 1]; rescale the data to [0, 1] "
                "(divide 8-bit images by 255) and remove NaN values"
            )


class DiscretizedLogistic(_Likelihood):
    """8-bit grey levels: a logistic distribution discretized to the 256 levels k/255 (PixelCNN++ with
    one mixture component); a probability mass function over the 256 levels.

    Layout: params ``(..., 2 * D)`` -> ``(..., 2, *data_shape)``; ``[..., 0, ...]`` is the location in
    data units ([0, 1]) and ``[..., 1, ...]`` the log-scale (see :class:`DiscretizedLogisticDistribution`).
    Data are floats k/255 (``data_kind = "8bit"``); ``mean`` is the exact mean of the 256-level mass
    function, not the location (they differ near 0 and 1, where the edge bins take the tails).
    """

    name = "discretized-logistic"
    data_kind = "8bit"
    params_per_feature = 2

    def _distribution(self, params):
        p = _split_params(params, 2, self.data_shape)
        dim = -len(self.data_shape) - 1
        return DiscretizedLogisticDistribution(p.select(dim, 0), p.select(dim, 1), num_bins=256)

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return self._distribution(params).to_event(len(self.data_shape))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._distribution(params).mean


class DiscretizedLogisticMixture(_Likelihood):
    """8-bit levels (grey or colour): a mixture of ``K`` discretized logistics per value (PixelCNN++'s
    likelihood, Salimans et al. 2017); a probability mass function over the 256 levels k/255.

    Built as ``LIKELIHOODS["logistic-mixture"](data_shape)`` with ``K = 5``, or by the spec
    ``"logistic-mixture:K"`` (``VAE(..., likelihood="logistic-mixture:10")``, ``--likelihood
    logistic-mixture:10``), or with ``num_components=K``.

    Layout: params ``(..., 3 K D)`` -> ``(..., 3, K, *data_shape)``: entry ``(j K + c) D + i`` is
    parameter ``j`` of component ``c`` at feature ``i``, with ``j = 0`` the mixture logit, ``j = 1`` the
    location in data units ([0, 1]) and ``j = 2`` the log-scale (clamped to [-10, 10], see
    :class:`DiscretizedLogisticDistribution`). ``params_per_feature = 3 K``.

    Every feature (every channel of every pixel) has its own mixture weights and the features are
    independent given z. PixelCNN++ instead shares the weights across the channels of a pixel and makes
    the green and blue locations linear in the red (and green) values; that coupling matters for an
    autoregressive model that has no other route between the channels, while here the decoder sees z and
    can correlate the channels through it, and per-feature weights work for any ``data_shape`` (no
    channel axis needs to be named). With ``K = 1`` the masses equal :class:`DiscretizedLogistic`'s
    exactly. ``mean`` is the exact mean of the mass function (what figures show), not a location.
    """

    name = "logistic-mixture"
    data_kind = "8bit"
    params_per_feature = 15  # 3 K for the default K = 5; set per instance
    #: :func:`ppl_vae.vae` passes the text after a colon of the spec (``logistic-mixture:K``) as ``option``.
    accepts_option = True

    def __init__(self, data_shape: Sequence[int], num_components: int = 5, *, option: str | None = None):
        super().__init__(data_shape)
        if option is not None:
            try:
                num_components = int(option)
            except ValueError:
                raise ValueError(
                    f"the number after the colon must be the number of components K, an integer; got {option!r}"
                ) from None
        if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 1:
            raise ValueError(f"the number of mixture components must be a positive integer, got {num_components!r}")
        self.num_components = num_components
        self.params_per_feature = 3 * num_components

    def _distribution(self, params):
        k, n = self.num_components, len(self.data_shape)
        p = _split_params(params, 3 * k, self.data_shape)  # (..., 3K, *data_shape)
        p = p.reshape(p.shape[: -n - 1] + (3, k) + self.data_shape)  # (..., 3, K, *data_shape)
        logits, loc, log_scale = p.movedim(-n - 1, -1).unbind(-n - 2)  # each (..., *data_shape, K)
        return DiscretizedLogisticMixtureDistribution(logits, loc, log_scale, num_bins=256)

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return self._distribution(params).to_event(len(self.data_shape))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._distribution(params).mean

    def extra_repr(self) -> str:
        return f"data_shape={self.data_shape}, num_components={self.num_components}"


class Categorical256(_Likelihood):
    """8-bit grey levels: an unconstrained categorical over the 256 levels k/255 of every feature.

    Layout: params ``(..., 256 * D)`` -> ``(..., 256, *data_shape)``; ``[..., k, ...]`` is the logit of
    level k/255. The logits are used through a view (moved to the last dimension) and never normalized
    into a stored copy. Memory: the decoder's output is 256 numbers per feature, so a batch of B
    28 x 28 images is B * 200,704 floats (0.8 MB per image), and an MLP decoder's last layer has
    ``hidden * 256 * D`` weights (51 M for hidden = 256 on 28 x 28): use small images or a narrow last
    hidden layer.
    """

    name = "categorical-256"
    data_kind = "8bit"
    params_per_feature = 256

    def _logits(self, params):
        return _split_params(params, 256, self.data_shape).movedim(-len(self.data_shape) - 1, -1)

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return GridCategorical(self._logits(params)).to_event(len(self.data_shape))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return GridCategorical(self._logits(params)).mean


#: Bounds on a log rate or log mean of the count likelihoods: rates from 2e-9 to 4.9e8.
_LOG_RATE_BOUNDS = (-20.0, 20.0)


class Poisson(_Likelihood):
    """Independent Poisson counts; the decoder emits the log rate of every feature (log link: rate =
    exp(param), clamped to exp([-20, 20]) so that it neither underflows to 0 nor overflows).
    ``mean`` = rate."""

    name = "poisson"
    data_kind = "count"
    params_per_feature = 1

    def _rate(self, params):
        return self._features(params).clamp(*_LOG_RATE_BOUNDS).exp()

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return dist.Poisson(self._rate(params)).to_event(len(self.data_shape))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._rate(params)


class NegativeBinomial(_Likelihood):
    """Independent negative-binomial (gamma-Poisson) counts: the decoder emits the log mean of every
    feature (as for :class:`Poisson`), the dispersion is a learned global parameter.

    ``Var = mu + mu^2 / r`` with ``r`` the ``total_count`` (inverse dispersion), learned as
    ``log_total_count``: one per feature (``dispersion="feature"``, default; as in scVI's gene-wise
    dispersion) or one for all features (``dispersion="shared"``), starting at ``total_count``. The
    decoder therefore emits one number per feature, the same layout as Poisson (the limit
    ``r -> infinity``), so the two compare directly. ``log_total_count`` is clamped to [-10, 15].
    """

    name = "negative-binomial"
    data_kind = "count"
    params_per_feature = 1

    def __init__(self, data_shape: Sequence[int], dispersion: str = "feature", total_count: float = 1.0):
        super().__init__(data_shape)
        if dispersion not in ("feature", "shared"):
            raise ValueError(f"dispersion must be 'feature' or 'shared', got {dispersion!r}")
        self.dispersion = dispersion
        shape = self.data_shape if dispersion == "feature" else ()
        self.log_total_count = nn.Parameter(torch.full(shape, float(total_count)).log())

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        log_mu = self._features(params).clamp(*_LOG_RATE_BOUNDS)
        log_r = self.log_total_count.clamp(-10.0, 15.0)
        log_r = log_r.expand(log_mu.shape)
        # NB(total_count = r, logits = l) has mean r e^l, so l = log mu - log r.
        return _Float64NegativeBinomial(total_count=log_r.exp(), logits=log_mu - log_r).to_event(len(self.data_shape))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._features(params).clamp(*_LOG_RATE_BOUNDS).exp()

    def extra_repr(self) -> str:
        return f"data_shape={self.data_shape}, dispersion={self.dispersion!r}"


#: Likelihoods by CLI name; each factory takes ``data_shape`` and returns a module.
LIKELIHOODS = {
    cls.name: cls
    for cls in (
        Bernoulli,
        ContinuousBernoulli,
        Gaussian,
        GaussianPerFeature,
        Beta,
        Laplace,
        DiscretizedLogistic,
        DiscretizedLogisticMixture,
        Categorical256,
        Poisson,
        NegativeBinomial,
    )
}
