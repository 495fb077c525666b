"""``ppl-vae compare RUN RUN [...]``: paired comparison of trained runs on their common held-out data
(:mod:`ppl_vae.diagnostics.comparison`), and :func:`compare_models`, the Python entry point for runs or
models.

Files written with ``--out DIR`` (all at once, after every model was scored):

``comparison.json``
    A list with one record per model, best first: ``run`` (the folder as given), ``name``, ``rank``,
    ``elpd`` and ``elpd_per_example`` (held-out log predictive density, nats, in total and per example),
    ``se``, ``mcse``, ``elpd_diff`` and ``elpd_diff_per_example`` (to the best), ``dse`` (paired s.e.),
    ``dse_mc`` (its Monte Carlo part), ``z`` (``elpd_diff / dse``), ``weight`` (stacking),
    ``pseudo_bma_weight``, ``khat_over_0.7``, ``warning``, ``collapsed`` (the model ignores z; None where
    not measurable), ``prior``, ``guide``, ``likelihood``, and the shared ``dataset``, ``num_examples``,
    ``num_samples``, ``units``; for 8-bit likelihoods also ``bits_per_dim`` (-elpd per example / (D ln 2))
    and ``bits_per_dim_diff`` (to the best model).
``comparison.md``
    The table, what it says (which differences exceed 2 paired s.e.), warnings, the figure.
``figures/comparison.png``
    Each model's difference to the best, per example, with ±2 paired s.e. and the Monte Carlo part.
``inference_data/<name>.nc``
    Each model's pointwise log p(x_n) as ArviZ InferenceData (group ``log_likelihood``; Monte Carlo s.e.
    and k-hat per example in group ``importance``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from ppl_vae.app.folders import check_output_dir, publish_folder
from ppl_vae.app.formatting import format_number
from ppl_vae.errors import ConfigError
from ppl_vae.results import NOT_IN_DICT, Result
from ppl_vae.validation import BOUNDS, Bound, check_number

#: Config fields that decide which held-out examples a run scores, and in which form.
DATA_FIELDS = ("dataset", "image_size", "binarize", "heldout_fraction", "split_seed", "likelihood")
#: Which label roles give comparable log-densities: log p(x) (labels absent or latent) vs log p(x | c).
_COMPARABLE = {"none": "log p(x)", "semi": "log p(x)", "covariate": "log p(x | c)", "group": "log p(x | group)"}

_number = functools.partial(format_number, fixed=True, missing="n/a")


@dataclass(frozen=True)
class RunComparison(Result):
    """What ``ppl-vae compare`` found: ``records`` (the list written to ``comparison.json``), ``warnings``,
    ``units``, ``dataset``, ``num_examples``, ``num_samples``; ``comparison`` keeps the
    :class:`~ppl_vae.diagnostics.comparison.Comparison` (not in :meth:`to_dict`)."""

    records: list
    warnings: list
    units: str
    dataset: str
    num_examples: int
    num_samples: int
    comparison: object = field(repr=False, default=None, metadata=NOT_IN_DICT)


def _names(run_dirs: list[Path]) -> list[str]:
    """Folder names, or the paths as given where two folders share a name."""
    base = [p.name or str(p) for p in run_dirs]
    return [b if base.count(b) == 1 else str(p) for b, p in zip(base, run_dirs)]


def _check_distinct(run_dirs: list[Path]) -> None:
    seen: dict = {}
    for path in run_dirs:
        key = os.path.realpath(path)
        if key in seen:
            raise ConfigError(f"run {path} is given twice (also as {seen[key]}); pass each run once")
        seen[key] = path


def _check_comparable(runs: list, run_dirs: list[Path], heldout: list) -> None:
    """Refuse runs whose held-out examples, their form or the kind of density differ (one line)."""
    import torch

    first, x0 = runs[0], heldout[0]
    for run, path, x in zip(runs[1:], run_dirs[1:], heldout[1:]):
        fields = [
            f"{f} {getattr(first.config, f)!r} vs {getattr(run.config, f)!r}"
            for f in DATA_FIELDS
            if getattr(first.config, f) != getattr(run.config, f)
        ]
        if x.shape != x0.shape or not torch.equal(x.cpu(), x0.cpu()):
            why = "; ".join(fields) if fields else "the data files differ"
            raise ConfigError(
                f"runs {run_dirs[0]} and {path} score different held-out examples ({why}); compare runs "
                "trained on the same data, split and binarization"
            )
        kinds = {_COMPARABLE[r.vae.label_role] for r in (first, run)}
        if len(kinds) > 1:
            raise ConfigError(
                f"runs {run_dirs[0]} and {path} give different kinds of density ({' vs '.join(sorted(kinds))}); "
                "compare conditional models only with conditional models on the same labels"
            )
    for run, path in zip(runs, run_dirs):
        if run.vae.spec.get("guide") == "delta":
            raise ConfigError(
                f"run {path} has a point-mass guide (delta): it gives no estimate of log p(x); leave it out"
            )
    shifts = {round(float(r.scaling.log_abs_det), 9) if r.scaling is not None else 0.0 for r in runs}
    if len(shifts) > 1:
        raise ConfigError("the runs standardize their table differently; compare runs trained on the same split")


def _collapsed(vae, heldout) -> bool | None:
    from ppl_vae import diagnostics

    try:
        return bool(diagnostics.collapse_report(vae, heldout, seed=0).collapsed)
    except (ConfigError, AttributeError, NotImplementedError):
        return None  # a model without q(z | x) in the form collapse_report reads


def load_comparable_runs(run_dirs, *, device: str = "cpu"):
    """``(runs, heldout, labels)``: the runs loaded and checked to score the same held-out examples in the
    same form (refused with a one-line :class:`ConfigError` otherwise)."""
    from ppl_vae.app.run import load_run, model_input

    run_dirs = [Path(p) for p in run_dirs]
    if len(run_dirs) < 2:
        raise ConfigError(f"compare needs at least two runs, got {len(run_dirs)}; pass two or more run folders")
    _check_distinct(run_dirs)
    runs = [load_run(p, device=device) for p in run_dirs]
    heldout = [model_input(r.data.heldout, r.vae, r.config) for r in runs]
    _check_comparable(runs, run_dirs, heldout)
    labels = runs[0].labels.heldout
    return runs, heldout[0], None if labels is None else labels.to(runs[0].vae.device)


def compare_runs(
    run_dirs,
    out: str | Path | None = None,
    *,
    num_samples: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    overwrite: bool = False,
) -> RunComparison:
    """Compare trained runs on their common held-out examples; with ``out``, write the files listed in
    the module docstring (the folder is checked before any work and filled all at once)."""
    from ppl_vae import threads
    from ppl_vae.app.run import step_work, units_of
    from ppl_vae.diagnostics.comparison import compare_models as compare

    check_number(num_samples, "num_samples", Bound(int, 2, BOUNDS["num_samples"].high))
    run_dirs = [Path(p) for p in run_dirs]
    if out is not None:
        check_output_dir(out, "comparison", overwrite=overwrite, inputs=run_dirs)
    runs, heldout, labels = load_comparable_runs(run_dirs, device=device)
    threads.adapt(step_work(runs[0].vae, num_samples))
    shift, label = units_of(runs[0].scaling)
    names = _names(run_dirs)
    result = compare(
        dict(zip(names, (r.vae for r in runs))),
        heldout,
        num_samples=num_samples,
        seed=seed,
        c=labels,
        shift=shift,
        progress=progress,
    )
    by_name = dict(zip(names, zip(run_dirs, runs)))
    units = f"held-out log predictive density in nats ({label}); elpd in total over examples, *_per_example per example"
    common = {"dataset": runs[0].data.name, "num_examples": result.num_examples, "num_samples": num_samples}
    records = [
        _with_bits(
            {
                "run": str(by_name[r["name"]][0]),
                **r,
                **_model_fields(by_name[r["name"]][1], heldout),
                **common,
                "units": units,
            }
        )
        for r in result.records
    ]
    comparison = RunComparison(
        records, result.warnings, units, common["dataset"], result.num_examples, num_samples, comparison=result
    )
    if out is not None:
        write_comparison(Path(out), comparison)
    return comparison


def _with_bits(record: dict) -> dict:
    """An 8-bit run's record gains ``bits_per_dim`` (-elpd per example / (D ln 2)) and its difference to the
    best model in bits/dim, ``bits_per_dim_diff``."""
    dims = record.pop("dims", None)
    if dims:
        from ppl_vae.infer.evaluate import bits_per_dim

        record["bits_per_dim"] = float(bits_per_dim(-record["elpd_per_example"], dims))
        record["bits_per_dim_diff"] = float(bits_per_dim(record["elpd_diff_per_example"], dims))
    return record


def _model_fields(run, heldout) -> dict:
    spec = run.vae.spec
    extra = {}
    if getattr(run.vae.likelihood, "data_kind", None) == "8bit":  # 8-bit images: bits/dim as well
        extra["dims"] = int(heldout[0].numel())
    return {
        **extra,
        "prior": spec.get("prior"),
        "guide": spec.get("guide"),
        "likelihood": spec.get("likelihood"),
        "collapsed": _collapsed(run.vae, heldout),
    }


def write_comparison(out: Path, comparison: RunComparison) -> None:
    """Write ``comparison.json``, ``comparison.md``, the figure and the InferenceData, all at once."""
    from ppl_vae.app import plots
    from ppl_vae.app.checkpoint import atomic_write, write_json
    from ppl_vae.diagnostics.comparison import to_inference_data

    def write(staging: Path) -> None:
        write_json(staging / "comparison.json", comparison.records)
        plots.save_figure(
            plots.comparison_figure(comparison.records, comparison.num_examples), staging / "figures" / "comparison.png"
        )
        (staging / "inference_data").mkdir()
        for i, (name, score) in enumerate(comparison.comparison.scores.items()):
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(name).name) or "model"
            to_inference_data(score).to_netcdf(str(staging / "inference_data" / f"{i}_{safe}.nc"))
        text = "\n".join(report_lines(comparison)) + "\n"
        atomic_write(staging / "comparison.md", lambda handle: handle.write(text.encode()))

    publish_folder(out, "comparison", write)


# -- tables and words --------------------------------------------------------------------------------


def table_rows(records: list) -> list[list[str]]:
    """The comparison table as text cells, header first (per example and in total, nats)."""
    rows = [
        [
            "rank",
            "model",
            "elpd",
            "per example",
            "se",
            "elpd_diff",
            "per example",
            "dse",
            "MC part",
            "diff/dse",
            "weight",
            "pseudo-BMA+",
            "k-hat>0.7",
        ]
    ]
    for r in records:
        rows.append(
            [
                str(r["rank"]),
                r["name"] + (" (collapsed)" if r.get("collapsed") else ""),
                _number(r["elpd"], 1),
                _number(r["elpd_per_example"], 3),
                _number(r["se"], 1),
                _number(r["elpd_diff"], 1),
                _number(r["elpd_diff_per_example"], 3),
                _number(r["dse"], 1),
                _number(r["dse_mc"], 2),
                "" if r["z"] is None else _number(r["z"], 1),
                _number(r["weight"], 2),
                _number(r["pseudo_bma_weight"], 2),
                f"{r['khat_over_0.7']:.1%}",
            ]
        )
    return rows


def _difference_line(best: str, r: dict) -> str:
    """One model against the best, in words, judged by its paired s.e."""
    head = (
        f"{best} beats {r['name']} by {_number(r['elpd_diff_per_example'], 3)} nats per example "
        f"({_number(r['elpd_diff'], 1)} in total, {_number(r['z'], 1)} paired s.e.)"
    )
    if r["z"] > 2:
        return f"{head}: the difference exceeds 2 s.e."
    tail = (
        "; more guide draws would not change that, only more held-out data could"
        if r["dse_mc"] < 0.5 * r["dse"]
        else ""
    )
    return f"{head}: within 2 s.e., these held-out data do not tell the two apart{tail}."


def verdict_lines(comparison: RunComparison) -> list[str]:
    """What the table says: each model against the best, by its paired s.e., with the caveats."""
    records = comparison.records
    best = records[0]["name"]
    lines = []
    for r in records[1:]:
        if r["z"] is None:
            lines.append(f"{r['name']} ties with {best}: their pointwise log-densities are identical.")
            continue
        lines.append(_difference_line(best, r))
    if records[0].get("bits_per_dim") is not None:
        lines.append(
            "In bits per dimension (8-bit data, lower is better): "
            + ", ".join(f"{r['name']} {_number(r['bits_per_dim'], 4)}" for r in records)
            + "."
        )
    collapsed = [r["name"] for r in records if r.get("collapsed")]
    if collapsed:
        lines.append(
            f"Collapsed (the decoder ignores z): {', '.join(collapsed)}. Their elpd is still an honest held-out "
            "density, but of a model that does not use its latent code; do not read their rank as a verdict on "
            "the prior."
        )
    return lines + [f"Warning: {w}" for w in comparison.warnings]


def report_lines(comparison: RunComparison) -> list[str]:
    """``comparison.md``."""
    rows = table_rows(comparison.records)
    lines = [
        f"# Model comparison on `{comparison.dataset}`",
        "",
        f"{len(comparison.records)} models scored on the same {comparison.num_examples} held-out examples with "
        f"S = {comparison.num_samples} guide draws each. Units: {comparison.units}. Higher elpd is better; "
        "`elpd_diff` is the best model's elpd minus this one's, `dse` its paired standard error over examples "
        "(the uncertainty that matters), `MC part` the share of it due to the finite draws; weights are "
        "az.compare's stacking and pseudo-BMA+ weights. The errors are over held-out examples for these models "
        "as trained: another training seed moves each row too, so a claim about a prior or guide in general "
        "needs runs with several seeds.",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "| --- | --- | " + " | ".join(["---:"] * (len(rows[0]) - 2)) + " |",
        *("| " + " | ".join(row) + " |" for row in rows[1:]),
        "",
        *(f"- {line}" for line in verdict_lines(comparison)),
        "",
        "![differences](figures/comparison.png)",
        "",
        "| model | run | prior | guide | likelihood |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {r['name']} | `{r['run']}` | {r['prior']} | {r['guide']} | {r['likelihood']} |"
            for r in comparison.records
        ),
        "",
    ]
    return lines


def text_table(records: list) -> list[str]:
    """The table for a terminal, columns aligned."""
    rows = table_rows(records)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.rjust(w) if i != 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]


def compare_models(
    runs_or_models,
    data=None,
    *,
    num_samples: int = 1000,
    seed: int = 0,
    c=None,
    device: str = "cpu",
    progress: bool = False,
):
    """Paired comparison of models on the same held-out examples (:mod:`ppl_vae.diagnostics.comparison`).

    ``runs_or_models``: run folders (their common held-out data is used; ``data`` must then be None), or
    models (``{name: vae}`` or a list; anything with ``.model`` and ``.guide``), scored on ``data (N, ...)``
    in the form their likelihood scores. Returns a :class:`RunComparison` for runs and a
    :class:`~ppl_vae.diagnostics.comparison.Comparison` for models."""
    from ppl_vae.diagnostics.comparison import compare_models as compare

    items = list(runs_or_models.values()) if isinstance(runs_or_models, dict) else list(runs_or_models)
    paths = [isinstance(item, (str, os.PathLike)) for item in items]
    if all(paths) and items:
        if data is not None:
            raise ConfigError("runs are scored on their own held-out data; pass data=None, or pass models with data")
        return compare_runs(items, num_samples=num_samples, seed=seed, device=device, progress=progress)
    if any(paths):
        raise ConfigError("pass either run folders or models, not both")
    if data is None:
        raise ConfigError("models need the data to score them on: pass data=(N, ...) held-out examples")
    return compare(runs_or_models, data, num_samples=num_samples, seed=seed, c=c, progress=progress)
