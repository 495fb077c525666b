"""Every ArviZ call of the project, in one package, so that a move from ArviZ 0.x (InferenceData) to 1.x
touches these files only (a test refuses ``import arviz`` anywhere else in ``ppl_vae``).

* :mod:`.posterior`: PSIS k-hat, InferenceData from arrays, R-hat and ESS;
* :mod:`.compare`: model comparison tables and their figures;
* :mod:`.predictive`: posterior and prior predictive checks, LOO-PIT, their figures;
* :mod:`.calibration`: ECDF-difference plots with simultaneous bands, for SBC ranks and PIT values.

Functions here take and return numpy arrays, ArviZ objects or matplotlib axes; they compute nothing
about models (that is the job of the modules of :mod:`ppl_vae.diagnostics`).
"""

from __future__ import annotations


def arviz():
    """The ``arviz`` module, imported on first use (it is slow to import) without its 1.0 announcement."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.23 announces its 1.0 refactor on import
        import arviz as az

    return az
