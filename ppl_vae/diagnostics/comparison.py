"""Paired model comparison on the same held-out examples: which model predicts new data better, by
how much, and whether the difference is larger than its uncertainty.

Every model scores the same N held-out examples with the importance-sampled log p(x_n) (S draws of its
guide per example, :func:`ppl_vae.diagnostics.posterior.psis`). Because the examples are held out, the
expected log predictive density (elpd) of a model is estimated directly by sum_n log p(x_n): no
leave-one-out approximation is needed, and the pointwise values play the part of ArviZ's ``loo_i``.

Two errors matter and are reported apart:

* the **paired standard error** of a difference, ``dse = sqrt(N Var_n(d_n))`` with d_n the difference of
  the two models' log p(x_n) on example n: how much the difference would vary over another held-out
  set drawn from the same population (it includes the Monte Carlo noise of the d_n, which adds to
  their variance);
* the **Monte Carlo part** ``dse_mc = sqrt(sum_n (v_an + v_bn))`` with v the delta-method variance of
  each log p(x_n) estimate (draws of different models are independent): the part that more guide draws
  (``num_samples``) would remove. It is optimistic where PSIS k-hat is high.

Rows differ by far less than each row's own spread over examples (the s.e. of an elpd), yet their
differences can be precise: the examples that are hard for one model are hard for the other, and
pairing removes that shared part. Judge a difference by ``elpd_diff / dse``, not by overlapping rows.

Stacking and pseudo-BMA+ (Bayesian-bootstrap) weights are those of ``az.compare``, computed by ArviZ
from the same pointwise values (:mod:`ppl_vae.diagnostics.arviz_bridge.compare`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ppl_vae.diagnostics.arviz_bridge import compare as bridge
from ppl_vae.diagnostics.posterior import psis
from ppl_vae.errors import ConfigError
from ppl_vae.results import NOT_IN_DICT, Result
from ppl_vae.validation import BOUNDS, Bound, check_number

#: k-hat above which an example's importance estimate is not trusted (Vehtari et al. 2024).
KHAT_UNRELIABLE = 0.7


@dataclass(frozen=True)
class ModelScore(Result):
    """One model's pointwise held-out log-densities.

    Attributes:
        name: the model's name in the comparison.
        log_likelihood: ``(N,)`` importance-sampled log p(x_n), nats.
        log_likelihood_var: ``(N,)`` their Monte Carlo (delta-method) variances, nats².
        khat: ``(N,)`` PSIS k-hat of the guide as proposal for each example (-inf: exact posterior).
        num_samples: S, guide draws per example.
    """

    name: str
    log_likelihood: np.ndarray = field(repr=False)
    log_likelihood_var: np.ndarray = field(repr=False)
    khat: np.ndarray = field(repr=False)
    num_samples: int

    @property
    def khat_over(self) -> float:
        """Share of examples with k-hat above :data:`KHAT_UNRELIABLE`."""
        return float(np.mean(self.khat > KHAT_UNRELIABLE))


@dataclass(frozen=True)
class Comparison(Result):
    """A comparison of models on the same held-out examples, in the form of ``az.compare``.

    Attributes:
        records: one dict per model, best first, with
            ``rank`` (0 is best), ``name``,
            ``elpd`` (sum over examples of log p(x_n), nats) and ``elpd_per_example`` (its mean),
            ``se`` (standard error of ``elpd`` over examples, sqrt(N Var_n log p(x_n))),
            ``mcse`` (Monte Carlo s.e. of ``elpd``),
            ``elpd_diff`` (best's elpd minus this one's, >= 0; 0 for the best) and ``elpd_diff_per_example``,
            ``dse`` (paired s.e. of ``elpd_diff``), ``dse_mc`` (its Monte Carlo part), ``z``
            (``elpd_diff / dse``; None for the best, and where the two models' pointwise values are
            identical),
            ``weight`` (stacking) and ``pseudo_bma_weight`` (pseudo-BMA+ with Bayesian bootstrap),
            ``khat_over_0.7`` (share of examples whose importance estimate is unreliable),
            ``warning`` (True when that share is above 0).
        num_examples: N. num_samples: S per example and model.
        warnings: one line naming the models whose importance estimates are unreliable, with the share of
            examples for each (empty when none is).
        scores: the :class:`ModelScore` of each model, by name (not in :meth:`to_dict`).
    """

    records: list
    num_examples: int
    num_samples: int
    warnings: list
    scores: dict = field(repr=False, default_factory=dict, metadata=NOT_IN_DICT)

    def differences_beyond(self, multiple: float = 2.0) -> list[str]:
        """Names of the models whose difference to the best exceeds ``multiple`` paired s.e."""
        return [r["name"] for r in self.records if r["z"] is not None and r["z"] > multiple]


def score_model(
    model,
    guide,
    data: torch.Tensor,
    *,
    name: str = "model",
    num_samples: int = 1000,
    batch_size: int | None = None,
    seed: int | None = 0,
    c: torch.Tensor | None = None,
) -> ModelScore:
    """The pointwise importance-sampled log p(x_n) of one model/guide pair on ``data (N, ...)`` (in the
    form its likelihood scores), with Monte Carlo variances and k-hat: :func:`psis` with ``S =
    num_samples`` draws per example. ``c``: ``(N,)`` labels for programs that take them."""
    p = psis(model, guide, data, num_samples=num_samples, batch_size=batch_size, seed=seed, c=c)
    estimate = np.asarray(p.per_example["log_likelihood"], dtype=float)
    variance = np.asarray(p.per_example["log_likelihood_se"], dtype=float) ** 2
    if not np.all(np.isfinite(estimate)):
        bad = int(np.sum(~np.isfinite(estimate)))
        raise ConfigError(
            f"model {name!r} gives a non-finite log p(x) for {bad} of {len(estimate)} examples (its guide puts "
            "no mass where the model has any); it cannot be compared: check that its guide fits its prior"
        )
    return ModelScore(name, estimate, np.nan_to_num(variance), np.asarray(p.khat, dtype=float), num_samples)


def paired_difference(a: ModelScore, b: ModelScore) -> dict:
    """How much better ``a`` predicts the examples than ``b``: ``diff`` = sum_n (log p_a(x_n) - log p_b(x_n))
    and ``diff_per_example`` (nats), ``dse`` = sqrt(N Var_n(d_n)) (paired s.e. over examples), ``dse_mc``
    (its Monte Carlo part, independent draws of the two models) and ``z = diff / dse`` (None where the
    pointwise values are identical, e.g. a model with itself)."""
    if a.log_likelihood.shape != b.log_likelihood.shape:
        raise ConfigError(
            f"models {a.name!r} and {b.name!r} were scored on different numbers of examples; score the same data"
        )
    d = a.log_likelihood - b.log_likelihood  # (N,)
    n = d.shape[0]
    diff = float(d.sum())
    dse = math.sqrt(n * float(np.var(d)))
    identical = a is b or dse <= 1e-9 * max(1.0, abs(diff))
    return {
        "diff": diff,
        "diff_per_example": float(d.mean()),
        "dse": 0.0 if a is b else dse,
        "dse_mc": 0.0 if a is b else math.sqrt(float(np.sum(a.log_likelihood_var + b.log_likelihood_var))),
        "z": None if identical else diff / dse,
    }


def compare_scores(scores: list[ModelScore], *, seed: int = 0, shift: float = 0.0) -> Comparison:
    """The comparison table of models scored on the same examples (see :class:`Comparison`).

    ``shift``: a constant added to every log p(x_n) (the log-Jacobian of a standardized table, for its
    original units); differences and weights do not change."""
    if len(scores) < 2:
        raise ConfigError(f"a comparison needs at least two models, got {len(scores)}; pass two or more")
    names = [s.name for s in scores]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must differ, got {names}; name each model once")
    sizes = {s.log_likelihood.shape for s in scores}
    if len(sizes) != 1:
        raise ConfigError(f"models were scored on different numbers of examples {sorted(sizes)}; score the same data")
    pointwise = {s.name: s.log_likelihood + shift for s in scores}
    weights = bridge.weights(pointwise, seed=seed)  # {"stacking": {...}, "pseudo-BMA+": {...}}
    order = sorted(scores, key=lambda s: -float(pointwise[s.name].sum()))
    best = order[0]
    n = best.log_likelihood.shape[0]
    records = []
    for rank, s in enumerate(order):
        paired = paired_difference(best, s)
        records.append(
            {
                "rank": rank,
                "name": s.name,
                "elpd": float(pointwise[s.name].sum()),
                "elpd_per_example": float(pointwise[s.name].mean()),
                "se": math.sqrt(n * float(np.var(pointwise[s.name]))),
                "mcse": math.sqrt(float(np.sum(s.log_likelihood_var))),
                "elpd_diff": paired["diff"],
                "elpd_diff_per_example": paired["diff_per_example"],
                "dse": paired["dse"],
                "dse_mc": paired["dse_mc"],
                "z": paired["z"],
                "weight": weights["stacking"][s.name],
                "pseudo_bma_weight": weights["pseudo-BMA+"][s.name],
                "khat_over_0.7": s.khat_over,
                "warning": s.khat_over > 0,
            }
        )
    unreliable = [f"{s.name} {s.khat_over:.1%}" for s in order if s.khat_over > 0]
    warnings = []
    if unreliable:
        warnings.append(
            f"the importance estimate of log p(x) is unreliable (k-hat > {KHAT_UNRELIABLE}) for a share of the "
            f"examples of {', '.join(unreliable)}: there the elpd may be too low and the Monte Carlo errors "
            "optimistic (more draws, or a better guide, would tell)"
        )
    return Comparison(records, n, best.num_samples, warnings, scores={s.name: s for s in scores})


def compare_models(
    models: dict,
    data: torch.Tensor,
    *,
    num_samples: int = 1000,
    batch_size: int | None = None,
    seed: int = 0,
    c: torch.Tensor | None = None,
    shift: float = 0.0,
    progress: bool = False,
) -> Comparison:
    """Score every model on the same examples and compare them (see the module docstring).

    Args:
        models: ``{name: vae}``, each anything with ``.model`` and ``.guide`` Pyro programs (a
            :class:`ppl_vae.VAE`, or a namespace holding your own pair); a list is named
            ``model_0, model_1, ...``.
        data: ``(N, ...)`` held-out examples in the form every likelihood scores (the same binarization
            for all: score all models on one tensor).
        num_samples: S guide draws per example and model.
        seed: model i draws with seed ``seed + i`` (independent Monte Carlo errors, as ``dse_mc`` assumes),
            and the pseudo-BMA+ bootstrap uses ``seed``.
        c: ``(N,)`` per-example labels, passed to models whose programs take them.
        shift: added to every log p(x_n) (see :func:`compare_scores`).
        progress: a progress bar over models.

    Returns a :class:`Comparison`.
    """
    check_number(num_samples, "num_samples", Bound(int, 2, BOUNDS["num_samples"].high))
    if not isinstance(models, dict):
        models = {f"model_{i}": m for i, m in enumerate(models)}
    items = list(models.items())
    if len(items) < 2:
        raise ConfigError(f"a comparison needs at least two models, got {len(items)}; pass two or more")
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="compare", unit="model", dynamic_ncols=True)
    scores = []
    for i, (name, vae) in enumerate(items):
        side = {"c": c} if c is not None and getattr(vae, "label_role", "none") in ("covariate", "group") else {}
        scores.append(
            score_model(
                vae.model,
                vae.guide,
                data,
                name=str(name),
                num_samples=num_samples,
                batch_size=batch_size,
                seed=seed + i,
                **side,
            )
        )
    return compare_scores(scores, seed=seed, shift=shift)


def to_inference_data(score: ModelScore, observed_site: str = "x"):
    """One model's pointwise values as ArviZ InferenceData: group ``log_likelihood`` holds log p(x_n)
    (dims chain 1, draw 1, obs), and ``log_likelihood_mcse`` and ``khat`` (dims obs) sit in a group
    ``importance`` beside it."""
    return bridge.pointwise_inference_data(
        score.log_likelihood, np.sqrt(score.log_likelihood_var), score.khat, observed_site
    )
