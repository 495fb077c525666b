"""Every named prior, guide, likelihood and objective trains and evaluates from the CLI, and the
Monte Carlo KL agrees with the analytic KL wherever torch registers one."""

import json
import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from ppl_vae import VAE, ConfigError
from ppl_vae.cli import main
from ppl_vae.guides import GUIDES
from ppl_vae.infer.objectives import OBJECTIVES, check_compatible
from ppl_vae.models import LIKELIHOODS, PRIORS
from ppl_vae.models.structured import OPTION_PRIORS

TINY = ["--latent-dim", "3", "--hidden-dims", "16", "--epochs", "1", "--batch-size", "256", "--quiet"]
#: The structured priors whose classes come from the data set's labels are chosen by their own flags.
BY_FLAG = {
    "semi-supervised": ["--labelled", "20"],
    "conditional": ["--condition-on", "label"],
    "covariates": ["--condition-on", "u"],  # columns of a table (written by the test)
    "groups": ["--groups", "site"],
}
CASES = (
    [BY_FLAG.get(p, ["--prior", p]) for p in PRIORS]
    + [["--guide", g] for g in GUIDES if g not in ("power-spherical", "dirichlet")]
    + [["--likelihood", lik] for lik in LIKELIHOODS]
    + [["--elbo", e, "--particles", "2"] for e in OBJECTIVES]
)


@pytest.mark.parametrize("flags", CASES, ids=[" ".join(c[:2]) for c in CASES])
def test_trains_and_evaluates_from_the_cli(flags, tmp_path):
    out = tmp_path / "run"
    data = []
    if flags[0] == "--likelihood" and LIKELIHOODS[flags[1]].data_kind == "count":  # counts need a count table
        np.savez(tmp_path / "counts.npz", x=np.random.default_rng(0).poisson(2.0, size=(60, 6)))
        data = ["--dataset", f"table:{tmp_path / 'counts.npz'}"]
    if flags[1] in ("u", "site"):  # covariates and groups are columns of a table
        rng = np.random.default_rng(0)
        rows = [f"{a:.4f},{b:.4f},{u:.4f},{i % 3}" for i, (a, b, u) in enumerate(rng.normal(size=(60, 3)))]
        (tmp_path / "t.csv").write_text("a,b,u,site\n" + "\n".join(rows) + "\n")
        data = ["--dataset", f"table:{tmp_path / 't.csv'}", "--likelihood", "gaussian"]
    assert main(["train", *TINY, *flags, *data, "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "-k", "8", "--quiet"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert all(math.isfinite(result[k]) for k in ("elbo", "log_likelihood", "reconstruction", "kl"))
    config = json.loads((out / "config.json").read_text())
    assert str(config[flags[0].lstrip("-").replace("-", "_")]) == flags[1]


def _pairs():
    for prior in sorted(PRIORS):
        for guide in sorted(GUIDES):
            yield prior, guide


@pytest.mark.parametrize("prior, guide", list(_pairs()))
def test_monte_carlo_kl_matches_analytic_kl_where_registered(prior, guide):
    shape = (1, 4, 4)
    pyro.set_rng_seed(0)
    x = torch.bernoulli(torch.full((4, *shape), 0.5), generator=torch.Generator().manual_seed(1))
    spec = f"{prior}:3" if prior in OPTION_PRIORS else prior  # classes, covariates or groups after a colon
    vae = VAE(shape, latent_dim=3, hidden_dims=(8,), prior=spec, guide=guide)
    side = {"c": torch.zeros(4, dtype=torch.long)} if vae.label_role != "none" else {}
    if hasattr(vae.prior, "covariate_dim"):
        side = {"c": torch.randn(4, 3)}
    try:
        check_compatible(vae, x[:1], c=side["c"][:1] if side else None)
    except ConfigError:  # e.g. a sphere guide for a real prior: nothing to compare
        return
    if vae.has_global_latents:
        return
    with torch.no_grad(), poutine.block():  # q(z | x, ...) and p(z | ...) as the programs draw them
        guide_trace = poutine.trace(vae.guide).get_trace(x, **side)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, **side)
    with torch.no_grad():
        q, p = guide_trace.nodes["z"]["fn"], model_trace.nodes["z"]["fn"]
        try:
            analytic = kl_divergence(q, p)  # (4,)
        except NotImplementedError:
            return
        z = q.sample(torch.Size([20000]))
        terms = q.log_prob(z) - p.log_prob(z)  # (S, 4)
        mc, se = terms.mean(0), terms.std(0) / math.sqrt(terms.shape[0])
    if guide == "delta":  # a point mass: every draw gives the same, exact value
        torch.testing.assert_close(mc, analytic)
        return
    assert (se > 0).all()
    assert ((mc - analytic).abs() < 4 * se).all(), (mc, analytic, se)
