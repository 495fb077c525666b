"""An amortized normalizing-flow family: a diagonal Normal base followed by inverse autoregressive flow
(IAF) layers conditioned on x (Kingma et al. 2016, "Improving Variational Inference with Inverse
Autoregressive Flow")."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from ppl_vae.guides.encoders import encoder_network


class FlowPosterior(dist.TransformedDistribution):
    """``TransformedDistribution`` of a diagonal Normal base, as returned by :class:`InverseAutoregressiveFlow`.

    Two additions, nothing else changes:

    * ``log_prob(z)`` first broadcasts ``z`` against the batch shape, so that the x-dependent context of
      the flow layers broadcasts too (e.g. ``z (N, 1, d)`` against a batch ``(K,)``, as in a mixture of
      posteriors). A draw of this distribution is passed through untouched, so Pyro's cached inverse of
      an IAF layer is hit and no O(d) inversion happens.
    * ``mean``, ``variance`` (hence ``stddev``) are Monte Carlo estimates from ``num_moment_samples`` fixed
      base draws (a private generator seeded with 0: deterministic, the global RNG is not touched), so
      that ``VAE.encode``/``reconstruct`` work; they have no closed form. Their Monte Carlo error is about
      ``stddev / sqrt(num_moment_samples)``.
    """

    num_moment_samples = 256

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape) + value.shape[-1:]
        if value.shape != shape:
            value = value.expand(shape)
        return super().log_prob(value)

    def _moment_draws(self) -> torch.Tensor:
        base = self.base_dist.base_dist  # Normal inside Independent
        generator = torch.Generator(device=base.loc.device).manual_seed(0)
        eps = torch.randn(
            (self.num_moment_samples,) + base.loc.shape,
            generator=generator,
            dtype=base.loc.dtype,
            device=base.loc.device,
        )
        z = base.loc + base.scale * eps
        for transform in self.transforms:
            z = transform(z)
        return z

    @property
    def mean(self) -> torch.Tensor:
        return self._moment_draws().mean(0)

    @property
    def variance(self) -> torch.Tensor:
        return self._moment_draws().var(0)


class InverseAutoregressiveFlow(nn.Module):
    """Amortized IAF posterior: a diagonal Normal base N(μ(x), diag σ(x)^2) pushed through ``num_flows``
    affine autoregressive layers whose shift and log-scale networks also see a context vector h(x).

    The encoder maps ``x (N, *data_shape)`` to ``2 * latent_dim + context_dim`` numbers: μ(x), log σ(x)
    (as the ``normal`` family) and the context h(x). Each layer is Pyro's
    ``ConditionalAffineAutoregressive`` (y = μ_t(x_<t, h) + σ_t(x_<t, h) x_t, the IAF direction: sampling
    and scoring the guide's own draws are one pass each) with a ``ConditionalAutoRegressiveNN``
    (hidden widths ``flow_hidden_dims``, each >= latent_dim). Variable orderings are deterministic,
    alternating identity and reversed between layers (stored as buffers in the networks).

    With ``identity_init`` (default) the last layer of every autoregressive network starts at zero, so
    the flow starts as the identity and q(z | x) as the diagonal Normal base; it is learned from there.

    ``forward(x)`` returns a :class:`FlowPosterior`, a ``TransformedDistribution`` with batch shape ``(N,)``,
    event shape ``(latent_dim,)`` and reparameterized draws. The flow layers are submodules
    (``self.flows``), so ``state_dict``, ``.to()`` and ``pyro.module`` see their parameters.
    """

    support = constraints.real_vector

    def __init__(
        self,
        encoder: nn.Module,
        latent_dim: int,
        context_dim: int,
        *,
        num_flows: int = 2,
        flow_hidden_dims: Sequence[int] | None = None,
        identity_init: bool = True,
    ):
        super().__init__()
        self.encoder = encoder
        self.latent_dim = int(latent_dim)
        self.context_dim = int(context_dim)
        if flow_hidden_dims is None:
            flow_hidden_dims = self.default_flow_hidden_dims(self.latent_dim)
        flow_hidden_dims = [int(h) for h in flow_hidden_dims]
        layers = []
        for i in range(int(num_flows)):
            order = torch.arange(self.latent_dim)
            if i % 2:
                order = order.flip(0)
            net = ConditionalAutoRegressiveNN(self.latent_dim, self.context_dim, flow_hidden_dims, permutation=order)
            if identity_init:
                nn.init.zeros_(net.layers[-1].weight)
                nn.init.zeros_(net.layers[-1].bias)
            layers.append(ConditionalAffineAutoregressive(net))
        self.flows = nn.ModuleList(layers)

    @staticmethod
    def default_context_dim(latent_dim: int) -> int:
        return max(8, 2 * latent_dim)

    @staticmethod
    def default_flow_hidden_dims(latent_dim: int) -> list[int]:
        return [max(16, 4 * latent_dim)]

    @classmethod
    def build(
        cls,
        data_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int],
        *,
        network: str = "mlp",
        extra_features: int = 0,
        num_flows: int = 2,
        context_dim: int | None = None,
        flow_hidden_dims: Sequence[int] | None = None,
        identity_init: bool = True,
    ) -> InverseAutoregressiveFlow:
        """The family on an encoder with ``2 * latent_dim + context_dim`` outputs (``network`` and
        ``extra_features`` as in :func:`~ppl_vae.guides.encoders.encoder_network`);
        ``context_dim = max(8, 2 * latent_dim)`` and one hidden layer of ``max(16, 4 * latent_dim)`` units in
        each autoregressive network unless given."""
        if context_dim is None:
            context_dim = cls.default_context_dim(latent_dim)
        outputs = 2 * latent_dim + context_dim
        encoder = encoder_network(network, data_shape, hidden_dims, outputs, extra_features=extra_features)
        return cls(
            encoder,
            latent_dim,
            context_dim,
            num_flows=num_flows,
            flow_hidden_dims=flow_hidden_dims,
            identity_init=identity_init,
        )

    @classmethod
    def mlp(
        cls,
        data_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int],
        *,
        num_flows: int = 2,
        context_dim: int | None = None,
        flow_hidden_dims: Sequence[int] | None = None,
        identity_init: bool = True,
    ) -> InverseAutoregressiveFlow:
        """The default: :meth:`build` on an :class:`~ppl_vae.guides.encoders.MLPEncoder`."""
        return cls.build(
            data_shape,
            latent_dim,
            hidden_dims,
            num_flows=num_flows,
            context_dim=context_dim,
            flow_hidden_dims=flow_hidden_dims,
            identity_init=identity_init,
        )

    def base_and_context(self, x: torch.Tensor) -> tuple[dist.Distribution, torch.Tensor]:
        """The base N(μ(x), diag σ(x)^2) (event shape ``(latent_dim,)``) and the context h(x) ``(N, context_dim)``."""
        d = self.latent_dim
        loc, log_scale, context = self.encoder(x).split([d, d, self.context_dim], dim=-1)
        return dist.Normal(loc, log_scale.exp()).to_event(1), context

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        base, context = self.base_and_context(x)
        # condition() builds fresh AffineAutoregressive transforms (fresh caches) that share the networks
        return FlowPosterior(base, [layer.condition(context) for layer in self.flows])
