"""The one result convention: every public computation of the diagnostics layer and of evaluate returns a
frozen :class:`ppl_vae.results.Result` whose ``to_dict()`` is plain data (JSON with NaN allowed) that
survives a JSON round trip, and which still reads like the dicts some of them used to be."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from ppl_vae.diagnostics import (
    calibration,
    collapse,
    gaps,
    gradients,
    kl,
    latent_space,
    posterior,
    sample_quality,
)
from ppl_vae.infer import evaluate as evaluation
from ppl_vae.results import NOT_IN_DICT, Result
from ppl_vae.rng import isolated, seeded
from ppl_vae.vae import VAE

torch.set_num_threads(1)


def _vae(**kwargs):
    torch.manual_seed(0)
    return VAE((1, 4, 4), latent_dim=3, hidden_dims=(8,), **kwargs)


def _data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, 4, 4), 0.4), generator=g)


def _same(a, b) -> bool:
    """Equality of plain data, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def check_result(result, cls) -> dict:
    """The checks every result passes; returns its ``to_dict()``."""
    assert isinstance(result, cls) and isinstance(result, Result)
    fields = dataclasses.fields(result)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(result, fields[0].name, None)
    saved = result.to_dict()
    kept = [f for f in fields if not (f.metadata.get("omit_none") and getattr(result, f.name) is None)]
    assert list(saved) == [f.name for f in kept if f.metadata.get("in_dict", True)]
    text = json.dumps(saved, allow_nan=True)  # plain data: no tensors, arrays or objects left
    assert _same(json.loads(text), saved)
    for f in fields:  # read-only mapping access, as the dicts had
        assert f.name in result and result[f.name] is getattr(result, f.name)
        assert result.get(f.name) is getattr(result, f.name)
    assert "no such field" not in result and result.get("no such field", 7) == 7
    with pytest.raises(KeyError):
        result["no such field"]
    assert result.keys() == [f.name for f in fields]
    return saved


# -- results.py and rng.py ----------------------------------------------------------------------------------


def test_fields_marked_not_in_dict_stay_attributes_only():
    @dataclasses.dataclass(frozen=True)
    class Example(Result):
        value: float
        tensor: torch.Tensor
        hidden: object = dataclasses.field(default=None, metadata=NOT_IN_DICT)

    r = Example(value=float("nan"), tensor=torch.arange(3), hidden=object())
    assert _same(r.to_dict(), {"value": float("nan"), "tensor": [0, 1, 2]})
    assert r["hidden"] is r.hidden and dict(r).keys() == {"value", "tensor", "hidden"}


def test_seeded_gives_the_draws_of_manual_seed_and_restores_the_stream():
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with seeded(5, torch.device("cpu")):
        got = torch.rand(4)
    assert torch.equal(got, expected)
    assert torch.equal(torch.get_rng_state(), state)
    with isolated(torch.device("cpu")):
        torch.rand(10)
    assert torch.equal(torch.get_rng_state(), state)
    with seeded(None, torch.device("cpu")):  # no seed: the global stream, advanced as usual
        torch.rand(1)
    assert not torch.equal(torch.get_rng_state(), state)


def test_iwae_log_likelihood_is_the_delta_method_estimate():
    log_w = torch.randn(50, 7, dtype=torch.float64) * 2 + 3
    estimate, variance = evaluation.iwae_log_likelihood(log_w)
    w = log_w.exp()
    assert torch.allclose(estimate, w.mean(0).log())
    assert torch.allclose(variance, w.var(0) / (50 * w.mean(0) ** 2))
    assert torch.isnan(evaluation.iwae_log_likelihood(log_w[:1])[1]).all()


# -- evaluate --------------------------------------------------------------------------------------------


def test_log_weights_and_eval_result():
    vae, x = _vae(), _data()
    parts = evaluation.log_weights(vae.model, vae.guide, x, num_particles=5)
    saved = check_result(parts, evaluation.LogWeights)
    assert parts["log_weight"].shape == (5, 12) and len(saved["log_global"]) == 5
    assert torch.allclose(parts.log_weight, parts.log_likelihood + parts.log_prior - parts.log_guide)
    result = evaluation.evaluate(vae, x, num_particles=8, seed=0)
    saved = check_result(result, evaluation.EvalResult)
    assert "per_example" not in saved and result.per_example["elbo"].shape == (12,)  # eval.json: scalars only
    # the importance-sampled log p(x) is the mean of the per-example estimates of iwae_log_likelihood
    assert saved["log_likelihood"] == pytest.approx(
        float(result.per_example["log_likelihood"].double().mean()), rel=1e-5
    )


# -- the diagnostics layer ---------------------------------------------------------------------------------


