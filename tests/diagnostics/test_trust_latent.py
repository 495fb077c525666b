"""latent-map decodes the most informative pair of latent dimensions, says which and why, and takes
``--dims I J`` (validated)."""

import pyro
import pytest
import torch

from ppl_vae.app import latent as latent_app
from ppl_vae.app import latent_figures, plots
from ppl_vae.cli import build_parser
from ppl_vae.diagnostics import latent_space
from ppl_vae.errors import ConfigError, PplVaeError
from ppl_vae.vae import VAE

torch.set_num_threads(1)

LATENT_DIM = 4


def _linears(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def _collapsed_01_vae(guide="normal"):
    """A VAE whose latent dimensions 0 and 1 are collapsed by construction, as in a trained model: the
    encoder gives q(z_0 | x) = q(z_1 | x) = N(0, 1), the prior, for every x, and the decoder ignores
    z_0 and z_1. Dimensions 2 and 3 depend on x and are decoded."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = VAE((1, 4, 4), latent_dim=LATENT_DIM, hidden_dims=(8,), guide=guide)
    last = _linears(vae.encoder.encoder)[-1]
    first = _linears(vae.decoder)[0]
    with torch.no_grad():
        for j in (0, 1):
            last.weight[j].zero_()  # loc_j(x) = 0
            last.bias[j] = 0.0
            if guide == "normal":
                last.weight[LATENT_DIM + j].zero_()  # log scale_j(x) = 0: scale 1
                last.bias[LATENT_DIM + j] = 0.0
        for j in (2, 3):
            last.weight[j].mul_(10)
        first.weight[:, :2] = 0.0  # the decoder ignores z_0, z_1
        first.weight[:, 2:].mul_(5)
    return vae


def _data(n=100):
    return torch.bernoulli(torch.full((n, 1, 4, 4), 0.5), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("guide, criterion", [("normal", "kl"), ("delta", "activity")])
def test_informative_dims_excludes_dimensions_collapsed_by_construction(guide, criterion):
    vae, x = _collapsed_01_vae(guide), _data()
    info = latent_space.informative_dims(vae, x, k=2)
    assert info["dims"] == [2, 3]
    assert info["criterion"] == criterion
    assert info["scores"][0] == pytest.approx(0.0, abs=1e-6) and info["scores"][1] == pytest.approx(0.0, abs=1e-6)
    assert min(info["scores"][2], info["scores"][3]) > 0.1
    assert info["collapsed"] == [] and "z[2]" in info["reason"] and "z[3]" in info["reason"]
    # the grid over the chosen pair shows something; over dims 0 and 1 every image is the same
    assert latent_space.latent_grid(vae, 5, 2.0, dims=info["dims"]).std(0).max() > 1e-3
    assert latent_space.latent_grid(vae, 5, 2.0, dims=(0, 1)).std(0).max() < 1e-6
    with pytest.raises(ConfigError, match="k must be"):
        latent_space.informative_dims(vae, x, k=LATENT_DIM + 1)


def _run_latent_map(monkeypatch, tmp_path, *extra):
    vae, x = _collapsed_01_vae(), _data()
    monkeypatch.setattr(latent_app, "load_image_run", lambda run_dir: (vae, x, torch.arange(len(x)) % 3))
    saved = {}
    original = plots.save_figure

    def save(fig, path):
        saved[path.name] = fig
        original(fig, path)

    monkeypatch.setattr(plots, "save_figure", save)
    p, handlers = build_parser()
    args = p.parse_args(["latent-map", str(tmp_path / "run"), "--grid", "3", "--out-dir", str(tmp_path), *extra])
    handlers[args.command](args)
    return saved


def test_latent_map_decodes_the_informative_pair_and_says_why(monkeypatch, tmp_path, capsys):
    saved = _run_latent_map(monkeypatch, tmp_path)
    printed = capsys.readouterr().out
    assert "latent grid over z[2], z[3]" in printed and "largest held-out KL per dimension" in printed
    ax = saved["latent-manifold.png"].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z[2]", "z[3]")
    assert "z[2], z[3]" in ax.get_title() and "largest held-out KL" in ax.get_title()


def test_latent_map_dims_flag_is_used_and_a_collapsed_choice_is_named(monkeypatch, tmp_path, capsys):
    saved = _run_latent_map(monkeypatch, tmp_path, "--dims", "0", "1")
    printed = capsys.readouterr().out
    assert "latent grid over z[0], z[1]" in printed and "chosen with --dims" in printed
    assert "z[0], z[1] collapsed" in printed and "most informative: z[2], z[3]" in printed
    ax = saved["latent-manifold.png"].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z[0]", "z[1]")
    assert "collapsed" in ax.get_title()


@pytest.mark.parametrize(
    "dims, match",
    [
        (["1", "1"], "--dims 1 1: choose two different latent dimensions"),
        (["0", "4"], "--dims 4 is out of range; this run's latent space has dimensions 0 to 3"),
        (["-1", "2"], "--dims: must be an integer >= 0"),
    ],
)
def test_latent_map_rejects_bad_dims_with_a_one_line_config_error(monkeypatch, tmp_path, dims, match):
    with pytest.raises(PplVaeError, match=match) as info:
        _run_latent_map(monkeypatch, tmp_path, "--dims", *dims)
    assert "\n" not in str(info.value)


def test_interpolation_spacers_have_no_tile_frames():
    # The gap columns between the inputs and the path are background, not empty framed tiles.
    paths, inputs = torch.rand(3, 5, 1, 8, 8), torch.rand(3, 2, 1, 8, 8)
    fig = latent_figures.interpolation_figure(paths, inputs)
    grid = torch.as_tensor(fig.axes[0].images[0].get_array())
    w = 8
    for c in (1, 7):  # spacer columns of a row [x0, gap, 5 steps, gap, x1]
        assert torch.all(grid[:, 1 + c * (w + 1) : 1 + c * (w + 1) + w] == 0), c
