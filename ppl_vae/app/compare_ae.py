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

:func:`compare_ae` trains the models and returns a :class:`Comparison`; :func:`compare_ae_run` also writes
``comparison.json``, ``comparison.md`` and ``figures/`` (``ppl-vae compare-ae``) and returns a
:class:`ComparisonRun`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pyro
import torch
from matplotlib.figure import Figure

from ppl_vae.app.formatting import format_number
from ppl_vae.app.plots import grid_figure, image_grid
from ppl_vae.diagnostics.kl import (
    COLLAPSE_KL_NATS,
    activity,
    is_point_mass,
    kl_to_prior,
)
from ppl_vae.diagnostics.sample_quality import (
    CLASSIFIER_NOTE,
    as_numpy,
    classifier_features,
    frechet_distance,
    mmd_test,
    path_smoothness,
    sample_quality,
    train_domain_classifier,
)
from ppl_vae.errors import ConfigError
from ppl_vae.results import Result
from ppl_vae.rng import seeded

#: Epochs per model of ``compare-ae`` by default: 7 models on the digits in a few minutes on 2 CPU cores.
DEFAULT_EPOCHS = 150


DEFAULT_BETAS = (0.0, 0.1, 0.5, 1.0, 2.0, 4.0)

#: What each measurement means, stored with every comparison (``notes``).
NOTES = {
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
}


@dataclass(frozen=True)
class Comparison(Result):
    """What :func:`compare_ae` measured: ``models`` (one dict per model, see :func:`compare_ae`),
    ``reference`` (the domain classifier on real data, None without labels), ``settings`` and ``notes``."""

    dataset: str
    settings: dict
    models: list[dict]
    reference: dict | None
    notes: dict


@dataclass(frozen=True)
class ComparisonRun(Comparison):
    """A :class:`Comparison` written to a folder by :func:`compare_ae_run` (``comparison.json`` holds all of
    it): the folder, the files written in it and the wall time in seconds."""

    out_dir: str
    files: list[str]
    seconds: float


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
    from ppl_vae.infer.evaluate import evaluate

    mean, _ = vae.encode(heldout)
    smooth = path_smoothness(vae.decode, mean[pairs[0]], mean[pairs[1]], num_steps=num_steps)
    with seeded(seed, vae.device):
        samples = vae.sample(len(heldout))
        z_q = vae.posterior(heldout).sample()
        z_p = vae.prior_distribution().sample(torch.Size([len(heldout)]))
    quality = sample_quality(classifier, samples, data.heldout) if classifier is not None else None
    coverage = mmd_test(z_q, z_p, bandwidths=bandwidths, seed=seed)
    point_mass = is_point_mass(vae.posterior(heldout[:1]))
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


def _domain_reference(data, seed: int):
    """The domain classifier of the data's labels and its numbers on real data, or ``(None, None)``
    without labels."""
    if data.train_labels is None:
        return None, None
    classifier = train_domain_classifier(data.train, data.train_labels, seed=seed)
    n = min(len(data.train), len(data.heldout))
    heldout = as_numpy(data.heldout).reshape(len(data.heldout), -1)
    reference = {
        "name": "real data",
        "confidence": float(classifier.predict_proba(heldout).max(1).mean()),
        "frechet": frechet_distance(
            classifier_features(classifier, data.train[:n]), classifier_features(classifier, data.heldout[:n])
        ),
        "classifier_heldout_accuracy": float(
            (classifier.predict(heldout) == as_numpy(data.heldout_labels).astype(np.int64)).mean()
        ),
    }
    return classifier, reference


