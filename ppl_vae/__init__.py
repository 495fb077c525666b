"""ppl_vae: the variational autoencoder as a probabilistic program in Pyro.

The decoder is a Pyro model p(z) p(x | z), the encoder a Pyro guide q(z | x), and training is
stochastic variational inference with Pyro's ELBOs. The public API is what this module exports.

Names are imported on first use (PEP 562), so that ``import ppl_vae`` and the command line start
without loading torch, Pyro and ArviZ until something needs them.
"""

from __future__ import annotations

import importlib

from ppl_vae.version import __version__

#: Public name -> module that defines it.
_EXPORTS = {
    "VAE": "ppl_vae.vae",
    "fit": "ppl_vae.infer.fit",
    "FitResult": "ppl_vae.infer.fit",
    "evaluate": "ppl_vae.infer.evaluate",
    "EvalResult": "ppl_vae.infer.evaluate",
    "log_weights": "ppl_vae.infer.evaluate",
    "load": "ppl_vae.app.run",
    "train_run": "ppl_vae.app.run",
    "evaluate_run": "ppl_vae.app.run",
    "sample_run": "ppl_vae.app.run",
    "compare_models": "ppl_vae.app.compare",
    "compare_runs": "ppl_vae.app.compare",
    "Config": "ppl_vae.app.config",
    "load_dataset": "ppl_vae.data",
    "DataSplit": "ppl_vae.data",
    "PplVaeError": "ppl_vae.errors",
    "DataError": "ppl_vae.errors",
    "ConfigError": "ppl_vae.errors",
    "CheckpointError": "ppl_vae.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ppl_vae' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
