"""Latent-space tools: interpolation, traversal, grid, projection, figures and their CLI handlers."""

import argparse
import json

import pytest
import torch

import ppl_vae
from ppl_vae.app import latent_figures
from ppl_vae.cli import build_parser
from ppl_vae.cli.latent import register
from ppl_vae.diagnostics import latent_space
from ppl_vae.errors import ConfigError

torch.set_num_threads(1)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- interpolation ------------------------------------------------------------------------------


def test_linear_interpolation_ends_and_midpoint():
    z0, z1 = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([3.0, 2.0, -1.0])
    path = latent_space.interpolate(z0, z1, 5, "linear")
    assert path.shape == (5, 3)
    assert torch.equal(path[0], z0) and torch.equal(path[-1], z1)
    assert torch.allclose(path[2], (z0 + z1) / 2)
    assert torch.allclose(path[1], 0.75 * z0 + 0.25 * z1)


def test_slerp_ends_constant_norm_and_angles():
    g = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(6, generator=g), torch.randn(6, generator=g)
    z1 = z1 / z1.norm() * z0.norm()  # equal norms
    path = latent_space.interpolate(z0, z1, 11, "slerp")
    assert path.shape == (11, 6)
    assert torch.allclose(path[0], z0) and torch.allclose(path[-1], z1)
    assert torch.allclose(path.norm(dim=1), z0.norm().expand(11), atol=1e-5)
    # equal angular steps along the great circle, and the midpoint is not the (shorter) chord midpoint
    unit = path / path.norm(dim=1, keepdim=True)
    angles = torch.acos((unit[:-1] * unit[1:]).sum(1).clamp(-1, 1))
    assert torch.allclose(angles, angles.mean().expand(10), atol=1e-4)
    assert path[5].norm() > ((z0 + z1) / 2).norm() + 1e-3


def test_slerp_of_parallel_and_antiparallel_vectors_is_finite():
    z0 = torch.tensor([1.0, 2.0, 2.0])
    same = latent_space.interpolate(z0, 2 * z0, 5, "slerp")  # parallel: falls back to linear
    assert torch.isfinite(same).all()
    assert torch.allclose(same, latent_space.interpolate(z0, 2 * z0, 5, "linear"))
    opposite = latent_space.interpolate(z0, -z0, 5, "slerp")  # antiparallel: half great circle
    assert torch.isfinite(opposite).all()
    assert torch.allclose(opposite.norm(dim=1), torch.full((5,), 3.0), atol=1e-5)
    assert torch.allclose(opposite[-1], -z0)
    zero = latent_space.interpolate(torch.zeros(3), z0, 3, "slerp")
    assert torch.allclose(zero[1], z0 / 2)


def test_interpolate_rejects_bad_input():
    with pytest.raises(ConfigError, match="at least 2"):
        latent_space.interpolate(torch.zeros(2), torch.ones(2), 1)
    with pytest.raises(ConfigError, match="method"):
        latent_space.interpolate(torch.zeros(2), torch.ones(2), 3, "cubic")
    with pytest.raises(ConfigError, match="same length"):
        latent_space.interpolate(torch.zeros(2), torch.ones(3), 3)


# -- a VAE whose encoder and decoder we control ---------------------------------------------------


class RecordingVAE:
    """encode: the mean is the first latent_dim pixels; decode: records z, returns z as a 1x1xd image."""

    def __init__(self, latent_dim=3):
        self.latent_dim = latent_dim
        self.data_shape = (1, 1, latent_dim)
        self.device = torch.device("cpu")
        self.seen = []

    def encode(self, x):
        mean = x.reshape(x.shape[0], -1)[:, : self.latent_dim]
        return mean, torch.ones_like(mean)

    def decode(self, z):
        self.seen.append(z.clone())
        return z.reshape(z.shape[0], 1, 1, self.latent_dim)


def test_traverse_changes_only_the_chosen_coordinate():
    vae = RecordingVAE(4)
    z = torch.tensor([0.5, -1.0, 2.0, 0.25])
    values = [-2.0, 0.0, 1.5]
    images = latent_space.traverse(vae, z, 2, values)
    assert images.shape == (3, 1, 1, 4)
    fed = vae.seen[-1]
    assert fed.shape == (3, 4)
    assert torch.equal(fed[:, 2], torch.tensor(values))
    for k in (0, 1, 3):
        assert torch.equal(fed[:, k], z[k].expand(3))
    assert torch.equal(z, torch.tensor([0.5, -1.0, 2.0, 0.25]))  # input not modified
    with pytest.raises(ConfigError, match="out of range"):
        latent_space.traverse(vae, z, 4, values)
    with pytest.raises(ConfigError, match="out of range"):
        latent_space.traverse(vae, z, -1, values)


