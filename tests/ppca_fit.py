"""The closed-form maximum-likelihood fit of probabilistic PCA (Tipping & Bishop 1999), as a VAE.

For data x_1..x_N in R^D and d < D latent dimensions, with the sample covariance's eigenvalues
l_1 >= ... >= l_D and eigenvectors U:

    b = mean of the data,  sigma^2 = mean of the D - d discarded eigenvalues,
    W = U_d (L_d - sigma^2 I)^(1/2)    (rotation R = I, so W has orthogonal columns).

The fitted model's decoder holds (W, b, sigma) and its linear encoder the exact posterior p(z | x) (the
columns of W are orthogonal, so the posterior covariance is diagonal): a :class:`tests.ppca.PPCA`.
Whatever the data, this is the best PPCA; fitted to non-Gaussian data it is the right covariance with the
wrong shape, which predictive checks should notice.
"""

from __future__ import annotations

import torch

from ppl_vae import VAE
from ppl_vae.models import Gaussian
from tests.ppca import PPCA


def fit_ppca(x: torch.Tensor, d: int) -> PPCA:
    """The maximum-likelihood PPCA of ``x (N, D)`` with ``d`` latent dimensions, its guide set to the exact
    posterior; float64 throughout."""
    x = x.double()
    n, D = x.shape
    b = x.mean(0)
    cov = (x - b).T @ (x - b) / n  # the ML (biased) sample covariance
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    sigma2 = eigenvalues[d:].mean()
    W = eigenvectors[:, :d] * (eigenvalues[:d] - sigma2).clamp(min=0).sqrt()
    sigma = float(sigma2.sqrt())
    vae = VAE((D,), d, hidden_dims=(), likelihood=Gaussian((D,), scale=sigma, learn_scale=False)).double()
    with torch.no_grad():
        vae.decoder.net[0].weight.copy_(W)
        vae.decoder.net[0].bias.copy_(b)
    fitted = PPCA(vae=vae, W=W, b=b, sigma=sigma)
    fitted.set_guide()
    return fitted
