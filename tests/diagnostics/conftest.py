"""Fixtures shared by the diagnostics tests."""

import pytest

from tests.mixture_ppca import make_mixture_ppca, set_wide_guide


@pytest.fixture(scope="module")
def mixture():
    """A mixture of probabilistic PCA (exact log p(x) and responsibilities) with a well-behaved guide."""
    m = make_mixture_ppca()
    set_wide_guide(m)
    return m
