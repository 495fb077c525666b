"""ppl_vae.diagnostics.gradients: reparameterized vs score-function ELBO gradients, against a closed form."""

import argparse
import json

import pyro
import pytest
import torch

import ppl_vae
from ppl_vae.app import grad_variance
from ppl_vae.cli import build_parser
from ppl_vae.cli import grad_variance as grad_variance_cli
from ppl_vae.diagnostics import gradients
from ppl_vae.errors import ConfigError, PplVaeError


@pytest.fixture(scope="module")
def toy_result():
    # Observations far from the guide's mean: the cost log p - log q varies a lot across draws, which
    # is what makes the score-function estimator noisy.
    toy = gradients.gaussian_toy([3.0, -2.0], loc=[0.0, 0.5], scale=[0.5, 0.8])
    result = gradients.gradient_variance(toy.model, toy.guide, toy.x, toy.params, num_repeats=1000, seed=1)
    return toy, result


def test_closed_form_of_the_toy_matches_autograd():
    # The exact gradient formula itself, checked against a huge reparameterized Monte Carlo average.
    toy = gradients.gaussian_toy([3.0, -2.0], loc=[0.0, 0.5], scale=[0.5, 0.8])
    eps = torch.randn(200_000, 2)
    z = toy.loc + toy.log_scale.exp() * eps
    log_joint = torch.distributions.Normal(0.0, 1.0).log_prob(z) + torch.distributions.Normal(z, 1.0).log_prob(toy.x)
    log_q = torch.distributions.Normal(toy.loc, toy.log_scale.exp()).log_prob(z)
    loss = -(log_joint - log_q).sum(-1).mean()
    grads = torch.autograd.grad(loss, toy.params)
    assert torch.allclose(torch.cat(grads), toy.exact(), atol=0.03)


@pytest.mark.parametrize("name", gradients.ESTIMATORS)
def test_every_estimator_is_unbiased(toy_result, name):
    toy, result = toy_result
    r = result["estimators"][name]
    z = (r["mean"] - toy.exact()) / r["mean_se"]
    assert torch.all(z.abs() < 4), z


def test_score_function_variance_far_exceeds_reparameterized(toy_result):
    _, result = toy_result
    est = result["estimators"]
    reparam, score = est["reparam"], est["score"]
    assert reparam["variance_ratio"] == 1.0
    # The ratio is many standard errors above 1, and the gap in total variance is far beyond both s.e.
    assert score["variance_ratio"] > 5
    assert score["variance_ratio"] - 1 > 5 * score["variance_ratio_se"]
    gap = score["total_variance"] - reparam["total_variance"]
    assert gap > 5 * (score["total_variance_se"] + reparam["total_variance_se"])
    # The leave-one-out baseline (K particles) helps the score function, but at equal cost (the pathwise
    # estimator averaged over as many particles) it stays far noisier than the pathwise estimator here.
    loo = est["score-loo"]
    assert loo["particles"] == gradients.DEFAULT_LOO_PARTICLES
    assert (
        loo["total_variance"] + 4 * loo["total_variance_se"] < score["total_variance"] - 4 * score["total_variance_se"]
    )
    assert loo["variance_ratio_equal_particles"] == pytest.approx(loo["variance_ratio"] * loo["particles"])
    assert loo["variance_ratio_equal_particles"] - 1 > 5 * loo["variance_ratio_equal_particles_se"]