def test_kl_to_prior_and_collapse_report():
    vae, x = _vae(), _data()
    saved = check_result(kl.kl_to_prior(vae, x), kl.KLToPrior)
    assert saved["exact"] and len(saved["per_dimension"]) == 3
    assert sum(saved["per_dimension"]) == pytest.approx(saved["total"], rel=1e-5)
    point_mass = check_result(kl.kl_to_prior(_vae(guide="delta"), x), kl.KLToPrior)
    assert point_mass["total"] is None and "point mass" in point_mass["per_dimension_note"]
    report = collapse.collapse_report(vae, x, num_samples=4, seed=0)
    saved = check_result(report, collapse.CollapseReport)
    assert saved["latent_dim"] == 3 and len(saved["activity"]) == 3
    assert saved["kl_total"] == pytest.approx(kl.kl_to_prior(vae, x).total)


def test_amortization_gap():
    vae, x = _vae(), _data(6)
    gap = gaps.amortization_gap(vae.model, vae.guide, x, posterior=vae.posterior, num_steps=3, num_particles=10)
    saved = check_result(gap, gaps.AmortizationGap)
    assert saved["num_steps"] == 3 and saved["num_examples"] == 6
    assert saved["amortization_gap"] == pytest.approx(saved["elbo_local"] - saved["elbo_amortized"])


def test_psis_sbc_and_nuts_results():
    vae, x = _vae(), _data(5)
    p = posterior.psis(vae.model, vae.guide, x, num_samples=20, seed=0)
    saved = check_result(p, posterior.PSISResult)
    assert len(saved["khat"]) == 5 and np.array(saved["log_ratios"]).shape == (20, 5)
    # the per-example estimates and errors are those of evaluate's IWAE estimate, from the same weights
    estimate, variance = evaluation.iwae_log_likelihood(p.log_ratios)
    assert np.allclose(p.per_example["log_likelihood"], estimate.numpy())
    assert np.allclose(p.per_example["log_likelihood_se"], variance.sqrt().numpy())
    s = calibration.sbc(vae.model, vae.guide, num_simulations=40, num_draws=9, seed=0)
    saved = check_result(s, calibration.SBCResult)
    assert np.array(saved["ranks"]).shape == (40, 3) and saved["verdict"] == s.summary()["verdict"]
    nuts = posterior.nuts_reference(
        vae.model, vae.guide, x[:1], num_chains=2, num_warmup=5, num_samples=10, guide_samples=20, seed=0
    )
    saved = check_result(nuts, posterior.NUTSResult)
    assert "inference_data" not in saved and nuts.inference_data is not None  # ArviZ object: not plain data
    assert np.array(saved["samples"]).shape == (2, 10, 1, 3)
    json.dumps(nuts.summary(), allow_nan=True)


def test_sample_quality_results():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    smooth = sample_quality.path_smoothness(lambda z: torch.cat([z, z**2], -1), z0, z1, num_steps=5)
    saved = check_result(smooth, sample_quality.PathSmoothness)
    assert saved["num_pairs"] == 4 and len(saved["ratio_per_pair"]) == 4
    coverage = sample_quality.mmd_test(
        torch.randn(20, 2, generator=g), torch.randn(20, 2, generator=g), num_permutations=20
    )
    saved = check_result(coverage, sample_quality.MMDTest)
    assert 0 < saved["p_value"] <= 1 and len(saved["bandwidths"]) == 1
    images = torch.rand(60, 1, 4, 4, generator=g)
    labels = torch.arange(60) % 3
    classifier = sample_quality.train_domain_classifier(images, labels, hidden=8, max_iter=20)
    quality = sample_quality.sample_quality(classifier, images[:20], images[20:40])
    saved = check_result(quality, sample_quality.SampleQuality)
    assert len(saved["class_fractions"]) == 3 and sum(saved["class_fractions"]) == pytest.approx(1.0)


def test_gradient_variance_result_and_summary():
    toy = gradients.gaussian_toy([1.0, -0.5], loc=0.0)
    result = gradients.gradient_variance(toy.model, toy.guide, toy.x, toy.params, num_repeats=5, seed=0)
    saved = check_result(result, gradients.GradientVariance)
    assert list(saved["estimators"]) == list(gradients.ESTIMATORS)
    for name, r in result.estimators.items():
        check_result(r, gradients.EstimatorVariance)
        assert len(saved["estimators"][name]["mean"]) == result.num_params
    assert saved["estimators"]["reparam"]["variance_ratio"] == 1.0
    summary = gradients.summary(result)
    assert summary == result.summary() and "mean" not in summary["estimators"]["score"]
    json.dumps(summary)


def test_informative_dims_result():
    vae, x = _vae(), _data()
    info = latent_space.informative_dims(vae, x, k=2)
    saved = check_result(info, latent_space.InformativeDims)
    assert saved["criterion"] == "kl" and len(saved["dims"]) == 2 and len(saved["scores"]) == 3
