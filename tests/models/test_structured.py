"""Structured priors (mixture:K, semi-supervised:K, conditional:K): what enumeration sums, what labels
do, and what is refused before training."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from ppl_vae import VAE, ConfigError
from ppl_vae.infer.fit import fit
from ppl_vae.infer.objectives import ENUMERATED, MONTE_CARLO, check_compatible
from ppl_vae.models import MixturePrior, SemiSupervised

SHAPE = (1, 4, 4)


def _x(n=6, seed=0):
    return torch.bernoulli(torch.full((n, *SHAPE), 0.4), generator=torch.Generator().manual_seed(seed))


def _vae(prior, guide="normal", seed=0):
    pyro.set_rng_seed(seed)
    return VAE(SHAPE, 2, (8,), prior=prior, guide=guide)


def test_enumerated_mixture_elbo_equals_the_marginal_mixture_density_at_the_same_draws():
    """Summing y out of the model in TraceEnum_ELBO gives log sum_y pi_y N(z; loc_y, scale_y) at the
    guide's draw of z: the ELBO of the same VAE whose prior is that mixture density, draw for draw."""
    vae = _vae("mixture:3")
    with torch.no_grad():  # a non-default prior: unequal weights, moved components
        vae.prior.logits.copy_(torch.tensor([0.5, -0.3, 0.1]))
        vae.prior.locs.add_(0.7)
    marginal = VAE(SHAPE, 2, (8,), prior=vae.prior.marginal(), guide=vae.encoder, decoder=vae.decoder)
    x = _x()
    for seed in (0, 1):
        pyro.set_rng_seed(seed)
        enum = TraceEnum_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(seed)
        plain = Trace_ELBO().loss(marginal.model, marginal.guide, x)
        assert enum == pytest.approx(plain, rel=1e-5)


def test_a_known_label_takes_all_of_q_y_exactly():
    """With every label known, the semi-supervised ELBO (alpha = 0) is the ELBO of the model with y
    observed: exactly the same value (a point-mass guide makes it deterministic), and no gradient at
    all reaches the classifier."""
    pyro.set_rng_seed(0)
    vae = VAE(SHAPE, 2, (8,), prior=SemiSupervised(2, 3, data_shape=SHAPE, hidden_dims=(8,), alpha=0.0), guide="delta")
    x, c = _x(), torch.tensor([0, 1, 2, 2, 1, 0])
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x, c=c)
    observed = Trace_ELBO().loss(
        poutine.condition(vae.model, data={"y": c}), poutine.block(vae.guide, hide=["y"]), x, c=c
    )
    assert loss.item() == pytest.approx(observed, rel=1e-6)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in vae.prior.classifier.parameters())
    # Unknown labels: y is summed under q(y | x), and the classifier is trained through the ELBO.
    vae.zero_grad()
    TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x, c=torch.full((6,), -1)).backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in vae.prior.classifier.parameters())


def test_the_auxiliary_term_adds_alpha_log_q_of_each_known_label():
    pyro.set_rng_seed(0)
    vae = VAE(SHAPE, 2, (8,), prior=SemiSupervised(2, 3, data_shape=SHAPE, hidden_dims=(8,), alpha=7.0), guide="delta")
    x, c = _x(), torch.tensor([0, -1, 2, -1, 1, -1])
    log_q = torch.log_softmax(vae.prior.classify(x), -1)
    expected = 7.0 * sum(log_q[n, c[n]] for n in range(6) if c[n] >= 0)
    trace = poutine.trace(vae.model).get_trace(x, c=c)
    trace.compute_log_prob()
    assert trace.nodes["auxiliary"]["log_prob"].sum().item() == pytest.approx(expected.item(), rel=1e-6)
    assert "auxiliary" not in poutine.trace(vae.model).get_trace(x).nodes  # evaluation: no labels, no term