def test_result_leaves_rng_and_grads_alone():
    toy = gradients.gaussian_toy([1.0], loc=0.0)
    toy.loc.grad = torch.ones(1)
    state = torch.get_rng_state()
    store = set(pyro.get_param_store().keys())
    gradients.gradient_variance(toy.model, toy.guide, toy.x, toy.params, num_repeats=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(toy.loc.grad, torch.ones(1))
    assert set(pyro.get_param_store().keys()) == store  # no baseline (or any) state left behind


def test_bad_arguments_are_config_errors():
    toy = gradients.gaussian_toy([1.0], loc=0.0)
    with pytest.raises(ConfigError, match="unknown estimator"):
        gradients.gradient_variance(toy.model, toy.guide, toy.x, toy.params, estimators=("pathwise",))
    with pytest.raises(ConfigError, match="num_repeats"):
        gradients.gradient_variance(toy.model, toy.guide, toy.x, toy.params, num_repeats=1)
    with pytest.raises(ConfigError, match="no latent sample site 'w'"):
        gradients.gradient_variance(toy.model, toy.guide, toy.x, toy.params, sites=("w",))
    with pytest.raises(ConfigError, match="loo_particles"):
        gradients.gradient_variance(toy.model, toy.guide, toy.x, toy.params, loo_particles=1)


def test_vae_level_measurement_is_finite():
    vae = ppl_vae.VAE((1, 4, 4), latent_dim=2, hidden_dims=(8,))
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.5))
    decoder_before = [p.detach().clone() for p in vae.decoder.parameters()]
    result = gradients.gradient_variance(vae.model, vae.guide, x, list(vae.encoder.parameters()), num_repeats=20)
    assert set(result["estimators"]) == set(gradients.ESTIMATORS)
    assert result["num_params"] == sum(p.numel() for p in vae.encoder.parameters())
    for r in result["estimators"].values():
        assert r["mean"].shape == (result["num_params"],)
        assert torch.isfinite(r["mean"]).all() and torch.isfinite(r["variance"]).all()
        for key in (
            "total_variance",
            "total_variance_se",
            "mean_variance",
            "variance_ratio",
            "variance_ratio_se",
            "variance_ratio_equal_particles",
            "variance_ratio_equal_particles_se",
        ):
            assert r[key] is not None and torch.isfinite(torch.tensor(r[key])), key
        assert r["total_variance"] > 0
    assert all(p.grad is None for p in vae.parameters())
    assert all(torch.equal(a, b) for a, b in zip(decoder_before, vae.decoder.parameters()))
    json.dumps(gradients.summary(result))  # the summary is JSON-serializable


def test_score_only_copies_and_detaches():
    loc = torch.zeros(3, requires_grad=True)
    q = pyro.distributions.Normal(loc, 1.0).to_event(1)
    detached = gradients.score_only(q)
    assert q.has_rsample and not detached.has_rsample
    assert not detached().requires_grad and q().requires_grad


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gradvar") / "run"
    pyro.set_rng_seed(0)
    ppl_vae.train_run(ppl_vae.Config.tiny(), out, progress=False)
    pyro.clear_param_store()
    return out


def test_run_folder_writes_json_and_png(run_dir):
    report = grad_variance.grad_variance_run(run_dir, num_examples=8, num_repeats=10)
    written = json.loads((run_dir / "grad_variance.json").read_text())
    assert set(written["estimators"]) == set(gradients.ESTIMATORS)
    assert written["batch_size"] == 8 and written["num_repeats"] == 10
    assert written["estimators"]["score"]["variance_ratio"] > 0
    png = run_dir / "figures" / "grad_variance.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["paths"] == [str(run_dir / "grad_variance.json"), str(png)]


def test_cli_subcommand_prints_table(run_dir, tmp_path, capsys):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    handlers = grad_variance_cli.register(sub)
    assert set(handlers) == {"grad-variance"}
    args = p.parse_args(["grad-variance", str(run_dir), "--examples", "4", "--repeats", "5", "--seed", "3"])
    handlers[args.command](args)
    out = capsys.readouterr().out
    for name in gradients.ESTIMATORS:
        assert name in out
    assert "particles/step" in out and "equal particles" in out
    assert "ratio to reparam" in out and "grad_variance.json" in out and "grad_variance.png" in out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--examples", "0"], "--examples: must be an integer >= 1"),
        (["--repeats", "1"], "--repeats: must be an integer >= 2"),
        (["--examples", "100000"], "training set has"),
    ],
)
def test_cli_bad_input_is_a_one_line_config_error(run_dir, argv, match):
    parser, handlers = build_parser()
    with pytest.raises(PplVaeError, match=match) as info:
        args = parser.parse_args(["grad-variance", str(run_dir), *argv])
        handlers[args.command](args)
    assert "\n" not in str(info.value)


def test_missing_run_folder_is_a_user_error(tmp_path):
    with pytest.raises(ppl_vae.PplVaeError):
        grad_variance.grad_variance_run(tmp_path / "nope")
