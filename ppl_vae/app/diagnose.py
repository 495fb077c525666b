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
    ``amortization_gap``: see :func:`ppl_vae.diagnostics.gaps.amortization_gap` (or ``{"skipped": reason}``);
    ``collapse``: see :func:`ppl_vae.diagnostics.collapse.collapse_report`;
    ``seconds``: wall time of each step; ``settings``: the arguments.
``log_ratios.npy``
    ``(S, N)`` float64 log p(x_n, z_s) - log q(z_s | x_n) of the PSIS step: recompute k-hat from these.
``inference_data.nc``
    ArviZ InferenceData of the held-out data (:func:`ppl_vae.diagnostics.posterior.to_inference_data`).
``nuts.nc``
    ArviZ InferenceData of the NUTS draws (chain, draw, obs, latent_dim).
``report.md``
    The numbers above in words, with the figures.
``figures/``
    ``khat.png``, ``sbc_ranks.png``, ``nuts_pair_<index>.png`` (one per NUTS observation).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ppl_vae import diagnostics
from ppl_vae.app import plots
from ppl_vae.app.checkpoint import atomic_write, write_json
from ppl_vae.app.folders import check_output_dir, locked, write_marker
from ppl_vae.errors import ConfigError
from ppl_vae.limits import check_bytes
from ppl_vae.validation import Bound, check_number


