"""Calibration of discrete posteriors: reliability diagrams and ECE against exact references. On data
simulated from the mixture of PPCA, the exact responsibilities p(y | x) are calibrated by construction, so
their ECE must lie within the distribution of the ECE of calibrated predictions; sharpened or flattened
ones must not.

The tolerance: given the predictions, labels drawn from them (consistency resampling) give the exact
distribution of the ECE of calibrated predictions of this size, and the observed labels *are* such a
draw. Its mean also has a closed-form approximation: in bin b the gap between frequency and mean
prediction is a mean of n_b independent centred terms with variance sum p (1 - p) / n_b^2, so
E|gap| ~ sqrt(2 / pi) sqrt(sum p (1 - p)) / n_b (half-normal) and E[ECE] ~ sum_b (n_b / n) E|gap_b|.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ppl_vae import ConfigError
from ppl_vae.diagnostics.classification import (
    class_probabilities,
    guide_class_probabilities,
    reliability,
    simulate_classes,
    simulated_class_calibration,
)
from tests.common import assert_within_se
from tests.diagnostics.linear_structured import make_semi_supervised, semi_supervised_exact

Z = 4.0
N = 5000


@pytest.fixture(scope="module")
def simulated(mixture):
    """y, x drawn from the model's own generative program, and the exact p(y | x)."""
    y, x = simulate_classes(mixture.vae.model, N, seed=0)
    return y, x, mixture.responsibilities(x)


def _half_normal_ece(r) -> float:
    """The closed-form approximation of E[ECE] for calibrated predictions (module docstring)."""
    total = sum(r.counts)
    return sum(m / total * math.sqrt(2 / math.pi) * spread for m, spread in zip(r.counts, r.calibrated_spread) if m)


def _sharpen(p: torch.Tensor, power: float) -> torch.Tensor:
    q = p**power
    return q / q.sum(1, keepdim=True)


def test_simulated_components_follow_the_mixture_weights(mixture, simulated):
    y, _, _ = simulated
    freq = torch.bincount(y, minlength=3).double() / N
    pi = mixture.log_pi.exp()
    assert_within_se(freq, pi, (pi * (1 - pi) / N).sqrt(), what="component frequencies")


@pytest.mark.parametrize("kind", ["top-label", "classwise"])
def test_exact_responsibilities_are_calibrated_and_sharpened_ones_are_not(simulated, kind):
    y, _, exact = simulated
    r = reliability(exact, y, kind=kind, seed=0)
    # the resampled null agrees with its closed-form approximation (bins hold hundreds of predictions)
    assert r.ece_calibrated_mean == pytest.approx(_half_normal_ece(r), rel=0.15)
    # within Monte Carlo noise of a calibrated prediction's ECE: Z standard deviations of that distribution
    assert r.ece < r.ece_calibrated_mean + Z * r.ece_calibrated_sd, (r.ece, r.ece_calibrated_mean, r.ece_calibrated_sd)
    assert r.verdict == "calibrated" and r.p_value > 1e-3
    sharp = reliability(_sharpen(exact, 3.0), y, kind=kind, seed=0)
    assert sharp.ece_z > 10 and sharp.ece > 3 * r.ece and sharp.p_value < 0.01
    assert sharp.verdict == "over-confident" and sharp.overconfidence > 0
    flat = reliability(_sharpen(exact, 0.5), y, kind=kind, seed=0)
    assert flat.ece_z > 10 and flat.verdict == "under-confident" and flat.overconfidence < 0
    assert sharp.accuracy == r.accuracy == flat.accuracy  # a power keeps the order of the classes


def test_reliability_bins_count_and_average_what_they_hold():
    probs = torch.tensor([[0.95, 0.05], [0.85, 0.15], [0.55, 0.45], [0.2, 0.8], [0.35, 0.65]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 0])
    r = reliability(probs, labels, num_bins=5, num_resamples=50)
    # top-label probabilities 0.95, 0.85, 0.55, 0.8, 0.65 -> bins [0.4, 0.6): 1, [0.6, 0.8): 1, [0.8, 1]: 3
    assert r.counts == [0, 0, 1, 1, 3]
    assert r.mean_predicted[4] == pytest.approx((0.95 + 0.85 + 0.8) / 3)
    assert r.observed_frequency[4] == pytest.approx(2 / 3)  # the second example's label is not its top class
    assert r.mean_predicted[0] is None and r.observed_frequency[0] is None
    gaps = [abs(0.55 - 1), abs(0.65 - 0), 3 * abs((0.95 + 0.85 + 0.8) / 3 - 2 / 3)]
    assert r.ece == pytest.approx(sum(gaps) / 5)
    assert r.accuracy == pytest.approx(3 / 5) and r.accuracy_se == pytest.approx(math.sqrt(0.6 * 0.4 / 5))
    classwise = reliability(probs, labels, num_bins=5, num_resamples=50, kind="classwise")
    assert sum(classwise.counts) == 10


