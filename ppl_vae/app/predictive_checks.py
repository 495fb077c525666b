"""The predictive-check section of ``ppl-vae diagnose``: posterior and prior predictive checks of the
held-out data (:mod:`ppl_vae.diagnostics.predictive`), their figures, a paragraph for ``report.md`` and a
terminal line. Nothing here writes files: the caller saves the figures (``figures/<name>``) and the
section (``diagnostics.json``).

Figures (matplotlib ``Figure`` objects, no pyplot):

``ppc.png``
    per-example statistics (ink and strokes per image, table columns, or totals and zeros of count rows):
    the held-out distribution against replicated ones, posterior and prior (``az.plot_ppc``), and the
    posterior u-values (``az.plot_bpv``);
``ppc_pvalues.png``
    every test statistic's replicated distribution with the held-out value marked, posterior and prior;
``loo_pit.png``
    when LOO-PIT was computed: the ECDF of the PIT values minus the uniform CDF with a simultaneous band,
    and their histogram.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from matplotlib.figure import Figure

from ppl_vae.app.formatting import format_number
from ppl_vae.diagnostics import predictive
from ppl_vae.diagnostics.arviz_bridge import predictive as az_bridge
from ppl_vae.results import json_ready

_number = functools.partial(format_number, fixed=True, missing="n/a")

#: Axis label of each per-example statistic of the figures, with its unit.
PER_EXAMPLE_LABELS = {
    "ink": "ink per image (sum of grey levels)",
    "strokes": "strokes per image (count)",
    "total count": "total count per example",
    "zeros": "zero counts per example",
}

#: Units of the scalar test statistics, by data kind and name (profiles are in replicate sds).
STATISTIC_UNITS = {
    ("image", "ink_mean"): "sum of grey levels per image",
    ("image", "ink_sd"): "sum of grey levels per image",
    ("image", "strokes_mean"): "strokes per image",
    ("counts", "zero_fraction"): "share of counts",
    ("counts", "mean"): "count",
    ("counts", "dispersion"): "variance / mean",
    ("counts", "max"): "count",
}
_PROFILE_UNIT = "max |z|, replicate sds"

#: What an extreme statistic says about the model, by (data kind, name, direction of the data).
MEANINGS = {
    ("image", "ink_mean", "higher"): "the real images have more ink than the replicates: the model's images are "
    "too faint or too thin",
    ("image", "ink_mean", "lower"): "the replicated images have more ink than the real ones: the model's images "
    "are too bold or blotchy",
    ("image", "ink_sd", "higher"): "the real images vary more in ink than the replicates: the model makes its "
    "images too alike",
    ("image", "ink_sd", "lower"): "the replicates vary more in ink than the real images",
    ("image", "strokes_mean", "higher"): "the real images have more separate strokes than the replicates: the "
    "model merges or drops strokes",
    ("image", "strokes_mean", "lower"): "the replicates break into more separate pieces than the real images: "
    "isolated pixels of noise the data do not have",
    ("image", "pixel_mean"): "some pixels are inked more or less often in the real images than in the replicates",
    ("table", "mean"): "column means differ between the data and the replicates",
    ("table", "sd", "higher"): "the data spread more than the replicates",
    ("table", "sd", "lower"): "the data spread less than the replicates",
    ("table", "q05"): "the lower tail (5% quantile) differs",
    ("table", "median"): "the centre (median) differs",
    ("table", "q95"): "the upper tail (95% quantile) differs",
    ("table", "skewness", "higher"): "the data are more right-skewed (a longer upper tail) than the replicates",
    ("table", "skewness", "lower"): "the data are more left-skewed (a longer lower tail) than the replicates",
    ("table", "kurtosis", "higher"): "the data have heavier tails than the replicates: the likelihood misses "
    "outliers; a heavier-tailed one (e.g. laplace) may fit better",
    ("table", "kurtosis", "lower"): "the data have lighter tails than the replicates (bounded, clipped or "
    "bimodal values)",
    ("table", "correlation"): "a dependence between columns is not reproduced: the latent space does not capture it",
    ("counts", "zero_fraction", "higher"): "the data have more zeros than the replicates: a zero-inflated or "
    "negative-binomial likelihood may fit better",
    ("counts", "zero_fraction", "lower"): "the data have fewer zeros than the replicates",
    ("counts", "dispersion", "higher"): "the counts are more over-dispersed than the replicates: a "
    "negative-binomial likelihood (or more latent dimensions) may fit better",
    ("counts", "dispersion", "lower"): "the counts are less dispersed than the replicates",
    ("counts", "max", "higher"): "the data's largest count exceeds the replicates': a heavier upper tail",
    ("counts", "max", "lower"): "the replicates reach larger counts than the data",
    ("counts", "mean"): "the mean count differs",
}


def predictive_section(
    vae,
    heldout,
    *,
    num_samples: int | None = None,
    seed: int = 0,
    c=None,
    log_ratios=None,
    alpha: float = predictive.DEFAULT_ALPHA,
    loo_pit_samples: int | None = 1000,
) -> tuple[dict, dict]:
    """The posterior and prior predictive checks of ``heldout`` (``(N, ...)``, as the likelihood scores it)
    under ``vae``: ``(section, figures)``.

    ``section`` is JSON-ready (non-finite numbers are None): ``{"posterior": ..., "prior": ...}``, each a
    :class:`ppl_vae.diagnostics.predictive.PredictiveCheck` as plain data (the posterior one with
    ``loo_pit``). ``figures``: ``{file name: Figure}`` (see the module docstring). ``num_samples``:
    replicated data sets (None: the fewest that reach the extreme threshold, rounded up to 100); ``c``:
    the held-out labels for a model that takes them; ``log_ratios``: ``(S', N)`` PSIS log ratios of the
    same examples, whose k-hat leaves examples out of LOO-PIT."""
    common = {"num_samples": num_samples, "seed": seed, "c": c, "likelihood": vae, "alpha": alpha}
    post = predictive.predictive_check(
        vae.model,
        vae.guide,
        heldout,
        kind="posterior",
        loo_pit_samples=loo_pit_samples,
        log_ratios=log_ratios,
        **common,
    )
    prior = predictive.predictive_check(vae.model, vae.guide, heldout, kind="prior", **common)
    section = json_ready({"posterior": post.to_dict(), "prior": prior.to_dict()})
    figures = {
        "ppc.png": ppc_figure(post, prior, seed=seed),
        "ppc_pvalues.png": pvalues_figure(post, prior),
    }
    if post.loo_pit is not None and post.loo_pit.values is not None and post.loo_pit.num_values:
        figures["loo_pit.png"] = loo_pit_figure(post.loo_pit, seed=seed)
    return section, figures


# -- figures ---------------------------------------------------------------------------------------------


def _per_example_label(name: str) -> str:
    return PER_EXAMPLE_LABELS.get(name, f"{name} (data units)")


def ppc_figure(post, prior, *, seed: int = 0) -> Figure:
    """Per-example statistics, one row each: held-out vs posterior replicates, vs prior replicates
    (``az.plot_ppc``), and the posterior u-values (``az.plot_bpv``: each example's share of its replicates
    below its observed value; uniform would mean calibrated, a hump in the middle is what posterior
    replicates of a good model give)."""
    names = list(post.per_example)
    idata = az_bridge.statistic_inference_data(
        {k: post.per_example[k]["observed"] for k in names},
        posterior_predictive={k: post.per_example[k]["replicated"] for k in names},
        prior_predictive={k: prior.per_example[k]["replicated"] for k in names},
    )
    fig = Figure(figsize=(12, 3.2 * len(names)))
    axes = fig.subplots(len(names), 3, squeeze=False)
    for row, name in zip(axes, names):
        label = _per_example_label(name)
        for ax, group in zip(row[:2], ("posterior", "prior")):
            az_bridge.plot_ppc(ax, idata, name, group=group, seed=seed)
            ax.set_xlabel(label)
            ax.set_ylabel("density (per unit of x)")
            ax.set_title(f"{name}: held-out vs {group} replicates", fontsize=9)
        az_bridge.plot_bpv(row[2], idata, name, group="posterior", kind="u_value")
        row[2].set_xlabel(f"u-value of {name}: share of replicates below (probability)")
        row[2].set_ylabel("density (per unit of u)")
        row[2].set_title(f"{name}: posterior u-values", fontsize=9)
    fig.tight_layout()
    return fig


def _statistic_unit(data_kind: str, check) -> str:
    if check.worst is not None:
        return _PROFILE_UNIT
    return STATISTIC_UNITS.get((data_kind, check.name), "statistic units")


def pvalues_figure(post, prior) -> Figure:
    """One row per test statistic, posterior (left) and prior (right): the histogram of T over the
    replicated data sets, the held-out value as a vertical line, ppp and the extreme flag in the title."""
    names = list(post.statistics)
    fig = Figure(figsize=(9, 2.4 * len(names)))
    axes = fig.subplots(len(names), 2, squeeze=False)
    for row, name in zip(axes, names):
        for ax, check in zip(row, (post, prior)):
            s = check.statistics[name]
            values = s.replicated[np.isfinite(s.replicated)]
            ax.hist(values, bins=40, color="C0", alpha=0.7, label="replicates")
            if math.isfinite(s.observed):
                ax.axvline(s.observed, color="C3", lw=2, label="held-out")
            flag = " — EXTREME" if s.extreme else ""
            ax.set_title(f"{check.kind}: {name}, ppp {s.ppp:.3f}, p {s.p_value:.2g}{flag}", fontsize=9)
            ax.set_xlabel(f"T = {name} ({_statistic_unit(check.data_kind, s)})")
            ax.set_ylabel("replicated data sets")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def loo_pit_figure(pit, *, seed: int = 0) -> Figure:
    """LOO-PIT values: ECDF minus the uniform CDF with ArviZ's simultaneous 99% band (drawn for independent
    values; values of one example's features are dependent, so read the band as a guide), and the histogram."""
    values = pit.values[np.isfinite(pit.values)]
    fig = Figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2)
    az_bridge.plot_pit_ecdf(left, values, seed=seed)
    left.set_xlabel("LOO-PIT value (probability)")
    left.set_ylabel("ECDF − uniform CDF (probability)")
    left.set_title(f"{values.size} LOO-PIT values, {pit.share_left_out:.1%} left out (k-hat > 0.7)", fontsize=9)
    right.hist(values, bins=20, range=(0, 1), color="C0", alpha=0.7, density=True)
    right.axhline(1.0, color="0.4", ls="--", lw=1, label="uniform")
    right.set_xlabel("LOO-PIT value (probability)")
    right.set_ylabel("density (per unit of probability)")
    right.set_title(f"mean {pit.mean:.3f} (uniform 0.5), sd {pit.sd:.3f} (uniform 0.289)", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


# -- report.md and the terminal ---------------------------------------------------------------------------


def _meaning(data_kind: str, s: dict) -> str:
    text = MEANINGS.get((data_kind, s["name"], s["direction"])) or MEANINGS.get((data_kind, s["name"]))
    text = text or f"the data's {s['name']} is {s['direction']} than the replicates'"
    worst = s.get("worst")
    if worst:
        text += (
            f" (worst: {worst['label']}, {_number(worst['observed'])} in the data vs "
            f"{_number(worst['replicated_mean'])} ± {_number(worst['replicated_sd'])} in the replicates)"
        )
    else:
        text += (
            f" ({_number(s['observed'])} in the data vs {_number(s['replicated_mean'])} ± "
            f"{_number(s['replicated_sd'])})"
        )
    return text


def _table(section: dict) -> list[str]:
    lines = [
        "| statistic | check | held-out | replicated (mean ± sd) | ppp ± s.e. | p-value | extreme |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in section["posterior"]["statistics"]:
        for kind in ("posterior", "prior"):
            s = section[kind]["statistics"][name]
            mark = " †" if s.get("sided") == "upper" else ""
            lines.append(
                f"| {name}{mark} | {kind} | {_number(s['observed'])} | {_number(s['replicated_mean'])} ± "
                f"{_number(s['replicated_sd'])} | {_number(s['ppp'])} ± {_number(s['ppp_se'])} | "
                f"{s['p_value']:.2g} | {'**yes**' if s['extreme'] else 'no'} |"
            )
    return lines


def _findings(check: dict) -> list[str]:
    label = "Posterior" if check["kind"] == "posterior" else "Prior"
    lines = [f"**{label} predictive check:** {check['verdict']}."]
    for name in check["extreme"]:
        lines.append(f"- {name}: {_meaning(check['data_kind'], check['statistics'][name])}.")
    return lines + [""]


def _pit_lines(pit: dict | None) -> list[str]:
    if not pit:
        return []
    if pit.get("reason"):
        return [f"**LOO-PIT:** not computed: {pit['reason']}.", ""]
    return [
        f"**LOO-PIT** (each feature's predictive distribution given the example's other features, by "
        f"Pareto-smoothed importance sampling from the guide, {pit['num_samples']} draws per example): "
        f"{pit['verdict']}. {pit['num_values']} values kept, mean {_number(pit.get('mean'))} (uniform 0.5), "
        f"sd {_number(pit.get('sd'))} (uniform 0.289).",
        "",
        "![LOO-PIT](figures/loo_pit.png)",
        "",
    ]


def predictive_lines(section: dict) -> list[str]:
    """The ``report.md`` paragraphs of the section: what was compared, the table of statistics, what the
    extreme ones say about the model, how to read the p-values, LOO-PIT, and the figures."""
    post, prior = section["posterior"], section["prior"]
    m = len(post["statistics"])
    lines = [
        "## Posterior and prior predictive checks",
        "",
        f"{post['num_samples']} replicated data sets of the {post['num_examples']} held-out examples "
        f"({post['data_kind']} statistics): posterior replicates draw each example's latent sites from "
        "q(z | x) and then x ~ p(x | z); prior replicates draw z ~ p(z). For every test statistic T, "
        "ppp = P(T(replicate) ≥ T(held-out)), ties counted half: near 0 the data lie above what the model "
        f"produces, near 1 below. A statistic is **extreme** when its p-value is at most {post['alpha']:g}/{m} = "
        f"{post['threshold']:.2g} (family level {post['alpha']:g}, Bonferroni over the {m} statistics: derived, "
        "not tuned).",
        "",
        *_table(section),
        "",
        *(
            [
                "† A statistic per component (per column, pair or pixel): its held-out and replicated numbers are "
                "the largest standardized discrepancy over the components (in sds of the replicates), and the "
                "findings below name the worst component in the data's own units.",
                "",
            ]
            if any(s.get("sided") == "upper" for s in post["statistics"].values())
            else []
        ),
        *([f"Units of the statistics: {section['units']}.", ""] if section.get("units") else []),
        *_findings(post),
        *_findings(prior),
        f"How to read them: {post['note']} {prior['note']} A collapsed model (q(z | x) = p(z), see the "
        "collapse section) is not criticised by these checks alone: its replicates ignore x, and a "
        "decoder that generates plausible data passes both checks without using its latent code.",
        "",
        *_pit_lines(post.get("loo_pit")),
        "![predictive distributions](figures/ppc.png)",
        "",
        "![test statistics](figures/ppc_pvalues.png)",
        "",
    ]
    return lines


def predictive_summary(section: dict) -> str:
    """One terminal line: how many statistics are extreme in each check (and which), and LOO-PIT."""
    parts = []
    for kind in ("posterior", "prior"):
        check = section[kind]
        m, extreme = len(check["statistics"]), check["extreme"]
        parts.append(f"{kind} {len(extreme)} of {m} extreme" + (f" ({', '.join(extreme)})" if extreme else ""))
    pit = section["posterior"].get("loo_pit") or {}
    if pit.get("reason"):
        parts.append("LOO-PIT not computed")
    elif pit:
        parts.append(
            f"LOO-PIT {'uniform' if pit.get('uniform') else 'not uniform'} "
            f"(KS {_number(pit.get('ks_distance'))} vs {_number(pit.get('ks_threshold'))})"
        )
    return "predictive checks: " + "; ".join(parts)
