"""The inference side of the VAE, installed as ``ppl_vae.guides``: encoders and the amortized
variational families q(z | x).

Every family is an ``nn.Module`` ``x (N, *data_shape) -> q(z | x)`` returning a Pyro distribution with
batch shape ``(N,)`` and event shape ``(latent_dim,)``, and has a ``support`` attribute naming the space
z lives in (``constraints.real_vector``, ``constraints.sphere``, ``constraints.simplex``, from
``pyro.distributions.constraints``). Pair a guide with a prior on the same space.
"""

from ppl_vae.guides.delta import PointMass
from ppl_vae.guides.encoders import ConvEncoder, EncodedFamily, MLPEncoder, encoder_network
from ppl_vae.guides.flow import FlowPosterior, InverseAutoregressiveFlow
from ppl_vae.guides.full_rank import FullRankNormal
from ppl_vae.guides.manifold import DirichletGuide, PowerSphericalGuide
from ppl_vae.guides.normal import DiagonalNormal

#: Guide families by CLI name; each factory takes ``(data_shape, latent_dim, hidden_dims, *,
#: network="mlp", extra_features=0)``: the encoder network by name (``"mlp"``, ``"conv"``, ``"resnet"``, see
#: :func:`encoder_network`) and the length of a vector appended to each flattened example.
GUIDES = {
    "normal": DiagonalNormal.build,  # R^d: N(mu(x), diag sigma(x)^2)
    "full-rank": FullRankNormal.build,  # R^d: N(mu(x), L(x) L(x)^T)
    "iaf": InverseAutoregressiveFlow.build,  # R^d: diagonal Normal base + 2 IAF layers conditioned on x
    "delta": PointMass.build,  # R^d: point mass at f(x) (deterministic encoder)
    "power-spherical": PowerSphericalGuide.build,  # sphere S^(d-1), d >= 2
    "dirichlet": DirichletGuide.build,  # simplex, d >= 2
}

__all__ = [
    "GUIDES",
    "DiagonalNormal",
    "FullRankNormal",
    "InverseAutoregressiveFlow",
    "FlowPosterior",
    "PointMass",
    "PowerSphericalGuide",
    "DirichletGuide",
    "EncodedFamily",
    "MLPEncoder",
    "ConvEncoder",
    "encoder_network",
]
