"""Posterior diagnostics for any Pyro model/guide pair that follows the site/plate contract: pure
functions that take ``(model, guide, data)`` or a VAE and return results; files and figures are for
:mod:`ppl_vae.app`.

* :mod:`~ppl_vae.diagnostics.posterior`: PSIS k-hat and importance-sampled log p(x), ArviZ
  InferenceData, NUTS reference posteriors (every ArviZ call of the project lives there);
* :mod:`~ppl_vae.diagnostics.calibration`: simulation-based calibration;
* :mod:`~ppl_vae.diagnostics.classification`: calibration of discrete posteriors (reliability diagrams
  and ECE of q(y | x) or p(y | x), against labels or classes simulated from the model);
* :mod:`~ppl_vae.diagnostics.gaps`: the amortization gap;
* :mod:`~ppl_vae.diagnostics.collapse` and :mod:`~ppl_vae.diagnostics.kl`: collapse, mutual
  information, KL to the model's own prior, active units;
* :mod:`~ppl_vae.diagnostics.sample_quality`, :mod:`~ppl_vae.diagnostics.gradients`,
  :mod:`~ppl_vae.diagnostics.latent_space`: sample-quality metrics, gradient variance, latent-space tools.

Every public computation returns a frozen dataclass deriving from :class:`ppl_vae.results.Result`
(``to_dict()`` for plain data; ``result["name"]`` still works where a dict used to be returned).
"""

from ppl_vae.diagnostics.calibration import SBCResult, flags_description, sbc, sbc_ranks
from ppl_vae.diagnostics.classification import (
    ClassProbabilities,
    Reliability,
    class_probabilities,
    guide_class_probabilities,
    reliability,
    simulate_classes,
    simulated_class_calibration,
)
from ppl_vae.diagnostics.collapse import (
    CollapseReport,
    collapse_report,
    mutual_information,
)
from ppl_vae.diagnostics.gaps import AmortizationGap, amortization_gap
from ppl_vae.diagnostics.kl import (
    COLLAPSE_KL_NATS,
    KL_NUM_SAMPLES,
    KLToPrior,
    active_units,
    activity,
    is_point_mass,
    kl_per_dimension,
    kl_to_prior,
)
from ppl_vae.diagnostics.posterior import (
    NUTSResult,
    PSISResult,
    importance_log_ratios,
    nuts_reference,
    psis,
    to_inference_data,
)

__all__ = [
    "COLLAPSE_KL_NATS",
    "KL_NUM_SAMPLES",
    "AmortizationGap",
    "ClassProbabilities",
    "CollapseReport",
    "KLToPrior",
    "NUTSResult",
    "PSISResult",
    "Reliability",
    "SBCResult",
    "active_units",
    "activity",
    "amortization_gap",
    "class_probabilities",
    "collapse_report",
    "flags_description",
    "guide_class_probabilities",
    "importance_log_ratios",
    "is_point_mass",
    "kl_per_dimension",
    "kl_to_prior",
    "mutual_information",
    "nuts_reference",
    "psis",
    "reliability",
    "sbc",
    "sbc_ranks",
    "simulate_classes",
    "simulated_class_calibration",
    "to_inference_data",
]