@pytest.mark.parametrize(
    "prior, terms",
    [("mixture:3", {"z": MONTE_CARLO, "y": ENUMERATED}), ("semi-supervised:3", {"y": ENUMERATED, "z": MONTE_CARLO})],
)
def test_check_compatible_reports_enumerated_sites(prior, terms):
    assert check_compatible(_vae(prior), _x(2), c=torch.tensor([0, -1])) == terms


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"elbo": "iwae"}, "use --elbo auto"),
        ({"elbo": "meanfield"}, "use --elbo auto"),
        ({"beta": 0.5}, "use --beta 1"),
        ({"kl_schedule": "warmup:2"}, "without --kl-schedule"),
    ],
)
def test_what_enumeration_cannot_do_is_refused_before_training(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        fit(_vae("mixture:3"), _x(8), epochs=1, progress=False, **kwargs)


@pytest.mark.parametrize(
    "prior, labels, fragment",
    [
        ("normal", torch.zeros(8, dtype=torch.long), "no label site"),
        ("conditional:3", None, "needs the label of every"),
        ("conditional:3", torch.tensor([0, 1, 2, 0, 1, 2, 0, -1]), "use 0..2"),
        ("semi-supervised:3", torch.tensor([0, 1, 2, 0, 1, 2, 0, 3]), "use -1..2"),
        ("semi-supervised:3", torch.zeros(7, dtype=torch.long), "shape \\(8,\\)"),
        ("semi-supervised:3", torch.zeros(8), "integer class labels"),
    ],
)
def test_bad_labels_are_refused_with_one_line(prior, labels, fragment):
    with pytest.raises(ConfigError, match=fragment) as error:
        fit(_vae(prior), _x(8), epochs=1, progress=False, labels=labels)
    assert "\n" not in str(error.value)


def test_conditional_samples_follow_the_requested_class_and_need_one():
    vae = _vae("conditional:3")
    seen = []
    vae.decoder.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    assert vae.sample(5, c=2).shape == (5, *SHAPE)
    assert torch.equal(seen[-1][:, 2:], torch.tensor([[0.0, 0.0, 1.0]]).expand(5, 3))  # [z, onehot(2)]
    vae.sample(4, c=torch.tensor([0, 1, 2, 1]))
    assert torch.equal(seen[-1][:, 2:].argmax(-1), torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ConfigError, match="pass c"):
        vae.sample(3)
    with pytest.raises(ConfigError, match="no distribution of z alone"):
        vae.prior_distribution()
    with pytest.raises(ConfigError, match="q\\(z \\| x, label\\)"):
        vae.posterior(_x(2))


def test_a_users_structured_prior_trains_with_the_same_calls():
    """The README's example: a two-level discrete story written as a short Pyro program."""

    class Sparse(torch.nn.Module):
        label_role, code_dim, guide_extra = "none", 2, 0

        def __init__(self):
            super().__init__()
            self.logit = torch.nn.Parameter(torch.zeros(()))

        def forward(self, c=None):
            on = pyro.sample("on", dist.Bernoulli(logits=self.logit), infer={"enumerate": "parallel"})
            scale = 0.1 + on.unsqueeze(-1).expand(on.shape + (2,))  # "off": z near 0, "on": z spread
            return pyro.sample("z", dist.Normal(0.0, scale).to_event(1))

        def local_guide(self, x, encoder, c=None):
            return pyro.sample("z", encoder(x))

    pyro.set_rng_seed(0)
    vae = VAE(SHAPE, 2, (8,), prior=Sparse())
    result = fit(vae, _x(16), _x(4, 1), epochs=2, batch_size=8, progress=False)
    assert result.objective["sites"] == {"z": MONTE_CARLO, "on": ENUMERATED}
    assert vae.prior.logit.grad is not None or result.history[-1]["heldout_elbo"] < 0


def test_mixture_prior_needs_two_components():
    with pytest.raises(ConfigError, match="at least 2 components"):
        _vae("mixture:1")
    with pytest.raises(ConfigError, match="must be an integer"):
        _vae("mixture:ten")
    assert isinstance(_vae("mixture").prior, MixturePrior) and _vae("mixture").prior.num_classes == 10


def test_group_effects_draw_z_around_each_groups_mean():
    vae = VAE((3,), 2, (8,), prior="groups:3", likelihood="gaussian")
    with torch.no_grad():  # q(mu_g) at three distinct means, q(tau) near 0: z ~ mu_g almost exactly
        vae.prior.q_mu_loc.copy_(torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]]))
        vae.prior.q_mu_log_scale.fill_(-8.0)
        vae.prior.q_tau_loc.fill_(-8.0)
        vae.prior.q_tau_log_scale.fill_(-8.0)
    seen = []
    vae.decoder.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    pyro.set_rng_seed(0)
    vae.sample(5, c=torch.tensor([0, 1, 2, 1, 0]))
    expected = vae.prior.q_mu_loc[torch.tensor([0, 1, 2, 1, 0])]
    assert torch.allclose(seen[-1], expected, atol=1e-2)
    with pytest.raises(ConfigError, match="pass c"):
        vae.sample(2)