def test_interpolate_inputs_decodes_path_between_posterior_means():
    vae = RecordingVAE(3)
    x0 = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 1, 3)
    x1 = torch.tensor([0.0, 4.0, 2.0]).reshape(1, 1, 3)
    images, path = latent_space.interpolate_inputs(vae, x0, x1, 3, "linear", return_latents=True)
    assert images.shape == (3, 1, 1, 3)
    assert torch.allclose(vae.seen[-1], path)
    assert torch.allclose(path[1], torch.tensor([0.5, 2.0, 1.0]))
    with pytest.raises(ConfigError, match="one example"):
        latent_space.interpolate_inputs(vae, torch.zeros(2, 1, 1, 3), x1, 3)


def test_latent_grid_shape_and_order():
    vae = RecordingVAE(3)
    base = torch.tensor([9.0, 9.0, 7.0])
    images = latent_space.latent_grid(vae, 3, 2.0, dims=(0, 2), base=base)
    assert images.shape == (9, 1, 1, 3)
    z = vae.seen[-1]
    # row-major, top row first: dims[0] grows along a row, dims[1] decreases down the rows
    expected_x = torch.tensor([-2.0, 0.0, 2.0]).repeat(3)
    expected_y = torch.tensor([2.0, 2.0, 2.0, 0.0, 0.0, 0.0, -2.0, -2.0, -2.0])
    assert torch.allclose(z[:, 0], expected_x)
    assert torch.allclose(z[:, 2], expected_y)
    assert torch.equal(z[:, 1], torch.full((9,), 9.0))  # the other coordinate stays at base
    assert torch.equal(latent_space.grid_points(5, 1.5, 2)[12], torch.zeros(2))  # centre of an odd grid: exactly 0
    default = latent_space.grid_points(4, 1.0, 3)
    assert default.shape == (16, 3) and torch.equal(default[:, 2], torch.zeros(16))
    with pytest.raises(ConfigError, match="latent_dim >= 2"):
        latent_space.grid_points(3, 1.0, 1)
    with pytest.raises(ConfigError, match="at least 2"):
        latent_space.grid_points(1, 1.0, 2)


# -- projection -----------------------------------------------------------------------------------


def test_pca_recovers_the_dominant_direction():
    g = torch.Generator().manual_seed(0)
    direction = torch.tensor([1.0, 2.0, -2.0, 0.0, 4.0])
    direction = direction / direction.norm()
    t = 5.0 * torch.randn(500, 1, generator=g)
    z = t * direction + 0.1 * torch.randn(500, 5, generator=g) + torch.tensor([3.0, -1.0, 0.0, 2.0, 1.0])
    scores, components, variance = latent_space.pca(z, 2)
    assert abs(float(components[0] @ direction.double())) > 0.999
    assert variance[0] > 100 * variance[1]
    projected = latent_space.project_2d(z, "pca")
    assert projected.shape == (500, 2)
    # the first coordinate is the position along the dominant direction (up to sign)
    corr = torch.corrcoef(torch.stack([projected[:, 0].double(), t[:, 0].double()]))[0, 1]
    assert abs(float(corr)) > 0.999


def test_project_2d_identity_padding_and_tsne():
    z2 = torch.randn(10, 2)
    assert torch.equal(latent_space.project_2d(z2, "tsne"), z2)  # d = 2: identity, whatever the method
    z1 = torch.randn(7, 1)
    padded = latent_space.project_2d(z1)
    assert padded.shape == (7, 2) and torch.equal(padded[:, 0], z1[:, 0]) and torch.equal(padded[:, 1], torch.zeros(7))
    g = torch.Generator().manual_seed(0)
    clusters = torch.cat([torch.randn(20, 5, generator=g) * 0.1 + 5 * torch.eye(5)[k] for k in range(2)])
    a = latent_space.project_2d(clusters, "tsne")
    b = latent_space.project_2d(clusters, "tsne")
    assert a.shape == (40, 2) and torch.isfinite(a).all()
    assert torch.allclose(a, b)  # fixed random_state
    # the two clusters stay apart: between-cluster distance beats the within-cluster spread
    gap = (a[:20].mean(0) - a[20:].mean(0)).norm()
    assert gap > 3 * max(a[:20].std(0).norm(), a[20:].std(0).norm())
    with pytest.raises(ConfigError, match="projection"):
        latent_space.project_2d(clusters, "umap")


# -- figures --------------------------------------------------------------------------------------


