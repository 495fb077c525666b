"""The inference side of the VAE, installed as ``ppl_vae.guides``: encoders and the amortized
variational families q(z | x)."""

from ppl_vae.guides.encoders import MLPEncoder
from ppl_vae.guides.normal import GUIDES, DiagonalNormal

__all__ = ["GUIDES", "DiagonalNormal", "MLPEncoder"]
