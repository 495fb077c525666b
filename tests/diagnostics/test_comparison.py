"""Paired model comparison against closed forms: probabilistic PCA gives every model's exact log p(x), so
the estimated elpd differences are checked against exact differences on the same examples, with
tolerances from the Monte Carlo errors the comparison itself reports."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ppl_vae import VAE
from ppl_vae.diagnostics import comparison
from ppl_vae.diagnostics.arviz_bridge import compare as bridge
from ppl_vae.errors import ConfigError
from tests.ppca import make_ppca, plain_pyro_pair

N, S = 400, 200
#: An approximate (not exact) guide, so that every log p(x_n) estimate carries Monte Carlo error.
SHIFT, WIDEN = 0.3, 1.3


def _pair(ppca):
    model, guide = plain_pyro_pair(ppca, loc_shift=SHIFT, scale_factor=WIDEN)
    return SimpleNamespace(model=model, guide=guide)


def _wrong(true, sigma: float):
    """The true PPCA's loadings and mean with another noise scale: a deliberately wrong model."""
    wrong = make_ppca(D=true.W.shape[0], d=true.W.shape[1], sigma=sigma, seed=0)
    wrong.W, wrong.b = true.W, true.b
    return wrong


@pytest.fixture(scope="module")
def setting():
    true = make_ppca(D=6, d=2, sigma=0.5, seed=0)
    x = true.data(N, torch.Generator().manual_seed(1))
    wrong = _wrong(true, 0.6)
    result = comparison.compare_models({"wrong": _pair(wrong), "true": _pair(true)}, x, num_samples=S, seed=0)
    return true, wrong, x, result


def test_the_true_model_ranks_first_by_many_paired_standard_errors(setting):
    true, wrong, x, result = setting
    best, other = result.records
    assert best["name"] == "true" and other["name"] == "wrong"
    exact = float((true.log_marginal(x) - wrong.log_marginal(x)).sum())
    assert exact > 0
    assert other["z"] > 5, other  # "many s.e. from zero"
    # The estimate differs from the exact difference on these same examples only by Monte Carlo error
    # (dse_mc) and the IWAE bias, about -v/2 per example (delta method): both derived from the output.
    scores = result.scores
    bias = 0.5 * abs(float((scores["true"].log_likelihood_var - scores["wrong"].log_likelihood_var).sum()))
    assert abs(other["elpd_diff"] - exact) <= 4 * other["dse_mc"] + bias, (other["elpd_diff"], exact)
    assert other["dse_mc"] < other["dse"]  # the examples' spread, not the draws, dominates here


def test_each_elpd_agrees_with_the_exact_log_marginal(setting):
    true, wrong, x, result = setting
    for record in result.records:
        ppca = true if record["name"] == "true" else wrong
        exact = float(ppca.log_marginal(x).sum())
        bias = 0.5 * float(result.scores[record["name"]].log_likelihood_var.sum())
        assert abs(record["elpd"] - exact) <= 4 * record["mcse"] + bias, (record["name"], record["elpd"], exact)
        assert record["elpd_per_example"] == pytest.approx(record["elpd"] / N)
        assert record["khat_over_0.7"] == 0.0 and not record["warning"]


def test_two_identical_models_tie_within_their_standard_error():
    true = make_ppca(D=6, d=2, sigma=0.5, seed=0)
    x = true.data(N, torch.Generator().manual_seed(2))
    result = comparison.compare_models({"a": _pair(true), "b": _pair(true)}, x, num_samples=S, seed=3)
    second = result.records[1]
    # Independent draws (seeds 3 and 4): the difference is pure Monte Carlo noise, and then the paired
    # s.e. is that noise (its MC part is all of it, up to the sampling error of a variance).
    assert second["z"] is not None and abs(second["z"]) < 3
    assert second["dse"] == pytest.approx(second["dse_mc"], rel=0.25)
    assert abs(result.records[0]["weight"] - 0.5) < 0.5  # no weight is forced to 0 or 1 by a tie
    assert sum(r["weight"] for r in result.records) == pytest.approx(1.0)