def test_group_effects_are_global_latents_evaluated_posterior_predictively():
    from ppl_vae.infer.evaluate import ELBO_GIVEN_GLOBALS, evaluate

    pyro.set_rng_seed(0)
    vae = VAE((3,), 2, (8,), prior="groups:2", likelihood="gaussian")
    x, g = torch.randn(12, 3), torch.tensor([0, 1] * 6)
    assert vae.has_global_latents and vae.label_role == "group"
    assert check_compatible(vae, x[:2], c=g[:2]) == {"mu": "analytic", "tau": "monte-carlo", "z": "analytic"}
    result = evaluate(vae, x, c=g, num_particles=50, seed=0)
    assert result.elbo_kind == ELBO_GIVEN_GLOBALS and result.global_kl > 0
    assert result.joint_elbo == pytest.approx(result.elbo - result.global_kl / 12)
    with pytest.raises(ConfigError, match="needs the group of every"):
        fit(vae, x, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="global latents"):
        fit(vae, x, epochs=1, progress=False, labels=g, elbo="iwae")


def test_the_readme_structured_prior_example_runs_as_written():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"```python\n(class Sparse\(torch\.nn\.Module\):.*?)```", readme, re.S).group(1)
    assert len(block.strip().splitlines()) <= 15
    namespace = {"torch": torch, "pyro": pyro, "dist": dist}
    exec(block, namespace)  # noqa: S102 - the README's own example
    pyro.set_rng_seed(0)
    vae = VAE(SHAPE, 3, (8,), prior=namespace["Sparse"](3))
    result = fit(vae, _x(16), _x(4, 1), epochs=2, batch_size=8, progress=False)
    assert result.objective["sites"] == {"z": MONTE_CARLO, "on": ENUMERATED}
    assert result.history[-1]["heldout_elbo"] < 0


def test_a_semi_supervised_run_resumes_exactly():
    x, heldout = _x(24), _x(6, 1)
    labels = torch.tensor([0, 1, 2] + [-1] * 21)
    kwargs = dict(batch_size=8, progress=False, labels=labels, heldout_labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    whole = fit(_vae("semi-supervised:3", seed=3), x, heldout, epochs=3, **kwargs)
    vae = _vae("semi-supervised:3", seed=3)
    first = fit(vae, x, heldout, epochs=2, **kwargs)
    rest = fit(vae, x, heldout, epochs=3, resume=first.state, **kwargs)
    assert rest.losses == whole.losses
    assert rest.history[-1]["heldout_accuracy"] == whole.history[-1]["heldout_accuracy"]


def test_accuracy_counts_known_labels_only():
    from ppl_vae.infer.labels import accuracy

    pyro.set_rng_seed(0)
    vae = VAE(SHAPE, 2, (8,), prior=SemiSupervised(2, 3, data_shape=SHAPE, hidden_dims=(8,)))
    x = _x(8)
    predicted = vae.prior.classify(x).argmax(-1)
    labels = torch.where(torch.arange(8) < 4, predicted, torch.full_like(predicted, -1))
    labels[0] = (predicted[0] + 1) % 3  # one of the four known labels is wrong
    acc, se = accuracy(vae, x, labels)
    assert acc == pytest.approx(0.75) and se == pytest.approx((0.75 * 0.25 / 4) ** 0.5)
    with pytest.raises(ConfigError, match="at least one labelled"):
        accuracy(vae, x, torch.full((8,), -1))


def test_mixture_with_an_amortized_component_posterior_from_its_name():
    vae = _vae("mixture:3:amortized")
    assert vae.prior.amortized_y and vae.prior.guide_extra == 3
    assert check_compatible(vae, _x(2)) == {"y": ENUMERATED, "z": MONTE_CARLO}
    assert vae.reconstruct(_x(2)).shape == (2, *SHAPE)  # decodes q(z | x, y) at the classifier's guess
    with pytest.raises(ConfigError, match="must be 'amortized'"):
        _vae("mixture:3:other")
