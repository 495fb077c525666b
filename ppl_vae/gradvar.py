"""Why the reparameterization trick: the spread of ELBO gradient estimators, measured.

The guide's parameters φ enter the ELBO through the distribution we sample from,
``ELBO(φ) = E_{z ~ q_φ}[f_φ(z)]`` with ``f_φ(z) = log p(x, z) - log q_φ(z)``. A sample of z is a number,
not a function of φ, so "sample z, then differentiate" gives no gradient for the sampling itself. Two
unbiased estimators of ``∇_φ ELBO`` fix that; this module measures how noisy each one is, for the same
model, guide and data:

``"reparam"`` (pathwise, the reparameterization trick; Pyro's default for a guide site whose
    distribution has ``rsample``): draw ``ε ~ N(0, I)``, set ``z = μ_φ + σ_φ ⊙ ε`` and differentiate
    ``f_φ(z)`` through z. Pyro: :class:`~pyro.infer.Trace_ELBO` with the guide unchanged.
``"score"`` (score function, REINFORCE, likelihood ratio): ``∇_φ ELBO = E_q[∇_φ log q_φ(z) · f_φ(z)]``
    (the term ``E_q[∇_φ log q_φ(z)]`` is zero and dropped). z is treated as a constant; only the density
    is differentiated. Pyro: :class:`~pyro.infer.Trace_ELBO` after the guide's latent site is made
    non-reparameterized (``has_rsample`` set to False on a copy of its distribution), so Pyro builds the
    surrogate ``log q(z) · f(z).detach()``. The cost ``f`` of each example is summed down to the
    ``pyro.plate`` it sits in, so an example's score only multiplies its own cost; no baseline.
``"score-baseline"``: the score function with a control variate,
    ``E_q[∇_φ log q_φ(z) · (f_φ(z) - b)]``, ``b`` a decaying average of past costs (per example, since
    the site is in a plate) that does not depend on the current draw, so the estimator stays unbiased.
    Pyro: :class:`~pyro.infer.TraceGraph_ELBO` (which also Rao-Blackwellizes: each site's score is
    multiplied by its downstream cost only) with ``infer={"baseline": {"use_decaying_avg_baseline":
    True, "baseline_beta": β}}`` on the site. The baseline starts at zero, so ``baseline_warmup`` draws
    are made (and discarded) before the recorded ones.

Every estimator returns the gradient of the Pyro loss (−ELBO summed over the batch, one particle) with
respect to the given parameters. Variances are over ``num_repeats`` independent draws (the baseline
estimator's draws are not strictly independent: the baseline carries over).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceGraph_ELBO
from pyro.poutine.messenger import Messenger

from ppl_vae.errors import ConfigError, require_int

ESTIMATORS = ("reparam", "score", "score-baseline")
DESCRIPTIONS = {
    "reparam": "pathwise: z = mu + sigma * eps, differentiate through z (Trace_ELBO, rsample)",
    "score": "score function: grad log q(z) * (log p(x,z) - log q(z)), no baseline (Trace_ELBO, has_rsample=False)",
    "score-baseline": "score function with a decaying-average baseline (TraceGraph_ELBO, use_decaying_avg_baseline)",
}
_BASELINE_PREFIX = "__baseline_avg_downstream_cost_"


# -- making a site non-reparameterized -------------------------------------------------------------

def score_only(fn: dist.Distribution) -> dist.Distribution:
    """A copy of ``fn`` whose draws are detached (``has_rsample`` False), so Pyro's ELBOs use the
    score-function estimator for it. Wrappers (``Independent``, masked, transformed) are copied down to
    the base distribution, whose flag they report; the guide's own object is left unchanged."""
    fn = copy.copy(fn)
    try:
        fn.has_rsample_(False)
    except AttributeError:          # a wrapper whose has_rsample is a read-only view of its base
        base = getattr(fn, "base_dist", None)
        if base is None:
            raise ConfigError(f"cannot make a {type(fn).__name__} non-reparameterized; "
                              "use a Pyro distribution (or a wrapper of one)") from None
        fn.base_dist = score_only(base)
    if fn.has_rsample:
        raise ConfigError(f"could not switch off rsample for a {type(fn).__name__}; "
                          "use a Pyro distribution (or a wrapper of one)")
    return fn


