"""The grad-variance report of a run folder: gradient-variance tables and figures written beside the run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from ppl_vae.diagnostics.gradients import DEFAULT_LOO_PARTICLES, gradient_variance, summary
from ppl_vae.errors import ConfigError, require_int
from ppl_vae.results import Result, plain

# -- figures -------------------------------------------------------------------------------------------


def variance_figure(result: dict, title: str | None = None) -> Figure:
    """Total gradient variance per estimator (bars, log scale) with ±2 s.e., the particles per step (the
    cost) under each name and the ratio to the one-particle reparameterized estimator on top (for a
    K-particle estimator also the ratio to the reparameterized one averaged over K particles)."""
    names = list(result["estimators"])
    rows = [result["estimators"][n] for n in names]
    totals = [r["total_variance"] for r in rows]
    errs = [2 * r["total_variance_se"] for r in rows]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    colors = {"reparam": "tab:blue", "score": "tab:red", "score-loo": "tab:orange"}
    labels = [
        f"{n}\n{r.get('particles', 1)} particle{'s' if r.get('particles', 1) > 1 else ''}/step"
        for n, r in zip(names, rows)
    ]
    ax.bar(
        labels,
        totals,
        yerr=[[min(e, 0.999 * t) for e, t in zip(errs, totals)], errs],
        color=[colors.get(n, "tab:gray") for n in names],
        capsize=4,
    )
    ax.set_yscale("log")
    ax.set_ylim(min(totals) / 10, max(t + e for t, e in zip(totals, errs)) * 5)
    for i, r in enumerate(rows):
        if r["variance_ratio"] is not None:
            text = f"{r['variance_ratio']:.3g}×"
            if r.get("particles", 1) > 1 and r.get("variance_ratio_equal_particles") is not None:
                text += f"\n({r['variance_ratio_equal_particles']:.3g}× at equal particles)"
            ax.annotate(
                text,
                (i, totals[i] + errs[i]),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_ylabel("total gradient variance (sum over coordinates)")
    ax.set_title(
        title
        or f"{result['num_params']} parameters, batch {result['batch_size']}, "
        f"{result['num_repeats']} draws each (×: ratio to reparam)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def spread_figure(draws: dict[str, torch.Tensor], exact: float, xlabel: str = "gradient estimate") -> Figure:
    """Histograms of single-draw gradient estimates of one coordinate, one per estimator, with the
    exact value as a vertical line (shared bins over the central 99% of all draws)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    pooled = torch.cat([v.detach().cpu().reshape(-1).double() for v in draws.values()])
    lo, hi = (float(q) for q in torch.quantile(pooled, torch.tensor([0.005, 0.995], dtype=torch.double)))
    bins = torch.linspace(min(lo, exact), max(hi, exact), 81).numpy()
    for name, values in draws.items():
        ax.hist(values.detach().cpu().reshape(-1).numpy(), bins=bins, alpha=0.5, density=True, label=name)
    ax.axvline(exact, color="k", lw=1.5, label="exact")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# -- run folders and the command line -------------------------------------------------------------------


@dataclass(frozen=True)
class GradVarianceReport(Result):
    """What :func:`grad_variance_run` measured: the :func:`summary` of the three estimators (``num_repeats``
    ... ``estimators``), where it was measured, and the ``paths`` written (``grad_variance.json`` holds every
    field but ``paths``)."""

    num_repeats: int
    num_params: int
    batch_size: int
    seed: int
    loo_particles: int
    loss: str
    estimators: dict
    run_dir: str
    dataset: str
    examples: str
    parameters: str
    paths: list[str]

    def to_json(self) -> dict:
        """The contents of ``grad_variance.json``."""
        return {name: value for name, value in self.to_dict().items() if name != "paths"}


def grad_variance_run(
    run_dir: str | Path,
    *,
    num_examples: int = 32,
    num_repeats: int = 200,
    seed: int = 0,
    out_dir: str | Path | None = None,
    loo_particles: int = DEFAULT_LOO_PARTICLES,
) -> GradVarianceReport:
    """Measure the three estimators for the encoder of a trained run, on its first ``num_examples``
    training examples (binarized once, as for held-out data). Writes ``grad_variance.json`` and
    ``figures/grad_variance.png`` into ``out_dir`` (default: the run folder) and returns them as a
    :class:`GradVarianceReport`. ``loo_particles``: K of the leave-one-out estimator."""
    from ppl_vae.app.checkpoint import write_json
    from ppl_vae.app.folders import check_output_file
    from ppl_vae.app.plots import save_figure
    from ppl_vae.app.run import load_run, model_input
    from ppl_vae.app.structured import require_unstructured

    require_int(num_examples, "the number of examples")
    require_int(num_repeats, "the number of repeats", 2)
    require_int(loo_particles, "the number of particles of the leave-one-out baseline", 2)
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    json_path, png_path = out / "grad_variance.json", out / "figures" / "grad_variance.png"
    for path in (json_path, png_path):  # before any work: outputs that can be written, never an input
        check_output_file(path, inputs=[run_dir / "checkpoint.pt", run_dir / "config.json"])
    run = load_run(run_dir)
    vae, data = run.vae, run.data
    require_unstructured(vae, "grad-variance", "one continuous latent site z with a q(z | x) to differentiate")
    if num_examples > data.train.shape[0]:
        raise ConfigError(
            f"the run's training set has {data.train.shape[0]} examples; use --examples {data.train.shape[0]} or fewer"
        )
    x = model_input(data.train[:num_examples], vae, run.config)
    params = list(vae.encoder.parameters())
    result = gradient_variance(
        vae.model, vae.guide, x, params, num_repeats=num_repeats, seed=seed, loo_particles=loo_particles
    )
    report = GradVarianceReport(
        **plain(summary(result)),
        run_dir=str(run_dir),
        dataset=data.name,
        examples="first training examples",
        parameters="encoder (guide network)",
        paths=[str(json_path), str(png_path)],
    )
    write_json(json_path, report.to_json())
    save_figure(
        variance_figure(
            result,
            title=f"{data.name}: encoder gradient variance, batch {num_examples}, "
            f"{num_repeats} draws (×: ratio to reparam)",
        ),
        png_path,
    )
    return report


def format_table(report: dict) -> str:
    """Estimator, particles per step (its cost), total variance (± s.e.), the ratio to the one-particle
    reparameterized estimator and the ratio at equal particles (to the reparameterized estimator averaged
    over as many particles), one row each."""
    lines = [
        f"{'estimator':<12}{'particles/step':>15}{'total variance':>16}{'s.e.':>11}{'ratio to reparam':>19}"
        f"{'ratio, equal particles':>25}"
    ]
    for name, r in report["estimators"].items():
        ratio = "" if r["variance_ratio"] is None else f"{r['variance_ratio']:.4g} ± {r['variance_ratio_se']:.2g}"
        equal = r.get("variance_ratio_equal_particles")
        equal = "" if equal is None else f"{equal:.4g} ± {r['variance_ratio_equal_particles_se']:.2g}"
        lines.append(
            f"{name:<12}{r.get('particles', 1):>15}{r['total_variance']:>16.5g}"
            f"{r['total_variance_se']:>11.3g}{ratio:>19}{equal:>25}"
        )
    k = max((r.get("particles", 1) for r in report["estimators"].values()), default=1)
    if k > 1:
        lines.append(
            f"(score-loo costs {k} particles per step; the last column compares it with the reparameterized "
            f"gradient averaged over {k} particles, whose variance is 1/{k} of one particle's)"
        )
    return "\n".join(lines)
