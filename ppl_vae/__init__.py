"""ppl_vae: the variational autoencoder as a probabilistic program in Pyro.

The decoder is a Pyro model p(z) p(x | z), the encoder a Pyro guide q(z | x), and training is
``pyro.infer.SVI`` with ``Trace_ELBO``. The public API is what this module exports.
"""

__version__ = "0.1.0"

from ppl_vae.config import Config
from ppl_vae.data import DataSplit, load_dataset
from ppl_vae.errors import CheckpointError, ConfigError, DataError, PplVaeError
from ppl_vae.evaluate import EvalResult, evaluate, log_weights
from ppl_vae.run import evaluate_run, load, sample_run, train_run
from ppl_vae.train import FitResult, fit
from ppl_vae.vae import VAE

__all__ = [
    "VAE", "fit", "FitResult", "evaluate", "EvalResult", "log_weights", "load", "Config", "load_dataset",
    "DataSplit", "train_run", "evaluate_run", "sample_run", "PplVaeError", "DataError", "ConfigError",
    "CheckpointError", "__version__",
]
