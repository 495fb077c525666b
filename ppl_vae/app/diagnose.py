"""``ppl-vae diagnose RUN_DIR``: every posterior diagnostic of :mod:`ppl_vae.diagnostics` on a trained
run, written to a folder (default ``RUN_DIR/diagnostics``).

Files written (each atomically; the folder is filled only after every computation succeeded):

``diagnostics.json``
    ``psis``: ``num_samples`` (S draws per held-out example), ``num_observations``, ``log_likelihood``
    and ``log_likelihood_se`` (importance-sampled log p(x), per example in nats, Monte Carlo s.e.),
    ``khat_quantiles`` (min, 5%, 25%, 50%, 75%, 95%, max), ``fraction_above`` (k-hat above 0.5, 0.7
    and the sample-size threshold), ``sample_size_threshold``, ``worst`` ([held-out index, k-hat]);
    ``nuts``: ``observations`` (held-out indices: half the worst by k-hat, half at random),
    ``num_chains``, ``num_warmup``, ``num_samples``, ``max_rhat``, ``min_ess_bulk``, ``divergences``,
    ``max_abs_standardized_mean_error``, ``median_sd_ratio``, ``sd_ratio_range``, ``per_observation``;
    ``sbc``: ``num_simulations``, ``num_draws``, ``num_bins``, ``p_value`` (Bonferroni over latent
    dimensions), ``p_values``, ``dispersion_z``, ``bias_z``, ``shift``, ``width_ratio``, ``flags``, ``verdict``
    (see :class:`ppl_vae.diagnostics.calibration.SBCResult`);
    ``calibration``: central-interval coverage of q(z | x) against SBC's simulations (``simulations``) and
    against the NUTS draws (``nuts``), the SBC rank ECDF against its simultaneous band (``ecdf``) and the
    classifier two-sample test of guide vs NUTS draws (``c2st``); see :mod:`ppl_vae.app.calibration_checks`;
    ``classification`` (models with an enumerated class site ``y``: ``mixture:K``, ``semi-supervised:K``):
    per prediction, ``simulated_posterior`` (p(y | x) on data simulated from the model against the
    simulated y), ``simulated_guide`` (the guide's q(y | x) there, when the guide draws y),
    ``heldout_guide`` and ``heldout_posterior`` (against the held-out labels of a semi-supervised run),
    each a :class:`ppl_vae.diagnostics.classification.Reliability` (bins, counts, ``ece`` with its
    distribution under calibration, ``p_value``, ``accuracy``, ``verdict``);
    ``amortization_gap``: see :func:`ppl_vae.diagnostics.gaps.amortization_gap` (or ``{"skipped": reason}``);
    ``collapse``: see :func:`ppl_vae.diagnostics.collapse.collapse_report` (or ``{"skipped": reason}`` for a
    model without q(z | x));
    ``predictive_checks``: ``posterior`` and ``prior`` predictive checks of the held-out data (test
    statistics that fit the data kind with their replicated mean and sd, posterior predictive p-values,
    which are extreme at the Bonferroni threshold, LOO-PIT where it applies); see
    :mod:`ppl_vae.app.predictive_checks`;
    ``label_role``: what labels are to the run's model (``none``, ``semi``, ``covariate``, ``group``);
    ``seconds``: wall time of each step; ``settings``: the arguments.

Structured models: the held-out labels are passed to the programs of a model that needs them
(``conditional``, ``groups``), SBC conditions its simulations on every class in turn, and a step that
cannot apply to the model says why in one line (``{"skipped": reason}``).

``log_ratios.npy``
    ``(S, N)`` float64 log p(x_n, z_s) - log q(z_s | x_n) of the PSIS step: recompute k-hat from these.
``inference_data.nc``
    ArviZ InferenceData of the held-out data (:func:`ppl_vae.diagnostics.posterior.to_inference_data`;
    with a group ``class_posterior`` holding p(y | x) per example for a model with an enumerated y).
``nuts.nc``
    ArviZ InferenceData of the NUTS draws (chain, draw, obs, latent_dim).
``report.md``
    The numbers above in words, with the figures.
``figures/``
    ``khat.png``, ``sbc_ranks.png``, ``nuts_pair_<index>.png`` (one per NUTS observation),
    ``reliability.png`` (class predictions against frequencies, models with an enumerated y),
    ``coverage.png`` (nominal vs actual coverage of q(z | x)'s central intervals), ``sbc_ecdf.png`` (the SBC
    rank ECDF minus the uniform CDF, with simultaneous bands), ``ppc.png`` (per-example statistics of the
    held-out data against replicated data, ``az.plot_ppc`` and ``az.plot_bpv``), ``ppc_pvalues.png`` (each
    test statistic's replicated distribution with the observed value), ``loo_pit.png`` (when LOO-PIT applies).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppl_vae import diagnostics
from ppl_vae.app import plots
from ppl_vae.app.calibration_checks import calibration_lines, calibration_section, calibration_summary
from ppl_vae.app.checkpoint import atomic_write, write_json
from ppl_vae.app.folders import check_output_dir, locked, publish_folder
from ppl_vae.app.formatting import format_number
from ppl_vae.app.predictive_checks import predictive_lines, predictive_section, predictive_summary
from ppl_vae.diagnostics.predictive import replicates_for
from ppl_vae.errors import ConfigError
from ppl_vae.limits import check_bytes
from ppl_vae.results import Result, json_ready, plain
from ppl_vae.validation import Bound, check_number

#: Accepted ranges of diagnose_run's sizes (the lower ends are what each method needs to mean anything).
LIMITS = {
    "num_samples": Bound(int, 2, 100_000),
    "nuts_observations": Bound(int, 0, 10_000),
    "nuts_chains": Bound(int, 2, 64),
    "nuts_samples": Bound(int, 10, 100_000),
    "nuts_warmup": Bound(int, 0, 100_000),
    "sbc_simulations": Bound(int, 20, 1_000_000),
    "sbc_draws": Bound(int, 1, 10_000),
    "gap_observations": Bound(int, 0, 100_000),
    "gap_steps": Bound(int, 1, 1_000_000),
    "idata_samples": Bound(int, 1, 100_000),
    "class_particles": Bound(int, 1, 100_000),
    "ppc_samples": Bound(int, 2, 100_000),
}

#: What the predictive checks' statistics of a standardized table are in.
STANDARDIZED_UNITS = "the table's features as the model scores them, standardized with the training rows' mean and sd"

#: The steps of a diagnosis, in order (the progress bar counts them; ``seconds`` times each).
STEPS = (
    "psis",
    "inference data",
    "nuts",
    "sbc",
    "calibration",
    "classes",
    "amortization gap",
    "collapse",
    "predictive checks",
    "figures",
)


@dataclass(frozen=True)
class DiagnoseSettings(Result):
    """The sizes of a diagnosis (``settings`` in ``diagnostics.json``); see :func:`diagnose_run`."""

    num_samples: int = 1000
    nuts_observations: int = 8
    nuts_chains: int = 4
    nuts_warmup: int = 300
    nuts_samples: int = 500
    sbc_simulations: int = 1000
    sbc_draws: int = 99
    gap_observations: int = 100
    gap_steps: int = 300
    idata_samples: int = 100
    class_particles: int = 100
    ppc_samples: int | None = None  # replicated data sets of the predictive checks; None: the fewest that can flag
    seed: int = 0

    def check(self) -> DiagnoseSettings:
        """Refuse a size outside :data:`LIMITS` with a one-line :class:`ConfigError`."""
        for name, bound in LIMITS.items():
            if getattr(self, name) is not None or name != "ppc_samples":
                check_number(getattr(self, name), name, bound)
        return self


@dataclass(frozen=True, kw_only=True)
class DiagnoseResult(Result):
    """What :func:`diagnose_run` found: the contents of ``diagnostics.json`` (see the module docstring).
    ``nuts``, ``classification`` and ``amortization_gap`` are None when their step was skipped or does not
    apply, and then absent, as from the file: ``"nuts" in result`` is False and ``to_dict()`` leaves them
    out. A step that refuses the run's model holds ``{"skipped": reason}`` instead (one line)."""

    run_dir: str
    dataset: str
    num_heldout: int
    psis: dict
    nuts: dict | None = None
    sbc: dict
    calibration: dict | None = None
    classification: dict | None = None
    amortization_gap: dict | None = None
    label_role: str = "none"
    collapse: dict
    predictive_checks: dict | None = None
    units: str
    seconds: dict
    settings: dict

    def _names(self) -> tuple[str, ...]:
        optional = ("nuts", "calibration", "classification", "amortization_gap", "predictive_checks")
        skipped = {name for name in optional if getattr(self, name) is None}
        return tuple(f.name for f in dataclasses.fields(self) if f.name not in skipped)

    def to_dict(self) -> dict:
        """The sections that ran, as plain data (``diagnostics.json``)."""
        return {name: plain(getattr(self, name)) for name in self._names()}


