"""Posterior diagnostics for any Pyro model/guide pair that follows the site/plate contract: pure
functions that take ``(model, guide, data)`` or a VAE and return results; files and figures are for
:mod:`ppl_vae.app`.

* :mod:`~ppl_vae.diagnostics.posterior`: PSIS k-hat and importance-sampled log p(x), ArviZ
  InferenceData, NUTS reference posteriors (every ArviZ call of the project lives there);
* :mod:`~ppl_vae.diagnostics.calibration`: simulation-based calibration;
* :mod:`~ppl_vae.diagnostics.gaps`: the amortization gap;
* :mod:`~ppl_vae.diagnostics.collapse` and :mod:`~ppl_vae.diagnostics.kl`: collapse, mutual
  information, KL to the model's own prior, active units;
* :mod:`~ppl_vae.diagnostics.sample_quality`, :mod:`~ppl_vae.diagnostics.gradients`,
  :mod:`~ppl_vae.diagnostics.latent_space`: sample-quality metrics, gradient variance, latent-space tools.
"""


from ppl_vae.diagnostics.posterior import importance_log_ratios, PSISResult, psis, to_inference_data, NUTSResult, nuts_reference
from ppl_vae.diagnostics.calibration import SBCResult, sbc_ranks, flags_description, sbc
from ppl_vae.diagnostics.gaps import amortization_gap
from ppl_vae.diagnostics.collapse import mutual_information, collapse_report
from ppl_vae.diagnostics.kl import is_point_mass, KL_NUM_SAMPLES, COLLAPSE_KL_NATS, kl_to_prior, kl_per_dimension, activity, active_units

__all__ = ['importance_log_ratios', 'PSISResult', 'psis', 'to_inference_data', 'NUTSResult', 'nuts_reference', 'SBCResult', 'sbc_ranks', 'flags_description', 'sbc', 'amortization_gap', 'mutual_information', 'collapse_report', 'is_point_mass', 'KL_NUM_SAMPLES', 'COLLAPSE_KL_NATS', 'kl_to_prior', 'kl_per_dimension', 'activity', 'active_units']