class _ScoreFunction(Messenger):
    """Handler: make the named latent sample sites non-reparameterized, optionally with a baseline."""

    def __init__(self, sites: Sequence[str], baseline: dict | None = None):
        super().__init__()
        self.sites = set(sites)
        self.baseline = baseline

    def _pyro_sample(self, msg):
        if msg["name"] in self.sites and not msg["is_observed"]:
            msg["fn"] = score_only(msg["fn"])
            if self.baseline is not None:
                msg["infer"] = {**(msg["infer"] or {}), "baseline": dict(self.baseline)}


# -- the measurement -------------------------------------------------------------------------------

def _check_sites(guide, x, sites, guide_kwargs) -> None:
    with poutine.block(), torch.random.fork_rng(devices=[]):
        trace = poutine.trace(guide).get_trace(x, **guide_kwargs)
    latent = {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
    for name in sites:
        if name not in latent:
            raise ConfigError(f"the guide has no latent sample site {name!r}; its latent sites are: "
                              f"{', '.join(latent) or 'none'}")
        if not getattr(latent[name]["fn"], "has_rsample", False):
            raise ConfigError(f"the guide's site {name!r} ({type(latent[name]['fn']).__name__}) has no rsample, so "
                              "there is no reparameterized estimator to compare with")


def _draw_gradients(elbo, model, guide, x, params, num_repeats, warmup, model_kwargs) -> torch.Tensor:
    """``(num_repeats, P)`` flattened gradients of the loss w.r.t. ``params``, one loss evaluation each.

    ``Trace_ELBO``: ``torch.autograd.grad`` of its ``differentiable_loss``. ``TraceGraph_ELBO`` has no
    public differentiable loss, so its ``loss_and_grads`` is called and the ``.grad`` of ``params`` read;
    the ``.grad`` of every tensor in Pyro's param store is put back as it was afterwards."""
    store = pyro.get_param_store()
    saved = {id(t): (t, t.grad) for t in [t for _, t in store.named_parameters()] + list(params)}
    rows = []
    try:
        for step in range(warmup + num_repeats):
            if isinstance(elbo, Trace_ELBO):
                loss = elbo.differentiable_loss(model, guide, x, **model_kwargs)
                grads = (torch.autograd.grad(loss, params, allow_unused=True) if loss.requires_grad
                         else [None] * len(params))
            else:
                for p in params:
                    p.grad = None
                elbo.loss_and_grads(model, guide, x, **model_kwargs)
                grads = [p.grad for p in params]
            if step >= warmup:
                rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).detach().reshape(-1).double()
                                       for p, g in zip(params, grads)]))
    finally:
        for t, grad in saved.values():
            t.grad = grad
    return torch.stack(rows)


def _summarize(grads: torch.Tensor) -> dict:
    """Mean, per-coordinate variance, total variance and their Monte Carlo standard errors."""
    r = grads.shape[0]
    mean = grads.mean(0)
    var = grads.var(0, correction=1)
    # Total variance = E||g - E g||^2; its s.e. from the spread of the per-draw squared distances
    # (accounts for correlations between coordinates).
    sq = ((grads - mean) ** 2).sum(1) * (r / (r - 1))
    total = float(var.sum())
    return {"mean": mean.float(), "mean_se": (var / r).sqrt().float(), "variance": var.float(),
            "total_variance": total, "total_variance_se": float(sq.std() / math.sqrt(r)),
            "mean_variance": total / grads.shape[1]}


