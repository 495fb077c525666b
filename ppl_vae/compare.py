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
* **rate and distortion** -- the closed-form KL(q(z | x) || N(0, I)) (rate, infinite for a point mass,
  reported as None) and −E_q log p(x | z) (distortion) on the fixed-binarized held-out set, with
  :func:`kl_per_dimension` and :func:`active_units` (Burda et al., 2016).

:func:`compare_ae` trains the models and returns plain data; :func:`compare_ae_run` also writes
``comparison.json``, ``comparison.md`` and ``figures/``; :func:`register` adds the ``compare-ae`` CLI
command.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure

from ppl_vae.errors import ConfigError

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


@torch.no_grad()
def kl_per_dimension(vae, x: torch.Tensor) -> torch.Tensor | None:
    """Closed-form KL(q(z_j | x) || N(0, 1)) per latent dimension, averaged over the examples
    ``x (N, *data_shape)``: a ``(latent_dim,)`` tensor in nats (sums to the rate).

    ``vae.posterior(x)`` must be a diagonal Normal (the ``normal`` guide) and the prior N(0, I); returns
    None for a point mass (``delta`` guide), whose KL to a density is infinite.
    """
    q = vae.posterior(x)
    if _is_point_mass(q):
        return None
    base = q.base_dist if isinstance(q, dist.Independent) else q
    if not isinstance(base, dist.Normal):
        raise ConfigError(f"kl_per_dimension needs a diagonal Normal guide, got {type(base).__name__}")
    mu, sd = base.loc, base.scale
    return (0.5 * (mu ** 2 + sd ** 2 - 1) - sd.log()).reshape(-1, mu.shape[-1]).mean(0)


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
    kl_dims = kl_per_dimension(vae, heldout)
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
        "rate": None if kl_dims is None else float(kl_dims.sum()),
        "distortion": -result.reconstruction,
        "kl_per_dimension": None if kl_dims is None else [float(v) for v in kl_dims],
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
            "rate": "closed-form KL(q(z|x) || N(0,I)) per example, nats; None for the point-mass encoder "
                    "(infinite)",
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
    ``mmd2_threshold``, ``mmd_p_value``, ``rate``, ``distortion``, ``kl_per_dimension``, ``activity``,
    ``active_units``, ``train_seconds``), ``reference`` (the domain classifier's numbers on real data:
    confidence on held-out images and the Fréchet distance between training and held-out features),
    ``settings`` and ``notes``.
    """
    return _compare(data, epochs=epochs, betas=betas, latent_dim=latent_dim, hidden_dims=hidden_dims, seed=seed,
                    batch_size=batch_size, lr=lr, num_pairs=num_pairs, num_steps=num_steps, progress=progress)[0]


# ---------------------------------------------------------------------------------------------
# Figures


def _show(ax, images: torch.Tensor, title: str, ncol: int) -> None:
    from ppl_vae.plots import image_grid

    grid = image_grid(images, ncol=ncol)
    ax.imshow(grid[..., 0].numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.axis("off")


@torch.no_grad()
def interpolation_figure(models: dict, heldout: torch.Tensor, pairs, num_steps: int = 10, max_pairs: int = 8) -> Figure:
    """Decoded straight latent paths between the encodings of the same held-out pairs, one panel per
    model (``{name: vae}``), one row per pair."""
    first, second = (p[:max_pairs] for p in pairs)
    fig = Figure(figsize=(4.2 * len(models), 0.5 * len(first) + 1))
    t = torch.linspace(0, 1, num_steps + 1)
    for i, (name, vae) in enumerate(models.items()):
        mean = vae.encode(heldout)[0]
        z0, z1 = mean[first], mean[second]
        z = z0[:, None] + t[None, :, None] * (z1 - z0)[:, None]
        x = vae.decode(z.reshape(-1, z.shape[-1]))
        _show(fig.add_subplot(1, len(models), i + 1), x, f"{name}: straight latent paths", ncol=num_steps + 1)
    fig.tight_layout()
    return fig


@torch.no_grad()
def samples_figure(models: dict, num_samples: int = 64, seed: int = 0) -> Figure:
    """Decoded prior samples (mean of p(x | z), z ~ N(0, I)) of each model side by side."""
    fig = Figure(figsize=(4 * len(models), 4.4))
    for i, (name, vae) in enumerate(models.items()):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            x = vae.sample(num_samples)
        _show(fig.add_subplot(1, len(models), i + 1), x, f"{name}: z ~ N(0, I)", ncol=math.ceil(math.sqrt(num_samples)))
    fig.tight_layout()
    return fig


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
    """Distortion (−E log p(x | z)) against rate (KL) of the Normal-guide models over beta; the AE's
    distortion as a horizontal line (its rate is infinite)."""
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    vaes = sorted((r for r in result["models"] if r["rate"] is not None), key=lambda r: r["beta"])
    ax.plot([r["rate"] for r in vaes], [r["distortion"] for r in vaes], "o-", label="Normal guide, over β")
    for r in vaes:
        ax.annotate(f"β={r['beta']:g}", (r["rate"], r["distortion"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    for r in result["models"]:
        if r["rate"] is None:
            ax.axhline(r["distortion"], color="C3", ls="--", label=f"{r['name']} (rate infinite)")
    ax.set_xlabel("rate: KL(q(z|x) || p(z)), nats")
    ax.set_ylabel("distortion: −E log p(x|z), nats")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
    lines = ["| model | path length / end distance (1 best) | max / mean step (1 best) | confidence ↑ | "
             "Fréchet (domain clf) ↓ | MMD² q vs prior ↓ | rate (nats) | distortion (nats) | active units |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["models"]:
        lines.append(f"| {r['name']} | {_fmt(r['smoothness_ratio'])} | {_fmt(r['max_step_ratio'])} | "
                     f"{_fmt(r['confidence'])} | {_fmt(r['frechet'])} | {_fmt(r['mmd2'])} | "
                     f"{'∞ (point mass)' if r['rate'] is None else _fmt(r['rate'])} | {_fmt(r['distortion'])} | "
                     f"{r['active_units']}/{latent_dim} |")
    ref = result.get("reference")
    if ref:
        lines.append(f"| real data (train vs held-out) | — | — | {_fmt(ref['confidence'])} | {_fmt(ref['frechet'])} "
                     "| — | — | — | — |")
    return "\n".join(lines)


def _pick(result: dict, name: str) -> dict | None:
    return next((r for r in result["models"] if r["name"] == name), None)


def verdict(result: dict) -> str:
    """Two sentences, from the numbers, on whether the VAE (beta=1) beats the AE on smoothness, sample
    quality and coverage. "Beats" means a better value of the metric; no error bars are implied."""
    ae, vae = _pick(result, "AE"), _pick(result, "VAE β=1")
    if vae is None:
        vaes = [r for r in result["models"] if r["guide"] == "normal"]
        vae = min(vaes, key=lambda r: abs(r["beta"] - 1.0)) if vaes else None
    if ae is None or vae is None:
        return "No verdict: the comparison needs the AE and a Normal-guide VAE."
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
        f"Notes: smoothness over {s['num_pairs']} held-out pairs, {s['num_steps']} steps each. "
        f"Confidence and Fréchet: {CLASSIFIER_NOTE}. MMD²: {result['notes']['coverage']}. "
        "Rate: closed-form KL per example (infinite for the point-mass AE). Distortion: −E log p(x|z) per example.",
        "",
    ])


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

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ConfigError(f"output folder {out_dir} exists and is not empty; choose another --out or pass --overwrite")
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
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        save_figure(fig, out_dir / "figures" / name)
    result["seconds"] = time.perf_counter() - start
    result["out_dir"] = str(out_dir)
    result["files"] = ["comparison.json", "comparison.md"] + [f"figures/{n}" for n in figures]
    write_json(out_dir / "comparison.json", result)
    text = report_markdown(result)
    atomic_write(out_dir / "comparison.md", lambda handle: handle.write(text.encode()))
    return result


# ---------------------------------------------------------------------------------------------
# Command line


def _handle(args) -> dict:
    out = args.out or Path("runs") / f"compare-ae-{args.dataset.replace(':', '_').replace('/', '_')}-" \
        f"{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    result = compare_ae_run(out, dataset=args.dataset, epochs=args.epochs, betas=tuple(args.betas),
                            latent_dim=args.latent_dim, seed=args.seed, overwrite=args.overwrite,
                            progress=not args.quiet)
    print(markdown_table(result))
    print()
    print(verdict(result))
    print(f"wrote {out}/ (comparison.json, comparison.md, figures/) in {result['seconds']:.0f} s")
    return result


def register(sub) -> dict:
    """Add ``compare-ae`` to an ``argparse`` subparsers object; return ``{"compare-ae": handler}``, where
    ``handler(args)`` runs :func:`compare_ae_run`, prints the table and the output folder and returns the
    result."""
    p = sub.add_parser("compare-ae", help="train an autoencoder and VAEs over beta, and measure smoothness, "
                       "sample quality and coverage",
                       description="Train a plain autoencoder (delta guide, beta=0) and Normal-guide VAEs for "
                                   "several betas on the same data, budget and seed; write comparison.json, "
                                   "comparison.md and figures/.")
    p.add_argument("--dataset", default="digits", help="data set spec (default: digits)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"epochs per model (default: {DEFAULT_EPOCHS})")
    p.add_argument("--out", type=Path, help="folder to write (default: runs/compare-ae-<dataset>-<time>)")
    p.add_argument("--betas", type=float, nargs="+", default=list(DEFAULT_BETAS),
                   help="KL weights of the Normal-guide models (default: 0 0.1 0.5 1 2 4)")
    p.add_argument("--latent-dim", type=int, default=2, help="latent dimension (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of every model and measurement (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing non-empty folder")
    p.add_argument("--quiet", action="store_true", help="no progress output while training")
    return {"compare-ae": _handle}
