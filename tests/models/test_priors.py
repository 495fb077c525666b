"""Every registered prior passes the generic checks; new priors get them by being registered."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from ppl_vae import VAE
from ppl_vae.guides import GUIDES
from ppl_vae.models import PRIORS, Hierarchical, StudentT
from ppl_vae.models.structured import OPTION_PRIORS, is_structured

LATENT_DIM = 3
SHAPE = (1, 4, 4)


def build(name):
    guide = GUIDES["normal"](SHAPE, LATENT_DIM, (8,))
    if name in OPTION_PRIORS:  # the number of classes, components, covariates or groups comes after a colon
        return PRIORS[name](LATENT_DIM, data_shape=SHAPE, guide=guide, hidden_dims=(8,), option="3")
    return PRIORS[name](LATENT_DIM, data_shape=SHAPE, guide=guide)


def _labels(prior, n):
    """Labels of the kind a prior takes: ``n`` rows of covariates, or class/group 0 for ``n`` examples."""
    if hasattr(prior, "covariate_dim"):
        return torch.zeros(n, prior.covariate_dim)
    return torch.zeros(n, dtype=torch.long)


def distribution(prior):
    """p(z); for priors with global latents, at globals drawn from their guide; for structured priors,
    the distribution of their site "z" given the other local sites (labels c = 0), in a plate of one."""
    with poutine.block():
        c = _labels(prior, 1)
        if is_structured(prior):
            with pyro.plate("data", 1):
                trace = poutine.trace(prior).get_trace(c)
            return trace.nodes["z"]["fn"]
        if getattr(prior, "label_role", "none") == "group":
            return poutine.replay(prior, trace=poutine.trace(prior.global_guide).get_trace())(c)
        if hasattr(prior, "global_guide"):
            return poutine.replay(prior, trace=poutine.trace(prior.global_guide).get_trace())()
        return prior()


@pytest.fixture(params=sorted(PRIORS))
def prior(request):
    return build(request.param)


def test_event_shape_and_finite_log_prob(prior):
    p = distribution(prior)
    assert p.event_shape == (LATENT_DIM,)
    z = p.expand([50]).sample()
    assert z.shape == (50, LATENT_DIM)
    assert torch.isfinite(p.log_prob(z)).all() and p.log_prob(z).shape == (50,)


def test_samples_lie_in_the_support(prior):
    p = distribution(prior)
    z = p.expand([100]).sample()
    assert p.support.check(z).all()


def test_learnable_parameters_get_gradients(prior):
    params = [p for p in prior.parameters() if p.requires_grad]
    if not params:
        assert not list(prior.parameters())
        return
    if is_structured(prior):  # its parameters include its guide piece's: the whole ELBO reaches them
        vae = VAE(SHAPE, LATENT_DIM, (8,), prior=prior)
        x = torch.bernoulli(torch.full((6, *SHAPE), 0.5), generator=torch.Generator().manual_seed(0))
        c = torch.tensor([0, 1, 2, -1, -1, -1]) if prior.label_role == "semi" else torch.tensor([0, 1, 2, 0, 1, 2])
        if hasattr(prior, "covariate_dim"):
            c = torch.randn(6, prior.covariate_dim)
        TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False).differentiable_loss(
            vae.model, vae.guide, x, c=c
        ).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        return
    z = distribution(prior).expand([20]).sample()
    distribution(prior).log_prob(z).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_prior_follows_the_module_to_another_dtype(prior):
    for module in getattr(prior, "_guide", []):  # the VampPrior's encoder moves with the VAE, not the prior
        module.double()
    p = distribution(prior.double())
    assert p.sample().dtype == torch.float64


def test_standard_normal_moments():
    p = build("normal")()
    z = p.expand([20000]).sample()
    # mean of 20,000 unit-variance draws: s.e. 0.007; variance: s.e. 0.01
    assert z.mean(0).abs().max() < 4 * 0.00708
    assert (z.var(0) - 1).abs().max() < 4 * 0.01


def test_laplace_has_unit_variance():
    z = build("laplace")().expand([20000]).sample()
    # Var of the sample variance of a Laplace: (mu4 - sigma^4)/n = (6 - 1)/n  -> s.e. 0.0158
    assert (z.var(0) - 1).abs().max() < 4 * 0.0158


def test_student_t_degrees_of_freedom_are_positive_and_learnable():
    prior = StudentT(LATENT_DIM, df=5.0)
    assert prior.df.item() == pytest.approx(5.0, rel=1e-5)
    torch.testing.assert_close(prior().base_dist.df, torch.full((LATENT_DIM,), 5.0))


def test_hierarchical_prior_draws_a_global_scale_outside_the_plate():
    prior = Hierarchical(LATENT_DIM)
    trace = poutine.trace(prior).get_trace()
    assert trace.nodes["tau"]["fn"].event_shape == (LATENT_DIM,)
    assert trace.nodes["tau"]["cond_indep_stack"] == ()
    guide_trace = poutine.trace(prior.global_guide).get_trace()
    assert (guide_trace.nodes["tau"]["value"] > 0).all()
    with pyro.plate("data", 5):
        z = pyro.sample("z", distribution(prior))
    assert z.shape == (5, LATENT_DIM)


def test_vamp_prior_does_not_own_the_encoder():
    """The encoder's parameters belong to the guide; the prior owns only the pseudo-inputs."""
    prior = build("vamp")
    assert [name for name, _ in prior.named_parameters()] == ["pseudo_logits"]
    assert prior().batch_shape == () and prior().event_shape == (LATENT_DIM,)
