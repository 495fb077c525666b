"""Small helpers shared by the test modules (fixtures live in conftest.py).

Tolerances on Monte Carlo estimates are multiples of their own standard errors: with ``z = 4`` a correct
Gaussian estimate fails about once in 16,000 runs, and the runs are seeded, so the outcome is fixed anyway.
"""

from __future__ import annotations

import pyro
import torch


def assert_within_se(estimate, reference, se, *, z: float = 4.0, what: str = "", slack: float = 0.0) -> None:
    """Assert ``|estimate - reference| < z * se + slack``: an estimate agrees with a reference within ``z``
    of its Monte Carlo standard errors (plus an optional absolute ``slack`` for a known deterministic
    error, e.g. SGD not quite at the optimum).

    Works on Python numbers, NumPy arrays and torch tensors (elementwise, every element must pass); the
    comparison is the strict ``<`` computed exactly as written above, so replacing a hand-written
    ``abs(a - b) < Z * se + c`` with this helper changes nothing but the failure message.
    """
    diff = abs(estimate - reference)
    bound = z * se + slack
    ok = diff < bound
    if hasattr(ok, "all"):
        ok = ok.all()
    label = f"{what}: " if what else ""
    extra = f" + {slack}" if slack else ""
    assert bool(ok), (
        f"{label}estimate {estimate} vs reference {reference}: |difference| {diff} is not below "
        f"{z} x se {se}{extra} = {bound}"
    )


def seeded_vae(data_shape, *, seed: int = 0, **kwargs):
    """A ``ppl_vae.VAE`` built right after ``pyro.set_rng_seed(seed)``, so its initial weights are fixed."""
    from ppl_vae import VAE

    pyro.set_rng_seed(seed)
    return VAE(data_shape, **kwargs)


def binary_data(n: int, shape, p: float = 0.5, seed: int | None = None) -> torch.Tensor:
    """``n`` images of ``shape`` with independent Bernoulli(``p``) pixels; from a private generator seeded
    with ``seed``, or from torch's global generator when ``seed`` is None."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, *shape), p), generator=generator)