def _heldout_pairs(num_heldout: int, num_pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_pairs`` random pairs of two different held-out indices (the same for every model)."""
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(num_heldout, (num_pairs,), generator=gen)
    second = (first + 1 + torch.randint(max(1, num_heldout - 1), (num_pairs,), generator=gen)) % num_heldout
    return first, second


def _train(spec: dict, data, *, epochs, latent_dim, hidden_dims, seed, batch_size, lr):
    """One model of the comparison, trained from the same seed as every other; returns it and the seconds."""
    from ppl_vae.infer.fit import fit
    from ppl_vae.vae import VAE

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = VAE(data.data_shape, latent_dim, hidden_dims, guide=spec["guide"])
    start = time.perf_counter()
    fit(
        vae, data.train, None, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, beta=spec["beta"], progress=False
    )
    return vae, time.perf_counter() - start


def _compare(data, *, epochs, betas, latent_dim, hidden_dims, seed, batch_size, lr, num_pairs, num_steps, progress):
    """The work of :func:`compare_ae`; also returns the trained models, the binarized held-out set and the pairs."""
    from ppl_vae.infer.fit import fixed_binarization

    betas = tuple(float(b) for b in betas)
    _check_arguments(epochs, betas, latent_dim)
    heldout = fixed_binarization(data.heldout, "dynamic", seed)
    classifier, reference = _domain_reference(data, seed)
    pairs = _heldout_pairs(len(heldout), num_pairs, seed)
    bandwidths = [h * math.sqrt(latent_dim) for h in (0.25, 0.5, 1.0, 2.0)]  # fixed, in prior units
    models, rows = {}, []
    for spec in _model_specs(betas):
        vae, seconds = _train(
            spec,
            data,
            epochs=epochs,
            latent_dim=latent_dim,
            hidden_dims=hidden_dims,
            seed=seed,
            batch_size=batch_size,
            lr=lr,
        )
        measured = _measure(
            vae,
            data=data,
            heldout=heldout,
            classifier=classifier,
            pairs=pairs,
            seed=seed,
            num_steps=num_steps,
            bandwidths=bandwidths,
        )
        rows.append({**spec, **measured, "train_seconds": seconds})
        models[spec["name"]] = vae
        if progress:
            print(f"{spec['name']}: trained in {seconds:.1f} s", flush=True)
    settings = {
        "epochs": epochs,
        "betas": list(betas),
        "latent_dim": latent_dim,
        "hidden_dims": list(hidden_dims),
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "num_pairs": num_pairs,
        "num_steps": num_steps,
        "mmd_bandwidths": bandwidths,
        "num_heldout": len(heldout),
        "num_train": len(data.train),
    }
    result = Comparison(dataset=data.name, settings=settings, models=rows, reference=reference, notes=dict(NOTES))
    return result, models, heldout, pairs


def compare_ae(
    data,
    *,
    epochs: int = DEFAULT_EPOCHS,
    betas: Sequence[float] = DEFAULT_BETAS,
    latent_dim: int = 2,
    hidden_dims: Sequence[int] = (256, 128),
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    num_pairs: int = 64,
    num_steps: int = 16,
    progress: bool = False,
) -> Comparison:
    """Train a plain autoencoder (``guide="delta"``, ``beta=0``) and a Normal-guide VAE for every beta in
    ``betas`` (beta=1 is the VAE) on the same data, budget and seed, and measure each.

    Args:
        data: a :class:`ppl_vae.data.split.DataSplit` of images (labels are needed for sample quality).
        epochs, batch_size, lr, seed: the training budget, shared by every model.
        betas: KL weights of the Normal-guide models.
        latent_dim, hidden_dims: the architecture, shared by every model.
        num_pairs, num_steps: held-out pairs (the same for every model) and segments per decoded path.

    Returns a :class:`Comparison` (``to_dict()`` is JSON-ready): ``models`` (one dict per model: name, guide, beta,
    ``smoothness_ratio``, ``max_step_ratio``, ``confidence``, ``frechet``, ``class_fractions``, ``mmd2``,
    ``mmd2_threshold``, ``mmd_p_value``, ``rate`` (KL to the model's prior, :func:`kl_to_prior`) with
    ``rate_se`` and ``rate_method``, ``distortion``, ``kl_per_dimension`` (None, with
    ``kl_per_dimension_note`` saying why, when there is no split), ``activity``, ``active_units``,
    ``train_seconds``), ``reference`` (the domain classifier's numbers on real data: confidence on
    held-out images and the Fréchet distance between training and held-out features), ``settings`` and
    ``notes`` (``notes["collapse"]``: when a model counts as collapsed, see :func:`collapse_reason`).
    """
    return _compare(
        data,
        epochs=epochs,
        betas=betas,
        latent_dim=latent_dim,
        hidden_dims=hidden_dims,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        num_pairs=num_pairs,
        num_steps=num_steps,
        progress=progress,
    )[0]


# ---------------------------------------------------------------------------------------------
# Figures


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
        images = vae.decode(z.reshape(-1, z.shape[-1]))
        panels.append((image_grid(images, ncol=num_steps + 1), f"{name}: straight latent paths"))
    return grid_figure(panels, panel_width=4.2)


@torch.no_grad()
def samples_figure(models: dict, num_samples: int = 64, seed: int = 0) -> Figure:
    """Decoded prior samples (mean of p(x | z), z ~ p(z), the model's prior) of each model side by side."""
    panels = []
    for name, vae in models.items():
        with seeded(seed, vae.device):
            x = vae.sample(num_samples)
        panels.append((image_grid(x, ncol=math.ceil(math.sqrt(num_samples))), f"{name}: z ~ p(z)"))
    return grid_figure(panels, panel_width=4.0)


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
        colours = None if labels is None else as_numpy(labels)
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
        ax.plot(
            r["rate"],
            r["distortion"],
            markers[i % len(markers)],
            ms=8 - 0.5 * (i % 4),
            alpha=0.85,
            color=f"C{i % 10}",
            zorder=2,
            label=f"β={r['beta']:g}: rate {format_number(r['rate'])}, distortion "
            f"{format_number(r['distortion'])}{note}",
        )
    for r in result["models"]:
        if r["rate"] is None:
            ax.axhline(
                r["distortion"],
                color="k",
                ls="--",
                lw=1,
                label=f"{r['name']}: rate ∞, distortion {format_number(r['distortion'])}",
            )
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
    colours = np.zeros(len(x), dtype=int) if labels is None else as_numpy(labels[:num_examples]).astype(int)
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


def markdown_table(result: dict) -> str:
    """One row per model (and one for real data): smoothness ratio, max/mean step, domain-classifier
    confidence and Fréchet distance, coverage MMD², rate, distortion, active units."""
    latent_dim = result["settings"]["latent_dim"]
    collapsed = collapsed_models(result)
    lines = [
        "| model | path length / end distance (1 best) | max / mean step (1 best) | confidence ↑ | "
        "Fréchet (domain clf) ↓ | MMD² q vs prior ↓ | rate (nats) | distortion (nats) | active units |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["models"]:
        numbers = [
            format_number(r[key]) for key in ("smoothness_ratio", "max_step_ratio", "confidence", "frechet", "mmd2")
        ]
        rate = "∞ (point mass)" if r["rate"] is None else format_number(r["rate"])
        units = f"{r['active_units']}/{latent_dim}{' (collapsed)' if r['name'] in collapsed else ''}"
        lines.append(f"| {r['name']} | {' | '.join(numbers)} | {rate} | {format_number(r['distortion'])} | {units} |")
    ref = result.get("reference")
    if ref:
        lines.append(
            f"| real data (train vs held-out) | — | — | {format_number(ref['confidence'])} | "
            f"{format_number(ref['frechet'])} | — | — | — | — |"
        )
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
        reasons.append(f"KL to the prior {format_number(rate)} nats per example")
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


_COLLAPSE_MEANING = (
    "its smoothness/coverage say nothing about the encoder (its encodings barely depend on x, so a "
    "latent path between two of them decodes to nearly one image, which scores as smooth, and a "
    "q(z|x) equal to the prior covers the prior trivially), so no conclusion is drawn from it"
)


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
    others = [
        r
        for r in result["models"]
        if r["guide"] == "normal" and r["beta"] > 0 and r is not vae and collapse_reason(r, latent_dim) is None
    ]
    if not others:
        return text + " No Normal-guide VAE with β > 0 avoided collapse, so there is no verdict on the VAE vs the AE."
    other = min(others, key=lambda r: (abs(math.log(r["beta"])), r["beta"]))
    return (
        text + f" The non-collapsed VAE with β nearest to 1 is {other['name']} "
        f"({other.get('active_units', '?')} of {latent_dim or '?'} active units): " + _comparison(ae, other)
    )


def _comparison(ae: dict, vae: dict) -> str:
    name = vae["name"]

    def word(better: bool) -> str:
        return "beats" if better else "does not beat"

    straighter = vae["smoothness_ratio"] < ae["smoothness_ratio"]
    evener = vae["max_step_ratio"] < ae["max_step_ratio"]
    claim = (
        f"{word(straighter)} the AE"
        if straighter == evener
        else f"is mixed against the AE ({'straighter' if straighter else 'less straight'} but "
        f"{'more even' if evener else 'less even'})"
    )
    first = (
        f"On smoothness the {name} {claim}: decoded paths "
        f"are {format_number(vae['smoothness_ratio'])}× vs {format_number(ae['smoothness_ratio'])}× the "
        f"end-to-end distance, with largest/mean step {format_number(vae['max_step_ratio'])} vs "
        f"{format_number(ae['max_step_ratio'])}."
    )
    parts = []
    if vae["frechet"] is not None and ae["frechet"] is not None:
        quality = vae["frechet"] < ae["frechet"]
        more_confident = vae["confidence"] > ae["confidence"]
        caveat = (
            ""
            if more_confident == quality
            else (
                f" by Fréchet distance, though its classifier confidence is {'higher' if more_confident else 'lower'}"
            )
        )
        parts.append(
            f"on sample quality it {word(quality)} the AE{caveat} (domain-classifier Fréchet distance "
            f"{format_number(vae['frechet'])} vs {format_number(ae['frechet'])}, confidence "
            f"{format_number(vae['confidence'])} vs {format_number(ae['confidence'])})"
        )
    coverage = vae["mmd2"] < ae["mmd2"]
    parts.append(
        f"on coverage of the prior it {word(coverage)} the AE (MMD² {format_number(vae['mmd2'])} vs "
        f"{format_number(ae['mmd2'])}; two samples of one distribution give up to about "
        f"{format_number(vae['mmd2_threshold'])})"
    )
    second = parts[0][0].upper() + parts[0][1:] + (", and " + parts[1] if len(parts) > 1 else "") + "."
    return first + " " + second


def report_markdown(result: dict) -> str:
    """``comparison.md``: the settings, the table, the verdict and the notes of a ``compare-ae`` result."""
    s = result["settings"]
    return "\n".join(
        [
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
            *collapse_paragraph(result),
            f"Notes: smoothness over {s['num_pairs']} held-out pairs, {s['num_steps']} steps each. "
            f"Confidence and Fréchet: {CLASSIFIER_NOTE}. MMD²: {result['notes']['coverage']}. "
            "Rate: KL(q(z|x) || p(z)) to the model's prior per example (closed form here; infinite for the point-mass "
            "AE). Distortion: −E log p(x|z) per example.",
            "",
        ]
    )


def collapse_paragraph(result: dict) -> list[str]:
    """Markdown lines naming the collapsed models of a ``compare-ae`` result (none when no model collapsed)."""
    collapsed = collapsed_models(result)
    if not collapsed:
        return []
    names = "; ".join(f"{name} ({reason})" for name, reason in collapsed.items())
    return [
        f"**Collapsed** (no active unit, or KL to the prior below {COLLAPSE_KL_NATS} nats per example): {names}. "
        "Their encodings carry (almost) no information about x: their smoothness, sample quality and coverage "
        "describe the decoder alone and say nothing about the encoder.",
        "",
    ]


def _subset(data, max_train: int | None, max_heldout: int | None):
    from ppl_vae.data.split import DataSplit

    if max_train is None and max_heldout is None:
        return data
    a, b = max_train or len(data.train), max_heldout or len(data.heldout)
    return DataSplit(
        data.name,
        data.train[:a],
        data.heldout[:b],
        None if data.train_labels is None else data.train_labels[:a],
        None if data.heldout_labels is None else data.heldout_labels[:b],
        data.kind,
    )


def default_comparison_dir(dataset: str) -> Path:
    """Where ``ppl-vae compare-ae`` writes without ``--out``: ``runs/compare-ae-<dataset>-<time>``."""
    name = str(dataset).replace(":", "_").replace("/", "_")
    return Path("runs") / f"compare-ae-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def compare_ae_run(
    out_dir: str | Path | None = None,
    *,
    dataset: str = "digits",
    epochs: int = DEFAULT_EPOCHS,
    betas: Sequence[float] = DEFAULT_BETAS,
    latent_dim: int = 2,
    hidden_dims: Sequence[int] = (256, 128),
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    overwrite: bool = False,
    max_train: int | None = None,
    max_heldout: int | None = None,
    progress: bool = False,
) -> ComparisonRun:
    """Load ``dataset``, run :func:`compare_ae` and write into ``out_dir`` (default:
    :func:`default_comparison_dir`): ``comparison.json`` (the result), ``comparison.md`` (table and verdict)
    and ``figures/`` (``interpolations.png``, ``samples.png``, ``latent_scatter.png``, ``rate_distortion.png``,
    ``posterior_clouds.png``). ``max_train`` / ``max_heldout`` keep only the first examples (smoke runs).
    Refuses an existing non-empty ``out_dir`` unless ``overwrite``. Returns the :class:`ComparisonRun`.
    """
    from ppl_vae.app.checkpoint import atomic_write, write_json
    from ppl_vae.app.folders import check_output_dir, claimed_output_dir
    from ppl_vae.app.plots import save_figure
    from ppl_vae.data.sources import load_dataset

    out_dir = default_comparison_dir(dataset) if out_dir is None else out_dir
    out_dir = check_output_dir(out_dir, "compare-ae", overwrite=overwrite, inputs=_dataset_paths(dataset))
    start = time.perf_counter()
    data = _subset(load_dataset(dataset), max_train, max_heldout)
    if data.kind != "image":
        raise ConfigError(f"compare-ae needs image data, {dataset!r} is a table")
    result, models, heldout, pairs = _compare(
        data,
        epochs=epochs,
        betas=betas,
        latent_dim=latent_dim,
        hidden_dims=hidden_dims,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        num_pairs=64,
        num_steps=16,
        progress=progress,
    )
    figures = _figures(result, models, heldout, pairs, data.heldout_labels, seed)
    files = ["comparison.json", "comparison.md"] + [f"figures/{n}" for n in figures]
    with claimed_output_dir(out_dir, "compare-ae", replace=overwrite, action="compare-ae"):
        for name, fig in figures.items():
            save_figure(fig, out_dir / "figures" / name)
        run = ComparisonRun(**result, out_dir=str(out_dir), files=files, seconds=time.perf_counter() - start)
        write_json(out_dir / "comparison.json", run.to_dict())
        text = report_markdown(run)
        atomic_write(out_dir / "comparison.md", lambda handle: handle.write(text.encode()))
    return run


def _figures(result: Comparison, models: dict, heldout: torch.Tensor, pairs, labels, seed: int) -> dict:
    """The figures of :func:`compare_ae_run` by file name: the AE against the VAE with beta=1 (or the first
    other model), the rate-distortion curve, and the posterior clouds of beta=0 and beta=1."""
    vae_name = "VAE β=1" if "VAE β=1" in models else next(n for n in models if n != "AE")
    pair = {"AE": models["AE"], vae_name: models[vae_name]}
    figures = {
        "interpolations.png": interpolation_figure(pair, heldout, pairs),
        "samples.png": samples_figure(pair, seed=seed),
        "latent_scatter.png": latent_scatter_figure(pair, heldout, labels),
        "rate_distortion.png": rate_distortion_figure(result),
    }
    clouds = {n: models[n] for n in ("VAE β=0", "VAE β=1") if n in models}
    if clouds:
        figures["posterior_clouds.png"] = posterior_clouds_figure(clouds, heldout, labels)
    return figures


def _dataset_paths(dataset: str) -> list[Path]:
    kind, _, rest = str(dataset).partition(":")
    return [Path(rest)] if kind in ("npz", "folder", "table") and rest else []
