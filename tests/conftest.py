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
