"""Autoencoder vs VAE, measured: what the KL term buys, in numbers and figures.

The deterministic autoencoder is the VAE with the ``delta`` guide trained with ``beta=0`` (the KL part
masked): the same decoder, encoder network, data, budget and seed, minus the probabilistic part. The
claims usually made for the VAE are turned into measurements:

* **smooth latent space** -- :func:`path_smoothness`: decode the straight line between two held-out
  encodings; a smooth decoder gives a path about as long as the distance between its ends, with even
  steps; detours and jumps show up as a ratio above 1 and a large max/mean step;
* **samples from the prior look like data** -- :func:`sample_quality`: the mean top-class confidence
  of a *domain classifier* (a small MLP trained on the real training images, **not Inception**) on
  decoded prior samples, and the Fréchet distance between that classifier's hidden-layer features of
  the samples and of held-out data (an "FID" with a domain classifier instead of Inception);
* **the encodings cover the prior** -- :func:`mmd`: the unbiased squared maximum mean discrepancy
  between the aggregate posterior (one draw of q(z | x) per held-out example) and prior samples;
* **rate and distortion** -- KL(q(z | x) || p(z)) to the model's own prior (rate; :func:`kl_to_prior`:
  closed form for diagonal Normals, infinite for a point mass, reported as None) and −E_q log p(x | z)
  (distortion) on the fixed-binarized held-out set, with :func:`kl_per_dimension` and
  :func:`active_units` (Burda et al., 2016);
* **collapse** -- :func:`collapse_reason`: a model with no active unit or a rate below
  :data:`COLLAPSE_KL_NATS` is named as collapsed, and the verdict draws no conclusions from it.

:func:`compare_ae` trains the models and returns plain data; :func:`compare_ae_run` also writes
``comparison.json``, ``comparison.md`` and ``figures/``; :func:`register` adds the ``compare-ae`` CLI
command.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure

from ppl_vae.errors import ConfigError
from ppl_vae.evaluate import COLLAPSE_NATS

#: Epochs per model of ``compare-ae`` by default: 7 models on the digits in a few minutes on 2 CPU cores.
DEFAULT_EPOCHS = 150
DEFAULT_BETAS = (0.0, 0.1, 0.5, 1.0, 2.0, 4.0)
CLASSIFIER_NOTE = ("sample quality uses a domain classifier (an MLP with one hidden layer of 64 units trained "
                   "on the real training images), not Inception: its Fréchet distance is an FID-like number "
                   "on this data set only, not comparable with published FIDs")


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Metrics


@torch.no_grad()
def path_smoothness(decode: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, z1: torch.Tensor,
                    num_steps: int = 16, eps: float = 1e-8) -> dict:
    """How smooth the decoder is along straight latent lines.

    Args:
        decode: ``z (M, latent_dim) -> x (M, ...)``, e.g. ``vae.decode``.
        z0, z1: ``(P, latent_dim)``, the ends of P straight paths (e.g. encodings of held-out pairs).
        num_steps: segments per path; the path is decoded at ``num_steps + 1`` evenly spaced points,
            ends included.
        eps: pairs whose decoded ends are closer than this (or whose decoded path has zero length)
            are left out, their ratios being undefined.

    Returns a dict with
        ``ratio``: mean over pairs of (decoded path length, the sum of the L2 norms of the steps in data
        space) / (L2 distance between the decoded ends): 1 for a straight, evenly decoded line, large
        for detours;
        ``max_step_ratio``: mean over pairs of (largest step / mean step): 1 for even steps, up to
        ``num_steps`` when the whole change happens in one step (a jump);
        ``end_distance``: mean L2 distance between the decoded ends (near 0 for a collapsed decoder,
        whose paths are trivially "smooth": read the ratios together with it);
        ``ratio_per_pair``, ``max_step_ratio_per_pair``: the per-pair values (lists);
        ``num_pairs``: pairs used; ``num_steps``.
    """
    if num_steps < 1:
        raise ConfigError(f"num_steps must be at least 1, got {num_steps}")
    z0, z1 = torch.as_tensor(z0), torch.as_tensor(z1)
    if z0.dim() == 1:
        z0, z1 = z0[None], z1[None]
    if z0.shape != z1.shape:
        raise ConfigError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    pairs, dim = z0.shape
    t = torch.linspace(0, 1, num_steps + 1, dtype=z0.dtype, device=z0.device)
    z = z0[:, None, :] + t[None, :, None] * (z1 - z0)[:, None, :]              # (P, T, d)
    x = decode(z.reshape(-1, dim)).reshape(pairs, num_steps + 1, -1).double()   # (P, T, D)
    steps = (x[:, 1:] - x[:, :-1]).norm(dim=-1)                                # (P, num_steps)
    length = steps.sum(1)
    chord = (x[:, -1] - x[:, 0]).norm(dim=-1)
    keep = (chord > eps) & (length > eps)
    ratio = (length / chord)[keep]
    max_step = (steps.max(1).values / steps.mean(1))[keep]
    return {
        "ratio": float(ratio.mean()) if keep.any() else float("nan"),
        "max_step_ratio": float(max_step.mean()) if keep.any() else float("nan"),
        "end_distance": float(chord.mean()),
        "ratio_per_pair": ratio.tolist(),
        "max_step_ratio_per_pair": max_step.tolist(),
        "num_pairs": int(keep.sum()),
        "num_steps": int(num_steps),
    }


def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((c + c.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N_a, F)`` and ``(N_b, F)``:

    ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)``

    with sample means and (unbiased) covariances; the matrix square roots come from eigendecompositions
    of symmetric matrices, so the result is real and >= 0. Finite-sample bias: about ``F^2 / N`` even
    for two samples of one distribution, so compare distances computed with equal sample sizes.
    """
    a, b = _numpy(feats_a), _numpy(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ConfigError(f"feature sets must be (N, F) with the same F, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ConfigError("each feature set needs at least 2 rows to fit a covariance")
    mean_term = float(((a.mean(0) - b.mean(0)) ** 2).sum())
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrtm_psd(ca)
    cross = np.linalg.eigvalsh(root_a @ cb @ root_a)
    trace_term = float(np.trace(ca) + np.trace(cb) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())
    return max(0.0, mean_term + trace_term)


def train_domain_classifier(images, labels, *, hidden: int = 64, seed: int = 0, max_iter: int = 300):
    """A *domain classifier* (not Inception): ``sklearn.neural_network.MLPClassifier`` with one hidden layer
    of ``hidden`` ReLU units, fitted to the real training images flattened to grey-level vectors
    ``(N, D)`` in [0, 1] and their labels ``(N,)``. Its hidden layer gives the features of
    :func:`classifier_features`."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x = _numpy(images).reshape(len(images), -1)
    classifier = MLPClassifier(hidden_layer_sizes=(hidden,), random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x, _numpy(labels).astype(np.int64))
    return classifier


def classifier_features(classifier, images) -> np.ndarray:
    """Hidden-layer activations ``(N, hidden)`` of a fitted one-hidden-layer ``MLPClassifier``
    for images ``(N, ...)``, computed from its weights: ``relu(x W_0 + b_0)``."""
    x = _numpy(images).reshape(len(images), -1)
    return np.maximum(x @ classifier.coefs_[0] + classifier.intercepts_[0], 0.0)


def sample_quality(classifier, samples, heldout) -> dict:
    """Sample quality judged by a domain classifier (trained on the real training data; not Inception).

    Args:
        classifier: a fitted one-hidden-layer ``MLPClassifier`` (:func:`train_domain_classifier`).
        samples: ``(N, ...)`` generated images in [0, 1] (e.g. ``vae.sample(n)``).
        heldout: ``(M, ...)`` real held-out images in [0, 1]; use M = N, the Fréchet distance is biased
            by the sample sizes.

    Returns ``confidence`` (mean over samples of the top-class probability: near 1 when every sample
    looks clearly like one class), ``frechet`` (Fréchet distance between the classifier's hidden-layer
    features of samples and of held-out data; 0 is best), ``class_fractions`` (share of samples
    predicted as each class: mode coverage) and ``note`` (that this is a domain classifier).
    """
    x = _numpy(samples).reshape(len(samples), -1)
    proba = classifier.predict_proba(x)
    predicted = proba.argmax(1)
    fractions = np.bincount(predicted, minlength=proba.shape[1]) / len(predicted)
    return {
        "confidence": float(proba.max(1).mean()),
        "frechet": frechet_distance(classifier_features(classifier, samples), classifier_features(classifier, heldout)),
        "class_fractions": [float(f) for f in fractions],
        "note": "domain classifier (MLP trained on the real training images), not Inception",
    }


def _sq_dists(z: np.ndarray) -> np.ndarray:
    sq = (z ** 2).sum(1)
    return np.clip(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0, None)


def median_bandwidth(x, y) -> float:
    """The median heuristic: the median pairwise distance in the pooled sample."""
    z = np.concatenate([_numpy(x), _numpy(y)])
    d = np.sqrt(_sq_dists(z))
    return float(np.median(d[np.triu_indices(len(z), 1)]))


def _kernel(z: np.ndarray, bandwidths) -> np.ndarray:
    d2 = _sq_dists(z)
    return sum(np.exp(-d2 / (2 * h ** 2)) for h in bandwidths)


def _mmd_from_kernel(k: np.ndarray, m: int) -> float:
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    n = k.shape[0] - m
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def mmd(x, y, bandwidths: Sequence[float] | None = None) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy MMD² between the distributions of
    ``x (m, d)`` and ``y (n, d)`` with the kernel ``sum_h exp(-|a - b|^2 / (2 h^2))`` over ``bandwidths``
    (default: one bandwidth from the median heuristic on the pooled sample). Zero in expectation when
    both samples come from one distribution (so it can be slightly negative), larger the more they
    differ; with a sum of k kernels it is at most 2k.

    Used for coverage: x = the aggregate posterior (one draw of q(z | x) per held-out example), y = prior
    samples. Use fixed bandwidths to compare models: the median heuristic adapts to each model's scale.
    """
    a, b = _numpy(x), _numpy(y)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ConfigError(f"samples must be (N, d) with the same d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ConfigError("the unbiased MMD needs at least 2 points in each sample")
    bandwidths = [median_bandwidth(a, b)] if bandwidths is None else [float(h) for h in bandwidths]
    return _mmd_from_kernel(_kernel(np.concatenate([a, b]), bandwidths), len(a))


def mmd_test(x, y, bandwidths: Sequence[float] | None = None, num_permutations: int = 200, seed: int = 0) -> dict:
    """:func:`mmd` with a permutation test: ``mmd2``, ``threshold`` (the 95% quantile of MMD² over random
    relabellings of the pooled sample: what two samples of one distribution give), ``p_value`` and the
    ``bandwidths`` used."""
    a, b = _numpy(x), _numpy(y)
    bandwidths = [median_bandwidth(a, b)] if bandwidths is None else [float(h) for h in bandwidths]
    k = _kernel(np.concatenate([a, b]), bandwidths)
    observed = _mmd_from_kernel(k, len(a))
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(num_permutations):
        order = rng.permutation(len(k))
        null.append(_mmd_from_kernel(k[np.ix_(order, order)], len(a)))
    null = np.array(null)
    return {"mmd2": observed, "threshold": float(np.quantile(null, 0.95)),
            "p_value": float((1 + (null >= observed).sum()) / (1 + num_permutations)), "bandwidths": bandwidths}


def _is_point_mass(q) -> bool:
    base = q.base_dist if isinstance(q, dist.Independent) else q
    return isinstance(base, dist.Delta)


#: Draws of z per example (or of the prior's global latents) for Monte Carlo KL estimates.
KL_NUM_SAMPLES = 64
#: A model whose total KL(q(z|x) || p(z)) is below this many nats per example counts as collapsed.
COLLAPSE_KL_NATS = COLLAPSE_NATS          # see ppl_vae.evaluate.COLLAPSE_NATS


def _unwrap_independent(d) -> tuple:
    """``(base, reinterpreted_ndims)`` of (nested) ``Independent`` wrappers; ``(d, 0)`` otherwise."""
    ndims = 0
    while isinstance(d, torch.distributions.Independent):
        ndims += d.reinterpreted_batch_ndims
        d = d.base_dist
    return d, ndims


def _univariate_per_coordinate(d) -> bool:
    """True when ``d`` (event shape ``(latent_dim,)``) is a product of univariate distributions, one per
    coordinate: ``Independent(univariate, 1)``."""
    base, ndims = _unwrap_independent(d)
    return ndims == 1 and base.event_shape == torch.Size()


def _prior_draws(vae, num_global: int) -> list:
    """p(z) as a list of distributions: ``[vae.prior_distribution()]``, or for a prior with global latents
    (``vae.has_global_latents``) ``num_global`` distributions p(z | globals), the globals drawn from their
    guide (what :func:`ppl_vae.evaluate` scores against)."""
    from pyro import poutine

    if not callable(getattr(vae, "prior_distribution", None)):
        raise ConfigError(f"the KL to the prior needs vae.prior_distribution(); {type(vae).__name__} has none")
    with poutine.block():
        if getattr(vae, "has_global_latents", False):
            draws = []
            for _ in range(num_global):
                globals_trace = poutine.trace(vae.prior.global_guide).get_trace()
                draws.append(poutine.replay(vae.prior_distribution, trace=globals_trace)())
            return draws
        return [vae.prior_distribution()]


def _kl_rows(posteriors: list, prior, num_samples: int, per_dimension: bool) -> tuple[torch.Tensor, bool]:
    """KL(q || prior) summed over the examples of every ``q`` in ``posteriors``.

    Returns ``(rows, exact)``: ``rows`` is ``(S, latent_dim)`` per coordinate (``per_dimension``) or
    ``(S,)`` for the whole vector, one row per Monte Carlo draw of z (S = ``num_samples``), or a single
    row (S = 1) when ``exact`` (closed form / a KL registered with ``torch.distributions``)."""
    def exact_kl(q):
        if per_dimension:
            return torch.distributions.kl_divergence(_unwrap_independent(q)[0], _unwrap_independent(prior)[0])
        return torch.distributions.kl_divergence(q, prior)

    try:
        total = sum(exact_kl(q).double().reshape(-1, *(q.event_shape if per_dimension else ())).sum(0)
                    for q in posteriors)
        return total[None], True
    except NotImplementedError:
        pass
    total = 0.0
    for q in posteriors:
        if per_dimension:
            qb, pb = _unwrap_independent(q)[0], _unwrap_independent(prior)[0]
            z = qb.sample(torch.Size([num_samples]))                                # (S, n, d)
            terms = qb.log_prob(z) - pb.log_prob(z)                                 # (S, n, d)
        else:
            z = q.sample(torch.Size([num_samples]))                                 # (S, n, d)
            terms = q.log_prob(z) - prior.log_prob(z)                               # (S, n)
        total = total + terms.double().reshape(num_samples, -1, *terms.shape[2:]).sum(1)
    return total, False


@torch.no_grad()
def kl_to_prior(vae, x: torch.Tensor, *, num_samples: int = KL_NUM_SAMPLES, seed: int | None = 0,
                chunk_size: int = 1024) -> dict:
    """KL(q(z | x) || p(z)) to the VAE's own prior (``vae.prior_distribution()``), per example in nats,
    averaged over the examples ``x (N, *data_shape)``, split per latent dimension where the split exists.

    How, by case:

    * q and p both products of univariate distributions over the coordinates (e.g. the diagonal Normal
      guide with the ``normal``, ``learned-normal``, ``laplace``, ``student-t`` or ``hierarchical`` prior):
      the KL is the sum of per-coordinate KLs. Each is exact when ``torch.distributions`` knows the pair
      (Normal to Normal is the closed form ``log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2``,
      for any prior loc and scale, learned or not; Normal to Laplace is registered too), otherwise a
      Monte Carlo average of ``log q(z_j | x) - log p(z_j)`` over ``num_samples`` draws per example.
    * otherwise (a mixture, VampPrior or flow prior, a full-rank or manifold guide): there is no
      per-dimension split of the KL; ``per_dimension`` is None and ``per_dimension_note`` says why. The
      total is the registered KL when one exists, else a Monte Carlo estimate.
    * a prior with global latents (``hierarchical``): p(z | globals) with the globals drawn from their
      guide, ``num_samples`` draws (the KL given the globals exact when it can be), as
      :func:`ppl_vae.evaluate` does; the result is a Monte Carlo average over the globals.
    * a point-mass guide (``delta``): the KL to a density is infinite; ``total`` is None.

    Returns a dict: ``total`` (nats per example, or None) with ``total_se`` (Monte Carlo standard error
    for these examples, 0 when exact), ``per_dimension`` (``(latent_dim,)`` tensor summing to ``total``,
    or None) with ``per_dimension_se``, ``per_dimension_note`` (why it is None, else None), ``exact``,
    ``method`` (one line) and ``prior`` (the prior's class name). ``seed`` fixes the Monte Carlo draws
    (the global random state is left alone); ``chunk_size`` examples are encoded at a time.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ConfigError(f"num_samples must be an integer >= 2 (a standard error needs two draws), got {num_samples!r}")
    n = x.shape[0]
    if n < 1:
        raise ConfigError("the KL to the prior needs at least one example")
    posteriors = [vae.posterior(chunk) for chunk in x.split(chunk_size)]
    result = {"total": None, "total_se": None, "per_dimension": None, "per_dimension_se": None,
              "per_dimension_note": None, "exact": False, "method": None, "prior": None}
    if _is_point_mass(posteriors[0]):
        result.update(method="none: a point-mass guide has infinite KL to a density",
                      per_dimension_note="the guide is a point mass (delta): its KL to a density is infinite")
        return result
    fork = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with fork:
        if seed is not None:
            torch.manual_seed(seed)
        globals_ = bool(getattr(vae, "has_global_latents", False))
        priors = _prior_draws(vae, num_samples)
        result["prior"] = type(priors[0]).__name__ if not isinstance(priors[0], dist.Independent) else \
            f"{type(_unwrap_independent(priors[0])[0]).__name__} (independent per coordinate)"
        q_ok, p_ok = _univariate_per_coordinate(posteriors[0]), _univariate_per_coordinate(priors[0])
        per_dimension = q_ok and p_ok
        if globals_:                            # one draw of the globals (and of z, if needed) per row
            pieces = [_kl_rows(posteriors, p, 1, per_dimension) for p in priors]
            rows, exact_given = torch.cat([r for r, _ in pieces]), pieces[0][1]
            exact = False
        else:
            rows, exact = _kl_rows(posteriors, priors[0], num_samples, per_dimension)
            exact_given = exact
    rows = rows / n                                                 # (S, d) or (S,): means over examples
    estimate = rows.mean(0)
    se = rows.std(0) / math.sqrt(rows.shape[0]) if rows.shape[0] > 1 else torch.zeros_like(estimate)
    if per_dimension:
        result["per_dimension"], result["per_dimension_se"] = estimate.float(), se.float()
        result["total"] = float(estimate.sum())
        total_rows = rows.sum(-1)
        result["total_se"] = float(total_rows.std() / math.sqrt(len(total_rows))) if len(total_rows) > 1 else 0.0
    else:
        result["total"], result["total_se"] = float(estimate), float(se)
        why = []
        if not q_ok:
            why.append(f"the guide's q(z|x) ({type(_unwrap_independent(posteriors[0])[0]).__name__}) is not a "
                       "product over coordinates")
        if not p_ok:
            why.append(f"the prior ({type(_unwrap_independent(priors[0])[0]).__name__}) is not a product over "
                       "coordinates")
        result["per_dimension_note"] = ("no per-dimension split: " + " and ".join(why)
                                        + "; only the total KL is reported")
    how = ("closed form / torch.distributions.kl_divergence" if exact_given
           else f"Monte Carlo, {num_samples} draws of z per example")
    if globals_:
        how += f", averaged over {num_samples} draws of the prior's global latents from their guide"
    result["exact"] = exact
    result["method"] = ("per coordinate, " if per_dimension else "whole vector, ") + how
    return result


@torch.no_grad()
def kl_per_dimension(vae, x: torch.Tensor, *, num_samples: int = KL_NUM_SAMPLES, seed: int | None = 0
                     ) -> torch.Tensor | None:
    """KL(q(z_j | x) || p(z_j)) per latent dimension j to the VAE's own prior, averaged over the examples
    ``x (N, *data_shape)``: a ``(latent_dim,)`` tensor in nats that sums to the rate. See
    :func:`kl_to_prior` for how each case is computed (closed form for a diagonal Normal guide and a
    diagonal Normal prior with any loc and scale; a registered KL; or Monte Carlo).

    Returns None for a point-mass guide (``delta``), whose KL to a density is infinite. Raises
    :class:`~ppl_vae.errors.ConfigError` when the KL has no per-dimension split (a prior or guide that is
    not a product over coordinates); :func:`kl_to_prior` then still gives the total.
    """
    kl = kl_to_prior(vae, x, num_samples=num_samples, seed=seed)
    if kl["total"] is None:
        return None
    if kl["per_dimension"] is None:
        raise ConfigError(f"KL per dimension is unavailable: {kl['per_dimension_note']}; use "
                          "ppl_vae.compare.kl_to_prior for the total")
    return kl["per_dimension"]


@torch.no_grad()
def activity(vae, x: torch.Tensor) -> torch.Tensor:
    """Cov_x(E_q[z_j | x]): the variance over examples ``x (N, *data_shape)`` of each coordinate of the
    posterior mean, ``(latent_dim,)``. Needs only ``vae.encode(x) -> (mean, sd)``."""
    mean = vae.encode(x)[0]
    return mean.var(0)


def active_units(vae, x: torch.Tensor, threshold: float = 0.01) -> int:
    """Number of active latent units (Burda et al., 2016): dimensions j with Cov_x(E_q[z_j | x]) >
    ``threshold``; a dimension the encoder ignores (posterior collapse) is inactive."""
    return int((activity(vae, x) > threshold).sum())


# ---------------------------------------------------------------------------------------------
# Training and measuring


def _model_specs(betas: Sequence[float]) -> list[dict]:
    specs = [{"name": "AE", "guide": "delta", "beta": 0.0}]
    for beta in betas:
        beta = float(beta)
        specs.append({"name": f"VAE β={beta:g}", "guide": "normal", "beta": beta})
    return specs


def _check_arguments(epochs, betas, latent_dim) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if len(betas) == 0 or any(not math.isfinite(float(b)) or float(b) < 0 for b in betas):
        raise ConfigError(f"betas must be a non-empty list of numbers >= 0, got {list(betas)}")
    if len(set(float(b) for b in betas)) != len(betas):
        raise ConfigError(f"betas must not repeat, got {list(betas)}")
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ConfigError(f"latent_dim must be a positive integer, got {latent_dim!r}")


def _measure(vae, *, data, heldout, classifier, pairs, seed, num_steps, bandwidths) -> dict:
    from ppl_vae.evaluate import evaluate

    mean, _ = vae.encode(heldout)
    smooth = path_smoothness(vae.decode, mean[pairs[0]], mean[pairs[1]], num_steps=num_steps)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        samples = vae.sample(len(heldout))
        z_q = vae.posterior(heldout).sample()
        z_p = vae.prior_distribution().sample(torch.Size([len(heldout)]))
    quality = sample_quality(classifier, samples, data.heldout) if classifier is not None else None
    coverage = mmd_test(z_q, z_p, bandwidths=bandwidths, seed=seed)
    point_mass = _is_point_mass(vae.posterior(heldout[:1]))
    result = evaluate(vae, heldout, num_particles=1 if point_mass else 16, seed=seed)
    kl = kl_to_prior(vae, heldout, seed=seed)
    kl_dims = kl["per_dimension"]
    act = activity(vae, heldout)
    return {
        "smoothness_ratio": smooth["ratio"],
        "max_step_ratio": smooth["max_step_ratio"],
        "decoded_end_distance": smooth["end_distance"],
        "confidence": quality["confidence"] if quality else None,
        "frechet": quality["frechet"] if quality else None,
        "class_fractions": quality["class_fractions"] if quality else None,
        "mmd2": coverage["mmd2"],
        "mmd2_threshold": coverage["threshold"],
        "mmd_p_value": coverage["p_value"],
        "rate": kl["total"],
        "rate_se": kl["total_se"],
        "rate_method": kl["method"],
        "distortion": -result.reconstruction,
        "kl_per_dimension": None if kl_dims is None else [float(v) for v in kl_dims],
        "kl_per_dimension_note": kl["per_dimension_note"],
        "activity": [float(v) for v in act],
        "active_units": int((act > 0.01).sum()),
        "latent_mean_norm": float(mean.norm(dim=1).mean()),
    }


def _compare(data, *, epochs, betas, latent_dim, hidden_dims, seed, batch_size, lr, num_pairs, num_steps,
             progress):
    """The work of :func:`compare_ae`; also returns the trained models and the binarized held-out set."""
    from ppl_vae.train import fit, fixed_binarization
    from ppl_vae.vae import VAE

    betas = tuple(float(b) for b in betas)
    _check_arguments(epochs, betas, latent_dim)
    heldout = fixed_binarization(data.heldout, "dynamic", seed)
    classifier = None
    reference = None
    if data.train_labels is not None:
        classifier = train_domain_classifier(data.train, data.train_labels, seed=seed)
        n = min(len(data.train), len(data.heldout))
        reference = {
            "name": "real data",
            "confidence": float(classifier.predict_proba(_numpy(data.heldout).reshape(len(data.heldout), -1))
                                .max(1).mean()),
            "frechet": frechet_distance(classifier_features(classifier, data.train[:n]),
                                        classifier_features(classifier, data.heldout[:n])),
            "classifier_heldout_accuracy": float(
                (classifier.predict(_numpy(data.heldout).reshape(len(data.heldout), -1))
                 == _numpy(data.heldout_labels).astype(np.int64)).mean()),
        }
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(len(heldout), (num_pairs,), generator=gen)
    second = (first + 1 + torch.randint(max(1, len(heldout) - 1), (num_pairs,), generator=gen)) % len(heldout)
    pairs = (first, second)
    bandwidths = [h * math.sqrt(latent_dim) for h in (0.25, 0.5, 1.0, 2.0)]   # fixed, in prior units
    models, rows = {}, []
    for spec in _model_specs(betas):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        vae = VAE(data.data_shape, latent_dim, hidden_dims, guide=spec["guide"])
        start = time.perf_counter()
        fit(vae, data.train, None, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, beta=spec["beta"],
            progress=False)
        seconds = time.perf_counter() - start
        row = dict(spec)
        row.update(_measure(vae, data=data, heldout=heldout, classifier=classifier, pairs=pairs, seed=seed,
                            num_steps=num_steps, bandwidths=bandwidths))
        row["train_seconds"] = seconds
        rows.append(row)
        models[spec["name"]] = vae
        if progress:
            print(f"{spec['name']}: trained in {seconds:.1f} s", flush=True)
    result = {
        "dataset": data.name,
        "settings": {"epochs": epochs, "betas": list(betas), "latent_dim": latent_dim,
                     "hidden_dims": list(hidden_dims), "seed": seed, "batch_size": batch_size, "lr": lr,
                     "num_pairs": num_pairs, "num_steps": num_steps, "mmd_bandwidths": bandwidths,
                     "num_heldout": len(heldout), "num_train": len(data.train)},
        "models": rows,
        "reference": reference,
        "notes": {
            "autoencoder": "AE = guide 'delta' (deterministic encoder) trained with beta=0: a plain autoencoder",
            "sample_quality": CLASSIFIER_NOTE,
            "smoothness": "decoded straight latent paths between held-out encodings: path length / end-to-end "
                          "distance (1 = straight) and largest / mean step (1 = even, num_steps = one jump); a collapsed "
                          "model (no active units) decodes every path to nearly one image and scores about 1 "
                          "trivially, see decoded_end_distance",
            "coverage": "unbiased MMD^2 between one draw of q(z|x) per held-out example and as many prior draws, "
                        "sum of Gaussian kernels with fixed bandwidths; mmd2_threshold is the 95% permutation "
                        "quantile (what two samples of one distribution give)",
            "rate": "KL(q(z|x) || p(z)) to the model's own prior per example, nats (closed form for the diagonal "
                    "Normal guide and the N(0, I) prior used here; see compare.kl_to_prior); None for the "
                    "point-mass encoder (infinite)",
            "collapse": f"a model is collapsed when it has no active unit or its rate is below {COLLAPSE_KL_NATS} "
                        "nats per example: its encodings carry (almost) no information about x, so its "
                        "smoothness, sample quality and coverage describe the decoder alone and say nothing "
                        "about the encoder; the verdict draws no conclusions from it",
            "distortion": "-E_q log p(x|z) on the fixed-binarized held-out set, nats per example",
        },
    }
    return result, models, heldout, pairs


def compare_ae(data, *, epochs: int = DEFAULT_EPOCHS, betas: Sequence[float] = DEFAULT_BETAS, latent_dim: int = 2,
               hidden_dims: Sequence[int] = (256, 128), seed: int = 0, batch_size: int = 128, lr: float = 1e-3,
               num_pairs: int = 64, num_steps: int = 16, progress: bool = False) -> dict:
    """Train a plain autoencoder (``guide="delta"``, ``beta=0``) and a Normal-guide VAE for every beta in
    ``betas`` (beta=1 is the VAE) on the same data, budget and seed, and measure each.

    Args:
        data: a :class:`ppl_vae.data.DataSplit` of images (labels are needed for sample quality).
        epochs, batch_size, lr, seed: the training budget, shared by every model.
        betas: KL weights of the Normal-guide models.
        latent_dim, hidden_dims: the architecture, shared by every model.
        num_pairs, num_steps: held-out pairs (the same for every model) and segments per decoded path.

    Returns plain data (JSON-ready): ``models`` (one dict per model: name, guide, beta,
    ``smoothness_ratio``, ``max_step_ratio``, ``confidence``, ``frechet``, ``class_fractions``, ``mmd2``,
    ``mmd2_threshold``, ``mmd_p_value``, ``rate`` (KL to the model's prior, :func:`kl_to_prior`) with
    ``rate_se`` and ``rate_method``, ``distortion``, ``kl_per_dimension`` (None, with
    ``kl_per_dimension_note`` saying why, when there is no split), ``activity``, ``active_units``,
    ``train_seconds``), ``reference`` (the domain classifier's numbers on real data: confidence on
    held-out images and the Fréchet distance between training and held-out features), ``settings`` and
    ``notes`` (``notes["collapse"]``: when a model counts as collapsed, see :func:`collapse_reason`).
    """
    return _compare(data, epochs=epochs, betas=betas, latent_dim=latent_dim, hidden_dims=hidden_dims, seed=seed,
                    batch_size=batch_size, lr=lr, num_pairs=num_pairs, num_steps=num_steps, progress=progress)[0]


# ---------------------------------------------------------------------------------------------
# Figures


def _image_panels_figure(panels: list, panel_width: float = 4.2, title_height: float = 0.35) -> Figure:
    """One row of image-grid panels, ``panels = [(images (N, *data_shape), title, ncol), ...]``, in a
    figure shaped to the grids (no blank bands above or below them)."""
    from ppl_vae.plots import image_grid

    grids = [image_grid(images, ncol=ncol) for images, _, ncol in panels]
    aspect = max(g.shape[0] / g.shape[1] for g in grids)           # height / width of the tallest grid
    gap = 0.15
    width = len(panels) * panel_width + (len(panels) + 1) * gap
    height = panel_width * aspect + title_height + 2 * gap
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=gap / width, right=1 - gap / width, bottom=gap / height,
                        top=1 - (title_height + gap) / height, wspace=gap / panel_width)
    for i, (grid, (_, title, _)) in enumerate(zip(grids, panels)):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(grid[..., 0].numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    return fig


@torch.no_grad()
def interpolation_figure(models: dict, heldout: torch.Tensor, pairs, num_steps: int = 10, max_pairs: int = 8) -> Figure:
    """Decoded straight latent paths between the encodings of the same held-out pairs, one panel per
    model (``{name: vae}``), one row per pair."""
    first, second = (p[:max_pairs] for p in pairs)
    t = torch.linspace(0, 1, num_steps + 1)
    panels = []
    for name, vae in models.items():
        mean = vae.encode(heldout)[0]
        z0, z1 = mean[first], mean[second]
        z = z0[:, None] + t[None, :, None] * (z1 - z0)[:, None]
        panels.append((vae.decode(z.reshape(-1, z.shape[-1])), f"{name}: straight latent paths", num_steps + 1))
    return _image_panels_figure(panels)


@torch.no_grad()
def samples_figure(models: dict, num_samples: int = 64, seed: int = 0) -> Figure:
    """Decoded prior samples (mean of p(x | z), z ~ p(z), the model's prior) of each model side by side."""
    panels = []
    for name, vae in models.items():
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            x = vae.sample(num_samples)
        panels.append((x, f"{name}: z ~ p(z)", math.ceil(math.sqrt(num_samples))))
    return _image_panels_figure(panels, panel_width=4.0)


def _two_dims(z: torch.Tensor) -> tuple[torch.Tensor, str]:
    if z.shape[1] == 1:
        return torch.cat([z, torch.zeros_like(z)], 1), "z[0] (1-D latent)"
    if z.shape[1] == 2:
        return z, "z[0], z[1]"
    centred = z - z.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T, "first two principal components"


@torch.no_grad()
def latent_scatter_figure(models: dict, heldout: torch.Tensor, labels=None) -> Figure:
    """Posterior means of the held-out examples, coloured by label, one panel per model, with the
    prior's 1 and 2 sd circles for scale."""
    from matplotlib.patches import Circle

    fig = Figure(figsize=(4.5 * len(models), 4.3))
    for i, (name, vae) in enumerate(models.items()):
        ax = fig.add_subplot(1, len(models), i + 1)
        z, axes = _two_dims(vae.encode(heldout)[0])
        colours = None if labels is None else _numpy(labels)
        points = ax.scatter(z[:, 0], z[:, 1], c=colours, cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
        for r in (1, 2):
            ax.add_patch(Circle((0, 0), r, fill=False, ls="--", lw=0.8, color="grey"))
        ax.set_title(f"{name}: held-out E[z | x] ({axes})", fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        if labels is not None and i == len(models) - 1:
            fig.colorbar(points, ax=ax, ticks=range(10), label="label")
    fig.tight_layout()
    return fig


def rate_distortion_figure(result: dict) -> Figure:
    """Distortion (−E log p(x | z)) against rate (KL) of the Normal-guide models over beta, one marker per
    beta named in the legend (with its numbers, so that models at the same spot, e.g. collapsed ones at
    rate 0, stay readable); the AE's distortion as a horizontal line (its rate is infinite)."""
    fig = Figure(figsize=(8.2, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    collapsed = collapsed_models(result)
    vaes = sorted((r for r in result["models"] if r["rate"] is not None), key=lambda r: r["beta"])
    ax.plot([r["rate"] for r in vaes], [r["distortion"] for r in vaes], "-", color="grey", lw=1, zorder=1)
    markers = "osD^vP*Xh<>p"
    for i, r in enumerate(vaes):
        note = ", collapsed" if r["name"] in collapsed else ""
        ax.plot(r["rate"], r["distortion"], markers[i % len(markers)], ms=8 - 0.5 * (i % 4), alpha=0.85,
                color=f"C{i % 10}", zorder=2,
                label=f"β={r['beta']:g}: rate {_fmt(r['rate'])}, distortion {_fmt(r['distortion'])}{note}")
    for r in result["models"]:
        if r["rate"] is None:
            ax.axhline(r["distortion"], color="k", ls="--", lw=1,
                       label=f"{r['name']}: rate ∞, distortion {_fmt(r['distortion'])}")
    ax.set_xlabel("rate: KL(q(z|x) || p(z)), nats")
    ax.set_ylabel("distortion: −E log p(x|z), nats")
    ax.set_title("rate and distortion per example, Normal-guide VAEs over β", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
    fig.tight_layout()
    return fig


@torch.no_grad()
def posterior_clouds_figure(models: dict, heldout: torch.Tensor, labels=None, num_examples: int = 60) -> Figure:
    """Ellipses at ±1 sd of q(z | x) in latent dimensions 0 and 1 for ``num_examples`` held-out examples,
    one panel per Normal-guide model (e.g. beta=0 vs beta=1): without the KL the clouds shrink to
    points and drift apart; with it they overlap and fill the prior."""
    from matplotlib.patches import Circle, Ellipse

    fig = Figure(figsize=(4.8 * len(models), 4.5))
    x = heldout[:num_examples]
    colours = np.zeros(len(x), dtype=int) if labels is None else _numpy(labels[:num_examples]).astype(int)
    cmap = matplotlib.colormaps["tab10"]
    for i, (name, vae) in enumerate(models.items()):
        ax = fig.add_subplot(1, len(models), i + 1)
        mean, sd = vae.encode(x)
        if mean.shape[1] < 2:
            mean, sd = torch.cat([mean, torch.zeros_like(mean)], 1), torch.cat([sd, torch.zeros_like(sd)], 1)
        for m, s, c in zip(mean[:, :2].tolist(), sd[:, :2].tolist(), colours):
            ax.add_patch(Ellipse(m, 2 * s[0], 2 * s[1], alpha=0.25, color=cmap(c % 10)))
            ax.plot(m[0], m[1], ".", ms=2, color=cmap(c % 10))
        for r in (1, 2):
            ax.add_patch(Circle((0, 0), r, fill=False, ls="--", lw=0.8, color="grey"))
        lo = torch.minimum((mean[:, :2] - sd[:, :2]).min(0).values, torch.tensor([-2.2, -2.2]))
        hi = torch.maximum((mean[:, :2] + sd[:, :2]).max(0).values, torch.tensor([2.2, 2.2]))
        ax.set_xlim(lo[0].item(), hi[0].item())
        ax.set_ylim(lo[1].item(), hi[1].item())
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"{name}: q(z|x), ±1 sd, {len(x)} examples", fontsize=9)
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Report and run folder


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"


def markdown_table(result: dict) -> str:
    """One row per model (and one for real data): smoothness ratio, max/mean step, domain-classifier
    confidence and Fréchet distance, coverage MMD², rate, distortion, active units."""
    latent_dim = result["settings"]["latent_dim"]
    collapsed = collapsed_models(result)
    lines = ["| model | path length / end distance (1 best) | max / mean step (1 best) | confidence ↑ | "
             "Fréchet (domain clf) ↓ | MMD² q vs prior ↓ | rate (nats) | distortion (nats) | active units |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["models"]:
        lines.append(f"| {r['name']} | {_fmt(r['smoothness_ratio'])} | {_fmt(r['max_step_ratio'])} | "
                     f"{_fmt(r['confidence'])} | {_fmt(r['frechet'])} | {_fmt(r['mmd2'])} | "
                     f"{'∞ (point mass)' if r['rate'] is None else _fmt(r['rate'])} | {_fmt(r['distortion'])} | "
                     f"{r['active_units']}/{latent_dim}{' (collapsed)' if r['name'] in collapsed else ''} |")
    ref = result.get("reference")
    if ref:
        lines.append(f"| real data (train vs held-out) | — | — | {_fmt(ref['confidence'])} | {_fmt(ref['frechet'])} "
                     "| — | — | — | — |")
    return "\n".join(lines)


def _pick(result: dict, name: str) -> dict | None:
    return next((r for r in result["models"] if r["name"] == name), None)


def collapse_reason(row: dict, latent_dim: int | None = None) -> str | None:
    """Why a model (one row of a :func:`compare_ae` result) counts as collapsed, or None when it does not:
    no active unit (``active_units == 0``), or a total KL to the prior (``rate``) below
    :data:`COLLAPSE_KL_NATS` nats per example. A collapsed encoder carries (almost) no information about
    x, so the model's smoothness, sample quality and coverage describe its decoder alone. Rows without
    these keys are not judged."""
    reasons = []
    units = row.get("active_units")
    if units is not None and units == 0:
        reasons.append(f"0 of {latent_dim} active units" if latent_dim else "0 active units")
    rate = row.get("rate")
    if rate is not None and math.isfinite(rate) and rate < COLLAPSE_KL_NATS:
        reasons.append(f"KL to the prior {_fmt(rate)} nats per example")
    return ", ".join(reasons) or None


def collapsed_models(result: dict) -> dict[str, str]:
    """``{model name: reason}`` for every collapsed model of a :func:`compare_ae` result."""
    latent_dim = result.get("settings", {}).get("latent_dim")
    out = {}
    for row in result["models"]:
        reason = collapse_reason(row, latent_dim)
        if reason is not None:
            out[row["name"]] = reason
    return out


_COLLAPSE_MEANING = ("its smoothness/coverage say nothing about the encoder (its encodings barely depend on x, so a "
                     "latent path between two of them decodes to nearly one image, which scores as smooth, and a "
                     "q(z|x) equal to the prior covers the prior trivially), so no conclusion is drawn from it")


def verdict(result: dict) -> str:
    """Two sentences, from the numbers, on whether the VAE (beta=1) beats the AE on smoothness, sample
    quality and coverage. "Beats" means a better value of the metric; no error bars are implied.

    A collapsed model (:func:`collapse_reason`) is named as such and no conclusion is drawn from it: when
    the VAE beta=1 collapsed, the comparison is made with the non-collapsed Normal-guide VAE with
    beta > 0 nearest to 1, if any, and says so; when the AE collapsed, no comparison is made."""
    ae, vae = _pick(result, "AE"), _pick(result, "VAE β=1")
    if vae is None:
        vaes = [r for r in result["models"] if r["guide"] == "normal"]
        vae = min(vaes, key=lambda r: abs(r["beta"] - 1.0)) if vaes else None
    if ae is None or vae is None:
        return "No verdict: the comparison needs the AE and a Normal-guide VAE."
    latent_dim = result.get("settings", {}).get("latent_dim")
    ae_reason = collapse_reason(ae, latent_dim)
    vae_reason = collapse_reason(vae, latent_dim)
    if ae_reason is not None:
        text = f"No verdict: the AE collapsed ({ae_reason}); {_COLLAPSE_MEANING}."
        if vae_reason is not None:
            text += f" The {vae['name']} collapsed too ({vae_reason})."
        return text
    if vae_reason is None:
        return _comparison(ae, vae)
    text = f"{vae['name']} collapsed ({vae_reason}): {_COLLAPSE_MEANING}."
    others = [r for r in result["models"] if r["guide"] == "normal" and r["beta"] > 0 and r is not vae
              and collapse_reason(r, latent_dim) is None]
    if not others:
        return text + " No Normal-guide VAE with β > 0 avoided collapse, so there is no verdict on the VAE vs the AE."
    other = min(others, key=lambda r: (abs(math.log(r["beta"])), r["beta"]))
    return (text + f" The non-collapsed VAE with β nearest to 1 is {other['name']} "
            f"({other.get('active_units', '?')} of {latent_dim or '?'} active units): " + _comparison(ae, other))


def _comparison(ae: dict, vae: dict) -> str:
    name = vae["name"]

    def word(better: bool) -> str:
        return "beats" if better else "does not beat"

    straighter = vae["smoothness_ratio"] < ae["smoothness_ratio"]
    evener = vae["max_step_ratio"] < ae["max_step_ratio"]
    claim = (f"{word(straighter)} the AE" if straighter == evener else
             f"is mixed against the AE ({'straighter' if straighter else 'less straight'} but "
             f"{'more even' if evener else 'less even'})")
    first = (f"On smoothness the {name} {claim}: decoded paths "
             f"are {_fmt(vae['smoothness_ratio'])}× vs {_fmt(ae['smoothness_ratio'])}× the end-to-end distance, "
             f"with largest/mean step {_fmt(vae['max_step_ratio'])} vs {_fmt(ae['max_step_ratio'])}.")
    parts = []
    if vae["frechet"] is not None and ae["frechet"] is not None:
        quality = vae["frechet"] < ae["frechet"]
        more_confident = vae["confidence"] > ae["confidence"]
        caveat = "" if more_confident == quality else (
            f" by Fréchet distance, though its classifier confidence is {'higher' if more_confident else 'lower'}")
        parts.append(f"on sample quality it {word(quality)} the AE{caveat} (domain-classifier Fréchet distance "
                     f"{_fmt(vae['frechet'])} vs {_fmt(ae['frechet'])}, confidence {_fmt(vae['confidence'])} vs "
                     f"{_fmt(ae['confidence'])})")
    coverage = vae["mmd2"] < ae["mmd2"]
    parts.append(f"on coverage of the prior it {word(coverage)} the AE (MMD² {_fmt(vae['mmd2'])} vs "
                 f"{_fmt(ae['mmd2'])}; two samples of one distribution give up to about "
                 f"{_fmt(vae['mmd2_threshold'])})")
    second = parts[0][0].upper() + parts[0][1:] + (", and " + parts[1] if len(parts) > 1 else "") + "."
    return first + " " + second


def report_markdown(result: dict) -> str:
    s = result["settings"]
    return "\n".join([
        f"# Autoencoder vs VAE on {result['dataset']}",
        "",
        f"Every model: latent dimension {s['latent_dim']}, hidden layers {s['hidden_dims']}, {s['epochs']} epochs, "
        f"batch {s['batch_size']}, Adam lr {s['lr']:g}, seed {s['seed']}, Bernoulli likelihood on dynamically "
        f"binarized images. AE = deterministic encoder (guide `delta`) trained with β = 0; VAE β=b = diagonal "
        f"Normal guide with the KL weighted by b. Measured on {s['num_heldout']} held-out examples (fixed "
        "binarization).",
        "",
        markdown_table(result),
        "",
        verdict(result),
        "",
        *_collapse_paragraph(result),
        f"Notes: smoothness over {s['num_pairs']} held-out pairs, {s['num_steps']} steps each. "
        f"Confidence and Fréchet: {CLASSIFIER_NOTE}. MMD²: {result['notes']['coverage']}. "
        "Rate: KL(q(z|x) || p(z)) to the model's prior per example (closed form here; infinite for the point-mass "
        "AE). Distortion: −E log p(x|z) per example.",
        "",
    ])


def _collapse_paragraph(result: dict) -> list[str]:
    collapsed = collapsed_models(result)
    if not collapsed:
        return []
    names = "; ".join(f"{name} ({reason})" for name, reason in collapsed.items())
    return [f"**Collapsed** (no active unit, or KL to the prior below {COLLAPSE_KL_NATS} nats per example): {names}. "
            "Their encodings carry (almost) no information about x: their smoothness, sample quality and coverage "
            "describe the decoder alone and say nothing about the encoder.", ""]


def _subset(data, max_train: int | None, max_heldout: int | None):
    from ppl_vae.data import DataSplit

    if max_train is None and max_heldout is None:
        return data
    a, b = max_train or len(data.train), max_heldout or len(data.heldout)
    return DataSplit(data.name, data.train[:a], data.heldout[:b],
                     None if data.train_labels is None else data.train_labels[:a],
                     None if data.heldout_labels is None else data.heldout_labels[:b], data.kind)


def compare_ae_run(out_dir, *, dataset: str = "digits", epochs: int = DEFAULT_EPOCHS,
                   betas: Sequence[float] = DEFAULT_BETAS, latent_dim: int = 2, hidden_dims: Sequence[int] = (256, 128),
                   seed: int = 0, batch_size: int = 128, lr: float = 1e-3, overwrite: bool = False,
                   max_train: int | None = None, max_heldout: int | None = None, progress: bool = False) -> dict:
    """Load ``dataset``, run :func:`compare_ae` and write into ``out_dir``: ``comparison.json`` (the result),
    ``comparison.md`` (table and verdict) and ``figures/`` (``interpolations.png``, ``samples.png``,
    ``latent_scatter.png``, ``rate_distortion.png``, ``posterior_clouds.png``). ``max_train`` /
    ``max_heldout`` keep only the first examples (smoke runs). Refuses an existing non-empty ``out_dir``
    unless ``overwrite``. Returns the result with ``out_dir``, ``files`` and ``seconds`` added.
    """
    from ppl_vae.checkpoint import atomic_write, write_json
    from ppl_vae.data import load_dataset
    from ppl_vae.plots import save_figure

    from ppl_vae.folders import check_output_dir, claimed_output_dir

    out_dir = check_output_dir(out_dir, "compare-ae", overwrite=overwrite, inputs=_dataset_paths(dataset))
    start = time.perf_counter()
    data = _subset(load_dataset(dataset), max_train, max_heldout)
    if data.kind != "image":
        raise ConfigError(f"compare-ae needs image data, {dataset!r} is a table")
    result, models, heldout, pairs = _compare(
        data, epochs=epochs, betas=betas, latent_dim=latent_dim, hidden_dims=hidden_dims, seed=seed,
        batch_size=batch_size, lr=lr, num_pairs=64, num_steps=16, progress=progress)
    vae_name = "VAE β=1" if "VAE β=1" in models else next(n for n in models if n != "AE")
    pair = {"AE": models["AE"], vae_name: models[vae_name]}
    figures = {
        "interpolations.png": interpolation_figure(pair, heldout, pairs),
        "samples.png": samples_figure(pair, seed=seed),
        "latent_scatter.png": latent_scatter_figure(pair, heldout, data.heldout_labels),
        "rate_distortion.png": rate_distortion_figure(result),
    }
    clouds = {n: models[n] for n in ("VAE β=0", "VAE β=1") if n in models}
    if clouds:
        figures["posterior_clouds.png"] = posterior_clouds_figure(clouds, heldout, data.heldout_labels)
    result["out_dir"] = str(out_dir)
    result["files"] = ["comparison.json", "comparison.md"] + [f"figures/{n}" for n in figures]
    with claimed_output_dir(out_dir, "compare-ae", replace=overwrite, action="compare-ae"):
        for name, fig in figures.items():
            save_figure(fig, out_dir / "figures" / name)
        result["seconds"] = time.perf_counter() - start
        write_json(out_dir / "comparison.json", result)
        text = report_markdown(result)
        atomic_write(out_dir / "comparison.md", lambda handle: handle.write(text.encode()))
    return result


def _dataset_paths(dataset: str) -> list[Path]:
    kind, _, rest = str(dataset).partition(":")
    return [Path(rest)] if kind in ("npz", "folder", "table") and rest else []
