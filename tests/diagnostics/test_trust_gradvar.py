"""The score-function baseline of ``grad-variance`` is one a training run could have.

The leave-one-out baseline over K particles of the same example is unbiased, lowers the variance of
the plain score function even at equal cost, and is computed from the K particles of each step alone:
the evaluated batch is never seen before the recorded draws (no warm-up) and no state is carried.
"""

import pyro
import pyro.distributions as dist
import torch

from ppl_vae.diagnostics import gradients

torch.set_num_threads(1)

#: The estimator under test (the leave-one-out baseline).
LOO = "score-loo"
#: Tolerance in Monte Carlo standard errors.
Z = 4.5


def _toy():
    # Observations far from the guide's mean: the learning signal varies a lot between draws.
    return gradients.gaussian_toy([3.0, -2.0], loc=[0.0, 0.5], scale=[0.5, 0.8])


def test_loo_baseline_is_unbiased_and_beats_the_score_function_at_equal_cost():
    toy = _toy()
    k = 8
    result = gradients.gradient_variance(
        toy.model, toy.guide, toy.x, toy.params, num_repeats=800, seed=3, estimators=("score", LOO), loo_particles=k
    )
    loo, score = result["estimators"][LOO], result["estimators"]["score"]
    assert loo["particles"] == k and score["particles"] == 1
    # unbiased: every coordinate of the mean gradient agrees with the closed form within Z s.e.
    z = (loo["mean"] - toy.exact()) / loo["mean_se"]
    assert torch.all(z.abs() < Z), z
    # lower variance than the plain score function averaged over as many particles (variance / K):
    # the improvement comes from the baseline, not from the K particles alone.
    gap = score["total_variance"] / k - loo["total_variance"]
    assert gap > Z * (score["total_variance_se"] / k + loo["total_variance_se"]), (score["total_variance"], loo)


def test_loo_gradient_is_the_leave_one_out_formula():
    # The surrogate's gradient, recomputed by hand from the particles the model saw:
    # -(1/K) sum_k d/dphi log q(z_k) * (f_k - mean_{j != k} f_j), per example.
    toy = _toy()
    k, n = 5, toy.x.shape[0]
    seen = []

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            seen.append(z.detach().clone())
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    pyro.set_rng_seed(0)
    loss = gradients.loo_loss(model, toy.guide, toy.x, ("z",), k)
    got = torch.cat(torch.autograd.grad(loss, toy.params))
    z = seen[-1]
    assert z.shape == (k, n)
    loc, scale = toy.loc.detach(), toy.log_scale.detach().exp()
    normal = torch.distributions.Normal
    f = normal(0.0, 1.0).log_prob(z) + normal(z, 1.0).log_prob(toy.x) - normal(loc, scale).log_prob(z)
    baseline = (f.sum(0, keepdim=True) - f) / (k - 1)
    d_loc = (z - loc) / scale**2
    d_log_scale = (z - loc) ** 2 / scale**2 - 1
    expected = torch.cat([-((f - baseline) * d_loc).mean(0), -((f - baseline) * d_log_scale).mean(0)])
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_the_baseline_never_sees_the_evaluated_batch_before_the_repeats():
    # Every recorded draw is one fresh evaluation of the model on the batch: no warm-up evaluations on
    # it (a baseline warmed on the batch being measured is an oracle no training run has).
    toy = _toy()
    calls = []

    def model(x):
        if torch.is_grad_enabled():  # evaluations that feed a gradient or a baseline
            calls.append(x)
        return toy.model(x)

    repeats = 7
    store = set(pyro.get_param_store().keys())
    gradients.gradient_variance(model, toy.guide, toy.x, toy.params, num_repeats=repeats, seed=0, estimators=(LOO,))
    assert len(calls) == repeats
    assert set(pyro.get_param_store().keys()) == store  # no baseline state kept anywhere


def test_the_estimate_depends_only_on_this_step_not_on_other_batches():
    # Stateless: with the same random draws, the estimate for a batch is the same whether or not the
    # estimator was run on another batch (or on this one) before.
    toy = _toy()
    other = gradients.gaussian_toy([-5.0, 7.0], loc=[1.0, -1.0], scale=[0.3, 2.0])

    def estimate(seed):
        pyro.set_rng_seed(seed)
        loss = gradients.loo_loss(toy.model, toy.guide, toy.x, ("z",), 6)
        return torch.cat(torch.autograd.grad(loss, toy.params))

    fresh = estimate(11)
    for _ in range(3):
        pyro.set_rng_seed(5)
        gradients.loo_loss(other.model, other.guide, other.x, ("z",), 6).backward()
        estimate(12)
    assert torch.equal(estimate(11), fresh)
