"""The calibration section of ``ppl-vae diagnose``: coverage of q(z | x)'s central intervals against
simulations and against NUTS, the SBC rank ECDF with its simultaneous band, and the classifier
two-sample test of guide draws against NUTS draws (:mod:`ppl_vae.diagnostics.coverage`).

Nothing here writes files: :func:`calibration_section` returns the JSON-ready section and the figures
by file name, :func:`calibration_lines` the paragraph of ``report.md`` and :func:`calibration_summary`
the terminal line; the diagnose command writes them.

Section keys (``diagnostics.json``, under the name the diagnose command gives it):

``simulations``
    :meth:`ppl_vae.diagnostics.coverage.SimulationCoverage.summary`: ``levels`` (nominal), ``expected``
    (coverage under calibration with L draws), ``pooled`` with ``pooled_se``, ``actual`` and ``z`` per
    level and dimension, ``critical``, ``verdict``.
``ecdf``
    :meth:`ppl_vae.diagnostics.coverage.ECDFBand.summary`: dimensions whose rank ECDF leaves its
    simultaneous band (``outside``), how far (``excess``), the pattern (``shape``), ``verdict``.
``nuts``
    :meth:`ppl_vae.diagnostics.coverage.ReferenceCoverage.summary` plus ``max_rhat`` of the NUTS run, or
    ``{"skipped": reason}``.
``c2st``
    :meth:`ppl_vae.diagnostics.coverage.C2STResult.summary`, or ``{"skipped": reason}``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from matplotlib.figure import Figure

from ppl_vae.app.formatting import format_number
from ppl_vae.diagnostics import coverage
from ppl_vae.diagnostics.arviz_bridge import calibration as bridge
from ppl_vae.results import json_ready

#: At most this many latent dimensions get an ECDF panel (the ones that deviate most).
MAX_ECDF_PANELS = 8
#: Levels shown in the report's table (the nearest computed level to each).
REPORT_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
NUTS_SKIPPED = "NUTS was skipped: no reference posterior to compare the guide with"

_number = functools.partial(format_number, fixed=True, missing="n/a")


def calibration_section(ranks, num_draws: int, nuts=None, *, seed: int = 0, alpha: float = 0.01) -> tuple[dict, dict]:
    """The calibration section and its figures.

    Args:
        ranks: ``(N, latent_dim)`` SBC ranks in 0..L that the diagnosis computed (``SBCResult.ranks``).
        num_draws: L.
        nuts: the diagnosis's :class:`~ppl_vae.diagnostics.NUTSResult`, or None when NUTS was skipped.
        seed: the classifier test's draws and folds.
        alpha: family-wise level of every verdict.

    Returns:
        ``(section, figures)``: the JSON-ready dict described in the module docstring (no infinities or
        NaN: those become None) and ``{"coverage.png": Figure, "sbc_ecdf.png": Figure}``.
    """
    simulations = coverage.coverage_from_ranks(ranks, num_draws, alpha=alpha)
    ecdf = coverage.sbc_ecdf(ranks, num_draws, alpha=alpha)
    section = {"simulations": simulations.summary(), "ecdf": ecdf.summary()}
    reference = None
    if nuts is None:
        section["nuts"] = {"skipped": NUTS_SKIPPED}
        section["c2st"] = {"skipped": NUTS_SKIPPED}
    else:
        reference = coverage.nuts_coverage(nuts, alpha=alpha)
        section["nuts"] = {**reference.summary(), "max_rhat": float(nuts.max_rhat)}
        section["c2st"] = coverage.nuts_c2st(nuts, alpha=alpha, seed=seed).summary()
    figures = {
        "coverage.png": coverage_figure(simulations, reference),
        "sbc_ecdf.png": ecdf_figure(np.asarray(ranks), ecdf),
    }
    return json_ready(section), figures


# -- figures -----------------------------------------------------------------------------------------


def _coverage_panel(ax, expected, curves, pooled, pooled_se, band_se, *, source: str, curve_label: str) -> None:
    """Nominal against actual coverage: the identity, a +-2 s.e. band of calibrated coverage, thin curves
    (per dimension or observation) and the pooled curve with +-2 s.e. bars."""
    ax.fill_between(
        expected,
        np.clip(expected - 2 * band_se, 0, 1),
        np.clip(expected + 2 * band_se, 0, 1),
        color="0.85",
        lw=0,
        label="±2 s.e. of the pooled coverage if calibrated",
    )
    ax.plot([0, 1], [0, 1], color="0.4", lw=1, ls="--", label="calibrated (actual = nominal)")
    for k, curve in enumerate(curves):
        ax.plot(expected, curve, color="C1", lw=0.7, alpha=0.45, label=curve_label if k == 0 else None)
    ax.errorbar(
        expected, pooled, yerr=2 * pooled_se, color="C0", lw=1.6, marker="o", ms=3, capsize=2, label="pooled ±2 s.e."
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("nominal level of q(z | x)'s central interval (probability)", fontsize=8)
    ax.set_ylabel(f"actual coverage (share of {source})", fontsize=8)
    ax.legend(fontsize=6.5, loc="upper left")
    ax.tick_params(labelsize=7)


def coverage_figure(simulations, reference=None) -> Figure:
    """Coverage curves: against simulations (per dimension and pooled, with the binomial band of one
    dimension), and against NUTS when there is a reference (per observation and pooled)."""
    panels = 1 if reference is None else 2
    fig = Figure(figsize=(4.4 * panels, 4.6))
    ax = fig.add_subplot(1, panels, 1)
    _coverage_panel(
        ax,
        simulations.expected,
        simulations.actual.T,
        simulations.pooled,
        simulations.pooled_se,
        simulations.pooled_null_se,
        source="simulations",
        curve_label="one latent dimension",
    )
    ax.set_title(
        f"against {simulations.num_simulations} simulations (z*, x) ~ p(z) p(x | z)\n"
        f"interval from {simulations.num_draws} guide draws",
        fontsize=8.5,
    )
    if reference is not None:
        ax = fig.add_subplot(1, panels, 2)
        _coverage_panel(
            ax,
            reference.expected,
            reference.actual.mean(2).T,
            reference.pooled,
            reference.pooled_se,
            reference.pooled_null_se,
            source="NUTS draws",
            curve_label="one observation (mean over dimensions)",
        )
        ax.set_title(
            f"against NUTS on {reference.actual.shape[1]} observations\n"
            f"{reference.num_reference} NUTS draws each, interval from {reference.num_guide} guide draws",
            fontsize=8.5,
        )
    fig.suptitle("Coverage of the guide's central intervals: nominal vs actual", fontsize=10)
    fig.tight_layout()
    return fig


def _ecdf_dims(ecdf, max_panels: int) -> list[int]:
    """The dimensions to draw: all, or the ``max_panels`` that deviate most (beyond the band first, then by
    the largest |ECDF difference|), in index order."""
    d = ecdf.difference.shape[1]
    if d <= max_panels:
        return list(range(d))
    order = np.lexsort((-np.abs(ecdf.difference).max(0), -ecdf.excess))
    return sorted(int(j) for j in order[:max_panels])


def ecdf_figure(ranks: np.ndarray, ecdf, max_panels: int = MAX_ECDF_PANELS) -> Figure:
    """The SBC ECDF-difference plot with simultaneous bands, one panel per dimension (at most
    ``max_panels``: those that deviate most), drawn by ArviZ's ``plot_ecdf``."""
    dims = _ecdf_dims(ecdf, max_panels)
    nrow = math.ceil(len(dims) / 4)
    ncol = math.ceil(len(dims) / nrow)
    fig = Figure(figsize=(3.3 * ncol, 2.8 * nrow + 0.6))
    cdf = functools.partial(coverage.uniform_rank_cdf, num_draws=ecdf.num_draws)
    for k, j in enumerate(dims):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        bridge.plot_rank_ecdf(ax, ranks[:, j], ecdf.num_draws, ecdf.eval_points, ecdf.prob, cdf)
        ax.axhline(0, color="0.4", lw=0.8, ls="--")
        title = f"z[{j}]" + (f": leaves the band ({ecdf.shape[j]})" if ecdf.outside[j] else "")
        ax.set_title(title, fontsize=8.5, color="C3" if ecdf.outside[j] else "black")
        ax.set_xlabel(f"rank of the true z among {ecdf.num_draws} guide draws", fontsize=7)
        ax.set_ylabel("ECDF − uniform CDF (share of simulations)", fontsize=7)
        ax.tick_params(labelsize=7)
    d = ecdf.difference.shape[1]
    shown = "" if len(dims) == d else f"; {len(dims)} of {d} dimensions shown (those that deviate most)"
    fig.suptitle(
        f"SBC rank ECDF minus uniform, {ecdf.num_simulations} simulations; grey: simultaneous "
        f"{ecdf.prob:.2%} band{shown}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


# -- report.md and the terminal -----------------------------------------------------------------------

#: What each coverage verdict means for the user's model, by the verdict's first word.
_MEANING = {
    "nominal": (
        "The encoder's uncertainty is about right: its central intervals hold the true latent about as often "
        "as they claim, so error bars read from q(z | x) can be taken at face value (dimension by dimension: "
        "coverage does not see correlations between dimensions; the two-sample test below does)."
    ),
    "under-covers": (
        "The encoder is over-confident: its intervals hold the true latent less often than they claim, so "
        "every uncertainty read from q(z | x) (error bars on encodings, the spread of sampled reconstructions, "
        "decisions that use the encoder's variance) is understated. A guide fitted by the ELBO tends this way "
        "(KL(q || p) favours narrow guides). Importance-weighting the guide's draws (the PSIS section) corrects "
        "posterior expectations where k-hat allows; a richer guide family narrows the gap itself. The SBC "
        "section says whether the cause is the width or a shifted mean."
    ),
    "over-covers": (
        "The encoder is under-confident: its intervals are wider than the posterior's, so uncertainty is "
        "overstated and encodings are less precise than the model allows (often an encoder that is too weak "
        "or a KL weight above 1)."
    ),
    "miscalibrated": (
        "Coverage is off in both directions: some intervals are too narrow, others too wide; read the "
        "figure per dimension or observation."
    ),
}

COLLAPSED_NOTE = (
    "**Collapsed model:** its calibration is trivially good. When x carries no information about z, "
    "q(z | x) = p(z) = p(z | x), and the prior's intervals cover perfectly; nominal coverage and an "
    "indistinguishable two-sample test here are no evidence of a useful encoder."
)


def _quote_index(values, level: float) -> int:
    return int(np.argmin(np.abs(np.asarray(values) - level)))


def _percent(value, se=None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" + ("" if se is None else f" ± {100 * se:.1f}")


def _coverage_table(section: dict) -> list[str]:
    """Pooled coverage at :data:`REPORT_LEVELS` against simulations (and NUTS)."""
    sims = section["simulations"]
    picks = sorted({_quote_index(sims["levels"], level) for level in REPORT_LEVELS})
    nuts = section.get("nuts") or {}
    header = "| nominal level | " + " | ".join(_percent(sims["expected"][i]) for i in picks) + " |"
    rows = [
        header,
        "| --- |" + " --- |" * len(picks),
        "| vs simulations | " + " | ".join(_percent(sims["pooled"][i], sims["pooled_se"][i]) for i in picks) + " |",
    ]
    if "pooled" in nuts:
        rows.append(
            "| vs NUTS | "
            + " | ".join(_percent(nuts["pooled"][i], nuts["pooled_se"][i]) for i in _nuts_picks(nuts, sims, picks))
            + " |"
        )
    return rows


def _nuts_picks(nuts: dict, sims: dict, picks: list[int]) -> list[int]:
    return [_quote_index(nuts["expected"], sims["expected"][i]) for i in picks]


def _simulation_lines(section: dict) -> list[str]:
    sims, ecdf = section["simulations"], section["ecdf"]
    meaning = _MEANING.get(sims["verdict"].split(":")[0], "")
    return [
        f"For {sims['num_simulations']} simulations (z*, x) ~ p(z) p(x | z), the share whose true z*_j lies in "
        f"q(z | x)'s central interval (from {sims['num_draws']} guide draws), pooled over dimensions, against "
        "the share expected when q is the exact posterior (the nominal level as that many draws can resolve "
        "it); ± one s.e.:",
        "",
        *_coverage_table(section),
        "",
        f"Against simulations: **{sims['verdict']}** (a dimension is flagged when a level is more than "
        f"{_number(sims['critical'], 2)} binomial s.e. off: Bonferroni over levels and dimensions at "
        f"{sims['alpha']:g}). {meaning}",
        "",
        f"Rank ECDF with simultaneous bands: **{ecdf['verdict']}**. The ECDF-difference curve of a calibrated "
        "guide stays inside its grey band; a curve that rises early and sinks late comes from too many extreme "
        "ranks (a guide too narrow), the reverse from a guide too wide, a curve on one side from a shifted one.",
        "",
    ]


def _nuts_lines(section: dict) -> list[str]:
    nuts, test = section["nuts"], section["c2st"]
    if "skipped" in nuts:
        return [f"Against NUTS and the two-sample test: skipped ({nuts['skipped']}).", ""]
    rhat = nuts.get("max_rhat")
    trust = (
        "" if rhat is not None and rhat < 1.01 else " NUTS did not clearly converge (R-hat >= 1.01): read with care."
    )
    return [
        f"Against NUTS (the share of {nuts['num_reference']} NUTS draws per held-out example inside the guide's "
        f"interval from {nuts['num_guide']} draws; s.e. from the effective sample size of each indicator; #i is "
        f"the i-th example of the NUTS section): **{nuts['verdict']}**.{trust}",
        "",
        f"Classifier two-sample test (logistic regression on {test['features']}, {test['num_folds']}-fold "
        f"cross-validated accuracy; NUTS draws thinned to their effective sample size, equal classes): "
        f"**{test['verdict']}** (smallest Bonferroni p = {test['p_value']:.3g}). Accuracy near 0.5 means the "
        "classifier cannot tell guide draws from posterior draws; above chance, q(z | x) differs from the "
        "posterior in location, width or shape, or in correlations between dimensions that a diagonal guide "
        "cannot represent, even where its marginal intervals cover well.",
        "",
    ]


def calibration_lines(section: dict, collapsed: bool = False) -> list[str]:
    """The calibration paragraph of ``report.md`` (Markdown lines): the coverage table, what the verdicts
    mean for the user's model, the ECDF and two-sample verdicts and the figures. ``collapsed``: the model
    is collapsed (from the collapse step), which makes good calibration trivial: the text says so."""
    lines = ["## Calibration of q(z | x): interval coverage and two-sample tests", ""]
    if collapsed:
        lines += [COLLAPSED_NOTE, ""]
    lines += _simulation_lines(section)
    lines += _nuts_lines(section)
    return lines + ["![coverage](figures/coverage.png)", "", "![SBC rank ECDF](figures/sbc_ecdf.png)", ""]


def calibration_summary(section: dict, collapsed: bool = False) -> str:
    """One terminal line: coverage at the level nearest 90% against simulations (and NUTS), the ECDF and
    two-sample verdicts in a word or two."""
    sims = section["simulations"]
    i = _quote_index(sims["expected"], coverage.QUOTED_LEVEL)
    parts = [
        f"coverage {_percent(sims['pooled'][i])} at {_percent(sims['expected'][i])} nominal vs simulations "
        f"({sims['verdict'].split(':')[0]})"
    ]
    nuts = section.get("nuts") or {}
    if "pooled" in nuts:
        k = _quote_index(nuts["expected"], sims["expected"][i])
        parts.append(f"{_percent(nuts['pooled'][k], nuts['pooled_se'][k])} vs NUTS ({nuts['verdict'].split(':')[0]})")
    ecdf = section["ecdf"]
    dims = len(ecdf["excess"])
    parts.append(
        f"rank ECDF: {len(ecdf['outside'])} of {dims} dims leave the band" if ecdf["outside"] else "rank ECDF inside"
    )
    test = section.get("c2st") or {}
    if "rejected" in test:
        parts.append(f"C2ST: {len(test['rejected'])} of {len(test['accuracy'])} observations distinguishable")
    line = "calibration: " + "; ".join(parts)
    return line + (" [collapsed: trivially calibrated]" if collapsed else "")