def gradient_variance(model: Callable, guide: Callable, x: torch.Tensor, params: Sequence[torch.Tensor], *,
                      num_repeats: int = 200, estimators: Sequence[str] = ESTIMATORS, seed: int = 0,
                      sites: Sequence[str] = ("z",), baseline_beta: float = 0.9, baseline_warmup: int = 20,
                      model_kwargs: dict | None = None) -> dict:
    """Mean and variance of the gradient of the ELBO loss w.r.t. ``params`` under several estimators.

    Args:
        model, guide: Pyro programs taking ``x`` (e.g. ``vae.model``, ``vae.guide``).
        x: the batch, passed to both.
        params: the tensors to differentiate (e.g. ``list(vae.encoder.parameters())``); leaf tensors
            that the guide uses. Their ``.grad`` is left as it was.
        num_repeats: independent gradient draws per estimator (one particle each), at least 2.
        estimators: any of ``"reparam"``, ``"score"``, ``"score-baseline"`` (see the module docstring).
        seed: the draws use their own random stream (the global one is left as it was).
        sites: the guide's latent sites made non-reparameterized for the score estimators; each must
            have ``rsample``.
        baseline_beta, baseline_warmup: decay of the average baseline, and how many draws warm it up.
        model_kwargs: keyword arguments for both programs (e.g. ``{"beta": 0.5}``).

    Returns a dict with ``num_repeats``, ``num_params``, ``batch_size``, ``loss`` (what was
    differentiated) and ``estimators``: per name a dict with ``mean`` (flattened mean gradient,
    ``(P,)``), ``mean_se`` (its per-coordinate Monte Carlo s.e.), ``variance`` (per coordinate),
    ``total_variance`` (sum over coordinates) with ``total_variance_se``, ``mean_variance`` (total / P),
    ``variance_ratio`` (total variance over the reparameterized one, None without ``"reparam"``) with
    ``variance_ratio_se`` (delta method), ``agreement_rms_z`` (root mean square over coordinates of
    (mean − reparam mean) / combined s.e.: about 1 when both are unbiased), ``description``, ``seconds``.
    """
    estimators = tuple(estimators)
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators:
        raise ConfigError(f"unknown estimator(s) {unknown or '(none given)'}; choose from: {', '.join(ESTIMATORS)}")
    if isinstance(num_repeats, bool) or not isinstance(num_repeats, int) or num_repeats < 2:
        raise ConfigError(f"num_repeats must be an integer >= 2 (a variance needs two draws), got {num_repeats!r}")
    if not 0.0 <= baseline_beta < 1.0:
        raise ConfigError(f"baseline_beta must be in [0, 1), got {baseline_beta}")
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("no parameters to differentiate (none given, or none requires grad)")
    model_kwargs = dict(model_kwargs or {})
    _check_sites(guide, x, sites, model_kwargs)

    store = pyro.get_param_store()
    baseline_names = [_BASELINE_PREFIX + s for s in sites]
    results = {}
    with torch.random.fork_rng(devices=[]):
        for k, name in enumerate(estimators):
            pyro.set_rng_seed(seed + 1000 * k)
            for b in baseline_names:
                if b in store:
                    del store[b]
            warmup = 0
            if name == "reparam":
                elbo, g = Trace_ELBO(), guide
            elif name == "score":
                elbo, g = Trace_ELBO(), _ScoreFunction(sites)(guide)
            else:
                baseline = {"use_decaying_avg_baseline": True, "baseline_beta": baseline_beta}
                elbo, g, warmup = TraceGraph_ELBO(), _ScoreFunction(sites, baseline)(guide), baseline_warmup
            started = time.perf_counter()
            try:
                grads = _draw_gradients(elbo, model, g, x, params, num_repeats, warmup, model_kwargs)
            finally:
                for b in baseline_names:
                    if b in store:
                        del store[b]
            results[name] = {**_summarize(grads), "description": DESCRIPTIONS[name],
                             "seconds": round(time.perf_counter() - started, 3)}
    ref = results.get("reparam")
    for name, r in results.items():
        if ref is None or ref["total_variance"] <= 0:
            r["variance_ratio"] = r["variance_ratio_se"] = r["agreement_rms_z"] = None
            continue
        ratio = r["total_variance"] / ref["total_variance"]
        r["variance_ratio"] = ratio
        if name == "reparam":
            r["variance_ratio_se"], r["agreement_rms_z"] = 0.0, 0.0
            continue
        r["variance_ratio_se"] = ratio * math.sqrt((r["total_variance_se"] / r["total_variance"]) ** 2
                                                   + (ref["total_variance_se"] / ref["total_variance"]) ** 2)
        se = (r["mean_se"] ** 2 + ref["mean_se"] ** 2).sqrt().clamp_min(1e-30)
        r["agreement_rms_z"] = float((((r["mean"] - ref["mean"]) / se) ** 2).mean().sqrt())
    return {"num_repeats": num_repeats, "num_params": int(sum(p.numel() for p in params)),
            "batch_size": int(x.shape[0]), "seed": seed,
            "loss": "-ELBO summed over the batch, one particle (Pyro's loss); gradient w.r.t. the given parameters",
            "estimators": results}


