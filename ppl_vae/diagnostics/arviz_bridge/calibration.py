"""ArviZ for :mod:`ppl_vae.diagnostics.coverage` and the calibration figures: the simultaneous band of an
ECDF, the ECDF-difference plot of SBC ranks, and the effective sample size of a chain's mean."""

from __future__ import annotations

import warnings

import numpy as np

from ppl_vae.diagnostics.arviz_bridge import arviz


def _ecdf_utils():
    """ArviZ 0.x's module of ECDF bands (``arviz.stats.ecdf_utils``)."""
    arviz()  # imported once, quietly
    from arviz.stats import ecdf_utils

    return ecdf_utils


def ecdf_band(num_samples: int, eval_points: np.ndarray, cdf: np.ndarray, prob: float) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)``, each like ``eval_points``: the simultaneous ``prob`` band of the ECDF of
    ``num_samples`` draws from the distribution whose CDF at ``eval_points`` is ``cdf`` (ArviZ's
    ``ecdf_confidence_band`` with its deterministic ``"optimized"`` method, Säilynoja et al. 2022)."""
    lower, upper = _ecdf_utils().ecdf_confidence_band(
        int(num_samples), np.asarray(eval_points), np.asarray(cdf, dtype=float), prob=float(prob), method="optimized"
    )
    return np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)


def plot_rank_ecdf(ax, ranks: np.ndarray, num_draws: int, eval_points: np.ndarray, prob: float, cdf) -> None:
    """Draw the ECDF-difference curve of one dimension's ``(N,)`` SBC ranks against ``cdf`` (the uniform
    CDF of ranks on 0..L, a callable) with its simultaneous ``prob`` band, on ``ax`` (``az.plot_ecdf``
    with ``difference=True`` and the ``"optimized"`` band, evaluated at the fixed ``eval_points``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        arviz().plot_ecdf(
            np.asarray(ranks, dtype=float),
            eval_points=np.asarray(eval_points, dtype=float),
            cdf=cdf,
            difference=True,
            confidence_bands="optimized",
            ci_prob=float(prob),
            ax=ax,
            plot_kwargs={"color": "C0", "linewidth": 1.2},
            fill_kwargs={"color": "0.85", "alpha": 1.0},
            show=False,
        )


def ess_of_mean(values: np.ndarray) -> np.ndarray:
    """ArviZ's effective sample size of the mean of ``(chains, draws, ...)`` series, one per trailing index
    (``az.ess(..., method="mean")``); NaN where a series is constant."""
    az = arviz()
    values = np.asarray(values, dtype=float)
    if values.ndim == 2:
        values = values[..., None]
    shape = values.shape[2:]
    flat = values.reshape(values.shape[0], values.shape[1], -1)
    dataset = az.convert_to_dataset({"v": flat})
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        ess = az.ess(dataset, method="mean")["v"].values
    return np.asarray(ess, dtype=float).reshape(shape)
