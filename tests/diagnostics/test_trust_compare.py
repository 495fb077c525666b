"""compare: the KL is to the model's own prior, collapsed models are named and not judged, and the
figures have readable labels and no large blank margins."""

import itertools
import math

import pyro
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from ppl_vae.app import compare_ae
from ppl_vae.diagnostics.kl import kl_per_dimension, kl_to_prior
from ppl_vae.errors import ConfigError
from ppl_vae.infer.evaluate import evaluate
from ppl_vae.vae import VAE

torch.set_num_threads(1)

#: Tolerance in Monte Carlo standard errors.
Z = 4.5
LOC, SCALE = 1.5, 0.5


def _data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, 4, 4), 0.4), generator=g)


def _vae(prior, seed=1, latent_dim=3):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    return VAE((1, 4, 4), latent_dim=latent_dim, hidden_dims=(8,), prior=prior)


def _learned_normal_vae():
    vae = _vae("learned-normal")
    with torch.no_grad():
        vae.prior.loc.fill_(LOC)
        vae.prior.log_scale.fill_(math.log(SCALE))
    return vae


def _last_linear(vae):
    return [m for m in vae.encoder.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]


# -- defect 1: KL per dimension to the actual prior ---------------------------------------------------


def test_kl_per_dimension_is_to_the_learned_prior_and_agrees_with_evaluate():
    vae, x = _learned_normal_vae(), _data()
    got = kl_per_dimension(vae, x)
    mean, sd = vae.encode(x)
    by_hand = (math.log(SCALE) - sd.log() + (sd**2 + (mean - LOC) ** 2) / (2 * SCALE**2) - 0.5).mean(0)
    assert torch.allclose(got, by_hand, rtol=1e-5, atol=1e-6)
    ev = evaluate(vae, x, num_particles=64, seed=0)
    assert abs(float(got.sum()) - ev.kl) < Z * ev.kl_se, (got.sum(), ev.kl, ev.kl_se)


def test_a_posterior_equal_to_the_learned_prior_has_zero_kl():
    vae, x = _learned_normal_vae(), _data()
    last = _last_linear(vae)
    with torch.no_grad():  # q(z | x) = N(LOC, SCALE^2) for every x: the prior itself
        last.weight.zero_()
        last.bias[:3] = LOC
        last.bias[3:] = math.log(SCALE)
    assert torch.allclose(kl_per_dimension(vae, x), torch.zeros(3), atol=1e-6)
    assert kl_to_prior(vae, x)["total"] == pytest.approx(0.0, abs=1e-6)


def test_standard_normal_prior_keeps_the_closed_form():
    vae, x = _vae("normal"), _data()
    mean, sd = vae.encode(x)
    old_closed_form = (0.5 * (mean**2 + sd**2 - 1) - sd.log()).mean(0)
    kl = kl_to_prior(vae, x)
    assert kl["exact"] and kl["total_se"] == 0.0
    assert torch.allclose(kl["per_dimension"], old_closed_form, atol=1e-6)


@pytest.mark.parametrize(
    "prior, split, exact",
    [
        ("laplace", True, True),  # KL(Normal || Laplace) is registered with torch.distributions
        ("student-t", True, False),  # no closed form: Monte Carlo per dimension
        ("hierarchical", True, False),  # closed form given the global scale, averaged over its guide
        ("mog", False, False),  # a mixture does not factorize: total only
    ],
)
def test_other_priors_agree_with_evaluate_within_monte_carlo_error(prior, split, exact):
    vae, x = _vae(prior), _data()
    kl = kl_to_prior(vae, x, seed=0)
    ev = evaluate(vae, x, num_particles=64, seed=0)
    assert abs(kl["total"] - ev.kl) < Z * math.hypot(kl["total_se"], ev.kl_se), (kl, ev.kl, ev.kl_se)
    assert kl["exact"] == exact and (kl["total_se"] == 0.0) == exact
    if split:
        assert kl["per_dimension"].shape == (3,) and kl["per_dimension_note"] is None
        assert float(kl["per_dimension"].sum()) == pytest.approx(kl["total"], rel=1e-5)
        assert torch.all(kl["per_dimension_se"] >= 0)
    else:  # no fake split: None, and why
        assert kl["per_dimension"] is None and "not a product over coordinates" in kl["per_dimension_note"]
        with pytest.raises(ConfigError, match="KL per dimension is unavailable") as info:
            kl_per_dimension(vae, x)
        assert "\n" not in str(info.value)


def test_collapse_report_uses_the_actual_prior():
    from ppl_vae.diagnostics.collapse import collapse_report

    vae, x = _learned_normal_vae(), _data()
    report = collapse_report(vae, x, num_samples=4, seed=0)
    ev = evaluate(vae, x, num_particles=64, seed=0)
    assert abs(sum(report["kl_per_dimension"]) - ev.kl) < Z * ev.kl_se


# -- defect 3: collapsed models in the verdict and report ------------------------------------------------


def _row(name, guide, beta, *, ratio, step, conf, fd, mmd2, rate, units, distortion=25.0):
    return {
        "name": name,
        "guide": guide,
        "beta": beta,
        "smoothness_ratio": ratio,
        "max_step_ratio": step,
        "confidence": conf,
        "frechet": fd,
        "mmd2": mmd2,
        "mmd2_threshold": 0.01,
        "rate": rate,
        "distortion": distortion,
        "active_units": units,
    }


