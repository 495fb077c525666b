"""Sample-quality and latent-geometry metrics: path smoothness of decoded interpolations, a domain
classifier's confidence and Frechet distance, and the maximum mean discrepancy (with a permutation test).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ppl_vae.errors import ConfigError
from ppl_vae.results import Result
from ppl_vae.validation import Bound, check_number

CLASSIFIER_NOTE = (
    "sample quality uses a domain classifier (an MLP with one hidden layer of 64 units trained "
    "on the real training images), not Inception: its Fréchet distance is an FID-like number "
    "on this data set only, not comparable with published FIDs"
)


def as_numpy(x) -> np.ndarray:
    """``x`` (a tensor on any device, or array-like) as a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Metrics


@dataclass(frozen=True)
class PathSmoothness(Result):
    """How smooth a decoder is along straight latent lines (see :func:`path_smoothness`)."""

    ratio: float
    max_step_ratio: float
    end_distance: float
    ratio_per_pair: list
    max_step_ratio_per_pair: list
    num_pairs: int
    num_steps: int


@torch.no_grad()
def path_smoothness(
    decode: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    z1: torch.Tensor,
    num_steps: int = 16,
    eps: float = 1e-8,
) -> PathSmoothness:
    """How smooth the decoder is along straight latent lines.

    Args:
        decode: ``z (M, latent_dim) -> x (M, ...)``, e.g. ``vae.decode``.
        z0, z1: ``(P, latent_dim)``, the ends of P straight paths (e.g. encodings of held-out pairs).
        num_steps: segments per path; the path is decoded at ``num_steps + 1`` evenly spaced points,
            ends included.
        eps: pairs whose decoded ends are closer than this (or whose decoded path has zero length)
            are left out, their ratios being undefined.

    Returns a :class:`PathSmoothness` with
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
    check_number(num_steps, "num_steps", Bound(int, 1, 100_000))
    z0, z1 = torch.as_tensor(z0), torch.as_tensor(z1)
    if z0.dim() == 1:
        z0, z1 = z0[None], z1[None]
    if z0.shape != z1.shape:
        raise ConfigError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    pairs, dim = z0.shape
    t = torch.linspace(0, 1, num_steps + 1, dtype=z0.dtype, device=z0.device)
    z = z0[:, None, :] + t[None, :, None] * (z1 - z0)[:, None, :]  # (P, T, d)
    x = decode(z.reshape(-1, dim)).reshape(pairs, num_steps + 1, -1).double()  # (P, T, D)
    steps = (x[:, 1:] - x[:, :-1]).norm(dim=-1)  # (P, num_steps)
    length = steps.sum(1)
    chord = (x[:, -1] - x[:, 0]).norm(dim=-1)
    keep = (chord > eps) & (length > eps)
    ratio = (length / chord)[keep]
    max_step = (steps.max(1).values / steps.mean(1))[keep]
    return PathSmoothness(
        ratio=float(ratio.mean()) if keep.any() else float("nan"),
        max_step_ratio=float(max_step.mean()) if keep.any() else float("nan"),
        end_distance=float(chord.mean()),
        ratio_per_pair=ratio.tolist(),
        max_step_ratio_per_pair=max_step.tolist(),
        num_pairs=int(keep.sum()),
        num_steps=int(num_steps),
    )


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
    a, b = as_numpy(feats_a), as_numpy(feats_b)
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

    x = as_numpy(images).reshape(len(images), -1)
    classifier = MLPClassifier(hidden_layer_sizes=(hidden,), random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x, as_numpy(labels).astype(np.int64))
    return classifier


def classifier_features(classifier, images) -> np.ndarray:
    """Hidden-layer activations ``(N, hidden)`` of a fitted one-hidden-layer ``MLPClassifier``
    for images ``(N, ...)``, computed from its weights: ``relu(x W_0 + b_0)``."""
    x = as_numpy(images).reshape(len(images), -1)
    return np.maximum(x @ classifier.coefs_[0] + classifier.intercepts_[0], 0.0)


@dataclass(frozen=True)
class SampleQuality(Result):
    """Generated samples judged by a domain classifier (see :func:`sample_quality`)."""

    confidence: float
    frechet: float
    class_fractions: list
    note: str


def sample_quality(classifier, samples, heldout) -> SampleQuality:
    """Sample quality judged by a domain classifier (trained on the real training data; not Inception).

    Args:
        classifier: a fitted one-hidden-layer ``MLPClassifier`` (:func:`train_domain_classifier`).
        samples: ``(N, ...)`` generated images in [0, 1] (e.g. ``vae.sample(n)``).
        heldout: ``(M, ...)`` real held-out images in [0, 1]; use M = N, the Fréchet distance is biased
            by the sample sizes.

    Returns a :class:`SampleQuality`: ``confidence`` (mean over samples of the top-class probability:
    near 1 when every sample looks clearly like one class), ``frechet`` (Fréchet distance between the
    classifier's hidden-layer features of samples and of held-out data; 0 is best), ``class_fractions``
    (share of samples predicted as each class: mode coverage) and ``note`` (that this is a domain
    classifier).
    """
    x = as_numpy(samples).reshape(len(samples), -1)
    proba = classifier.predict_proba(x)
    predicted = proba.argmax(1)
    fractions = np.bincount(predicted, minlength=proba.shape[1]) / len(predicted)
    return SampleQuality(
        confidence=float(proba.max(1).mean()),
        frechet=frechet_distance(classifier_features(classifier, samples), classifier_features(classifier, heldout)),
        class_fractions=[float(f) for f in fractions],
        note="domain classifier (MLP trained on the real training images), not Inception",
    )


def _sq_dists(z: np.ndarray) -> np.ndarray:
    sq = (z**2).sum(1)
    return np.clip(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0, None)


def median_bandwidth(x, y) -> float:
    """The median heuristic: the median pairwise distance in the pooled sample."""
    z = np.concatenate([as_numpy(x), as_numpy(y)])
    d = np.sqrt(_sq_dists(z))
    return float(np.median(d[np.triu_indices(len(z), 1)]))


def _kernel(z: np.ndarray, bandwidths) -> np.ndarray:
    d2 = _sq_dists(z)
    return sum(np.exp(-d2 / (2 * h**2)) for h in bandwidths)


def _mmd_from_kernel(k: np.ndarray, m: int) -> float:
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    n = k.shape[0] - m
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    )


def mmd(x, y, bandwidths: Sequence[float] | None = None) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy MMD² between the distributions of
    ``x (m, d)`` and ``y (n, d)`` with the kernel ``sum_h exp(-|a - b|^2 / (2 h^2))`` over ``bandwidths``
    (default: one bandwidth from the median heuristic on the pooled sample). Zero in expectation when
    both samples come from one distribution (so it can be slightly negative), larger the more they
    differ; with a sum of k kernels it is at most 2k.

    Used for coverage: x = the aggregate posterior (one draw of q(z | x) per held-out example), y = prior
    samples. Use fixed bandwidths to compare models: the median heuristic adapts to each model's scale.
    """
    a, b = _mmd_samples(x, y)
    bandwidths = [median_bandwidth(a, b)] if bandwidths is None else [float(h) for h in bandwidths]
    return _mmd_from_kernel(_kernel(np.concatenate([a, b]), bandwidths), len(a))


def _mmd_samples(x, y) -> tuple[np.ndarray, np.ndarray]:
    """``x (m, d)`` and ``y (n, d)`` as float64 arrays, checked for the unbiased MMD."""
    a, b = as_numpy(x), as_numpy(y)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ConfigError(f"samples must be (N, d) with the same d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ConfigError("the unbiased MMD needs at least 2 points in each sample")
    return a, b


@dataclass(frozen=True)
class MMDTest(Result):
    """:func:`mmd` with a permutation test (see :func:`mmd_test`)."""

    mmd2: float
    threshold: float
    p_value: float
    bandwidths: list


def mmd_test(x, y, bandwidths: Sequence[float] | None = None, num_permutations: int = 200, seed: int = 0) -> MMDTest:
    """:func:`mmd` with a permutation test. Returns an :class:`MMDTest`: ``mmd2``, ``threshold`` (the 95%
    quantile of MMD² over ``num_permutations`` random relabellings of the pooled sample: what two samples
    of one distribution give), ``p_value`` and the ``bandwidths`` used."""
    a, b = _mmd_samples(x, y)
    check_number(num_permutations, "num_permutations", Bound(int, 1, 1_000_000))
    bandwidths = [median_bandwidth(a, b)] if bandwidths is None else [float(h) for h in bandwidths]
    k = _kernel(np.concatenate([a, b]), bandwidths)
    observed = _mmd_from_kernel(k, len(a))
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(num_permutations):
        order = rng.permutation(len(k))
        null.append(_mmd_from_kernel(k[np.ix_(order, order)], len(a)))
    null = np.array(null)
    return MMDTest(
        mmd2=observed,
        threshold=float(np.quantile(null, 0.95)),
        p_value=float((1 + (null >= observed).sum()) / (1 + num_permutations)),
        bandwidths=bandwidths,
    )
