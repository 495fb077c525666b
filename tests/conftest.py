"""Every test starts from the same state: seeded RNGs, an empty param store, validation on."""

import pyro
import pytest
import torch

# The test models are tiny: one thread is faster than two, and pytest-xdist workers then do not fight
# over the cores (intra-op threads spin-wait, which makes contended runs many times slower).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


# Shared data and models. A test module that needs something different defines a fixture of the same
# name, which takes precedence (e.g. the module-scoped ``ppca`` of test_diagnostics_reference.py).


@pytest.fixture(scope="module")
def digits():
    """The embedded 8x8 digits (train / held-out split with the default seed), loaded once per module."""
    from ppl_vae import load_dataset

    return load_dataset("digits")


@pytest.fixture
def ppca():
    """Probabilistic PCA as a VAE with an exact marginal and posterior (tests/ppca.py); a fresh one per test,
    since tests set its guide and train it."""
    from tests.ppca import make_ppca

    return make_ppca()
