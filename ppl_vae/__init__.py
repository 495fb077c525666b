"""ppl_vae: the variational autoencoder as a probabilistic program in Pyro.

The decoder is a Pyro model p(z) p(x | z), the encoder a Pyro guide q(z | x), and training is
stochastic variational inference with Pyro's ELBOs. The public API is what this module exports.

Names are imported on first use (PEP 562), so that ``import ppl_vae`` and the command line start
without loading torch, Pyro and ArviZ until something needs them.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

#: Public name -> module that defines it.
_EXPORTS = {
    "VAE": "ppl_vae.vae",
    "fit": "ppl_vae.train",
    "FitResult": "ppl_vae.train",
    "evaluate": "ppl_vae.evaluate",
    "EvalResult": "ppl_vae.evaluate",
    "log_weights": "ppl_vae.evaluate",
    "load": "ppl_vae.run",
    "train_run": "ppl_vae.run",
    "evaluate_run": "ppl_vae.run",
    "sample_run": "ppl_vae.run",
    "Config": "ppl_vae.config",
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
    globals()[name] = value          # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Importing the submodule ``ppl_vae.evaluate`` makes Python set the attribute ``evaluate`` of this
    package to that module; the public name ``ppl_vae.evaluate`` is the function, so keep it."""

    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
