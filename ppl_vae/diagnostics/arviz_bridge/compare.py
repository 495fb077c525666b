"""ArviZ for :mod:`ppl_vae.diagnostics.comparison`: ``az.compare``'s stacking and pseudo-BMA+ weights
from pointwise held-out log-densities, and the pointwise values as InferenceData."""

from __future__ import annotations

import warnings

import numpy as np

from ppl_vae.diagnostics.arviz_bridge import arviz


def _elpd_data(pointwise: np.ndarray):
    """ArviZ's precomputed-elpd record for pointwise held-out log-densities ``(N,)``: the values stand
    where ``loo`` puts its pointwise ``loo_i`` (held-out data need no leave-one-out approximation)."""
    import xarray as xr

    az = arviz()
    values = xr.DataArray(np.asarray(pointwise, dtype=float), dims=["obs"], name="loo_i")
    n = values.shape[0]
    return az.ELPDData(
        data=[
            float(values.sum()),
            float(np.sqrt(n * values.var())),
            0.0,
            1,
            n,
            False,
            values,
            xr.zeros_like(values).rename("pareto_k"),
            "log",
            0.7,
        ],
        index=[
            "elpd_loo",
            "se",
            "p_loo",
            "n_samples",
            "n_data_points",
            "warning",
            "loo_i",
            "pareto_k",
            "scale",
            "good_k",
        ],
    )


def compare_frame(pointwise: dict, *, method: str = "stacking", seed: int = 0):
    """``az.compare`` of ``{name: (N,) pointwise log-densities}``: a pandas DataFrame indexed by name."""
    az = arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the point-wise LOO is the same ..." does not apply here
        return az.compare(
            {name: _elpd_data(values) for name, values in pointwise.items()}, ic="loo", method=method, seed=seed
        )


def weights(pointwise: dict, *, seed: int = 0) -> dict:
    """``{"stacking": {name: weight}, "pseudo-BMA+": {name: weight}}`` from ``az.compare``."""
    out = {}
    for label, method in (("stacking", "stacking"), ("pseudo-BMA+", "BB-pseudo-BMA")):
        frame = compare_frame(pointwise, method=method, seed=np.random.default_rng(seed))
        out[label] = {str(name): float(frame.loc[name, "weight"]) for name in pointwise}
    return out


def pointwise_inference_data(log_likelihood: np.ndarray, mcse: np.ndarray, khat: np.ndarray, site: str = "x"):
    """InferenceData with a ``log_likelihood`` group (``site``: (chain 1, draw 1, obs)) and a group
    ``importance`` holding ``log_likelihood_mcse`` and ``khat`` per example (dims obs)."""
    az = arviz()
    n = len(log_likelihood)
    coords = {"obs": np.arange(n)}
    idata = az.from_dict(
        log_likelihood={site: np.asarray(log_likelihood, dtype=float)[None, None]}, dims={site: ["obs"]}, coords=coords
    )
    extra = az.dict_to_dataset(
        {"log_likelihood_mcse": np.asarray(mcse, dtype=float), "khat": np.asarray(khat, dtype=float)},
        coords=coords,
        dims={"log_likelihood_mcse": ["obs"], "khat": ["obs"]},
        default_dims=[],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a group outside ArviZ's schema, on purpose
        idata.add_groups({"importance": extra})
    return idata
