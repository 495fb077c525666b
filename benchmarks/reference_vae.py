"""A hand-written PyTorch VAE with exactly the math of ppl_vae's default VAE, as a parity reference.

Model:  z ~ N(0, I),  x | z ~ Bernoulli(logits = decoder(z))      decoder: Linear(L,H)-ReLU-Linear(H,D)
Guide:  q(z | x) = N(loc(x), diag(scale(x)^2))                    encoder: Linear(D,H)-ReLU-Linear(H,2L)
        the encoder's 2L outputs are [loc, log_scale]; scale = exp(log_scale).

Loss: the single-draw Monte Carlo negative ELBO of Pyro's ``Trace_ELBO``,
    log q(z|x) - log p(z) - log p(x|z)   at   z = loc + scale * eps,  eps ~ N(0, I),
summed over the mini-batch and multiplied by num_data / batch (what ppl_vae's subsampled plate does),
so the number is an estimate of the whole training set's -ELBO. Adam is invariant to that constant
factor (up to its eps), so a per-example mean would train the same.

Nothing here imports ppl_vae: this file is the independent implementation.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def normal_log_prob(z, loc, scale):
    """log N(z; loc, diag(scale^2)) summed over the last dim: (..., L) -> (...)."""
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - HALF_LOG_2PI).sum(-1)


class ReferenceVAE(nn.Module):
    def __init__(self, data_dim=784, latent_dim=50, hidden_dim=400):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Linear(data_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, data_dim))

    def encode(self, x):
        """x (B, ...) -> loc, scale, each (B, L)."""
        loc, log_scale = self.encoder(x.flatten(1)).split(self.latent_dim, dim=-1)
        return loc, log_scale.exp()

    def log_weight(self, x, z, loc, scale):
        """log p(x|z) + log p(z) - log q(z|x) for draws z (..., B, L) of the examples x (B, ...) -> (..., B)."""
        x = x.flatten(1)  # (B, D)
        logits = self.decoder(z)  # (..., B, D)
        log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_pz = normal_log_prob(z, torch.zeros_like(z), torch.ones_like(z))
        log_qz = normal_log_prob(z, loc, scale)
        return log_px + log_pz - log_qz  # (..., B)

    def loss(self, x, num_data=None):
        """Single-draw negative ELBO, summed over the batch x (B, ...), scaled by num_data / B."""
        loc, scale = self.encode(x)  # (B, L)
        z = loc + scale * torch.randn_like(loc)  # reparameterized draw, (B, L)
        scale_factor = 1.0 if num_data is None else num_data / x.shape[0]
        return -scale_factor * self.log_weight(x, z, loc, scale).sum()


def binarize_images(x, mode, generator=None):
    """'dynamic': a fresh Bernoulli(x) draw; 'threshold': x > 0.5; 'none': x unchanged."""
    if mode == "dynamic":
        return torch.bernoulli(x, generator=generator)
    if mode == "threshold":
        return (x > 0.5).float()
    if mode == "none":
        return x
    raise ValueError(f"unknown binarization {mode!r}")


def train_reference(model, train, epochs, batch_size=128, lr=1e-3, seed=0, binarize="dynamic"):
    """Adam on the single-draw negative ELBO, shuffling and binarizing like ppl_vae.fit.

    train (N, ...) grey levels in [0, 1]; ``binarize`` as in :func:`binarize_images`. Seeds: the
    global torch stream (draws of eps) with ``seed``, a shuffling generator with ``seed`` and a
    binarization generator with ``seed + 1``; every epoch is a new permutation of the examples and a
    new Bernoulli draw of every training image.
    Returns (loss per example of every step, wall seconds of every epoch's training steps).
    """
    num_data = train.shape[0]
    torch.manual_seed(seed)
    shuffle = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses, seconds = [], []
    model.train()
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(num_data, generator=shuffle)
        data = binarize_images(train, binarize, noise)  # fresh draw every epoch, (N, ...)
        for first in range(0, num_data, batch_size):
            x = data[order[first : first + batch_size]]  # (B, ...)
            loss = model.loss(x, num_data=num_data)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item() / num_data)
        seconds.append(time.perf_counter() - start)
    model.eval()
    return losses, seconds


@torch.no_grad()
def reference_log_likelihood(model, x, num_particles=1000, chunk=8, seed=None):
    """Importance-sampled log p(x) (the IWAE bound with K = num_particles draws from q) and the ELBO.

    x (N, ...) binary. Works on ``chunk`` examples at a time, so memory is O(chunk * K * D).
    Returns a dict of per-example means (nats) and their standard errors:
      log_likelihood, log_likelihood_se (Monte Carlo, delta method), log_likelihood_data_se (over examples),
      elbo, elbo_se, elbo_data_se, and per_example tensors (N,) of both.
    """
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    model.eval()
    k = num_particles
    iwae, iwae_var, elbo, elbo_var = [], [], [], []
    for first in range(0, x.shape[0], chunk):
        xb = x[first : first + chunk]  # (n, ...)
        loc, scale = model.encode(xb)  # (n, L)
        eps = torch.randn((k,) + loc.shape, generator=generator)  # (K, n, L)
        log_w = model.log_weight(xb, loc + scale * eps, loc, scale).double()  # (K, n)
        iwae.append(torch.logsumexp(log_w, 0) - math.log(k))  # (n,)
        w = (log_w - log_w.max(0).values).exp()  # weights / their max, (K, n)
        iwae_var.append(w.var(0) / (k * w.mean(0) ** 2))  # delta method: Var(w) / (K mean(w)^2)
        elbo.append(log_w.mean(0))
        elbo_var.append(log_w.var(0) / k)
    iwae, iwae_var, elbo, elbo_var = (torch.cat(t) for t in (iwae, iwae_var, elbo, elbo_var))
    n = x.shape[0]
    return {
        "log_likelihood": iwae.mean().item(),
        "log_likelihood_se": (iwae_var.sum().sqrt() / n).item(),
        "log_likelihood_data_se": (iwae.std() / math.sqrt(n)).item() if n > 1 else float("nan"),
        "elbo": elbo.mean().item(),
        "elbo_se": (elbo_var.sum().sqrt() / n).item(),
        "elbo_data_se": (elbo.std() / math.sqrt(n)).item() if n > 1 else float("nan"),
        "per_example": {"log_likelihood": iwae.float(), "elbo": elbo.float()},
    }


class TextbookVAE(ReferenceVAE):
    """The textbook VAE users compare with: the same networks as :class:`ReferenceVAE`, trained on the
    single-draw reconstruction term plus the closed-form KL of a diagonal Normal to N(0, I)
    (Kingma & Welling 2014, appendix B; the loss of the PyTorch examples' VAE):

        KL(N(loc, diag scale^2) || N(0, I)) = 1/2 sum_j (loc_j^2 + scale_j^2 - 1 - 2 log scale_j).
    """

    def loss(self, x, num_data=None):
        """-log p(x|z) at one reparameterized draw + the closed-form KL, summed over the batch x (B, ...),
        scaled by num_data / B."""
        loc, scale = self.encode(x)  # (B, L)
        z = loc + scale * torch.randn_like(loc)  # (B, L)
        logits = self.decoder(z)  # (B, D)
        reconstruction = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(-1)
        kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(-1)
        scale_factor = 1.0 if num_data is None else num_data / x.shape[0]
        return scale_factor * (reconstruction + kl).sum()
