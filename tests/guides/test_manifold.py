"""The sphere and simplex latents of ``ppl_vae.models.manifold``: the power spherical distribution, the
uniform distribution on the sphere, and the two priors. Monte Carlo checks use a 5-standard-error band."""

import math

import pytest
import torch
from pyro.distributions import constraints
from torch.distributions import kl_divergence

from ppl_vae.models.manifold import (
    DirichletPrior,
    HypersphericalUniform,
    PowerSpherical,
    SphereUniform,
    log_sphere_area,
)

F64 = torch.float64


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def random_rotation(d: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def beta_moments_of_t(kappa, d):
    """E[t], E[t^2] for t = mu.z, from (t + 1) / 2 ~ Beta(alpha, beta) (independent of the class's code)."""
    a, b = (d - 1) / 2 + kappa, (d - 1) / 2
    es = a / (a + b)
    es2 = a * (a + 1) / ((a + b) * (a + b + 1))
    return 2 * es - 1, 4 * es2 - 4 * es + 1


# -- PowerSpherical ------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [2, 3, 10])
@pytest.mark.parametrize("kappa", [0.0, 1.0, 50.0, 1e4])
def test_samples_lie_on_the_sphere(d, kappa):
    p = PowerSpherical(unit(torch.randn(4, d)), torch.full((4,), kappa))
    z = p.rsample(torch.Size([500]))
    assert z.shape == (500, 4, d)
    assert constraints.sphere.check(z).all() and torch.isfinite(p.log_prob(z)).all()


def test_normalizer_closed_form_in_three_dimensions():
    # on S^2: int (1 + t)^k dA = 2 pi int_{-1}^{1} (1 + t)^k dt = 2 pi 2^(k+1) / (k + 1) (Archimedes)
    kappa = torch.tensor([0.0, 0.5, 1.0, 3.0, 40.0], dtype=F64)
    p = PowerSpherical(torch.tensor([0.0, 0.0, 1.0], dtype=F64), kappa)
    expected = torch.log(2 * math.pi * 2 ** (kappa + 1) / (kappa + 1))
    torch.testing.assert_close(p.log_normalizer(), expected)


@pytest.mark.parametrize("kappa", [0.0, 0.5, 3.0, 40.0])
def test_density_integrates_to_one_on_the_circle(kappa):
    theta = torch.linspace(-math.pi, math.pi, 20001, dtype=F64)[:-1]  # periodic: the rectangle rule is spectral
    z = torch.stack([theta.cos(), theta.sin()], -1)
    p = PowerSpherical(unit(torch.tensor([0.3, -0.8], dtype=F64)), torch.tensor(kappa, dtype=F64))
    integral = p.log_prob(z).exp().sum() * (2 * math.pi / theta.numel())
    assert abs(integral.item() - 1) < 1e-8


@pytest.mark.parametrize("d,kappa", [(5, 0.5), (5, 4.0), (8, 2.0)])
def test_density_integrates_to_one_against_the_uniform(d, kappa):
    # E_uniform[p(z) / u(z)] = 1
    n = 200_000
    u = HypersphericalUniform(d, dtype=F64)
    z = u.sample(torch.Size([n]))
    p = PowerSpherical(unit(torch.randn(d, dtype=F64)), torch.tensor(kappa, dtype=F64))
    ratio = (p.log_prob(z) - u.log_prob(z)).exp()
    se = ratio.std() / math.sqrt(n)
    assert abs(ratio.mean().item() - 1) < 5 * se.item()


def test_samples_follow_the_density_on_the_circle():
    # histogram of sampled angles against the density integrated over each bin
    n, bins = 100_000, 36
    loc = torch.tensor([math.cos(2.0), math.sin(2.0)], dtype=F64)
    p = PowerSpherical(loc, torch.tensor(3.0, dtype=F64))
    z = p.sample(torch.Size([n]))
    counts = torch.histc(torch.atan2(z[:, 1], z[:, 0]), bins=bins, min=-math.pi, max=math.pi)
    fine = torch.linspace(-math.pi, math.pi, bins * 200 + 1, dtype=F64)
    mid = (fine[1:] + fine[:-1]) / 2
    dens = p.log_prob(torch.stack([mid.cos(), mid.sin()], -1)).exp() * (fine[1] - fine[0])
    prob = dens.reshape(bins, 200).sum(-1)
    z_scores = (counts - n * prob) / (n * prob * (1 - prob)).sqrt()
    assert z_scores.abs().max() < 5


def test_concentration_zero_is_the_uniform_density():
    assert log_sphere_area(2) == pytest.approx(math.log(2 * math.pi))
    assert log_sphere_area(3) == pytest.approx(math.log(4 * math.pi))
    for d in range(2, 9):
        p = PowerSpherical(unit(torch.randn(d, dtype=F64)), torch.tensor(0.0, dtype=F64))
        z = unit(torch.randn(50, d, dtype=F64))
        z[0] = -p.loc  # the antipode: 0 * log 0 = 0
        torch.testing.assert_close(p.log_prob(z), torch.full((50,), -log_sphere_area(d), dtype=F64))
        torch.testing.assert_close(p.log_prob(z), HypersphericalUniform(d, dtype=F64).log_prob(z))


def test_density_is_rotation_equivariant():
    d = 6
    loc = unit(torch.randn(d, dtype=F64))
    kappa = torch.tensor(7.0, dtype=F64)
    z = unit(torch.randn(100, d, dtype=F64))
    rot = random_rotation(d)
    p, rotated = PowerSpherical(loc, kappa), PowerSpherical(loc @ rot.T, kappa)
    torch.testing.assert_close(rotated.log_prob(z @ rot.T), p.log_prob(z))
    assert p.log_prob(z).std() > 0.1  # not trivially constant


@pytest.mark.parametrize("d", [3, 5])
def test_sample_mean_and_variance_match_the_moments(d):
    n = 100_000
    loc = unit(torch.randn(d, dtype=F64))
    p = PowerSpherical(loc, torch.tensor(2.5, dtype=F64))
    z = p.sample(torch.Size([n]))
    et, et2 = beta_moments_of_t(2.5, d)
    torch.testing.assert_close(p.mean, et * loc)
    se_mean = z.std(0) / math.sqrt(n)
    assert ((z.mean(0) - p.mean).abs() < 5 * se_mean).all()
    se_var = ((z - z.mean(0)).pow(2).std(0)) / math.sqrt(n)
    assert ((z.var(0) - p.variance).abs() < 5 * se_var).all()
    # E[t^2] independently of the class: the second moment along loc
    t = z @ loc
    assert abs(t.pow(2).mean() - et2) < 5 * t.pow(2).std() / math.sqrt(n)


def test_mean_direction_matches_loc_for_large_concentration():
    d = 5
    loc = unit(torch.randn(3, d))
    z = PowerSpherical(loc, torch.full((3,), 1000.0)).sample(torch.Size([2000]))
    direction = unit(z.mean(0))
    assert ((direction * loc).sum(-1) > 0.9999).all()
    # and the draws concentrate: E[t] = 1000 / 1004
    assert ((z * loc).sum(-1).mean(0) > 0.99).all()


def test_entropy_and_kl_to_the_uniform():
    d, n = 4, 100_000
    p = PowerSpherical(unit(torch.randn(2, d, dtype=F64)), torch.tensor([0.7, 12.0], dtype=F64))
    z = p.sample(torch.Size([n]))
    neg_log_p = -p.log_prob(z)
    se = neg_log_p.std(0) / math.sqrt(n)
    assert ((neg_log_p.mean(0) - p.entropy()).abs() < 5 * se).all()
    u = HypersphericalUniform(d, dtype=F64).expand([2])
    kl = kl_divergence(p, u)
    torch.testing.assert_close(kl, log_sphere_area(d) - p.entropy())
    assert (kl > 0).all()
    zero = kl_divergence(
        PowerSpherical(unit(torch.randn(d, dtype=F64)), torch.tensor(0.0, dtype=F64)),
        HypersphericalUniform(d, dtype=F64),
    )
    assert abs(zero.item()) < 1e-10


def test_batch_shape_and_expand():
    d = 4
    p = PowerSpherical(unit(torch.randn(3, d)), torch.rand(2, 1) * 5)
    assert p.batch_shape == (2, 3) and p.event_shape == (d,)
    z = p.rsample(torch.Size([7]))
    assert z.shape == (7, 2, 3, d) and p.log_prob(z).shape == (7, 2, 3)
    wide = p.expand(torch.Size([5, 2, 3]))
    assert isinstance(wide, PowerSpherical) and wide.batch_shape == (5, 2, 3)
    assert wide.rsample().shape == (5, 2, 3, d)
    torch.testing.assert_close(wide.log_prob(z[0]), p.log_prob(z[0]).expand(5, 2, 3))
    # log_prob broadcasts extra leading dimensions, and singleton batch dimensions of the value
    assert p.log_prob(z[:, None]).shape == (7, 1, 2, 3)
    torch.testing.assert_close(p.log_prob(z[:, :1]), p.log_prob(z[:, :1].expand(7, 2, 3, d)))
    with pytest.raises(ValueError):
        PowerSpherical(torch.ones(3, 1), torch.ones(3))


def test_rsample_gradients_match_the_closed_form_gradient():
    # objective f(z) = a.z + (b.z)^2, with mu = m / |m|; its expectation has a closed form in (kappa, m):
    # E[z] = E[t] mu and E[z z^T] = c I + (E[t^2] - c) mu mu^T with c = (1 - E[t^2]) / (d - 1).
    # The pathwise gradient, one leaf per draw, averages to the gradient of that closed form.
    d, n, kappa0 = 4, 40_000, 3.0
    gen = torch.Generator().manual_seed(3)
    m0 = torch.randn(d, dtype=F64, generator=gen)
    a, b = torch.randn(d, dtype=F64, generator=gen), torch.randn(d, dtype=F64, generator=gen)

    def f(z):
        return z @ a + (z @ b) ** 2

    kappa = torch.full((n,), kappa0, dtype=F64, requires_grad=True)
    m = m0.expand(n, d).clone().requires_grad_(True)
    f(PowerSpherical(unit(m), kappa).rsample()).sum().backward()
    grad_k, grad_m = kappa.grad, m.grad  # per-draw gradients, (n,) and (n, d)

    k = torch.tensor(kappa0, dtype=F64, requires_grad=True)
    mm = m0.clone().requires_grad_(True)
    mu = unit(mm)
    et, et2 = beta_moments_of_t(k, d)
    c = (1 - et2) / (d - 1)
    expected = et * (mu @ a) + c * (b @ b) + (et2 - c) * (mu @ b) ** 2
    exact_k, exact_m = torch.autograd.grad(expected, [k, mm])

    assert abs(grad_k.mean() - exact_k) < 5 * grad_k.std() / math.sqrt(n)
    assert ((grad_m.mean(0) - exact_m).abs() < 5 * grad_m.std(0) / math.sqrt(n)).all()
    assert exact_k.abs() > 10 * grad_k.std() / math.sqrt(n)  # the check has power: the gradient is not ~0


def test_large_concentration_gradients_are_finite():
    loc = unit(torch.randn(3, 5)).requires_grad_(True)
    kappa = torch.tensor([1e3, 1e5, 1e7], requires_grad=True)
    PowerSpherical(loc, kappa).rsample(torch.Size([100])).sum().backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(kappa.grad).all()


def test_loc_equal_to_e1_needs_no_reflection():
    p = PowerSpherical(torch.tensor([1.0, 0.0, 0.0]), torch.tensor(5.0))
    z = p.rsample(torch.Size([1000]))
    assert constraints.sphere.check(z).all() and torch.isfinite(z).all()
    assert z[:, 0].mean() > 0.5  # E[t] = 5 / 7


# -- the uniform distribution and the priors --------------------------------------------------------------


def test_hyperspherical_uniform_draws_are_uniform_to_second_order():
    d, n = 5, 100_000
    u = HypersphericalUniform(d)
    z = u.sample(torch.Size([n]))
    assert constraints.sphere.check(z).all()
    # E z = 0, E z z^T = I / d; s.e. of a mean: sqrt(1/d / n), of a second moment: ~ sqrt(2/(d(d+2)) / n)
    assert z.mean(0).abs().max() < 5 * math.sqrt(1 / d / n)
    second = z.T @ z / n
    assert (second - torch.eye(d) / d).abs().max() < 5 * math.sqrt(3 / (d * (d + 2)) / n)
    torch.testing.assert_close(u.log_prob(z[:3]), torch.full((3,), -log_sphere_area(d)))


@pytest.mark.parametrize("prior_cls", [SphereUniform, DirichletPrior])
def test_priors_pass_the_generic_prior_checks(prior_cls):
    d = 3
    prior = prior_cls(d)
    p = prior()
    assert p.event_shape == (d,) and p.batch_shape == ()
    z = p.expand([50]).sample()
    assert z.shape == (50, d)
    assert torch.isfinite(p.log_prob(z)).all() and p.log_prob(z).shape == (50,)
    assert p.support.check(z).all() and prior.support.check(z).all()
    assert prior.double()().sample().dtype == torch.float64
    assert not list(prior.parameters())


def test_sphere_uniform_prior():
    p = SphereUniform(3)()
    assert p.support is constraints.sphere
    torch.testing.assert_close(p.log_prob(unit(torch.randn(4, 3))), torch.full((4,), -math.log(4 * math.pi)))
    assert SphereUniform(3).state_dict() == {}
    with pytest.raises(ValueError):
        SphereUniform(1)


def test_dirichlet_prior():
    prior = DirichletPrior(4, concentration=2.0)
    assert "concentration" in prior.state_dict()
    p = prior()
    z = p.sample(torch.Size([10]))
    expected = torch.distributions.Dirichlet(torch.full((4,), 2.0)).log_prob(z)
    torch.testing.assert_close(p.log_prob(z), expected)
    assert p.support is constraints.simplex
    # Dirichlet(1) is uniform on the simplex: density (d - 1)! everywhere
    torch.testing.assert_close(DirichletPrior(4)().log_prob(z), torch.full((10,), math.log(6.0)))
    with pytest.raises(ValueError):
        DirichletPrior(1)
    with pytest.raises(ValueError):
        DirichletPrior(3, concentration=0.0)