def summary(result: dict) -> dict:
    """The JSON-friendly part of a :func:`gradient_variance` result (no per-coordinate tensors)."""
    out = {k: v for k, v in result.items() if k != "estimators"}
    out["estimators"] = {
        name: {"description": r["description"], "total_variance": r["total_variance"],
               "total_variance_se": r["total_variance_se"], "mean_variance": r["mean_variance"],
               "variance_ratio": r["variance_ratio"], "variance_ratio_se": r["variance_ratio_se"],
               "agreement_rms_z": r["agreement_rms_z"], "mean_gradient_norm": float(r["mean"].norm()),
               "seconds": r["seconds"]}
        for name, r in result["estimators"].items()}
    return out


# -- a 1-D example with a closed form ----------------------------------------------------------------

@dataclass
class GaussianToy:
    """``model``: z_i ~ N(0, 1), x_i ~ N(z_i, 1); ``guide``: z_i ~ N(loc_i, exp(log_scale_i)^2).
    ``exact(params)`` is the exact gradient of the loss (−ELBO summed over i) w.r.t. ``(loc, log_scale)``,
    flattened like :func:`gradient_variance`'s ``mean``: d/d loc_i = 2 loc_i − x_i,
    d/d log_scale_i = 2 σ_i² − 1 (from E_q[(x−z)²/2 + z²/2] = ((x−μ)² + μ² + 2σ²)/2 and entropy log σ)."""

    x: torch.Tensor
    loc: torch.Tensor
    log_scale: torch.Tensor

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.loc, self.log_scale]

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.loc, self.log_scale.exp()))

    def exact(self) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([2 * self.loc - self.x, 2 * (2 * self.log_scale).exp() - 1]).float()


def gaussian_toy(x, loc, scale=1.0) -> GaussianToy:
    """The :class:`GaussianToy` for observations ``x`` and guide ``N(loc, scale^2)`` (broadcast)."""
    x = torch.as_tensor(x, dtype=torch.float32).reshape(-1)
    loc = torch.as_tensor(loc, dtype=torch.float32).expand_as(x).clone().requires_grad_(True)
    log_scale = torch.as_tensor(scale, dtype=torch.float32).log().expand_as(x).clone().requires_grad_(True)
    return GaussianToy(x, loc, log_scale)


# -- figures -------------------------------------------------------------------------------------------

def variance_figure(result: dict, title: str | None = None) -> Figure:
    """Total gradient variance per estimator (bars, log scale) with ±2 s.e. and the ratio written on top."""
    names = list(result["estimators"])
    rows = [result["estimators"][n] for n in names]
    totals = [r["total_variance"] for r in rows]
    errs = [2 * r["total_variance_se"] for r in rows]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    colors = {"reparam": "tab:blue", "score": "tab:red", "score-baseline": "tab:orange"}
    ax.bar(names, totals, yerr=[[min(e, 0.999 * t) for e, t in zip(errs, totals)], errs],
           color=[colors.get(n, "tab:gray") for n in names], capsize=4)
    ax.set_yscale("log")
    ax.set_ylim(min(totals) / 10, max(t + e for t, e in zip(totals, errs)) * 5)
    for i, r in enumerate(rows):
        if r["variance_ratio"] is not None:
            ax.annotate(f"{r['variance_ratio']:.3g}×", (i, totals[i]), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=9)
    ax.set_ylabel("total gradient variance (sum over coordinates)")
    ax.set_title(title or f"{result['num_params']} parameters, batch {result['batch_size']}, "
                          f"{result['num_repeats']} draws each (×: ratio to reparam)", fontsize=9)
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


