"""ArviZ for :mod:`ppl_vae.diagnostics.predictive` and its report: InferenceData of per-example statistics
with ``observed_data``, ``posterior_predictive`` and ``prior_predictive`` groups, ``az.plot_ppc`` and
``az.plot_bpv`` onto given axes, and ECDF-difference plots of PIT values with simultaneous bands.

Every function here takes numpy arrays (or an InferenceData) and matplotlib axes; none computes anything
about a model.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

from ppl_vae.diagnostics.arviz_bridge import arviz


@contextlib.contextmanager
def _quiet():
    """A plotting call contained: NumPy's global random state is restored afterwards (``az.plot_ppc``
    reseeds it with ``np.random.seed``), and ArviZ 0.23's warnings about its own use of matplotlib
    (deprecated ``normalize_kwargs``), for PIT values that it assumes a continuous variable (which they
    are), and about a statistic without spread (its density cannot be drawn) are silenced: nothing for
    our users."""
    state = np.random.get_state()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*normalize_kwargs.*")
            warnings.filterwarnings("ignore", message="Assuming variable is continuous.*")
            # a statistic that takes one value in every replicate (e.g. one stroke per image) has no
            # density to draw: the figure shows a flat line, which is what it is
            warnings.filterwarnings("ignore", message="Your data appears to have a single value.*")
            warnings.filterwarnings("ignore", message="invalid value encountered", category=RuntimeWarning)
            yield
    finally:
        np.random.set_state(state)


def statistic_inference_data(
    observed: dict[str, np.ndarray],
    posterior_predictive: dict[str, np.ndarray] | None = None,
    prior_predictive: dict[str, np.ndarray] | None = None,
):
    """An InferenceData of per-example statistics (e.g. the ink of every image).

    Args:
        observed: ``{name: (N,)}`` the statistic of every observed example (group ``observed_data``).
        posterior_predictive, prior_predictive: ``{name: (S, N)}`` the statistic of every example of
            S replicated data sets (one chain of S draws); either may be None.

    Every variable has dims ``(obs,)`` (after chain and draw in the predictive groups)."""
    names = list(observed)
    groups = {"observed_data": {k: np.asarray(v, dtype=float) for k, v in observed.items()}}
    for group, values in (("posterior_predictive", posterior_predictive), ("prior_predictive", prior_predictive)):
        if values:
            groups[group] = {k: np.asarray(v, dtype=float)[None] for k, v in values.items()}
    n = len(next(iter(observed.values())))
    return arviz().from_dict(**groups, dims=dict.fromkeys(names, ["obs"]), coords={"obs": np.arange(n)})


def plot_ppc(ax, idata, name: str, *, group: str = "posterior", num_pp_samples: int = 50, seed: int = 0) -> None:
    """``az.plot_ppc`` of variable ``name`` onto ``ax``: the observed distribution of the per-example
    statistic against ``num_pp_samples`` replicated ones (KDE; histograms for integer values) and
    their mean."""
    draws = idata[f"{group}_predictive"][name].sizes["draw"]
    with _quiet():
        arviz().plot_ppc(
            idata,
            var_names=[name],
            group=group,
            observed=True,  # ArviZ leaves the observed data out of prior panels by default
            num_pp_samples=min(num_pp_samples, draws),
            random_seed=seed,
            ax=ax,
            legend=True,
            textsize=8,
        )


def plot_bpv(ax, idata, name: str, *, group: str = "posterior", kind: str = "u_value") -> None:
    """``az.plot_bpv`` of variable ``name`` onto ``ax``; ``kind="u_value"``: the distribution over examples
    of each example's share of replicates below its observed value, with the band uniform values would
    fill (``kind="t_stat"``, ``"p_value"`` as ArviZ defines them)."""
    with _quiet():
        arviz().plot_bpv(idata, kind=kind, var_names=[name], group=group, ax=ax, textsize=8)


def plot_pit_ecdf(ax, values: np.ndarray, *, ci_prob: float = 0.99, seed: int = 0) -> None:
    """ECDF of PIT values minus the uniform CDF, with ArviZ's simultaneous ``ci_prob`` band for that
    many independent uniform values (``az.plot_ecdf(difference=True, confidence_bands=True)``)."""
    values = np.asarray(values, dtype=float)
    with _quiet():
        arviz().plot_ecdf(
            values,
            cdf=lambda t: np.clip(t, 0.0, 1.0),
            eval_points=np.linspace(0.0, 1.0, 101),
            difference=True,
            confidence_bands=True,
            ci_prob=ci_prob,
            random_state=np.random.default_rng(seed),
            ax=ax,
        )