def _choose_observations(khat: np.ndarray, count: int, seed: int) -> list[int]:
    """Half the observations with the highest k-hat (where the guide is most in doubt), half at random."""
    order = np.argsort(-np.nan_to_num(khat, nan=np.inf, neginf=-1e9))
    worst = [int(i) for i in order[: count - count // 2]]
    rest = np.setdiff1d(np.arange(len(khat)), worst)
    rng = np.random.default_rng(seed)
    chosen = worst + [int(i) for i in rng.choice(rest, size=min(count // 2, len(rest)), replace=False)]
    return chosen


def _finite(value):
    """JSON has no infinities: non-finite floats become None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def diagnose_run(run_dir: str | Path, out: str | Path | None = None, *, num_samples: int = 1000,
                 nuts_observations: int = 8, nuts_warmup: int = 300, nuts_samples: int = 500, nuts_chains: int = 4,
                 sbc_simulations: int = 1000, sbc_draws: int = 99, gap_observations: int = 100, gap_steps: int = 300,
                 idata_samples: int = 100, seed: int = 0, device: str = "cpu", progress: bool = False,
                 overwrite: bool = False) -> dict:
    """Run every diagnostic on a run folder's held-out data and write the files listed in the module
    docstring. Returns the contents of ``diagnostics.json``.

    The output folder is checked before any work (:func:`ppl_vae.app.folders.check_output_dir`: never the
    run itself or a folder that contains it; ``overwrite`` replaces only a diagnostics folder ppl_vae
    made), the run folder is locked while the diagnostics run, and the files appear together at the end
    (written into a hidden sibling folder, then renamed into place)."""

    run_dir = Path(run_dir)
    for name, value in (("num_samples", num_samples), ("nuts_observations", nuts_observations),
                        ("nuts_chains", nuts_chains), ("nuts_samples", nuts_samples), ("nuts_warmup", nuts_warmup),
                        ("sbc_simulations", sbc_simulations), ("sbc_draws", sbc_draws),
                        ("gap_observations", gap_observations), ("gap_steps", gap_steps),
                        ("idata_samples", idata_samples)):
        check_number(value, name, LIMITS[name])
    out = Path(out) if out is not None else run_dir / "diagnostics"
    check_output_dir(out, "diagnostics", overwrite=overwrite, inputs=[run_dir])
    with locked(run_dir, "diagnose"):
        return _diagnose_locked(run_dir, out, num_samples=num_samples, nuts_observations=nuts_observations,
                                nuts_warmup=nuts_warmup, nuts_samples=nuts_samples, nuts_chains=nuts_chains,
                                sbc_simulations=sbc_simulations, sbc_draws=sbc_draws,
                                gap_observations=gap_observations, gap_steps=gap_steps, idata_samples=idata_samples,
                                seed=seed, device=device, progress=progress)


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


#: Accepted ranges of diagnose_run's sizes (the lower ends are what each method needs to mean anything).
LIMITS = {"num_samples": Bound(int, 2, 100_000), "nuts_observations": Bound(int, 0, 10_000),
          "nuts_chains": Bound(int, 2, 64), "nuts_samples": Bound(int, 10, 100_000),
          "nuts_warmup": Bound(int, 0, 100_000), "sbc_simulations": Bound(int, 20, 1_000_000),
          "sbc_draws": Bound(int, 1, 10_000), "gap_observations": Bound(int, 0, 100_000),
          "gap_steps": Bound(int, 1, 1_000_000), "idata_samples": Bound(int, 1, 100_000)}


def _diagnose_locked(run_dir: Path, out: Path, *, num_samples, nuts_observations, nuts_warmup, nuts_samples,
                     nuts_chains, sbc_simulations, sbc_draws, gap_observations, gap_steps, idata_samples, seed,
                     device, progress) -> dict:
    from ppl_vae.app.run import load_run, model_input

    run = load_run(run_dir, device=device)
    vae, config = run.vae, run.config
    heldout = model_input(run.data.heldout, vae, config)
    check_bytes(num_samples * heldout.shape[0] * 8 * 4, f"{num_samples} importance draws for each of "
                f"{heldout.shape[0]} held-out examples")
    model, guide = vae.model, vae.guide

    steps = ["psis", "inference data", "nuts", "sbc", "amortization gap", "collapse", "figures"]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc="diagnose", unit="step", dynamic_ncols=True)
    seconds, figures = {}, {}
    results: dict = {"run_dir": str(run_dir), "dataset": run.data.name, "num_heldout": int(heldout.shape[0])}

    def step(name):
        if bar is not None:
            bar.set_postfix_str(name)
        seconds[name] = time.perf_counter()

    def done(name):
        seconds[name] = round(time.perf_counter() - seconds[name], 2)
        if bar is not None:
            bar.update(1)

    try:
        step("psis")
        p = diagnostics.psis(model, guide, heldout, num_samples=num_samples, seed=seed)
        results["psis"] = {
            "num_samples": num_samples, "num_observations": int(heldout.shape[0]),
            "log_likelihood": p.log_likelihood, "log_likelihood_se": p.log_likelihood_se,
            "khat_quantiles": dict(zip(("min", "5%", "25%", "50%", "75%", "95%", "max"),
                                       np.quantile(p.khat, [0, .05, .25, .5, .75, .95, 1]).tolist())),
            "fraction_above": p.fraction_above, "sample_size_threshold": p.sample_size_threshold, "worst": p.worst}
        done("psis")

        step("inference data")
        idata = diagnostics.to_inference_data(model, guide, heldout, num_samples=idata_samples, seed=seed)
        done("inference data")

        step("nuts")
        nuts = None
        if nuts_observations:
            chosen = _choose_observations(p.khat, min(nuts_observations, heldout.shape[0]), seed)
            nuts = diagnostics.nuts_reference(model, guide, heldout[chosen], num_chains=nuts_chains,
                                              num_warmup=nuts_warmup, num_samples=nuts_samples, seed=seed)
            results["nuts"] = {"observations": chosen, "khat": [float(p.khat[i]) for i in chosen],
                               "num_chains": nuts_chains, "num_warmup": nuts_warmup, "num_samples": nuts_samples,
                               **nuts.summary()}
        done("nuts")

        step("sbc")
        s = diagnostics.sbc(model, guide, num_simulations=sbc_simulations, num_draws=sbc_draws, seed=seed)
        results["sbc"] = s.summary()
        done("sbc")

        step("amortization gap")
        if gap_observations:
            try:
                results["amortization_gap"] = diagnostics.amortization_gap(
                    model, guide, heldout[:gap_observations], posterior=vae.posterior, num_steps=gap_steps,
                    num_particles=num_samples, seed=seed)
            except ConfigError as error:
                results["amortization_gap"] = {"skipped": str(error)}
        done("amortization gap")

        step("collapse")
        results["collapse"] = diagnostics.collapse_report(vae, heldout, seed=seed)
        done("collapse")
        _report_in_data_units(results, run.scaling)

        step("figures")
        threshold = {"k-hat 0.5": 0.5, "k-hat 0.7": 0.7,
                     f"sample-size threshold {p.sample_size_threshold:.2f}": p.sample_size_threshold}
        figures["khat.png"] = plots.khat_figure(p.khat, threshold)
        figures["sbc_ranks.png"] = plots.rank_histograms_figure(s.ranks, s.num_draws, s.num_bins, s.p_values)
        if nuts is not None:
            for k, index in enumerate(results["nuts"]["observations"]):
                title = (f"held-out #{index}: NUTS (blue, {nuts_chains} chains) vs guide (orange); "
                         f"k-hat {p.khat[index]:.2f}")
                # the dimensions x informs most (narrowest posterior), not collapsed ones equal to the prior
                dims = sorted(np.argsort(nuts.nuts_sd[k])[:4].tolist())
                figures[f"nuts_pair_{index}.png"] = plots.pair_figure(
                    nuts.samples[:, :, k].reshape(-1, nuts.samples.shape[-1]), nuts.guide_samples[:, k], title, dims)
        done("figures")
    finally:
        if bar is not None:
            bar.close()
    results["seconds"] = seconds
    results["settings"] = {"num_samples": num_samples, "nuts_observations": nuts_observations,
                           "nuts_chains": nuts_chains, "nuts_warmup": nuts_warmup, "nuts_samples": nuts_samples,
                           "sbc_simulations": sbc_simulations, "sbc_draws": sbc_draws,
                           "gap_observations": gap_observations, "gap_steps": gap_steps,
                           "idata_samples": idata_samples, "seed": seed}
    results = _finite(results)

    # Write everything into a temporary sibling folder, then move it into place: no half-written output.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        write_json(staging / "diagnostics.json", results)
        atomic_write(staging / "log_ratios.npy", lambda handle: np.save(handle, p.log_ratios.numpy()))
        idata.to_netcdf(str(staging / "inference_data.nc"))
        if nuts is not None:
            nuts.inference_data.to_netcdf(str(staging / "nuts.nc"))
        for name, fig in figures.items():
            plots.save_figure(fig, staging / "figures" / name)
        atomic_write(staging / "report.md", lambda handle: handle.write(report(results).encode()))
        write_marker(staging, "diagnostics")
        aside = None
        if out.exists():                      # checked above: empty, or a diagnostics folder to replace
            aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            os.replace(out, aside)
        staging.rename(out)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return results


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _list(values, digits: int = 2) -> str:
    return "[" + ", ".join(_fmt(v, digits) for v in values) + "]"


def _collapsed(results: dict) -> bool:
    """Whether the collapse step found a collapsed model (older diagnostics.json: no active unit)."""
    c = results.get("collapse", {})
    return bool(c.get("collapsed", c.get("active_units") == 0))


def report_warnings(results: dict) -> list[str]:
    """Warning lines for the top of the report: a collapsed model, an unreliable importance estimate."""
    lines = []
    c = results.get("collapse", {})
    if _collapsed(results):
        reason = c.get("warning") or f"0 of {c.get('latent_dim')} latent units active"
        lines.append(f"> **Warning: collapsed model.** {reason[0].upper() + reason[1:]}. The PSIS, NUTS, SBC and "
                     "amortization-gap numbers below then compare a guide that ignores x with a posterior close to the "
                     "prior: good values there are expected and are no evidence of a good model.")
    elif c.get("mostly_inactive"):
        lines.append(f"> **Warning: most latent units are inactive** ({c['active_units']} of {c['latent_dim']} "
                     "active): the model uses few of its latent dimensions; read the diagnostics below as being "
                     "about those.")
    p = results["psis"]
    above, above_07 = p["fraction_above"]["sample_size"], p["fraction_above"]["0.7"]
    if above > 0:
        share = "most" if above > 0.5 else "some"
        lines.append(f"> **Warning: the importance estimate is unreliable for {share} examples** "
                     f"({above:.1%} with k-hat above the sample-size threshold {p['sample_size_threshold']:.2f}, "
                     f"{above_07:.1%} above 0.7): the importance-sampled log p(x) "
                     f"({_fmt(p['log_likelihood'])}) and the amortization gap's log p(x) may be far off, and their "
                     "standard errors are optimistic. q(z | x) misses parts of p(z | x).")
    if lines:
        lines = [line for warning in lines for line in (warning, ">")][:-1] + [""]
    return lines


def report(results: dict) -> str:
    """``report.md``: the diagnostics in words."""
    p = results["psis"]
    q = p["khat_quantiles"]
    lines = [
        f"# Posterior diagnostics: {results['dataset']}",
        "",
        f"Run folder `{results['run_dir']}`, {results['num_heldout']} held-out examples. "
        f"Numbers are per example, in nats ({results.get('units', 'log-densities per example in nats')}).",
        "",
        *report_warnings(results),
        "## The guide as an importance proposal (PSIS)",
        "",
        f"With S = {p['num_samples']} draws from q(z | x) per example, the importance-sampled log p(x) is "
        f"**{_fmt(p['log_likelihood'])} ± {_fmt(p['log_likelihood_se'])}** (Monte Carlo s.e.; optimistic "
        "where k-hat is high).",
        "",
        "| k-hat | min | 5% | 25% | median | 75% | 95% | max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        "| | " + " | ".join(_fmt(q[k], 2) for k in ("min", "5%", "25%", "50%", "75%", "95%", "max")) + " |",
        "",
        f"Share of examples with k-hat above 0.5: {p['fraction_above']['0.5']:.1%}; above 0.7: "
        f"{p['fraction_above']['0.7']:.1%}; above the sample-size threshold {p['sample_size_threshold']:.2f}: "
        f"{p['fraction_above']['sample_size']:.1%}. Above 0.7 the importance estimate of that example is not "
        "reliable: q(z | x) misses parts of p(z | x) that matter.",
        "",
        "Worst examples (held-out index: k-hat): " + ", ".join(f"{i}: {_fmt(k, 2)}" for i, k in p["worst"][:5]) + ".",
        "",
        "![k-hat](figures/khat.png)",
        "",
    ]
    if "nuts" in results:
        n = results["nuts"]
        lines += [
            "## NUTS reference posterior",
            "",
            f"NUTS on p(z | x) with the decoder fixed, {n['num_chains']} chains x {n['num_samples']} draws "
            f"({n['num_warmup']} warm-up) for held-out examples {n['observations']} (half the worst by k-hat, "
            f"half at random). Max R-hat {_fmt(n['max_rhat'], 4)}, min bulk ESS {_fmt(n['min_ess_bulk'], 0)}, "
            f"{n['divergences']} divergences"
            + (" — converged." if n["max_rhat"] is not None and n["max_rhat"] < 1.01 and n["min_ess_bulk"] > 400
               else " — treat the comparison with care (R-hat >= 1.01 or ESS <= 400)."),
            "",
            f"Against it, the guide's means are off by up to {_fmt(n['max_abs_standardized_mean_error'], 2)} posterior "
            f"sds; the guide's sd is {_fmt(n['median_sd_ratio'], 2)} times the posterior's (median; range "
            f"{_fmt(n['sd_ratio_range'][0], 2)} to {_fmt(n['sd_ratio_range'][1], 2)}). Below 1 the guide is "
            "over-confident.",
            "",
            "| held-out index | k-hat | max abs std. mean error | sd ratio (min–max) | max R-hat |",
            "| --- | --- | --- | --- | --- |",
        ]
        for index, khat, row in zip(n["observations"], n["khat"], n["per_observation"]):
            lines.append(f"| {index} | {_fmt(khat, 2)} | {max(abs(v) for v in row['standardized_mean_error']):.2f} | "
                         f"{min(row['sd_ratio']):.2f}–{max(row['sd_ratio']):.2f} | {max(row['rhat']):.4f} |")
        lines += ["", *[f"![NUTS vs guide, #{i}](figures/nuts_pair_{i}.png)" for i in n["observations"][:2]], ""]
    s = results["sbc"]
    lines += [
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
        *([f"Fitted per dimension (guide vs posterior): shift {_list(s['shift'], 2)} posterior sds, "
           f"sd ratio {_list(s['width_ratio'], 2)}.", ""] if s.get("shift") is not None else []),
        *(["A collapsed model is calibrated trivially (q(z | x) = p(z) = p(z | x)): this verdict says nothing about "
           "an informative encoder.", ""] if _collapsed(results) else []),
        "![SBC ranks](figures/sbc_ranks.png)",
        "",
    ]
    g = results.get("amortization_gap")
    if g is not None:
        lines += ["## Amortization gap", ""]
        if "skipped" in g:
            lines += [f"Skipped: {g['skipped']}", ""]
        else:
            lines += [
                f"On {g['num_examples']} held-out examples, with a per-example diagonal Normal refined for "
                f"{g['num_steps']} SVI steps from the encoder's output (Cremer et al. 2018):",
                "",
                "| quantity | nats per example | s.e. |",
                "| --- | --- | --- |",
                f"| ELBO of the encoder's q(z \\| x) | {_fmt(g['elbo_amortized'])} | {_fmt(g['elbo_amortized_se'])} |",
                f"| ELBO of the refined local guide | {_fmt(g['elbo_local'])} | {_fmt(g['elbo_local_se'])} |",
                f"| log p(x) (IS from the local guide) | {_fmt(g['log_likelihood'])} | {_fmt(g['log_likelihood_se'])} |",
                f"| **amortization gap** | {_fmt(g['amortization_gap'])} | {_fmt(g['amortization_gap_se'])} |",
                f"| **approximation gap** | {_fmt(g['approximation_gap'])} | {_fmt(g['approximation_gap_se'])} |",
                "",
            ]
    c = results["collapse"]
    lines += [
        "## Posterior collapse",
        "",
        f"{c['active_units']} of {c['latent_dim']} latent dimensions are active (activity > 0.01). "
        f"I(x; z) under the aggregate posterior: {_fmt(c['mutual_information'])} ± {_fmt(c['mutual_information_se'])} "
        f"nats (at most log N = {_fmt(c['log_num_examples'], 2)}).",
        "",
    ]
    if c.get("kl_total") is not None:
        lines += [f"KL(q(z | x) || p(z)) to the model's own prior: {_fmt(c['kl_total'])} ± {_fmt(c.get('kl_total_se'))} "
                  "nats per example.", ""]
    if c.get("kl_per_dimension"):
        lines += ["KL per dimension (to the model's prior): " + ", ".join(f"{v:.2f}" for v in c["kl_per_dimension"])
                  + " nats.", ""]
    elif c.get("kl_note"):
        lines += [f"KL per dimension: not available ({c['kl_note']}).", ""]
    if _collapsed(results):
        lines += [f"**Collapsed:** {c.get('warning') or 'no latent dimension is active'}.", ""]
    elif c.get("warning"):
        lines += [f"**Note:** {c['warning']}.", ""]
    else:
        lines += ["Not collapsed: the encodings carry information about x.", ""]
    lines += ["## Time", "", ", ".join(f"{k}: {v:.1f} s" for k, v in results["seconds"].items()) + ".", ""]
    return "\n".join(lines)
