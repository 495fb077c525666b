"""Family-specific checks: full-rank covariance, the IAF's density by change of variables, the point mass,
and the parameterizations of the power spherical and Dirichlet guides."""

import math

import pyro
import pytest
import torch

from ppl_vae.guides import (
    GUIDES,
    DirichletGuide,
    FlowPosterior,
    FullRankNormal,
    InverseAutoregressiveFlow,
    PointMass,
    PowerSphericalGuide,
)
from ppl_vae.models.manifold import PowerSpherical

SHAPE, N = (1, 4, 4), 5


# -- full-rank --------------------------------------------------------------------------------------------


def test_full_rank_parameterization_and_covariance():
    d = 4
    guide = GUIDES["full-rank"](SHAPE, d, (16,))
    assert isinstance(guide, FullRankNormal)
    x = torch.rand(N, *SHAPE)
    raw = guide.encoder(x)
    assert raw.shape == (N, 2 * d + d * (d - 1) // 2)
    loc, tril = guide.loc_scale_tril(x)
    torch.testing.assert_close(loc, raw[:, :d])
    torch.testing.assert_close(torch.diagonal(tril, dim1=-2, dim2=-1), raw[:, d : 2 * d].exp())
    rows, cols = torch.tril_indices(d, d, offset=-1)
    torch.testing.assert_close(tril[:, rows, cols], raw[:, 2 * d :])
    assert (torch.triu(tril, diagonal=1) == 0).all()
    q = guide(x)
    torch.testing.assert_close(q.covariance_matrix, tril @ tril.transpose(-1, -2))
    # log_prob against torch's MultivariateNormal built from the covariance (its own Cholesky)
    z = q.sample(torch.Size([3]))
    reference = torch.distributions.MultivariateNormal(loc, covariance_matrix=tril @ tril.transpose(-1, -2))
    torch.testing.assert_close(q.log_prob(z), reference.log_prob(z), atol=1e-4, rtol=1e-5)


def test_full_rank_draws_have_the_covariance():
    d, n = 3, 50_000
    guide = GUIDES["full-rank"](SHAPE, d, (16,))
    with torch.no_grad():
        q = guide(torch.rand(1, *SHAPE))
        z = q.sample(torch.Size([n]))[:, 0].double()
        cov = q.covariance_matrix[0].double()
    centred = z - z.mean(0)
    sample_cov = centred.T @ centred / (n - 1)
    # s.e. of a covariance entry of a Gaussian: sqrt((S_ii S_jj + S_ij^2) / n)
    se = ((torch.diagonal(cov)[:, None] * torch.diagonal(cov)[None, :] + cov**2) / n).sqrt()
    assert ((sample_cov - cov).abs() < 5 * se).all()
    assert (cov - torch.diag(torch.diagonal(cov))).abs().max() > 10 * se.max()  # genuinely correlated


# -- iaf --------------------------------------------------------------------------------------------------


def _hand_flow(guide: InverseAutoregressiveFlow, x: torch.Tensor, u: torch.Tensor):
    """z and log q(z) for base draws u, composing the layers by hand: y = exp(s) * h + m with
    (m, s) = ARN(h, context), s clipped to [-5, 3]; log q(z) = log base(u) - sum of s over layers."""
    base, context = guide.base_and_context(x)
    log_q = base.log_prob(u)
    h = u
    for layer in guide.flows:
        mean, log_scale = layer.nn(h, context=context)
        log_scale = log_scale.clamp(-5.0, 3.0)
        h = log_scale.exp() * h + mean
        log_q = log_q - log_scale.sum(-1)
    return h, log_q


def test_iaf_is_a_transformed_distribution_of_a_diagonal_normal():
    guide = GUIDES["iaf"](SHAPE, 3, (16,))
    assert isinstance(guide, InverseAutoregressiveFlow) and len(guide.flows) == 2
    q = guide(torch.rand(N, *SHAPE))
    assert isinstance(q, FlowPosterior) and len(q.transforms) == 2
    assert q.base_dist.event_shape == (3,) and q.event_shape == (3,)


def test_iaf_orderings_alternate_between_layers():
    guide = InverseAutoregressiveFlow.mlp(SHAPE, 4, (16,), num_flows=3)
    orders = [layer.nn.permutation.tolist() for layer in guide.flows]
    assert orders == [[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]]


def test_identity_initialised_iaf_equals_its_base():
    guide = GUIDES["iaf"](SHAPE, 3, (16,))
    x = torch.rand(N, *SHAPE)
    q = guide(x)
    base, _ = guide.base_and_context(x)
    torch.manual_seed(5)
    z = q.rsample(torch.Size([4]))
    torch.manual_seed(5)
    u = base.rsample(torch.Size([4]))
    torch.testing.assert_close(z, u)
    torch.testing.assert_close(q.log_prob(z), base.log_prob(z))
    torch.testing.assert_close(q.log_prob(z.clone()), base.log_prob(z))


@pytest.mark.parametrize("num_flows", [1, 2, 3])
def test_iaf_density_by_change_of_variables(num_flows):
    torch.manual_seed(0)
    guide = InverseAutoregressiveFlow.mlp(SHAPE, 3, (16,), num_flows=num_flows, identity_init=False)
    x = torch.rand(N, *SHAPE)
    with torch.no_grad():
        q = guide(x)
        base, _ = guide.base_and_context(x)
        torch.manual_seed(7)
        z = q.rsample(torch.Size([6]))
        torch.manual_seed(7)
        u = base.rsample(torch.Size([6]))
        z_hand, log_q_hand = _hand_flow(guide, x, u)
        torch.testing.assert_close(z, z_hand)
        assert (z - u).abs().max() > 0.05  # the flow is not the identity
        torch.testing.assert_close(q.log_prob(z), log_q_hand, atol=1e-5, rtol=1e-5)  # cached inverse
        torch.testing.assert_close(q.log_prob(z.clone()), log_q_hand, atol=1e-4, rtol=1e-4)  # computed inverse


def test_iaf_log_det_against_the_full_jacobian():
    # one example: log q(z) - log base(u) = -log |det dz/du|, with the Jacobian from autograd
    torch.manual_seed(0)
    d = 4
    guide = InverseAutoregressiveFlow.mlp(SHAPE, d, (16,), identity_init=False).double()
    x = torch.rand(1, *SHAPE, dtype=torch.float64)
    with torch.no_grad():
        base, _ = guide.base_and_context(x)
        u = base.sample()
        q = guide(x)
    jac = torch.autograd.functional.jacobian(lambda v: _hand_flow(guide, x, v[None])[0][0], u[0])
    log_det = torch.linalg.slogdet(jac).logabsdet
    with torch.no_grad():
        z = _hand_flow(guide, x, u)[0]
        torch.testing.assert_close(q.log_prob(z.clone()), base.log_prob(u) - log_det)
    assert log_det.abs() > 1e-3


def test_iaf_is_conditioned_on_x():
    torch.manual_seed(0)
    guide = InverseAutoregressiveFlow.mlp(SHAPE, 3, (16,), identity_init=False)
    _, context = guide.base_and_context(torch.rand(2, *SHAPE))
    point = torch.randn(3)
    layer = guide.flows[0]
    first, second = layer.condition(context[0])(point), layer.condition(context[1])(point)
    assert (first - second).abs().max() > 1e-3


def test_iaf_flow_parameters_are_registered_and_trained():
    torch.manual_seed(0)
    guide = InverseAutoregressiveFlow.mlp(SHAPE, 3, (16,), identity_init=False)
    flow_names = [n for n, _ in guide.named_parameters() if n.startswith("flows.")]
    assert len(flow_names) >= 2 * 2  # weights and biases of two networks at least
    assert all(n in guide.state_dict() for n in flow_names)
    assert any(n.startswith("flows.") and n.endswith("permutation") for n in guide.state_dict())
    pyro.module("iaf", guide)
    assert {f"iaf$$${n}" for n in flow_names} <= set(pyro.get_param_store().keys())
    q = guide(torch.rand(N, *SHAPE))
    q.rsample().pow(2).sum().backward()
    flow_grads = [p.grad for n, p in guide.named_parameters() if n.startswith("flows.") and n.endswith("weight")]
    assert all(g is not None and g.abs().sum() > 0 for g in flow_grads)
    guide.double()
    assert all(p.dtype == torch.float64 for p in guide.parameters())


def test_iaf_moments_are_deterministic_estimates():
    torch.manual_seed(0)
    guide = InverseAutoregressiveFlow.mlp(SHAPE, 3, (16,), identity_init=False)
    with torch.no_grad():
        q = guide(torch.rand(2, *SHAPE))
        state = torch.get_rng_state()
        mean, stddev = q.mean, q.stddev
        assert torch.equal(state, torch.get_rng_state())  # the global stream is untouched
        torch.testing.assert_close(q.mean, mean)  # same fixed draws
        draws = q.sample(torch.Size([40_000]))
    # against an independent large sample: MC error of the 256-draw estimate plus that of the sample
    tol = 5 * draws.std(0) * math.sqrt(1 / FlowPosterior.num_moment_samples + 1 / 40_000)
    assert ((mean - draws.mean(0)).abs() < tol).all()
    assert ((stddev - draws.std(0)).abs() < tol).all()


# -- delta ------------------------------------------------------------------------------------------------


def test_point_mass_is_the_encoder_output():
    guide = GUIDES["delta"](SHAPE, 3, (16,))
    assert isinstance(guide, PointMass)
    x = torch.rand(N, *SHAPE)
    q = guide(x)
    f = guide.encoder(x)
    z = q.rsample(torch.Size([2]))
    torch.testing.assert_close(z, f.expand(2, N, 3))
    assert (q.log_prob(z) == 0).all()
    assert (q.log_prob(z + 0.1) == -math.inf).all()


def _tiny_model(decoder, prior_loc, x, kl=True):
    with pyro.plate("data", x.shape[0]):
        with pyro.poutine.mask(mask=kl):
            z = pyro.sample("z", pyro.distributions.Normal(prior_loc, 1.0).expand([x.shape[0], 3]).to_event(1))
        pyro.sample("x", pyro.distributions.Bernoulli(logits=decoder(z)).to_event(1), obs=x)


def test_point_mass_elbo_is_the_joint_density_at_f_of_x():
    torch.manual_seed(0)
    guide = GUIDES["delta"]((16,), 3, (8,))
    decoder = torch.nn.Linear(3, 16)
    x = torch.randint(0, 2, (N, 16)).float()

    def guide_fn(x, kl=True):
        with pyro.plate("data", x.shape[0]), pyro.poutine.mask(mask=kl):
            pyro.sample("z", guide(x))

    with torch.no_grad():
        z = guide.encoder(x)
        log_lik = torch.distributions.Bernoulli(logits=decoder(z)).log_prob(x).sum()
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
        loss = pyro.infer.Trace_ELBO().loss(lambda x: _tiny_model(decoder, 0.0, x), guide_fn, x)
        assert loss == pytest.approx(-(log_lik + log_prior).item(), rel=1e-5)
        # KL part switched off (weight 0; Pyro's scale refuses 0, mask does it): exactly an autoencoder's
        # reconstruction loss
        loss0 = pyro.infer.Trace_ELBO().loss(
            lambda x: _tiny_model(decoder, 0.0, x, kl=False), lambda x: guide_fn(x, kl=False), x
        )
        assert loss0 == pytest.approx(-log_lik.item(), rel=1e-5)


# -- power spherical and Dirichlet guides -------------------------------------------------------------------


def test_power_spherical_guide_parameterization():
    d = 4
    guide = GUIDES["power-spherical"](SHAPE, d, (16,))
    assert isinstance(guide, PowerSphericalGuide)
    x = torch.rand(N, *SHAPE)
    raw = guide.encoder(x)
    loc, kappa = guide.loc_concentration(x)
    torch.testing.assert_close(loc, raw[:, :d] / raw[:, :d].norm(dim=-1, keepdim=True))
    torch.testing.assert_close(kappa, raw[:, d].clamp(-10, 10).exp() + guide.min_concentration)
    assert guide.min_concentration == 1.0
    q = guide(x)
    assert isinstance(q, PowerSpherical)
    torch.testing.assert_close(q.loc, loc)
    # gradients reach both heads of the encoder: the direction and the concentration outputs
    q.rsample().sum().backward()
    last_bias = guide.encoder.net[-1].bias.grad
    assert (last_bias[:d].abs() > 0).all() and last_bias[d].abs() > 0
    with pytest.raises(ValueError):
        GUIDES["power-spherical"](SHAPE, 1, (16,))


def test_dirichlet_guide_parameterization():
    d = 4
    guide = GUIDES["dirichlet"](SHAPE, d, (16,))
    assert isinstance(guide, DirichletGuide)
    x = torch.rand(N, *SHAPE)
    torch.testing.assert_close(
        guide.concentration(x), (guide.encoder(x) + 2.0).clamp(-10, 10).exp() + guide.min_concentration
    )
    q = guide(x)
    torch.testing.assert_close(q.concentration, guide.concentration(x))
    q.rsample().pow(2).sum().backward()
    assert (guide.encoder.net[-1].bias.grad.abs() > 0).all()
    with pytest.raises(ValueError):
        GUIDES["dirichlet"](SHAPE, 1, (16,))


def test_dirichlet_implicit_reparameterization_gradient():
    # E[z_0] = a_0 / sum(a): the pathwise gradient (one leaf per draw) averages to its exact gradient
    n = 40_000
    a0 = torch.tensor([0.7, 2.0, 3.5], dtype=torch.float64)
    a = a0.expand(n, 3).clone().requires_grad_(True)
    torch.distributions.Dirichlet(a).rsample()[:, 0].sum().backward()
    per_draw = a.grad
    exact = torch.tensor(
        [1 / a0.sum() - a0[0] / a0.sum() ** 2, -a0[0] / a0.sum() ** 2, -a0[0] / a0.sum() ** 2], dtype=torch.float64
    )
    assert ((per_draw.mean(0) - exact).abs() < 5 * per_draw.std(0) / math.sqrt(n)).all()
