"""A user's own structured prior, installed as a package that declares the ``ppl_vae.priors`` entry
point, trains, evaluates, samples and lists from the CLI by name (a small package with its dist-info, as
pip would install it, put on the import path)."""

from __future__ import annotations

import json
import textwrap

import pytest

from ppl_vae.cli import main

PLUGIN = textwrap.dedent(
    '''
    import pyro, pyro.distributions as dist, torch

    class Sparse(torch.nn.Module):
        """z is exactly small ("off") or spread ("on"), a discrete switch per example summed out."""
        label_role, guide_extra = "none", 0

        def __init__(self, latent_dim, **_):
            super().__init__()
            self.code_dim = latent_dim
            self.logit = torch.nn.Parameter(torch.zeros(()))
            self.register_buffer("zero", torch.zeros(latent_dim))

        def forward(self, c=None):
            on = pyro.sample("on", dist.Bernoulli(logits=self.logit), infer={"enumerate": "parallel"})
            scale = 0.1 + on.unsqueeze(-1)  # "off": N(0, 0.1^2), "on": N(0, 1.1^2)
            return pyro.sample("z", dist.Normal(self.zero, scale).to_event(1))

        def local_guide(self, x, encoder, c=None):
            return pyro.sample("z", encoder(x))
    '''
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "sparse_prior.py").write_text(PLUGIN)
    info = root / "sparse_prior-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sparse-prior\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[ppl_vae.priors]\nsparse = sparse_prior:Sparse\nbroken = no_such_module:X\n"
    )
    return root


@pytest.fixture
def installed(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))  # importlib.metadata finds the dist-info on sys.path
    return site


def test_a_plugin_prior_is_listed_trained_evaluated_and_sampled_by_name(installed, tmp_path, capsys):
    assert main(["list"]) == 0 and "sparse_prior:Sparse" in capsys.readouterr().out
    run = tmp_path / "run"
    tiny = ["--latent-dim", "2", "--hidden-dims", "16", "--epochs", "2", "--batch-size", "256", "--quiet"]
    assert main(["train", "--prior", "sparse", *tiny, "--out", str(run)]) == 0
    assert json.loads((run / "run.json").read_text())["objective"]["sites"] == {"z": "monte-carlo", "on": "enumerated"}
    assert main(["evaluate", str(run), "-k", "4", "--quiet"]) == 0  # the run folder is loaded again by name
    assert json.loads((run / "eval.json").read_text())["log_likelihood"] < 0
    assert main(["sample", str(run), "-n", "4"]) == 0


def test_a_plugin_that_cannot_be_imported_is_one_line_and_exit_2(installed, tmp_path, capsys):
    assert main(["train", "--prior", "broken", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "no_such_module:X" in err and "importing it failed" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