@pytest.mark.parametrize(
    "probs, labels, fragment",
    [
        (torch.full((3, 2), 0.5), torch.tensor([0, 1, 2]), "labels must lie in 0..1"),
        (torch.full((3, 2), 0.6), torch.tensor([0, 1, 1]), "sum to 1"),
        (torch.full((3,), 0.5), torch.tensor([0, 1, 1]), r"\(N, K\)"),
        (torch.full((3, 2), 0.5), torch.tensor([0.0, 1.0, 1.0]), "integer class labels"),
    ],
)
def test_bad_predictions_are_refused_with_one_line(probs, labels, fragment):
    with pytest.raises(ConfigError, match=fragment) as error:
        reliability(probs, labels)
    assert "\n" not in str(error.value)


def test_class_probabilities_match_the_exact_responsibilities_within_their_error(mixture):
    x = mixture.data(40, torch.Generator().manual_seed(3))
    estimate = class_probabilities(mixture.vae.model, mixture.vae.guide, x, num_particles=300, repeats=8, seed=0)
    assert estimate.probabilities.shape == (40, 3) and bool((estimate.standard_error > 0).all())
    # The s.e. comes from 8 batch means (7 degrees of freedom): Student's t quantile for a 1e-4 two-sided
    # level per entry instead of Z, plus the O(1 / draws) bias of self-normalized importance sampling.
    t = stats.t.isf(0.5e-4, estimate.repeats - 1)
    assert_within_se(
        estimate.probabilities, mixture.responsibilities(x), estimate.standard_error, z=t, slack=3e-3, what="p(y | x)"
    )
    # and the error is small in absolute terms: the wide guide makes p(y | x) cheap to estimate
    assert float((estimate.probabilities - mixture.responsibilities(x)).abs().max()) < 0.02
    with pytest.raises(ConfigError, match="not an enumerated discrete site"):
        class_probabilities(mixture.vae.model, mixture.vae.guide, x, site="z")


def test_the_mixture_posterior_is_calibrated_on_its_own_simulations(mixture):
    """SBC for a discrete site: p(y | x) estimated by importance sampling, on y, z, x simulated from the model."""
    r = simulated_class_calibration(mixture.vae.model, mixture.vae.guide, num_simulations=2000, num_particles=100)
    assert r.num_examples == 2000 and "simulated" in r.source
    assert r.ece < r.ece_calibrated_mean + Z * r.ece_calibrated_sd and r.verdict == "calibrated"
    with pytest.raises(ConfigError, match="no amortized q"):
        simulated_class_calibration(mixture.vae.model, mixture.vae.guide, num_simulations=20, predict="guide")


def test_a_semi_supervised_classifier_is_checked_against_simulated_and_true_labels():
    """The exact classifier q(y | x) = p(y | x) is calibrated; its logits times 3 (q ~ p^3) are over-confident."""
    exact, sharp = make_semi_supervised(), make_semi_supervised(sharpen=3.0)
    good = simulated_class_calibration(exact.vae.model, exact.vae.guide, num_simulations=3000, predict="guide")
    bad = simulated_class_calibration(sharp.vae.model, sharp.vae.guide, num_simulations=3000, predict="guide")
    assert good.verdict == "calibrated" and good.ece < good.ece_calibrated_mean + Z * good.ece_calibrated_sd
    assert bad.verdict == "over-confident" and bad.ece_z > 10
    # against labels given with the data (here simulated by hand: the held-out labels of a run)
    c, _, x = exact.simulate(3000, torch.Generator().manual_seed(7))
    q = guide_class_probabilities(exact.vae.guide, x)
    np.testing.assert_allclose(q.numpy(), semi_supervised_exact(exact, x)[1].numpy(), atol=1e-12)
    held = reliability(q, c, seed=1)
    assert held.verdict == "calibrated"
    assert_within_se(held.accuracy, float(q.max(1).values.mean()), held.accuracy_se, what="accuracy vs confidence")


def test_reliability_figure_draws_every_prediction_with_labelled_axes(simulated):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ppl_vae.app.diagnose import reliability_figure

    y, _, exact = simulated
    panels = {
        "exact": reliability(exact, y, num_resamples=50),
        "p^3": reliability(_sharpen(exact, 3.0), y, num_resamples=50),
    }
    fig = reliability_figure(panels)
    FigureCanvasAgg(fig).draw()
    axes = fig.get_axes()
    assert len(axes) == 4  # a diagram and a histogram of counts per prediction
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in axes)
    top, counts = axes[0], axes[1]
    assert "ECE" in top.get_title() and counts.get_ylabel() == "predictions"
    heights = [p.get_height() for p in counts.patches]
    assert heights == panels["exact"].counts  # one bar per bin, as many predictions as it holds