def grad_variance_run(run_dir: str | Path, *, num_examples: int = 32, num_repeats: int = 200, seed: int = 0,
                      out_dir: str | Path | None = None) -> dict:
    """Measure the three estimators for the encoder of a trained run, on its first ``num_examples``
    training examples (binarized once, as for held-out data). Writes ``grad_variance.json`` and
    ``figures/grad_variance.png`` into ``out_dir`` (default: the run folder) and returns the
    :func:`summary` with ``paths`` added."""
    from ppl_vae.checkpoint import write_json
    from ppl_vae.plots import save_figure
    from ppl_vae.run import load_run, model_input

    require_int(num_examples, "the number of examples")
    require_int(num_repeats, "the number of repeats", 2)
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    vae, data = run.vae, run.data
    if num_examples > data.train.shape[0]:
        raise ConfigError(f"the run's training set has {data.train.shape[0]} examples; use --examples "
                          f"{data.train.shape[0]} or fewer")
    x = model_input(data.train[:num_examples], vae, run.config)
    params = list(vae.encoder.parameters())
    result = gradient_variance(vae.model, vae.guide, x, params, num_repeats=num_repeats, seed=seed)
    out = Path(out_dir) if out_dir is not None else run_dir
    json_path, png_path = out / "grad_variance.json", out / "figures" / "grad_variance.png"
    report = {**summary(result), "run_dir": str(run_dir), "dataset": data.name, "examples": "first training examples",
              "parameters": "encoder (guide network)"}
    write_json(json_path, report)
    save_figure(variance_figure(result, title=f"{data.name}: encoder gradient variance, batch {num_examples}, "
                                              f"{num_repeats} draws (×: ratio to reparam)"), png_path)
    report["paths"] = [str(json_path), str(png_path)]
    return report


def format_table(report: dict) -> str:
    """Estimator, total variance (± s.e.) and ratio to the reparameterized estimator, one row each."""
    lines = [f"{'estimator':<16}{'total variance':>16}{'s.e.':>12}{'ratio to reparam':>20}"]
    for name, r in report["estimators"].items():
        ratio = "" if r["variance_ratio"] is None else f"{r['variance_ratio']:.4g} ± {r['variance_ratio_se']:.2g}"
        lines.append(f"{name:<16}{r['total_variance']:>16.5g}{r['total_variance_se']:>12.3g}{ratio:>20}")
    return "\n".join(lines)


def _grad_variance(args) -> None:
    report = grad_variance_run(args.run_dir, num_examples=args.examples, num_repeats=args.repeats, seed=args.seed)
    print(f"encoder gradient variance, {report['num_params']} parameters, batch {report['batch_size']}, "
          f"{report['num_repeats']} draws per estimator")
    print(format_table(report))
    for path in report["paths"]:
        print(f"wrote {path}")


def register(sub) -> dict[str, Callable]:
    """Add ``grad-variance RUN_DIR [--examples N] [--repeats N] [--seed N]`` to an argparse subparsers
    object; returns ``{"grad-variance": handler}``."""
    p = sub.add_parser("grad-variance", help="variance of reparameterized vs score-function ELBO gradients",
                       description="Measure the spread of the encoder's ELBO gradient under the reparameterized, "
                                   "score-function and score-function-with-baseline estimators; writes "
                                   "grad_variance.json and figures/grad_variance.png into the run folder.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--examples", type=int, default=32, help="training examples in the batch (default 32)")
    p.add_argument("--repeats", type=int, default=200, help="gradient draws per estimator (default 200)")
    p.add_argument("--seed", type=int, default=0)
    return {"grad-variance": _grad_variance}
