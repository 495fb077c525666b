"""Held-out evaluation of any Pyro model/guide pair: ELBO, its reconstruction and KL parts, and the
importance-sampled log p(x) (the IWAE bound), each per example in nats with its Monte Carlo error.

Models with global latents (sites the guide draws outside the data plate, e.g. the scale of the
``hierarchical`` prior) get per-example figures *given* q(globals), which are not bounds on the data
set's evidence, and the joint ELBO, which is: see :class:`EvalResult`.

The core is :func:`log_weights`: for K draws z_k ~ q(z | x_n) it returns, per draw and example,
log p(x_n | z_k), log p(z_k) and log q(z_k | x_n). Everything else is arithmetic on those (K, N)
tables, done in chunks of examples and of draws so that memory stays bounded for any K and N.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, fields, replace

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppl_vae.errors import ConfigError
from ppl_vae.infer.enumeration import enumerated_log_weights, enumerated_sites, site_log_prob
from ppl_vae.infer.labels import accuracy
from ppl_vae.results import NOT_IN_DICT, OMIT_NONE, Result
from ppl_vae.rng import seeded
from ppl_vae.validation import check_number

#: Upper bound on the number of elements of the largest per-chunk tensor (draws x examples x features)
#: that evaluation creates: 2**22 float32 values are 16 MiB. Small chunks stay in cache and keep the
#: allocator from fragmenting the heap (larger ones measured slower and with a growing peak memory).
DEFAULT_MAX_ELEMENTS = 2**22

#: A model whose KL to the prior (the rate) is below this many nats per example encodes (almost) nothing
#: about x: posterior collapse. The one definition used by evaluate, diagnose and compare-ae.
COLLAPSE_NATS = 0.05


def _per_example(log_prob: torch.Tensor, site, num_particles: int, num_examples: int, plate_dim: int, plate_name: str):
    """Reduce a site's log-density to ``(num_particles, num_examples)`` by summing over every other
    batch dimension (nested plates inside the data plate)."""
    frames = {f.name: f.dim for f in site["cond_indep_stack"]}
    if plate_name not in frames:
        raise ConfigError(
            f"sample site {site['name']!r} is outside the {plate_name!r} plate and not drawn by the guide; "
            f"put every observed site inside pyro.plate({plate_name!r}) and give every global latent a guide"
        )
    ndim = -plate_dim  # the particle plate sits at plate_dim, the leftmost batch dimension
    while log_prob.dim() < ndim:
        log_prob = log_prob.unsqueeze(0)
    data_axis = ndim + frames[plate_name]
    other = [a for a in range(1, ndim) if a != data_axis]
    if other:
        log_prob = log_prob.sum(other, keepdim=True)
    return log_prob.reshape(log_prob.shape[0], log_prob.shape[data_axis]).expand(num_particles, num_examples)


def max_plate_nesting(model, guide, x, **kwargs) -> int:
    """How many plate dimensions the model and guide use, read off one trace of each."""
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, **kwargs)
    dims = [
        -f.dim
        for t in (guide_trace, model_trace)
        for s in t.nodes.values()
        if s["type"] == "sample"
        for f in s["cond_indep_stack"]
        if f.vectorized
    ]
    return max(dims, default=0)


def _is_global(site, plate_name: str) -> bool:
    """Whether a trace node is a latent sample site outside the ``plate_name`` plate (a global latent)."""
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and plate_name not in {f.name for f in site["cond_indep_stack"]}
    )


@dataclass(frozen=True)
class LogWeights(Result):
    """Per-draw, per-example log-densities of K draws from the guide for N examples, in nats.

    Attributes:
        log_likelihood: ``(K, N)`` log p(x_n | z_k), the observed sites.
        log_prior: ``(K, N)`` log p(z_k), the model's latent sites in the data plate.
        log_guide: ``(K, N)`` log q(z_k | x_n).
        log_weight: ``(K, N)`` the importance log-weight, ``log_likelihood + log_prior - log_guide``;
            with enumerated discrete sites, log sum_y p(x, y, z) / q(z | x, ...) with y summed exactly
            inside the weight, while ``log_likelihood + log_prior - log_guide`` is the ELBO term
            (:mod:`ppl_vae.infer.enumeration`).
        log_global: ``(K,)`` log p(g_k) - log q(g_k) summed over the global latent sites (zeros when
            there are none).
    """

    log_likelihood: torch.Tensor = field(repr=False)
    log_prior: torch.Tensor = field(repr=False)
    log_guide: torch.Tensor = field(repr=False)
    log_weight: torch.Tensor = field(repr=False)
    log_global: torch.Tensor = field(repr=False)

    @property
    def elbo_term(self) -> torch.Tensor:
        """``(K, N)`` the per-draw ELBO term, ``log_likelihood + log_prior - log_guide``."""
        return self.log_likelihood + self.log_prior - self.log_guide

    @staticmethod
    def concat(parts: list[LogWeights]) -> LogWeights:
        """The draws of several results for the same examples, one after the other: ``(sum K, N)``."""
        return LogWeights(*(torch.cat([getattr(part, f.name) for part in parts]) for f in fields(LogWeights)))


@torch.no_grad()
def log_weights(
    model,
    guide,
    x: torch.Tensor,
    num_particles: int,
    *,
    plate_name: str = "data",
    nesting: int | None = None,
    enumerated: bool | None = None,
    **kwargs,
) -> LogWeights:
    """Per-draw, per-example log-densities for ``num_particles`` draws from the guide.

    Args:
        model, guide: Pyro programs taking ``(x, **kwargs)``; every sample site inside ``plate_name``.
        x: ``(N, ...)`` data.
        num_particles: K, the number of draws of z per example (vectorized in one pass).

    Returns :class:`LogWeights`: the ``(K, N)`` tensors ``log_likelihood`` (observed sites, log p(x | z)),
    ``log_prior`` (latent sites of the model, log p(z)), ``log_guide`` (log q(z | x)) and
    ``log_weight = log_likelihood + log_prior - log_guide``; and the ``(K,)`` tensor ``log_global``,
    log p(g_k) - log q(g_k) summed over the global latent sites (zeros when there are none).

    Global latent sites (drawn by the guide outside the data plate, e.g. the scale of a hierarchical
    prior) are sampled once per draw k from their guide, shared by all N examples, and left out of the
    (K, N) tables, so the weights of example n estimate the posterior predictive log-density of x_n
    under q(globals), separately for every n. Their own term is ``log_global``: the joint ELBO of the
    N examples is E[sum_n log_weight[k, n] + log_global[k]].

    Discrete sites marked ``infer={"enumerate": "parallel"}`` are summed out exactly inside every
    weight (:func:`ppl_vae.infer.enumeration.enumerated_log_weights`); ``enumerated`` says whether the
    programs have such sites (found from one trace when None).
    """
    if nesting is None:
        nesting = max_plate_nesting(model, guide, x, **kwargs)
    if enumerated is None:
        enumerated = bool(enumerated_sites(model, guide, x, **kwargs))
    if enumerated:
        return LogWeights(
            **enumerated_log_weights(model, guide, x, num_particles, nesting=nesting, plate_name=plate_name, **kwargs)
        )
    plate_dim = -(nesting + 1)
    num_examples = x.shape[0]

    def vectorized(fn):
        def wrapped(*args, **kw):
            with pyro.plate("_num_particles_vectorized", num_particles, dim=plate_dim):
                return fn(*args, **kw)

        return wrapped

    with poutine.block():
        guide_trace = poutine.trace(vectorized(guide)).get_trace(x, **kwargs)
        model_trace = poutine.trace(poutine.replay(vectorized(model), trace=guide_trace)).get_trace(x, **kwargs)

    parts = dict.fromkeys(("log_likelihood", "log_prior", "log_guide"), 0.0)
    # Global latents (sites the guide draws outside the data plate) are not scored: each draw k shares
    # one value of them across examples, so every example's weights estimate the posterior predictive
    # p(x_n | globals ~ q) = E_q(globals)[p(x_n | globals)], one bound per example.
    global_names = {name for name, site in guide_trace.nodes.items() if _is_global(site, plate_name)}
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site) or site["name"] in global_names:
                continue
            lp = _per_example(site_log_prob(site), site, num_particles, num_examples, plate_dim, plate_name)
            if sign < 0:
                parts["log_guide"] += lp
            elif site["is_observed"]:
                parts["log_likelihood"] += lp
            else:
                parts["log_prior"] += lp
    parts = {k: torch.as_tensor(v, device=x.device).expand(num_particles, num_examples) for k, v in parts.items()}
    return LogWeights(
        **parts,
        log_weight=parts["log_likelihood"] + parts["log_prior"] - parts["log_guide"],
        log_global=_global_term((model_trace, guide_trace), global_names, num_particles, plate_dim, x.device),
    )


def _global_term(traces: tuple, names: set, num_particles: int, plate_dim: int, device) -> torch.Tensor:
    """``(num_particles,)`` log p(g_k) - log q(g_k) over the global sites ``names`` of the (model, guide)
    traces."""
    log_global = torch.zeros(num_particles, device=device)
    for trace, sign in zip(traces, (1.0, -1.0)):
        for name in names:
            site = trace.nodes.get(name)
            if site is not None and site["type"] == "sample":
                log_global = log_global + sign * _per_draw(site_log_prob(site), num_particles, plate_dim)
    return log_global


def _per_draw(log_prob: torch.Tensor, num_particles: int, plate_dim: int) -> torch.Tensor:
    """Reduce a global site's log-density to ``(num_particles,)``: sum over everything but the
    particle plate (at ``plate_dim``, the leftmost batch dimension)."""
    while log_prob.dim() < -plate_dim:
        log_prob = log_prob.unsqueeze(0)
    return log_prob.reshape(log_prob.shape[0], -1).sum(1).expand(num_particles)


#: ``EvalResult.elbo_kind`` of a model without global latents: a lower bound on log p(x_n) per example.
ELBO = "ELBO"
#: ``EvalResult.elbo_kind`` of a model with global latents: per example given q(globals), not a bound.
ELBO_GIVEN_GLOBALS = "per-example ELBO given q(global)"


@dataclass(frozen=True)
class EvalResult(Result):
    """Held-out numbers, each a mean over examples, per example, in nats (higher is better).

    ``*_se`` is the Monte Carlo standard error of the mean: the spread due to the random draws of z
    (and of global latents) for this fixed set of examples. ``*_data_se`` is the standard error over
    examples (the standard deviation across examples / sqrt(N)): the spread you would see on another
    held-out set. ``elbo = reconstruction - kl``.

    What ``elbo`` and ``log_likelihood`` are depends on the model (``elbo_kind`` says which):

    * no global latents (``elbo_kind == "ELBO"``): ``elbo`` is the evidence lower bound, mean over
      examples of E_q[log p(x_n, z) - log q(z | x_n)] <= log p(x_n); ``log_likelihood`` is the
      importance-sampled estimate of log p(x_n) with K draws (the IWAE bound, a lower bound in
      expectation). ``joint_elbo == elbo`` and ``global_kl == 0``.
    * global latents g, drawn by the guide outside the data plate (``elbo_kind ==
      "per-example ELBO given q(global)"``): ``elbo`` is the mean over examples of
      E_{q(g) q(z|x_n)}[log p(x_n, z | g) - log q(z | x_n)], which leaves out the global term and is
      *not* a lower bound on the data set's log evidence; ``log_likelihood`` estimates
      log E_{q(g)}[p(x_n | g)], a posterior-predictive density of x_n given q(g) (also not a bound on
      log p(x_1..N) / N). The bound is ``joint_elbo``:
      (1/N) E_q[log p(x_1..N, z_1..N, g) - log q(g) - sum_n log q(z_n | x_n)]
      = ``elbo - global_kl / N`` <= log p(x_1..N) / N, per example.

    Fields beyond the above: ``joint_elbo``, ``joint_elbo_se`` (per example, Monte Carlo s.e.);
    ``global_kl``, ``global_kl_se``: KL(q(g) || p(g)) estimated from the same draws, nats for the
    whole data set (not per example); ``elbo_kind`` as above.

    Monte Carlo errors with global latents account for the draws of g shared by the examples of a
    chunk (the variance of each chunk's per-draw sum, not the sum of per-example variances).

    Caveat on ``log_likelihood_se``: it is the delta-method error Var(w) / (K mean(w)^2) of
    :func:`iwae_log_likelihood`, with the variance of the importance weights w estimated from the same
    K draws. When the weights are heavy-tailed (a guide much narrower than the posterior) that sample
    variance is too small: on a 784-400-50 VAE trained on 28x28 digits, repeated evaluations spread
    1.6-1.8 times more than the reported error. Treat it as a lower bound there; per-example Pareto
    k-hat diagnostics say when.
    """

    elbo: float
    elbo_se: float
    elbo_data_se: float
    log_likelihood: float
    log_likelihood_se: float
    log_likelihood_data_se: float
    reconstruction: float
    reconstruction_se: float
    kl: float
    kl_se: float
    num_particles: int
    num_examples: int
    joint_elbo: float = float("nan")
    joint_elbo_se: float = float("nan")
    global_kl: float = 0.0
    global_kl_se: float = 0.0
    elbo_kind: str = ELBO
    #: A semi-supervised model evaluated with the examples' labels: its classifier's accuracy and the
    #: standard error over examples (None otherwise, and then left out of :meth:`to_dict`).
    accuracy: float | None = field(default=None, metadata=OMIT_NONE)
    accuracy_se: float | None = field(default=None, metadata=OMIT_NONE)
    #: A likelihood of 8-bit data (``data_kind == "8bit"``): ``log_likelihood`` in bits per dimension,
    #: ``-log_likelihood / (D ln 2)`` with D the number of values of one example (:func:`bits_per_dim`),
    #: and its Monte Carlo standard error converted the same way (None otherwise, and then left out of
    #: :meth:`to_dict`). Lower is better.
    bits_per_dim: float | None = field(default=None, metadata=OMIT_NONE)
    bits_per_dim_se: float | None = field(default=None, metadata=OMIT_NONE)
    #: ``(N,)`` tensors ``elbo`` and ``log_likelihood``; not in :meth:`to_dict`, which gives the scalar
    #: fields (what ``eval.json`` holds), including ``elbo_kind`` (what ``elbo`` is).
    per_example: dict = field(default_factory=dict, repr=False, compare=False, metadata=NOT_IN_DICT)


def bits_per_dim(nats_per_example, num_dims: int):
    """Convert nats per example to bits per dimension: ``nats_per_example / (num_dims * ln 2)``.

    Args:
        nats_per_example: a code length, ``-log p(x)`` of one example in nats (a positive number: pass
            ``-result.log_likelihood``), or a standard error of one, which converts the same way. A
            float or a tensor of any shape.
        num_dims: D, the number of values in one example (every channel of every pixel:
            ``C * H * W``).

    Returns the same kind of value (float or tensor). A uniform mass function over the 256 levels of
    every value gives ``-log p(x) = D ln 256`` and so exactly 8 bits per dimension.

    For the 8-bit likelihoods (``data_kind == "8bit"``) the data are the floats k/255 but p(x | z) is a
    probability *mass* function over the 256 levels, so ``-log p(x)`` in nats is already the code length
    of the 8-bit integers and converts directly: there is no Jacobian of the division by 255. (A
    *density* over rescaled or dequantized data would first need the log-Jacobian of that rescaling,
    e.g. ``D ln 256`` nats for uniform dequantization to [0, 1].)
    """
    if isinstance(num_dims, bool) or int(num_dims) != num_dims or num_dims < 1:
        raise ConfigError(f"num_dims must be a positive integer (the values in one example), got {num_dims!r}")
    return nats_per_example / (int(num_dims) * math.log(2.0))


def _with_bits_per_dim(result: EvalResult, vae, data: torch.Tensor) -> EvalResult:
    """``result`` with ``bits_per_dim`` and its s.e. when ``vae``'s likelihood models 8-bit data."""
    if getattr(getattr(vae, "likelihood", None), "data_kind", None) != "8bit":
        return result
    dims = max(1, data[0].numel())
    return replace(
        result,
        bits_per_dim=bits_per_dim(-result.log_likelihood, dims),
        bits_per_dim_se=bits_per_dim(result.log_likelihood_se, dims),
    )


def _mean_and_se(values: torch.Tensor, mc_var: torch.Tensor) -> tuple[float, float, float]:
    """Mean over examples, its Monte Carlo standard error, and its standard error over examples."""
    n = values.numel()
    mean = values.mean().item()
    mc_se = (mc_var.sum().sqrt() / n).item()
    data_se = (values.std() / math.sqrt(n)).item() if n > 1 else float("nan")
    return mean, mc_se, data_se


def chunk_sizes(
    x: torch.Tensor, num_particles: int, batch_size: int | None = None, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> tuple[int, int]:
    """Examples per chunk and draws per pass so that draws x examples x features <= max_elements:
    all K draws in one pass when they fit (the fewest passes through Pyro's tracing), then as many
    examples as fit beside them."""
    features = max(1, x[0].numel())
    particles = max(1, min(num_particles, max_elements // features))
    batch = min(x.shape[0], batch_size or max(1, max_elements // (particles * features)))
    particles = max(1, min(particles, max_elements // (batch * features)))
    return batch, particles


def global_values(guide, x: torch.Tensor, plate_name: str = "data", **kwargs) -> dict[str, torch.Tensor]:
    """One draw of every latent site the guide draws outside ``plate_name`` (global latents), from one
    trace of the guide: ``{name: value}``, detached."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(guide).get_trace(x, **kwargs)
    return {name: site["value"].detach() for name, site in trace.nodes.items() if _is_global(site, plate_name)}


def global_sites(guide, x: torch.Tensor, plate_name: str = "data", **kwargs) -> list[str]:
    """Names of the latent sites the guide draws outside ``plate_name`` (global latents), from one trace."""
    return list(global_values(guide, x, plate_name, **kwargs))


@torch.no_grad()
def evaluate(
    vae,
    data: torch.Tensor,
    *,
    num_particles: int = 1000,
    batch_size: int | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    seed: int | None = None,
    progress: bool = False,
    c: torch.Tensor | None = None,
) -> EvalResult:
    """Evaluate a model/guide pair on data.

    Args:
        vae: anything with ``.model`` and ``.guide`` (a :class:`ppl_vae.VAE`, or a namespace holding
            your own Pyro model and guide that take ``(x)`` and follow the site/plate contract).
        data: ``(N, *data_shape)`` examples, already in the form the likelihood expects (binarized for
            Bernoulli).
        num_particles: K, draws from the guide per example; the IWAE bound tightens as K grows.
        batch_size: examples per chunk; by default as many as fit in ``max_elements`` beside all K draws.
        max_elements: bound on draws x examples x features per chunk (memory).
        seed: when given, evaluation uses its own random stream and leaves the global one untouched.
        progress: show a progress bar over chunks.
        c: ``(N,)`` per-example labels. A conditional or group-effects model gets them as ``c`` (its
            classes or groups are observed); a semi-supervised model leaves its label latent (log p(x) sums
            it out) and its classifier is scored against them (``accuracy``, ``accuracy_se``).
            Discrete sites marked for enumeration are always summed out exactly inside every weight.

    Returns an :class:`EvalResult`; ``per_example`` holds ``(N,)`` tensors ``elbo`` and
    ``log_likelihood`` for further analysis. With global latents, ``elbo`` is the per-example ELBO
    given q(globals) and ``joint_elbo`` the bound on the data set's evidence (see :class:`EvalResult`).
    When ``vae.likelihood`` models 8-bit data (``data_kind == "8bit"``) it also gives ``bits_per_dim``
    and ``bits_per_dim_se``: :func:`bits_per_dim` of ``-log_likelihood`` and of its Monte Carlo error.
    """
    check_number(num_particles, "num_particles")
    if data.shape[0] < 1:
        raise ConfigError("evaluation needs at least one example; the data set is empty")
    if isinstance(vae, torch.nn.Module):
        vae.eval()
    side = _check_side(c, data)
    scored = None
    if getattr(vae, "label_role", "none") == "semi" and side:
        scored = accuracy(vae, data, side.pop("c"))
    batch, particles = chunk_sizes(data, num_particles, batch_size, max_elements)
    with seeded(seed, data.device):
        with seeded(seed, data.device):  # traces whose draws are undone: the seeded stream starts below
            probe = {k: v[:batch] for k, v in side.items()}
            has_globals = bool(global_sites(vae.guide, data[:batch], **probe))
            enumerated = enumerated_sites(vae.model, vae.guide, data[:batch], **probe)
        if enumerated:  # every enumerated value costs a pass's worth of memory
            values = math.prod(size for _, size in enumerated.values())
            batch, particles = chunk_sizes(data, num_particles, batch_size, max(1, max_elements // values))
        sums, chunks = _score_chunks(
            vae, data, side, num_particles, batch, particles, has_globals, progress, bool(enumerated)
        )
    result = _eval_result(sums, chunks if has_globals else None, num_particles, int(data.shape[0]))
    if scored is not None:
        result = replace(result, accuracy=scored[0], accuracy_se=scored[1])
    return _with_bits_per_dim(result, vae, data)


def _check_side(c, data: torch.Tensor) -> dict:
    """``{"c": c}`` after checking that ``c`` has one integer label ``(N,)`` or one row of real
    covariates ``(N, M)`` per example; ``{}`` for None."""
    if c is None:
        return {}
    n = data.shape[0]
    labels = isinstance(c, torch.Tensor) and not c.dtype.is_floating_point and tuple(c.shape) == (n,)
    rows = isinstance(c, torch.Tensor) and c.dtype.is_floating_point and c.dim() == 2 and c.shape[0] == n
    if not (labels or rows):
        raise ConfigError(
            f"c must be {n} integer labels (shape ({n},)) or {n} rows of covariates (shape ({n}, M)), got "
            f"{tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__}"
        )
    return {"c": c.to(data.device)}


def _score_chunks(
    vae,
    data: torch.Tensor,
    side: dict,
    num_particles: int,
    batch: int,
    particles: int,
    has_globals: bool,
    progress: bool,
    enumerated: bool = False,
) -> tuple[dict, list]:
    """Score ``data`` in chunks of ``batch`` examples with ``num_particles`` draws, ``particles`` per pass.

    Returns ``(sums, chunks)``: per-example ``(N,)`` float64 estimates and Monte Carlo variances
    (``elbo``, ``iwae``, ``rec``, ``kl`` and their ``*_var``), and, with global latents, per chunk the
    ``(K,)`` per-draw sums of :func:`_chunk_draws` (empty otherwise)."""
    sums = {k: [] for k in ("elbo", "elbo_var", "iwae", "iwae_var", "rec", "rec_var", "kl", "kl_var")}
    chunks: list[dict] = []  # per chunk, per draw: sums over the chunk's examples (global latents)
    starts = range(0, data.shape[0], batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"evaluate (K={num_particles})", unit="chunk", leave=False)
    nesting = max_plate_nesting(vae.model, vae.guide, data[:batch], **{k: v[:batch] for k, v in side.items()})
    for i, start in enumerate(starts):
        # Pyro's validation checks the first chunk; the rest are the same programs on more of the data.
        with contextlib.nullcontext() if i == 0 else pyro.validation_enabled(False):
            chunk = {k: v[start : start + batch] for k, v in side.items()}
            parts = log_weight_chunk(
                vae.model,
                vae.guide,
                data[start : start + batch],
                num_particles,
                particles,
                nesting,
                enumerated=enumerated,
                **chunk,
            )
        kl_table = parts.log_guide - parts.log_prior
        _accumulate(sums, parts.log_weight, parts.log_likelihood, kl_table, parts.elbo_term)
        if has_globals:
            chunks.append(_chunk_draws(parts.log_weight, parts.log_likelihood, kl_table, parts.log_global))
    return {k: torch.cat(v).double() for k, v in sums.items()}, chunks


def _eval_result(sums: dict, chunks: list | None, num_particles: int, n: int) -> EvalResult:
    """The :class:`EvalResult` of :func:`_score_chunks`'s sums; ``chunks`` None without global latents."""
    elbo, ll, rec, kl = (_mean_and_se(sums[k], sums[k + "_var"]) for k in ("elbo", "iwae", "rec", "kl"))
    joint = {"joint_elbo": elbo[0], "joint_elbo_se": elbo[1], "global_kl": 0.0, "global_kl_se": 0.0, "elbo_kind": ELBO}
    if chunks is not None:
        elbo, ll, rec, kl, joint = _with_shared_globals(chunks, n, elbo, ll, rec, kl)
    return EvalResult(
        elbo=elbo[0],
        elbo_se=elbo[1],
        elbo_data_se=elbo[2],
        log_likelihood=ll[0],
        log_likelihood_se=ll[1],
        log_likelihood_data_se=ll[2],
        reconstruction=rec[0],
        reconstruction_se=rec[1],
        kl=kl[0],
        kl_se=kl[1],
        num_particles=num_particles,
        num_examples=n,
        **joint,
        per_example={"elbo": sums["elbo"].float().cpu(), "log_likelihood": sums["iwae"].float().cpu()},
    )


def _with_shared_globals(chunks: list[dict], n: int, elbo, ll, rec, kl) -> tuple:
    """The ``(mean, mc_se, data_se)`` triples with Monte Carlo errors that account for global latents,
    and the joint ELBO and global KL.

    Examples of a chunk share each draw of the globals, so their errors are correlated: the Monte Carlo
    variance of a chunk's total is the variance over draws of its per-draw sum. Chunks are independent.
    The global term is averaged over every chunk's draws."""
    c = len(chunks)

    def chunk_se(key, extra=None):
        var = sum(_var_of_mean(ch[key] + (0.0 if extra is None else extra(ch))) for ch in chunks)
        return math.sqrt(var) / n

    global_kl = -sum(ch["global"].mean().item() for ch in chunks) / c
    global_kl_se = math.sqrt(sum(_var_of_mean(ch["global"]) for ch in chunks)) / c
    elbo = (elbo[0], chunk_se("elbo"), elbo[2])
    ll = (ll[0], chunk_se("iwae"), ll[2])
    rec = (rec[0], chunk_se("rec"), rec[2])
    kl = (kl[0], chunk_se("kl"), kl[2])
    joint = {
        "joint_elbo": elbo[0] - global_kl / n,
        "joint_elbo_se": chunk_se("elbo", lambda ch: ch["global"] / c),
        "global_kl": global_kl,
        "global_kl_se": global_kl_se,
        "elbo_kind": ELBO_GIVEN_GLOBALS,
    }
    return elbo, ll, rec, kl, joint


def _var_of_mean(per_draw: torch.Tensor) -> float:
    """Monte Carlo variance of the mean of ``(K,)`` i.i.d. per-draw values (nan for K = 1)."""
    k = per_draw.shape[0]
    return (per_draw.double().var() / k).item() if k > 1 else float("nan")


def _chunk_draws(log_w: torch.Tensor, rec: torch.Tensor, kl: torch.Tensor, log_global: torch.Tensor) -> dict:
    """Per draw k, ``(K,)`` sums over a chunk's examples: of the ELBO, reconstruction and KL terms; of
    w_kn / mean_k(w_kn) (the delta-method linearization of the sum of the per-example IWAE estimates);
    and the global term log p(g_k) - log q(g_k)."""
    log_w = log_w.double()
    w = (log_w - log_w.max(0).values).exp()
    return {
        "elbo": log_w.sum(1),
        "rec": rec.double().sum(1),
        "kl": kl.double().sum(1),
        "iwae": (w / w.mean(0)).sum(1),
        "global": log_global.double(),
    }


def log_weight_chunk(
    model,
    guide,
    x: torch.Tensor,
    num_particles: int,
    particles_per_pass: int,
    nesting: int,
    enumerated: bool | None = None,
    **kwargs,
) -> LogWeights:
    """:func:`log_weights` for ``num_particles`` draws, taken ``particles_per_pass`` at a time and
    concatenated: the same ``(K, n)`` tables with bounded memory. ``kwargs`` go to the programs;
    ``enumerated`` (whether they have sites to enumerate) is found from one trace when None."""
    parts = []
    if enumerated is None:
        enumerated = bool(enumerated_sites(model, guide, x, **kwargs))
    for k0 in range(0, num_particles, particles_per_pass):
        count = min(particles_per_pass, num_particles - k0)
        parts.append(log_weights(model, guide, x, count, nesting=nesting, enumerated=enumerated, **kwargs))
        _HEAP.passed()
    return LogWeights.concat(parts)


class _HeapTrimmer:
    """Hand freed memory back to the system every few evaluation passes (glibc's ``malloc_trim``).

    Each pass allocates and frees tensors of up to ``max_elements``; glibc keeps the freed pages and
    fragments its heap, so the resident memory of a long evaluation kept growing (K = 5000 draws of 150
    28x28 examples: 1.2-1.5 GB peak; trimming every 8 passes: 0.74 GB, for about 8% more time).
    Does nothing where glibc is not the allocator."""

    EVERY = 8

    def __init__(self):
        self.count = 0
        self._trim = None
        try:
            import ctypes
            import ctypes.util

            name = ctypes.util.find_library("c")
            libc = ctypes.CDLL(name) if name else None
            self._trim = getattr(libc, "malloc_trim", None)
        except OSError:
            self._trim = None

    def passed(self) -> None:
        self.count += 1
        if self._trim is not None and self.count % self.EVERY == 0:
            self._trim(0)


_HEAP = _HeapTrimmer()


def _accumulate(sums: dict, log_w: torch.Tensor, rec: torch.Tensor, kl: torch.Tensor, elbo: torch.Tensor) -> None:
    """Per-example estimates and their Monte Carlo variances from ``(K, n)`` tables: ``log_w`` the
    importance log-weights, ``elbo`` the ELBO terms (the same tables without enumerated sites)."""
    k = log_w.shape[0]

    def mean_var(t):
        var = t.var(0) / k if k > 1 else torch.full_like(t[0], float("nan"))
        return t.mean(0), var

    for name, table in (("elbo", elbo), ("rec", rec), ("kl", kl)):
        mean, var = mean_var(table)
        sums[name].append(mean)
        sums[name + "_var"].append(var)
    iwae, iwae_var = iwae_log_likelihood(log_w)
    sums["iwae"].append(iwae)
    sums["iwae_var"].append(iwae_var)


def iwae_log_likelihood(log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The importance-sampled log p(x_n) of each example and its Monte Carlo variance, from the
    log-weights ``(K, N)`` of K draws per example (log p(x_n, z_k) - log q(z_k | x_n), nats).

    Returns ``(estimate, variance)``, both ``(N,)`` float64: ``estimate = log (1/K) sum_k w_kn`` (the
    IWAE bound) and its delta-method variance ``Var_k(w_kn) / (K mean_k(w_kn)^2)``, computed on weights
    rescaled by their maximum so that nothing overflows; nan for K = 1. The variance of the weights is
    estimated from the same K draws, so it is optimistic when they are heavy-tailed (high k-hat)."""
    log_w = log_weights.double()
    k = log_w.shape[0]
    estimate = torch.logsumexp(log_w, 0) - math.log(k)
    w = (log_w - log_w.max(0).values).exp()
    variance = w.var(0) / (k * w.mean(0) ** 2) if k > 1 else torch.full_like(w[0], float("nan"))
    return estimate, variance
