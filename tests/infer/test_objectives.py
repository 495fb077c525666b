"""Objectives, the KL weight beta, and the refusal of combinations that cannot work."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from ppl_vae import VAE, ConfigError, fit
from ppl_vae.cli import main
from ppl_vae.guides import GUIDES
from ppl_vae.infer.objectives import OBJECTIVES, check_compatible
from ppl_vae.models import LIKELIHOODS, PRIORS

SHAPE = (1, 4, 4)


@pytest.fixture
def x():
    return torch.bernoulli(torch.full((8, *SHAPE), 0.4), generator=torch.Generator().manual_seed(7))


def test_beta_scales_exactly_the_kl_part(x):
    """With the same draws, the loss is reconstruction + beta * KL-term: linear in beta."""
    vae = VAE(SHAPE, latent_dim=2, hidden_dims=(8,))
    losses = []
    for beta in (0.0, 1.0, 2.0):
        pyro.set_rng_seed(1)
        losses.append(Trace_ELBO().loss(vae.model, vae.guide, x, beta=beta))
    assert losses[2] - losses[1] == pytest.approx(losses[1] - losses[0], rel=1e-5)
    assert losses[1] != pytest.approx(losses[0])


def test_meanfield_is_refused_without_a_registered_kl(x):
    vae = VAE(SHAPE, latent_dim=2, hidden_dims=(8,), prior="vamp")
    with pytest.raises(ConfigError, match="no(ne)? .*registered.*--elbo trace"):
        check_compatible(vae, x[:1], elbo="meanfield")
    check_compatible(VAE(SHAPE, latent_dim=2, hidden_dims=(8,)), x[:1], elbo="meanfield")


def test_a_guide_on_another_space_is_refused_with_the_fix(x):
    vae = VAE(SHAPE, latent_dim=3, hidden_dims=(8,), prior="sphere", guide="normal")
    with pytest.raises(ConfigError, match="sphere.*--guide power-spherical"):
        check_compatible(vae, x[:1])


def test_iwae_with_beta_is_refused(x):
    with pytest.raises(ConfigError, match="beta"):
        check_compatible(VAE(SHAPE, latent_dim=2, hidden_dims=(8,)), x[:1], elbo="iwae", num_particles=4, beta=0.5)


def test_iwae_objective_is_tighter_than_the_elbo_in_expectation(x):
    vae = VAE(SHAPE, latent_dim=2, hidden_dims=(8,))
    from ppl_vae.infer.step import make_elbo

    iwae = torch.tensor([make_elbo("iwae", 64).loss(vae.model, vae.guide, x) for _ in range(30)])
    elbo = torch.tensor([make_elbo("trace", 64).loss(vae.model, vae.guide, x) for _ in range(30)])
    diff = elbo.mean() - iwae.mean()  # losses are negated bounds
    se = (elbo.var() / 30 + iwae.var() / 30).sqrt()
    assert diff > 4 * se


def test_cli_refuses_before_training(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--prior", "vamp", "--elbo", "meanfield", "--epochs", "1", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--elbo trace" in err and err.count("\n") == 1
    assert not out.exists()


def test_list_names_every_component(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*PRIORS, *GUIDES, *LIKELIHOODS, *OBJECTIVES]:
        assert f"  {name} " in out, name


def _combinations():
    for prior in sorted(PRIORS):
        for guide in sorted(GUIDES):
            for elbo in OBJECTIVES:
                yield prior, guide, elbo


@pytest.mark.parametrize("prior, guide, elbo", list(_combinations()))
def test_every_compatible_combination_trains(prior, guide, elbo):
    """Registry-driven: each prior x guide x objective either is refused up front with a ConfigError,
    or trains on digits-like data with finite losses that improve."""
    data = torch.bernoulli(torch.full((64, *SHAPE), 0.3), generator=torch.Generator().manual_seed(0))
    data[:32, :, :2] = 1.0  # two kinds of examples: something to learn
    pyro.set_rng_seed(0)
    try:
        vae = VAE(SHAPE, latent_dim=3, hidden_dims=(16,), prior=prior, guide=guide)
        check_compatible(vae, data[:1], elbo=elbo, num_particles=4 if elbo == "iwae" else 1)
    except ConfigError:
        return
    result = fit(
        vae,
        data,
        epochs=10,
        batch_size=32,
        lr=1e-2,
        elbo=elbo,
        num_particles=4 if elbo == "iwae" else 1,
        progress=False,
    )
    losses = torch.tensor(result.losses)
    assert torch.isfinite(losses).all()
    assert losses[-6:].mean() < losses[:6].mean()