def test_exact_guides_give_exact_ties_and_no_ratio():
    true = make_ppca(D=6, d=2, sigma=0.5, seed=0)
    x = true.data(50, torch.Generator().manual_seed(2))
    model, guide = plain_pyro_pair(true)
    pair = SimpleNamespace(model=model, guide=guide)
    result = comparison.compare_models([pair, pair], x, num_samples=20)
    assert [r["name"] for r in result.records] == ["model_0", "model_1"]
    assert result.records[1]["elpd_diff"] == pytest.approx(0.0, abs=1e-9)
    assert result.records[1]["z"] is None and result.records[1]["dse_mc"] < 1e-9


def test_paired_errors_and_weights_are_those_of_arviz_compare(setting):
    _, _, _, result = setting
    pointwise = {name: s.log_likelihood for name, s in result.scores.items()}
    frame = bridge.compare_frame(pointwise, method="stacking")
    for record in result.records:
        row = frame.loc[record["name"]]
        assert row["elpd_loo"] == pytest.approx(record["elpd"])
        assert row["elpd_diff"] == pytest.approx(record["elpd_diff"], abs=1e-9)
        assert row["dse"] == pytest.approx(record["dse"], abs=1e-9)
        assert row["se"] == pytest.approx(record["se"])
        assert row["weight"] == pytest.approx(record["weight"])
    # Paired s.e. from its definition, independently of both.
    diff = pointwise["true"] - pointwise["wrong"]
    assert result.records[1]["dse"] == pytest.approx(math.sqrt(N * diff.var()))


def test_paired_error_is_far_below_the_error_of_either_row(setting):
    """The point of pairing: rows overlap by their own errors, yet their difference is precise."""
    _, _, _, result = setting
    best, other = result.records
    assert other["dse"] < 0.5 * min(best["se"], other["se"])


def test_called_twice_the_same_and_under_non_default_priors():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((60, 12), 0.3))
    models = {p: VAE((12,), 2, (8,), prior=p) for p in ("laplace", "learned-normal", "student-t")}
    first = comparison.compare_models(models, x, num_samples=16, seed=5)
    second = comparison.compare_models(models, x, num_samples=16, seed=5)
    assert first.records == second.records
    assert sorted(r["name"] for r in first.records) == sorted(models)
    assert all(np.isfinite(r["elpd"]) for r in first.records)
    assert [r["elpd"] for r in first.records] == sorted((r["elpd"] for r in first.records), reverse=True)
    assert sum(r["pseudo_bma_weight"] for r in first.records) == pytest.approx(1.0)
    other = comparison.compare_models(models, x, num_samples=16, seed=6)
    assert other.records[0]["elpd"] != first.records[0]["elpd"]  # the seed matters


def test_pointwise_values_as_inference_data(setting):
    _, _, _, result = setting
    score = result.scores["true"]
    idata = comparison.to_inference_data(score)
    assert idata.log_likelihood["x"].shape == (1, 1, N)
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0, 0], score.log_likelihood)
    np.testing.assert_allclose(idata.importance["log_likelihood_mcse"].values ** 2, score.log_likelihood_var)


@pytest.mark.parametrize(
    "models, message",
    [
        ({"only": None}, "at least two models"),
        ([], "at least two models"),
    ],
)
def test_refuses_fewer_than_two_models(models, message):
    with pytest.raises(ConfigError, match=message):
        comparison.compare_models(models, torch.zeros(3, 6), num_samples=4)


def test_compare_scores_refuses_mismatched_inputs():
    a = comparison.ModelScore("a", np.zeros(5), np.zeros(5), np.zeros(5), 10)
    b = comparison.ModelScore("b", np.zeros(6), np.zeros(6), np.zeros(6), 10)
    with pytest.raises(ConfigError, match="different numbers of examples"):
        comparison.compare_scores([a, b])
    with pytest.raises(ConfigError, match="must differ"):
        comparison.compare_scores([a, a])