def _result(*vaes):
    ae = _row("AE", "delta", 0.0, ratio=1.7, step=1.7, conf=0.8, fd=15.0, mmd2=0.4, rate=None, units=2, distortion=20.0)
    return {
        "dataset": "digits",
        "models": [ae, *vaes],
        "reference": None,
        "settings": {
            "latent_dim": 2,
            "hidden_dims": [16],
            "epochs": 1,
            "batch_size": 8,
            "lr": 1e-3,
            "seed": 0,
            "num_heldout": 10,
            "num_pairs": 4,
            "num_steps": 4,
        },
        "notes": {"coverage": "MMD"},
    }


# A collapsed VAE whose numbers look better than the AE's on every metric (trivially: a decoder that
# ignores z is perfectly smooth, and encodings equal to the prior cover it).
COLLAPSED = _row("VAE β=1", "normal", 1.0, ratio=1.0, step=1.0, conf=0.9, fd=5.0, mmd2=0.001, rate=0.0004, units=0)


def test_verdict_names_a_collapsed_vae_and_draws_no_conclusion_from_it():
    text = compare_ae.verdict(_result(COLLAPSED))
    assert text.startswith("VAE β=1 collapsed (0 of 2 active units")
    assert "say nothing about the encoder" in text
    assert "beats" not in text and "does not beat" not in text


def test_verdict_falls_back_to_the_nearest_non_collapsed_vae():
    healthy = _row("VAE β=0.5", "normal", 0.5, ratio=1.2, step=1.2, conf=0.85, fd=9.0, mmd2=0.01, rate=3.0, units=2)
    far = _row("VAE β=0.1", "normal", 0.1, ratio=1.3, step=1.3, conf=0.85, fd=9.0, mmd2=0.05, rate=6.0, units=2)
    text = compare_ae.verdict(_result(far, healthy, COLLAPSED))
    assert text.startswith("VAE β=1 collapsed")
    assert "VAE β=0.5 (2 of 2 active units)" in text and "On smoothness the VAE β=0.5 beats the AE" in text
    assert "VAE β=1 beats" not in text and "VAE β=0.1" not in text


def test_a_rate_near_zero_counts_as_collapsed_even_with_an_active_unit():
    almost = dict(COLLAPSED, active_units=1, rate=0.01)
    assert compare_ae.collapse_reason(almost, 2) == "KL to the prior 0.01 nats per example"
    assert "collapsed" in compare_ae.verdict(_result(almost))


def test_report_and_table_name_every_collapsed_model():
    healthy = _row("VAE β=0.5", "normal", 0.5, ratio=1.2, step=1.2, conf=0.85, fd=9.0, mmd2=0.01, rate=3.0, units=2)
    big_beta = _row("VAE β=4", "normal", 4.0, ratio=1.0, step=1.0, conf=0.8, fd=30.0, mmd2=0.001, rate=0.0, units=0)
    result = _result(healthy, COLLAPSED, big_beta)
    text = compare_ae.report_markdown(result)
    assert "**Collapsed**" in text and "VAE β=1 (0 of 2 active units" in text and "VAE β=4 (0 of 2 active units" in text
    assert "| 0/2 (collapsed) |" in compare_ae.markdown_table(result)
    assert "| 2/2 |" in compare_ae.markdown_table(result)  # the healthy ones are not marked
    assert compare_ae.collapsed_models(result).keys() == {"VAE β=1", "VAE β=4"}


def test_a_collapsed_ae_gets_no_verdict():
    result = _result(
        _row("VAE β=1", "normal", 1.0, ratio=1.2, step=1.2, conf=0.85, fd=9.0, mmd2=0.01, rate=3.0, units=2)
    )
    result["models"][0]["active_units"] = 0
    assert compare_ae.verdict(result).startswith("No verdict: the AE collapsed (0 of 2 active units)")


# -- defect 5: figures ---------------------------------------------------------------------------------


def _drawn(fig):
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def test_rate_distortion_labels_do_not_overlap():
    # Models at the same spot (two collapsed ones at rate 0) and close to each other.
    rows = [
        _row(f"VAE β={b:g}", "normal", b, ratio=1, step=1, conf=0.8, fd=1, mmd2=0, rate=r, units=2, distortion=d)
        for b, r, d in [
            (0.0, 16.5, 20.8),
            (0.1, 5.07, 21.1),
            (0.5, 2.83, 22.4),
            (1.0, 0.92, 25.2),
            (2.0, 0.0087, 27.0),
            (4.0, 0.0006, 27.0),
        ]
    ]
    fig = compare_ae.rate_distortion_figure(_result(*rows))
    renderer = _drawn(fig)
    ax = fig.axes[0]
    texts = [t for t in ax.texts if t.get_text()]
    legend = ax.get_legend()
    if legend is not None:
        texts += [t for t in legend.get_texts() if t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in texts]
    for (a, ta), (b, tb) in itertools.combinations(zip(boxes, texts), 2):
        assert not a.overlaps(b), (ta.get_text(), tb.get_text())
    labels = " ".join(t.get_text() for t in texts)
    for beta in ("0", "0.1", "0.5", "1", "2", "4"):  # every model is named, with its numbers
        assert f"β={beta}: rate" in labels, labels
    assert "AE: rate ∞" in labels


def _image_fill(fig):
    """Fraction of the figure's width (summed over panels) and height covered by the drawn images."""
    _drawn(fig)
    boxes = [ax.get_position(original=False) for ax in fig.axes if ax.images]
    return sum(b.width for b in boxes), max(b.height for b in boxes)


def test_image_grid_figures_have_no_large_blank_margins():
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,))
    models = {"AE": vae, "VAE β=1": vae}
    heldout = torch.rand(40, 1, 8, 8)
    pairs = (torch.arange(8), torch.arange(8, 16))
    for fig in (compare_ae.interpolation_figure(models, heldout, pairs), compare_ae.samples_figure(models)):
        width, height = _image_fill(fig)
        assert width > 0.85 and height > 0.75, (width, height)