def test_figures_build_from_tensors():
    images = torch.rand(3, 5, 1, 8, 8)
    fig = latent_figures.interpolation_figure(images, torch.rand(3, 2, 1, 8, 8), "slerp")
    assert len(fig.axes) == 1 and "slerp" in fig.axes[0].get_title()
    fig = latent_figures.traversal_figure(images, [0, 2, 5], torch.linspace(-1, 1, 5))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["z[0]", "z[2]", "z[5]"]
    fig = latent_figures.manifold_figure(torch.rand(16, 1, 8, 8), 4, 2.0)
    assert fig.axes[0].get_xlabel() == "z[0]"
    labels = torch.arange(30) % 3
    fig = latent_figures.scatter_figure(torch.randn(30, 2), labels)
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["0", "1", "2"]
    fig = latent_figures.scatter_figure(torch.randn(30, 2), torch.arange(30), latent_dim=5, method="tsne")
    assert len(fig.axes) == 2  # many labels: a colour bar
    with pytest.raises(ConfigError, match="images"):
        latent_figures.interpolation_figure(torch.rand(2, 3, 5, 7, 2), None)


# -- CLI handlers on a tiny trained run -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("latent") / "run"
    ppl_vae.train_run(ppl_vae.Config.tiny(), run_dir, progress=False)
    return run_dir


def run_cli(argv):
    parser, handlers = build_parser()  # the real parser: flags are checked as they are parsed
    args = parser.parse_args(argv)
    return handlers[args.command](args)


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_register_returns_the_three_handlers():
    p = argparse.ArgumentParser()
    handlers = register(p.add_subparsers(dest="command"))
    assert set(handlers) == {"interpolate", "traverse", "latent-map"}
    assert all(callable(f) for f in handlers.values())


def test_interpolate_command_writes_png(tiny_run, tmp_path, capsys):
    written = run_cli(["interpolate", str(tiny_run), "--pairs", "3", "--steps", "5", "--method", "slerp"])
    default = tiny_run / "figures" / "interpolate-slerp-0.png"
    assert written == [default] and _is_png(default)
    assert str(default) in capsys.readouterr().out
    out = tmp_path / "strip.png"
    run_cli(["interpolate", str(tiny_run), "--pairs", "2", "--steps", "3", "--out", str(out), "--seed", "4"])
    assert _is_png(out)


def test_traverse_command_writes_png(tiny_run, tmp_path, capsys):
    written = run_cli(["traverse", str(tiny_run), "--steps", "4", "--range", "2"])
    assert written == [tiny_run / "figures" / "traverse.png"] and _is_png(written[0])
    out = tmp_path / "t.png"
    run_cli(["traverse", str(tiny_run), "--dims", "1", "--index", "3", "--out", str(out)])
    assert _is_png(out)
    assert str(out) in capsys.readouterr().out


def test_latent_map_command_writes_scatter_and_manifold(tiny_run, tmp_path, capsys):
    written = run_cli(["latent-map", str(tiny_run), "--grid", "4", "--out-dir", str(tmp_path / "maps")])
    assert [p.name for p in written] == ["latent-scatter.png", "latent-manifold.png"]
    assert all(_is_png(p) for p in written)
    printed = capsys.readouterr().out
    assert all(str(p) in printed for p in written)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["interpolate", "{run}", "--steps", "1"], "--steps: must be an integer >= 2"),
        (["interpolate", "{run}", "--pairs", "200"], "--pairs 200 needs"),
        (["interpolate", "{run}", "--pairs", "1000"], "--pairs: must be an integer >= 1 and <= 256"),
        (["traverse", "{run}", "--dims", "2"], "out of range; this run's latent space has dimensions 0 to 1"),
        (["traverse", "{run}", "--steps", "0"], "--steps: must be an integer >= 2"),
        (["traverse", "{run}", "--index", "100000"], "--index 100000 is out of range"),
        (["traverse", "{run}", "--range", "-1"], "--range: must be a number > 0"),
        (["latent-map", "{run}", "--grid", "1"], "--grid: must be an integer >= 2"),
    ],
)
def test_bad_input_raises_one_line_config_error(tiny_run, argv, match):
    argv = [a.replace("{run}", str(tiny_run)) for a in argv]
    with pytest.raises(ppl_vae.PplVaeError, match=match) as info:
        run_cli(argv)
    assert "\n" not in str(info.value)


def test_run_on_a_table_is_refused(tiny_run, tmp_path):
    run_dir = tmp_path / "table-run"
    run_dir.mkdir()
    for name in ("checkpoint.pt", "config.json"):
        (run_dir / name).write_bytes((tiny_run / name).read_bytes())
    config = json.loads((run_dir / "config.json").read_text())
    config["dataset"] = "table:rows.csv"
    (run_dir / "config.json").write_text(json.dumps(config))
    for command in ("interpolate", "traverse", "latent-map"):
        with pytest.raises(ConfigError, match="not images"):
            run_cli([command, str(run_dir)])


def test_missing_run_folder_is_a_user_error(tmp_path):
    with pytest.raises(ppl_vae.PplVaeError, match="does not exist"):
        run_cli(["latent-map", str(tmp_path / "nowhere")])