def _choose_observations(khat: np.ndarray, count: int, seed: int) -> list[int]:
    """Half the observations with the highest k-hat (where the guide is most in doubt), half at random."""
    order = np.argsort(-np.nan_to_num(khat, nan=np.inf, neginf=-1e9))
    worst = [int(i) for i in order[: count - count // 2]]
    rest = np.setdiff1d(np.arange(len(khat)), worst)
    rng = np.random.default_rng(seed)
    chosen = worst + [int(i) for i in rng.choice(rest, size=min(count // 2, len(rest)), replace=False)]
    return chosen


def default_diagnostics_dir(run_dir: str | Path) -> Path:
    """Where ``ppl-vae diagnose`` writes without ``--out``: ``RUN_DIR/diagnostics``."""
    return Path(run_dir) / "diagnostics"


def diagnose_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    num_samples: int = 1000,
    nuts_observations: int = 8,
    nuts_warmup: int = 300,
    nuts_samples: int = 500,
    nuts_chains: int = 4,
    sbc_simulations: int = 1000,
    sbc_draws: int = 99,
    gap_observations: int = 100,
    gap_steps: int = 300,
    idata_samples: int = 100,
    class_particles: int = 100,
    ppc_samples: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    overwrite: bool = False,
) -> DiagnoseResult:
    """Run every diagnostic on a run folder's held-out data and write the files listed in the module
    docstring into ``out`` (default: :func:`default_diagnostics_dir`). Returns the contents of
    ``diagnostics.json`` as a :class:`DiagnoseResult`.

    The output folder is checked before any work (:func:`ppl_vae.app.folders.check_output_dir`: never the
    run itself or a folder that contains it; ``overwrite`` replaces only a diagnostics folder ppl_vae
    made), the run folder is locked while the diagnostics run, and the files appear together at the end
    (written into a hidden sibling folder, then renamed into place)."""
    run_dir = Path(run_dir)
    settings = DiagnoseSettings(
        num_samples=num_samples,
        nuts_observations=nuts_observations,
        nuts_chains=nuts_chains,
        nuts_warmup=nuts_warmup,
        nuts_samples=nuts_samples,
        sbc_simulations=sbc_simulations,
        sbc_draws=sbc_draws,
        gap_observations=gap_observations,
        gap_steps=gap_steps,
        idata_samples=idata_samples,
        class_particles=class_particles,
        ppc_samples=ppc_samples,
        seed=seed,
    ).check()
    out = Path(out) if out is not None else default_diagnostics_dir(run_dir)
    check_output_dir(out, "diagnostics", overwrite=overwrite, inputs=[run_dir])
    with locked(run_dir, "diagnose"):
        return _diagnose_locked(run_dir, out, settings, device=device, progress=progress)


def _report_in_data_units(results: dict, scaling) -> None:
    """Log-densities in the units ``ppl-vae train`` and ``evaluate`` report: for a standardized table, of
    the features in their original units (a constant shift per example; gaps, being differences, keep)."""
    from ppl_vae.app.run import units_of

    shift, label = units_of(scaling)
    results["units"] = f"log-densities per example in nats, {label}"
    if not shift:
        return
    results["psis"]["log_likelihood"] += shift
    gap = results.get("amortization_gap", {})
    for key in ("elbo_amortized", "elbo_local", "log_likelihood"):
        if isinstance(gap.get(key), (int, float)):
            gap[key] += shift


class _Steps:
    """The wall time of each step of a diagnosis, and a progress bar over :data:`STEPS` when asked."""

    def __init__(self, progress: bool):
        self.seconds: dict = {}
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(STEPS), desc="diagnose", unit="step", dynamic_ncols=True)

    @contextlib.contextmanager
    def step(self, name: str):
        if self.bar is not None:
            self.bar.set_postfix_str(name)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _psis_section(p, num_samples: int, num_observations: int, eight_bit_dims: int | None = None) -> dict:
    """The ``psis`` section; ``eight_bit_dims``: D for a likelihood of 8-bit data, which adds
    ``bits_per_dim`` and ``bits_per_dim_se`` (-log p(x) / (D ln 2))."""
    from ppl_vae.infer.evaluate import bits_per_dim

    bits = {}
    if eight_bit_dims:
        bits = {
            "bits_per_dim": float(bits_per_dim(-p.log_likelihood, eight_bit_dims)),
            "bits_per_dim_se": float(bits_per_dim(p.log_likelihood_se, eight_bit_dims)),
        }
    with np.errstate(invalid="ignore"):  # -inf k-hat (equal weights) between two -inf: nan, shown as n/a
        quantiles = np.quantile(p.khat, [0, 0.05, 0.25, 0.5, 0.75, 0.95, 1]).tolist()
    return plain(
        {
            "num_samples": num_samples,
            "num_observations": num_observations,
            "log_likelihood": p.log_likelihood,
            "log_likelihood_se": p.log_likelihood_se,
            "khat_quantiles": dict(zip(("min", "5%", "25%", "50%", "75%", "95%", "max"), quantiles)),
            "fraction_above": p.fraction_above,
            "sample_size_threshold": p.sample_size_threshold,
            "worst": p.worst,
            **bits,
        }
    )


def _nuts(model, guide, heldout, khat, settings: DiagnoseSettings, c=None):
    """NUTS on the chosen held-out examples: the :class:`~ppl_vae.diagnostics.NUTSResult` and its section
    of ``diagnostics.json``, or ``(None, None)`` when skipped. ``c``: the held-out labels, for a model
    whose programs take them."""
    if not settings.nuts_observations:
        return None, None
    chosen = _choose_observations(khat, min(settings.nuts_observations, heldout.shape[0]), settings.seed)
    nuts = diagnostics.nuts_reference(
        model,
        guide,
        heldout[chosen],
        num_chains=settings.nuts_chains,
        num_warmup=settings.nuts_warmup,
        num_samples=settings.nuts_samples,
        seed=settings.seed,
        c=None if c is None else c[chosen],
    )
    section = {
        "observations": chosen,
        "khat": [float(khat[i]) for i in chosen],
        "num_chains": settings.nuts_chains,
        "num_warmup": settings.nuts_warmup,
        "num_samples": settings.nuts_samples,
        **plain(nuts.summary()),
    }
    return nuts, section


def _amortization_gap(vae, heldout, settings: DiagnoseSettings, *, needs_labels: bool = False) -> dict | None:
    if not settings.gap_observations:
        return None
    if needs_labels:
        return {
            "skipped": "the amortization gap refines a guide q(z | x); this model's programs need each example's "
            "label c, which its local guides do not take"
        }
    try:
        return plain(
            diagnostics.amortization_gap(
                vae.model,
                vae.guide,
                heldout[: settings.gap_observations],
                posterior=vae.posterior,
                num_steps=settings.gap_steps,
                num_particles=settings.num_samples,
                seed=settings.seed,
            )
        )
    except ConfigError as error:
        return {"skipped": str(error)}


#: Titles of the reliability panels, by the name of the prediction in ``classification``.
RELIABILITY_TITLES = {
    "simulated_posterior": "p(y | x), simulated data",
    "simulated_guide": "q(y | x), simulated data",
    "heldout_guide": "q(y | x), held-out labels",
    "heldout_posterior": "p(y | x), held-out labels",
}


def reliability_figure(results: dict):
    """Reliability diagrams, one panel per prediction (``{title: Reliability}``): the observed frequency
    of each bin against its mean predicted probability, with a band of +-2 of the spread calibrated
    predictions would show, the diagonal, and the number of predictions per bin below."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(3.6 * len(results), 5.0))
    grid = fig.add_gridspec(2, len(results), height_ratios=(3, 1))
    for j, (title, r) in enumerate(results.items()):
        ax, counts_ax = fig.add_subplot(grid[0, j]), fig.add_subplot(grid[1, j])
        filled = [b for b, m in enumerate(r.counts) if m]
        mean = np.array([r.mean_predicted[b] for b in filled])
        freq = np.array([r.observed_frequency[b] for b in filled])
        spread = np.array([r.calibrated_spread[b] for b in filled])
        ax.plot([0, 1], [0, 1], color="0.5", lw=1, ls="--", label="calibrated")
        order = np.argsort(mean)
        ax.fill_between(
            mean[order],
            np.clip(mean - 2 * spread, 0, 1)[order],
            np.clip(mean + 2 * spread, 0, 1)[order],
            color="0.85",
            lw=0,
            label="±2 sd",
        )
        ax.plot(mean, freq, "o-", color="C0", ms=4, label="observed")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("observed frequency")
        ax.set_title(f"{title}\nECE {r.ece:.3f} (calibrated: {r.ece_calibrated_mean:.3f})", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        edges = np.asarray(r.bin_edges)
        counts_ax.bar(edges[:-1], r.counts, width=np.diff(edges), align="edge", color="C0", alpha=0.7)
        counts_ax.set_xlim(0, 1)
        counts_ax.set_xlabel(f"predicted probability ({r.kind})")
        counts_ax.set_ylabel("predictions")
        counts_ax.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
    fig.tight_layout()
    return fig


def _figures(p, s, nuts, nuts_section: dict | None, num_chains: int, classes: dict | None = None) -> dict:
    """The figures of ``figures/`` by file name: k-hat, SBC ranks, one corner plot per NUTS example and
    the reliability diagrams of the class predictions (a model with an enumerated y)."""
    threshold = {
        "k-hat 0.5": 0.5,
        "k-hat 0.7": 0.7,
        f"sample-size threshold {p.sample_size_threshold:.2f}": p.sample_size_threshold,
    }
    figures = {
        "khat.png": plots.khat_figure(p.khat, threshold),
        "sbc_ranks.png": plots.rank_histograms_figure(s.ranks, s.num_draws, s.num_bins, s.p_values),
    }
    if classes:
        figures["reliability.png"] = reliability_figure({RELIABILITY_TITLES.get(k, k): r for k, r in classes.items()})
    if nuts is None:
        return figures
    for k, index in enumerate(nuts_section["observations"]):
        title = f"held-out #{index}: NUTS (blue, {num_chains} chains) vs guide (orange); k-hat {p.khat[index]:.2f}"
        # the dimensions x informs most (narrowest posterior), not collapsed ones equal to the prior
        dims = sorted(np.argsort(nuts.nuts_sd[k])[:4].tolist())
        figures[f"nuts_pair_{index}.png"] = plots.pair_figure(
            nuts.samples[:, :, k].reshape(-1, nuts.samples.shape[-1]), nuts.guide_samples[:, k], title, dims
        )
    return figures


@dataclass(frozen=True)
class _Labels:
    """The labels a diagnosis passes to the programs: ``heldout`` (``c`` of the held-out examples, for a
    model whose programs need it) and ``simulations`` (``c`` of SBC's simulations), each None when the
    model takes none; ``classes`` (held-out class labels to score a semi-supervised classifier, or None)."""

    heldout: object = None
    simulations: object = None
    classes: object = None


def _run_labels(run, n: int, num_simulations: int) -> _Labels:
    """What the run's labels are to its programs (:attr:`ppl_vae.VAE.label_role`)."""
    import torch

    role = run.vae.label_role
    labels = getattr(run, "labels", None)
    heldout = getattr(labels, "heldout", None)
    if role in ("covariate", "group"):
        if heldout is None:
            raise ConfigError(f"this run's model needs the label of every held-out example ({role}); its data has none")
        classes = int(getattr(labels, "classes", 0) or int(heldout.max()) + 1)
        # SBC conditions its simulations on labels: every class in turn, the same number of times.
        simulations = torch.arange(num_simulations, device=run.vae.device) % classes
        return _Labels(heldout=heldout[:n].to(run.vae.device), simulations=simulations)
    if role == "semi" and heldout is not None:
        return _Labels(classes=heldout[:n])
    return _Labels()


def _skipped(compute):
    """``compute()``, or ``{"skipped": reason}`` when it refuses the model with a ConfigError (one line)."""
    try:
        return compute()
    except ConfigError as error:
        return {"skipped": str(error)}


def _diagnose_locked(run_dir: Path, out: Path, settings: DiagnoseSettings, *, device, progress) -> DiagnoseResult:
    from ppl_vae.app.run import load_run, model_input

    run = load_run(run_dir, device=device)
    vae, seed = run.vae, settings.seed
    heldout = model_input(run.data.heldout, vae, run.config)
    n = int(heldout.shape[0])
    check_bytes(
        settings.num_samples * n * 8 * 4, f"{settings.num_samples} importance draws for each of {n} held-out examples"
    )
    labels = _run_labels(run, n, settings.sbc_simulations)
    c = labels.heldout
    ppc_samples = replicates_for(vae, heldout, settings.ppc_samples, name="ppc_samples")  # refused before work
    results: dict = {"run_dir": str(run_dir), "dataset": run.data.name, "num_heldout": n, "label_role": vae.label_role}
    steps = _Steps(progress)
    try:
        with steps.step("psis"):
            p = diagnostics.psis(vae.model, vae.guide, heldout, num_samples=settings.num_samples, seed=seed, c=c)
            eight_bit = heldout[0].numel() if getattr(vae.likelihood, "data_kind", None) == "8bit" else None
            results["psis"] = _psis_section(p, settings.num_samples, n, eight_bit)
        with steps.step("inference data"):
            idata = diagnostics.to_inference_data(
                vae.model,
                vae.guide,
                heldout,
                num_samples=settings.idata_samples,
                seed=seed,
                c=c,
                class_particles=settings.class_particles,
            )
        with steps.step("nuts"):
            nuts, results["nuts"] = _nuts(vae.model, vae.guide, heldout, p.khat, settings, c)
        with steps.step("sbc"):
            s = diagnostics.sbc(
                vae.model,
                vae.guide,
                num_simulations=settings.sbc_simulations,
                num_draws=settings.sbc_draws,
                seed=seed,
                c=labels.simulations,
            )
            results["sbc"] = plain(s.summary())
        with steps.step("calibration"):
            results["calibration"], extra_figures = calibration_section(s.ranks, s.num_draws, nuts, seed=seed)
        with steps.step("classes"):
            classes = _classification(vae, heldout, labels, settings)
            results["classification"] = {k: plain(v) for k, v in classes.items()} or None
        with steps.step("amortization gap"):
            results["amortization_gap"] = _amortization_gap(vae, heldout, settings, needs_labels=c is not None)
        with steps.step("collapse"):
            results["collapse"] = _skipped(lambda: plain(diagnostics.collapse_report(vae, heldout, seed=seed)))
        with steps.step("predictive checks"):
            results["predictive_checks"], ppc_figures = predictive_section(
                vae, heldout, num_samples=ppc_samples, seed=seed, c=c, log_ratios=p.log_ratios
            )
            if run.scaling is not None:
                results["predictive_checks"]["units"] = STANDARDIZED_UNITS
        results = {k: v for k, v in results.items() if v is not None}  # skipped steps leave no section
        _report_in_data_units(results, run.scaling)
        with steps.step("figures"):
            figures = {
                **_figures(p, s, nuts, results.get("nuts"), settings.nuts_chains, classes),
                **extra_figures,
                **ppc_figures,
            }
    finally:
        steps.close()
    result = DiagnoseResult(**json_ready({**results, "seconds": steps.seconds, "settings": settings.to_dict()}))
    _write_outputs(out, result, p.log_ratios, idata, nuts, figures)
    return result


def _classification(vae, heldout, labels: _Labels, settings: DiagnoseSettings) -> dict:
    """The calibration of the class predictions of a model with an enumerated class site ``"y"``
    (:mod:`ppl_vae.diagnostics.classification`), by name; empty for a model without one.

    * ``simulated_posterior``: p(y | x) on ``sbc_simulations`` examples simulated from the model (y, z, x),
      against the simulated y: calibrated when inference is right;
    * ``simulated_guide``: the guide's q(y | x) (an amortized classifier) on the same simulations;
    * ``heldout_guide`` and ``heldout_posterior``: q(y | x) and p(y | x) against the held-out labels of a
      semi-supervised run (whether the model's classes are the data's classes)."""
    from ppl_vae.diagnostics import classification as cls
    from ppl_vae.infer.enumeration import enumerated_sites

    side = {} if labels.heldout is None else {"c": labels.heldout[:1]}
    if "y" not in enumerated_sites(vae.model, vae.guide, heldout[:1], **side):
        return {}
    class_labels = labels.classes
    common = {"num_simulations": settings.sbc_simulations, "seed": settings.seed}
    out = {
        "simulated_posterior": cls.simulated_class_calibration(
            vae.model, vae.guide, num_particles=settings.class_particles, **common
        )
    }
    if cls.guide_class_probabilities(vae.guide, heldout[:1]) is not None:
        out["simulated_guide"] = cls.simulated_class_calibration(vae.model, vae.guide, predict="guide", **common)
    if class_labels is not None:
        q = cls.guide_class_probabilities(vae.guide, heldout)
        if q is not None:
            out["heldout_guide"] = cls.reliability(
                q, class_labels, seed=settings.seed, source="q(y | x) of the guide against the held-out labels"
            )
        posterior = cls.class_probabilities(
            vae.model, vae.guide, heldout, num_particles=settings.class_particles, seed=settings.seed
        )
        out["heldout_posterior"] = cls.reliability(
            posterior.probabilities,
            class_labels,
            seed=settings.seed,
            source=f"p(y | x) ({posterior.repeats} x {posterior.num_particles} draws) against the held-out labels",
        )
    return out


def _write_outputs(out: Path, result: DiagnoseResult, log_ratios, idata, nuts, figures: dict) -> None:
    """Write every file into a temporary sibling folder, then move it into place: no half-written output."""

    def write(staging: Path) -> None:
        write_json(staging / "diagnostics.json", result.to_dict())
        atomic_write(staging / "log_ratios.npy", lambda handle: np.save(handle, log_ratios.numpy()))
        idata.to_netcdf(str(staging / "inference_data.nc"))
        if nuts is not None:
            nuts.inference_data.to_netcdf(str(staging / "nuts.nc"))
        for name, fig in figures.items():
            plots.save_figure(fig, staging / "figures" / name)
        atomic_write(staging / "report.md", lambda handle: handle.write(report(result).encode()))

    publish_folder(out, "diagnostics", write)


# -- report.md ---------------------------------------------------------------------------------------

#: Numbers in ``report.md``: fixed decimals, ``n/a`` for a value that does not exist.
_number = functools.partial(format_number, fixed=True, missing="n/a")


def _list(values, digits: int = 2) -> str:
    return "[" + ", ".join(_number(v, digits) for v in values) + "]"


def _collapsed(results) -> bool:
    """Whether the collapse step found a collapsed model (older diagnostics.json: no active unit)."""
    c = results.get("collapse", {})
    return bool(c.get("collapsed", c.get("active_units") == 0))


def report_warnings(results) -> list[str]:
    """Warning lines for the top of the report: a collapsed model, an unreliable importance estimate."""
    lines = []
    c = results.get("collapse", {})
    if _collapsed(results):
        reason = c.get("warning") or f"0 of {c.get('latent_dim')} latent units active"
        lines.append(
            f"> **Warning: collapsed model.** {reason[0].upper() + reason[1:]}. The PSIS, NUTS, SBC and "
            "amortization-gap numbers below then compare a guide that ignores x with a posterior close to the "
            "prior: good values there are expected and are no evidence of a good model."
        )
    elif c.get("mostly_inactive"):
        lines.append(
            f"> **Warning: most latent units are inactive** ({c['active_units']} of {c['latent_dim']} "
            "active): the model uses few of its latent dimensions; read the diagnostics below as being "
            "about those."
        )
    p = results["psis"]
    above, above_07 = p["fraction_above"]["sample_size"], p["fraction_above"]["0.7"]
    if above > 0:
        share = "most" if above > 0.5 else "some"
        lines.append(
            f"> **Warning: the importance estimate is unreliable for {share} examples** "
            f"({above:.1%} with k-hat above the sample-size threshold {p['sample_size_threshold']:.2f}, "
            f"{above_07:.1%} above 0.7): the importance-sampled log p(x) "
            f"({_number(p['log_likelihood'])}) and the amortization gap's log p(x) may be far off, and their "
            "standard errors are optimistic. q(z | x) misses parts of p(z | x)."
        )
    if lines:
        lines = [line for warning in lines for line in (warning, ">")][:-1] + [""]
    return lines


def warning_texts(results) -> list[str]:
    """The warnings of :func:`report_warnings` as plain one-line texts (no Markdown), for a terminal."""
    texts = []
    for line in report_warnings(results):
        text = line.removeprefix(">").replace("**", "").strip().removeprefix("Warning: ")  # ">" alone: a separator
        if text:
            texts.append(text)
    return texts


def _psis_lines(results) -> list[str]:
    p = results["psis"]
    q = p["khat_quantiles"]
    return [
        "## The guide as an importance proposal (PSIS)",
        "",
        f"With S = {p['num_samples']} draws from q(z | x) per example, the importance-sampled log p(x) is "
        f"**{_number(p['log_likelihood'])} ± {_number(p['log_likelihood_se'])}** (Monte Carlo s.e.; optimistic "
        "where k-hat is high)"
        + (
            f", **{_number(p['bits_per_dim'], 4)} ± {_number(p['bits_per_dim_se'], 4)} bits per dimension**"
            if p.get("bits_per_dim") is not None
            else ""
        )
        + ".",
        "",
        "| k-hat | min | 5% | 25% | median | 75% | 95% | max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        "| | " + " | ".join(_number(q[k], 2) for k in ("min", "5%", "25%", "50%", "75%", "95%", "max")) + " |",
        "",
        f"Share of examples with k-hat above 0.5: {p['fraction_above']['0.5']:.1%}; above 0.7: "
        f"{p['fraction_above']['0.7']:.1%}; above the sample-size threshold {p['sample_size_threshold']:.2f}: "
        f"{p['fraction_above']['sample_size']:.1%}. Above 0.7 the importance estimate of that example is not "
        "reliable: q(z | x) misses parts of p(z | x) that matter.",
        "",
        "Worst examples (held-out index: k-hat): "
        + ", ".join(f"{i}: {_number(k, 2)}" for i, k in p["worst"][:5])
        + ".",
        "",
        "![k-hat](figures/khat.png)",
        "",
    ]


def _nuts_lines(n) -> list[str]:
    converged = n["max_rhat"] is not None and n["max_rhat"] < 1.01 and n["min_ess_bulk"] > 400
    lines = [
        "## NUTS reference posterior",
        "",
        f"NUTS on p(z | x) with the decoder fixed, {n['num_chains']} chains x {n['num_samples']} draws "
        f"({n['num_warmup']} warm-up) for held-out examples {n['observations']} (half the worst by k-hat, "
        f"half at random). Max R-hat {_number(n['max_rhat'], 4)}, min bulk ESS {_number(n['min_ess_bulk'], 0)}, "
        f"{n['divergences']} divergences"
        + (" — converged." if converged else " — treat the comparison with care (R-hat >= 1.01 or ESS <= 400)."),
        "",
        f"Against it, the guide's means are off by up to {_number(n['max_abs_standardized_mean_error'], 2)} "
        f"posterior sds; the guide's sd is {_number(n['median_sd_ratio'], 2)} times the posterior's (median; range "
        f"{_number(n['sd_ratio_range'][0], 2)} to {_number(n['sd_ratio_range'][1], 2)}). Below 1 the guide is "
        "over-confident.",
        "",
        "| held-out index | k-hat | max abs std. mean error | sd ratio (min–max) | max R-hat |",
        "| --- | --- | --- | --- | --- |",
    ]
    for index, khat, row in zip(n["observations"], n["khat"], n["per_observation"]):
        lines.append(
            f"| {index} | {_number(khat, 2)} | {max(abs(v) for v in row['standardized_mean_error']):.2f} | "
            f"{min(row['sd_ratio']):.2f}–{max(row['sd_ratio']):.2f} | {max(row['rhat']):.4f} |"
        )
    return lines + ["", *[f"![NUTS vs guide, #{i}](figures/nuts_pair_{i}.png)" for i in n["observations"][:2]], ""]


def _sbc_lines(s, collapsed: bool) -> list[str]:
    return [
        "## Simulation-based calibration",
        "",
        f"{s['num_simulations']} simulations z ~ p(z), x ~ p(x | z); rank of each true z_j among "
        f"{s['num_draws']} draws from q(z | x). Chi-square uniformity test ({s['num_bins']} bins), smallest "
        f"p-value over dimensions (Bonferroni): **{s['p_value']:.3g}**. Verdict: **{s['verdict']}**.",
        "",
        "A U-shaped histogram (ranks at both ends) means an under-dispersed, over-confident guide; a hump means "
        "an over-dispersed one; a slope means a biased one. The width is judged with the shift fitted out "
        "(a shifted guide of the right width is not called over-dispersed).",
        "",
        *(
            [
                f"Fitted per dimension (guide vs posterior): shift {_list(s['shift'], 2)} posterior sds, "
                f"sd ratio {_list(s['width_ratio'], 2)}.",
                "",
            ]
            if s.get("shift") is not None
            else []
        ),
        *(
            [
                "A collapsed model is calibrated trivially (q(z | x) = p(z) = p(z | x)): "
                "this verdict says nothing about "
                "an informative encoder.",
                "",
            ]
            if collapsed
            else []
        ),
        "![SBC ranks](figures/sbc_ranks.png)",
        "",
    ]


def _gap_lines(g) -> list[str]:
    if "skipped" in g:
        return ["## Amortization gap", "", f"Skipped: {g['skipped']}", ""]
    return [
        "## Amortization gap",
        "",
        f"On {g['num_examples']} held-out examples, with a per-example diagonal Normal refined for "
        f"{g['num_steps']} SVI steps from the encoder's output (Cremer et al. 2018):",
        "",
        "| quantity | nats per example | s.e. |",
        "| --- | --- | --- |",
        f"| ELBO of the encoder's q(z \\| x) | {_number(g['elbo_amortized'])} | {_number(g['elbo_amortized_se'])} |",
        f"| ELBO of the refined local guide | {_number(g['elbo_local'])} | {_number(g['elbo_local_se'])} |",
        f"| log p(x) (IS from the local guide) | {_number(g['log_likelihood'])} | {_number(g['log_likelihood_se'])} |",
        f"| **amortization gap** | {_number(g['amortization_gap'])} | {_number(g['amortization_gap_se'])} |",
        f"| **approximation gap** | {_number(g['approximation_gap'])} | {_number(g['approximation_gap_se'])} |",
        "",
    ]


def _classification_lines(classes: dict) -> list[str]:
    lines = [
        "## Calibration of the class posterior",
        "",
        "Predicted class probabilities against what happened, binned (reliability diagram). On data simulated "
        "from the model (y, then z, then x), the exact p(y | x) is calibrated by construction, so a "
        "miscalibrated p(y | x) there is an error of inference. ECE is positive even for calibrated "
        "predictions; each is compared with its distribution under calibration (labels drawn from the "
        "predictions themselves).",
        "",
        "| prediction | examples | ECE | ECE if calibrated (mean ± sd) | p-value | accuracy | confidence | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in classes.items():
        title = RELIABILITY_TITLES.get(name, name).replace("|", "\\|")  # a bar inside a Markdown table cell
        lines.append(
            f"| {title} | {r['num_examples']} | {_number(r['ece'], 4)} | "
            f"{_number(r['ece_calibrated_mean'], 4)} ± {_number(r['ece_calibrated_sd'], 4)} | {r['p_value']:.3g} | "
            f"{_number(r['accuracy'], 3)} ± {_number(r['accuracy_se'], 3)} | {_number(r['confidence'], 3)} | "
            f"{r['verdict']} |"
        )
    return lines + ["", "![reliability](figures/reliability.png)", ""]


def _collapse_lines(c, collapsed: bool) -> list[str]:
    if "skipped" in c:
        return ["## Posterior collapse", "", f"Skipped: {c['skipped']}", ""]
    lines = [
        "## Posterior collapse",
        "",
        f"{c['active_units']} of {c['latent_dim']} latent dimensions are active (activity > 0.01). "
        f"I(x; z) under the aggregate posterior: {_number(c['mutual_information'])} ± "
        f"{_number(c['mutual_information_se'])} nats (at most log N = {_number(c['log_num_examples'], 2)}).",
        "",
    ]
    if c.get("kl_total") is not None:
        lines += [
            f"KL(q(z | x) || p(z)) to the model's own prior: {_number(c['kl_total'])} ± "
            f"{_number(c.get('kl_total_se'))} nats per example.",
            "",
        ]
    if c.get("kl_per_dimension"):
        lines += [
            "KL per dimension (to the model's prior): "
            + ", ".join(f"{v:.2f}" for v in c["kl_per_dimension"])
            + " nats.",
            "",
        ]
    elif c.get("kl_note"):
        lines += [f"KL per dimension: not available ({c['kl_note']}).", ""]
    if collapsed:
        lines += [f"**Collapsed:** {c.get('warning') or 'no latent dimension is active'}.", ""]
    elif c.get("warning"):
        lines += [f"**Note:** {c['warning']}.", ""]
    else:
        lines += ["Not collapsed: the encodings carry information about x.", ""]
    return lines


def _labels_lines(role: str) -> list[str]:
    """What the model's labels mean for the numbers of the report (nothing for a model without labels)."""
    if role in ("covariate", "group"):
        kind = "class" if role == "covariate" else "group"
        return [
            f"The model takes each example's {kind} c as given: every log-density below is log p(x | c), "
            f"every posterior p(z | x, c), and SBC simulates each {kind} in turn.",
            "",
        ]
    if role == "semi":
        return [
            "The class y is latent in every held-out number (summed out exactly); the held-out labels only "
            "score the class predictions.",
            "",
        ]
    return []


def report(results) -> str:
    """``report.md``: the diagnostics in words (``results``: a :class:`DiagnoseResult` or the dict of a
    ``diagnostics.json``)."""
    collapsed = _collapsed(results)
    lines = [
        f"# Posterior diagnostics: {results['dataset']}",
        "",
        f"Run folder `{results['run_dir']}`, {results['num_heldout']} held-out examples. "
        f"Numbers are per example, in nats ({results.get('units', 'log-densities per example in nats')}).",
        "",
        *_labels_lines(results.get("label_role", "none")),
        *report_warnings(results),
        *_psis_lines(results),
    ]
    if "nuts" in results:
        lines += _nuts_lines(results["nuts"])
    lines += _sbc_lines(results["sbc"], collapsed)
    if results.get("calibration"):
        lines += calibration_lines(results["calibration"], collapsed)
    if results.get("classification"):
        lines += _classification_lines(results["classification"])
    if results.get("amortization_gap") is not None:
        lines += _gap_lines(results["amortization_gap"])
    lines += _collapse_lines(results["collapse"], collapsed)
    if results.get("predictive_checks"):
        lines += predictive_lines(results["predictive_checks"])
    lines += ["## Time", "", ", ".join(f"{k}: {v:.1f} s" for k, v in results["seconds"].items()) + ".", ""]
    return "\n".join(lines)


def summary_lines(results) -> list[str]:
    """The headline numbers of a diagnosis, one line per method, for a terminal (``n/a`` where a number
    does not exist, e.g. an infinite k-hat)."""
    p = results["psis"]
    lines = [
        f"PSIS: log p(x) {_number(p['log_likelihood'])} ± {_number(p['log_likelihood_se'])} nats per example"
        + (f" ({_number(p['bits_per_dim'], 4)} bits/dim)" if p.get("bits_per_dim") is not None else "")
        + "; "
        f"k-hat median {_number(p['khat_quantiles']['50%'], 2)}, {p['fraction_above']['0.7']:.1%} of examples "
        "above 0.7"
    ]
    if "nuts" in results:
        n = results["nuts"]
        lines.append(
            f"NUTS: max R-hat {_number(n['max_rhat'], 4)}; guide sd / NUTS sd median "
            f"{_number(n['median_sd_ratio'], 2)}; max |standardized mean error| "
            f"{_number(n['max_abs_standardized_mean_error'], 2)}"
        )
    lines.append(f"SBC: {results['sbc']['verdict']} (p = {results['sbc']['p_value']:.3g})")
    if results.get("calibration"):
        lines.append(calibration_summary(results["calibration"], _collapsed(results)))
    for name, r in (results.get("classification") or {}).items():
        lines.append(
            f"classes, {RELIABILITY_TITLES.get(name, name)}: ECE {_number(r['ece'], 4)} (calibrated "
            f"{_number(r['ece_calibrated_mean'], 4)} ± {_number(r['ece_calibrated_sd'], 4)}), {r['verdict']}; "
            f"accuracy {_number(r['accuracy'], 3)}"
        )
    for name in ("amortization_gap", "collapse"):
        if "skipped" in (results.get(name) or {}):
            lines.append(f"{name.replace('_', ' ')}: skipped: {results[name]['skipped']}")
    if results.get("predictive_checks"):
        lines.append(predictive_summary(results["predictive_checks"]))
    g = results.get("amortization_gap") or {}
    if "amortization_gap" in g:
        lines.append(
            f"gaps: amortization {_number(g['amortization_gap'])} ± {_number(g['amortization_gap_se'])}, "
            f"approximation {_number(g['approximation_gap'])} ± {_number(g['approximation_gap_se'])} nats "
            "per example"
        )
    return lines
