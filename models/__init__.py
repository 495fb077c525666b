"""The generative side of the VAE, installed as ``ppl_vae.models``: priors p(z), decoders and
likelihoods p(x | z). Nothing here imports from ``ppl_vae.guides``."""

from ppl_vae.models.decoders import ConvDecoder, MLPDecoder, decoder_network
from ppl_vae.models.likelihoods import LIKELIHOODS, Bernoulli, Gaussian
from ppl_vae.models.manifold import DirichletPrior, HypersphericalUniform, PowerSpherical, SphereUniform
from ppl_vae.models.priors import (
    PRIOR_DESCRIPTIONS,
    PRIORS,
    FlowPrior,
    Hierarchical,
    LearnedNormal,
    MixtureOfGaussians,
    StandardLaplace,
    StandardNormal,
    StudentT,
    VampPrior,
    support_name,
)
from ppl_vae.models.structured import Conditional, Covariates, GroupEffects, MixturePrior, SemiSupervised

__all__ = [
    "LIKELIHOODS",
    "PRIORS",
    "PRIOR_DESCRIPTIONS",
    "Bernoulli",
    "Gaussian",
    "MLPDecoder",
    "ConvDecoder",
    "decoder_network",
    "StandardNormal",
    "LearnedNormal",
    "StandardLaplace",
    "StudentT",
    "MixtureOfGaussians",
    "VampPrior",
    "Hierarchical",
    "FlowPrior",
    "support_name",
    "DirichletPrior",
    "MixturePrior",
    "SemiSupervised",
    "Conditional",
    "GroupEffects",
    "Covariates",
    "HypersphericalUniform",
    "PowerSpherical",
    "SphereUniform",
]
