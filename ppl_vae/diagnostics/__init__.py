"""Posterior diagnostics for any Pyro model/guide pair that follows the site/plate contract: pure
functions that take ``(model, guide, data)`` or a VAE and return results; files and figures are for
:mod:`ppl_vae.app`.

* :mod:`~ppl_vae.diagnostics.posterior`: PSIS k-hat and importance-sampled log p(x), ArviZ
  InferenceData, NUTS reference posteriors (every ArviZ call of the project is in
  :mod:`~ppl_vae.diagnostics.arviz_bridge`);
* :mod:`~ppl_vae.diagnostics.comparison`: paired comparison of models on the same held-out examples
  (elpd, paired standard errors and their Monte Carlo part, az.compare's weights);
* :mod:`~ppl_vae.diagnostics.predictive`: posterior and prior predictive checks (test statistics per data
  kind, posterior predictive p-values, LOO-PIT);
* :mod:`~ppl_vae.diagnostics.calibration`: simulation-based calibration;
* :mod:`~ppl_vae.diagnostics.coverage`: coverage curves of q(z | x) against simulations and NUTS, the SBC
  rank ECDF with simultaneous bands, the classifier two-sample test of guide vs NUTS draws;
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
from ppl_vae.diagnostics.comparison import (
    Comparison,
    ModelScore,
    compare_models,
    compare_scores,
    paired_difference,
    score_model,
)
from ppl_vae.diagnostics.coverage import (
    C2STResult,
    ECDFBand,
    ReferenceCoverage,
    SimulationCoverage,
    c2st,
    coverage_from_ranks,
    nuts_c2st,
    nuts_coverage,
    reference_coverage,
    sbc_ecdf,
    simulation_coverage,
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
from ppl_vae.diagnostics.predictive import (
    LooPit,
    PredictiveCheck,
    data_kind,
    loo_pit,
    posterior_predictive,
    predictive_check,
    prior_predictive,
)

__all__ = [
    "COLLAPSE_KL_NATS",
    "KL_NUM_SAMPLES",
    "AmortizationGap",
    "C2STResult",
    "ClassProbabilities",
    "CollapseReport",
    "Comparison",
    "ECDFBand",
    "KLToPrior",
    "LooPit",
    "ModelScore",
    "NUTSResult",
    "PSISResult",
    "PredictiveCheck",
    "ReferenceCoverage",
    "Reliability",
    "SBCResult",
    "SimulationCoverage",
    "active_units",
    "activity",
    "amortization_gap",
    "c2st",
    "class_probabilities",
    "collapse_report",
    "compare_models",
    "compare_scores",
    "coverage_from_ranks",
    "data_kind",
    "flags_description",
    "guide_class_probabilities",
    "importance_log_ratios",
    "is_point_mass",
    "kl_per_dimension",
    "kl_to_prior",
    "loo_pit",
    "mutual_information",
    "nuts_c2st",
    "nuts_coverage",
    "nuts_reference",
    "paired_difference",
    "posterior_predictive",
    "predictive_check",
    "prior_predictive",
    "psis",
    "reference_coverage",
    "reliability",
    "sbc",
    "sbc_ecdf",
    "sbc_ranks",
    "score_model",
    "simulate_classes",
    "simulated_class_calibration",
    "simulation_coverage",
    "to_inference_data",
]
