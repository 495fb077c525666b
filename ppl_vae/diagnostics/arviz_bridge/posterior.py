"""ArviZ for :mod:`ppl_vae.diagnostics.posterior`: PSIS k-hat, InferenceData from arrays, R-hat and ESS."""

from __future__ import annotations

import numpy as np

from ppl_vae.diagnostics.arviz_bridge import arviz


def pareto_khat(log_ratios: np.ndarray) -> np.ndarray:
    """``(N,)`` Pareto shape k-hat of each observation's ``(N, S)`` log importance ratios (``psislw``)."""
    with np.errstate(invalid="ignore", divide="ignore"):  # degenerate fits: the caller handles them
        _, khat = arviz().psislw(np.array(log_ratios, dtype=float, copy=True))
    return np.asarray(khat, dtype=float)


def smoothed_log_weights(log_ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(log_weights, khat)``: Pareto-smoothed, self-normalized log weights ``(N, S)`` of ``(N, S)`` log
    importance ratios, and ``(N,)`` k-hat."""
    with np.errstate(invalid="ignore", divide="ignore"):
        log_weights, khat = arviz().psislw(np.array(log_ratios, dtype=float, copy=True))
    return np.asarray(log_weights, dtype=float), np.asarray(khat, dtype=float)


def inference_data(**groups):
    """``az.from_dict(**groups)``: an InferenceData from arrays with a leading chain dim."""
    return arviz().from_dict(**groups)


def dataset(values: dict, *, coords: dict, dims: dict):
    """An xarray Dataset of arrays without chain or draw dims (for an extra InferenceData group)."""
    return arviz().dict_to_dataset(values, coords=coords, dims=dims, default_dims=[])


def rhat_ess(samples: np.ndarray, site: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, object]:
    """Rank-normalized R-hat, bulk and tail ESS of ``(chains, draws, obs, latent_dim)`` draws of ``site``,
    each ``(obs, latent_dim)``, and the InferenceData they were computed from."""
    az = arviz()
    n, d = samples.shape[2], samples.shape[3]
    idata = az.from_dict(
        posterior={site: samples},
        dims={site: ["obs", "latent_dim"]},
        coords={"obs": np.arange(n), "latent_dim": np.arange(d)},
    )
    rhat = az.rhat(idata)[site].values
    ess_bulk = az.ess(idata, method="bulk")[site].values
    ess_tail = az.ess(idata, method="tail")[site].values
    return rhat, ess_bulk, ess_tail, idata


def read_netcdf(path: str):
    """An InferenceData read from a netCDF file (``az.from_netcdf``)."""
    return arviz().from_netcdf(str(path))
