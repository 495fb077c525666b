"""Structured priors: a generative story with more local sites than ``"z"``, drawn inside the data plate.

A structured prior is an ``nn.Module`` with two pieces, one per Pyro program (no subclassing needed):

* ``forward(c=None)``, the model piece: called by :meth:`ppl_vae.VAE.model` *inside* the data plate,
  it draws any local sites (discrete or continuous) with ``pyro.sample`` and returns the decoder's
  input ``(..., code_dim)``, usually ``z`` (or ``z`` joined with a one-hot label);
* ``local_guide(x, encoder, c=None)``, the guide piece: called by :meth:`ppl_vae.VAE.guide` inside the
  data plate with the examples ``x (N, *data_shape)`` and the VAE's guide family ``encoder`` (a module
  ``inputs -> q(z | inputs)``), it draws the same latent sites from the variational posterior;

and the attributes ``code_dim`` (size of what ``forward`` returns), ``guide_extra`` (how many numbers
:func:`join` appends to each flattened example before ``encoder`` sees it: 0 for q(z | x), K for
q(z | x, y) with a one-hot y of K classes) and ``label_role``: what the per-example labels ``c`` are to
this model: ``"none"`` (not used), ``"semi"`` (a class label observed for some examples, ``-1`` where
it is missing, latent otherwise) or ``"covariate"`` (always observed, required).

A discrete site marked ``infer={"enumerate": "parallel"}`` is summed out exactly: by
``TraceEnum_ELBO`` in training and inside every importance weight in evaluation
(:mod:`ppl_vae.infer.enumeration`). Drawn in the guide, it is enumerated there (an amortized q(y | x));
drawn in the model only, it is enumerated in the model (the exact posterior over y given z).

Registry: ``mixture:K`` (:class:`MixturePrior`), ``semi-supervised:K[:ALPHA]`` (:class:`SemiSupervised`,
Kingma et al. 2014's M2), ``conditional:K`` (:class:`Conditional`) and ``covariates:M``
(:class:`Covariates`, real covariates such as columns of a table); and ``groups:G``
(:class:`GroupEffects`), a prior with global per-group effects (``label_role = "group"``, the group
index of each example passed as ``c``), which follows the global-latent protocol of
:mod:`ppl_vae.models.priors` rather than this one.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ppl_vae.networks import mlp

#: The ``infer`` of a discrete site summed out by parallel enumeration.
ENUMERATE = {"enumerate": "parallel"}

#: Logit given to the classes a labelled example does not have: exp(-1e4) is exactly 0 in float32 and
#: float64, so those classes get weight 0 in the enumerated sum (never 0 * inf as a -inf logit would).
_IMPOSSIBLE = -1.0e4


def join(x: torch.Tensor, data_ndim: int, label: torch.Tensor | None = None) -> torch.Tensor:
    """Flatten each example of ``x (..., *data_shape)`` (``data_ndim`` trailing dims) and append the one-hot
    ``label (..., K)``, broadcasting the leading (enumeration, particle) dimensions of both."""
    flat = x.reshape(x.shape[: x.dim() - data_ndim] + (-1,))
    if label is None:
        return flat
    shape = torch.broadcast_shapes(flat.shape[:-1], label.shape[:-1])
    return torch.cat([flat.expand(shape + flat.shape[-1:]), label.expand(shape + label.shape[-1:])], -1)


def one_hot(y: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """``(...,)`` class indices -> ``(..., K)`` one-hot, in the dtype of ``like``."""
    return F.one_hot(y.long(), num_classes).to(like.dtype)


def append_label(z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``z (..., d)`` and a one-hot ``label (..., K)``, broadcast and joined: ``(..., d + K)``."""
    shape = torch.broadcast_shapes(z.shape[:-1], label.shape[:-1])
    return torch.cat([z.expand(shape + z.shape[-1:]), label.expand(shape + label.shape[-1:])], -1)


class MixturePrior(nn.Module):
    """GMVAE-style mixture prior with an explicit component variable, summed out by enumeration.

    Model: y ~ Categorical(pi), z | y ~ N(loc_y, diag scale_y^2), learnable pi (logits), locs, scales.

    Guide: q(z | x) from the VAE's guide family (y enumerated in the model: its exact posterior given z
    is pi_y N(z; loc_y, scale_y) / p(z)); or, with ``amortized_y=True``, an amortized classifier
    q(y | x) enumerated in the guide and q(z | x, y).

    Unlike ``mog`` (a ``MixtureSameFamily`` density for ``"z"``), the component is a site ``"y"`` of the
    program: its posterior responsibilities are read off the enumerated trace
    (:func:`ppl_vae.infer.enumeration.class_posterior`).
    """

    label_role = "none"

    def __init__(
        self,
        latent_dim: int,
        num_components: int = 10,
        *,
        amortized_y: bool = False,
        data_shape=None,
        hidden_dims=(256, 128),
    ):
        super().__init__()
        if int(num_components) < 2:
            raise ValueError(f"a mixture needs at least 2 components, got {num_components}")
        self.latent_dim, self.num_classes = int(latent_dim), int(num_components)
        self.code_dim = self.latent_dim
        self.logits = nn.Parameter(torch.zeros(self.num_classes))
        # Spread the component locs so that they can separate (a fixed draw: seed before building).
        self.locs = nn.Parameter(torch.randn(self.num_classes, self.latent_dim))
        self.log_scales = nn.Parameter(torch.full((self.num_classes, self.latent_dim), -0.5))
        self.amortized_y = bool(amortized_y)
        self.guide_extra = self.num_classes if amortized_y else 0
        if amortized_y:
            if data_shape is None:
                raise ValueError("an amortized q(y | x) needs the data shape")
            self.data_ndim = len(data_shape)
            self.classifier = mlp(math.prod(data_shape), tuple(hidden_dims), self.num_classes)

    def marginal(self) -> dist.Distribution:
        """p(z) with y summed out: ``sum_k pi_k N(loc_k, diag scale_k^2)``, event ``(latent_dim,)``."""
        components = dist.Normal(self.locs, self.log_scales.exp()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)

    def component(self, y: torch.Tensor) -> dist.Distribution:
        """p(z | y) for component indices ``y``: batch shape ``y.shape``, event ``(latent_dim,)``."""
        return dist.Normal(self.locs[y], self.log_scales[y].exp()).to_event(1)

    def forward(self, c=None) -> torch.Tensor:
        y = pyro.sample("y", dist.Categorical(logits=self.logits), infer=ENUMERATE)
        return pyro.sample("z", self.component(y))

    def local_guide(self, x: torch.Tensor, encoder, c=None) -> torch.Tensor:
        if not self.amortized_y:
            return pyro.sample("z", encoder(x))
        y = pyro.sample("y", dist.Categorical(logits=self.classifier(join(x, self.data_ndim))), infer=ENUMERATE)
        return pyro.sample("z", encoder(join(x, self.data_ndim, one_hot(y, self.num_classes, x))))

    def code(self, z: torch.Tensor, c=None) -> torch.Tensor:
        """The decoder's input for latent values ``z``: ``z`` itself."""
        return z

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of the amortized q(y | x): ``(N, K)`` (only with ``amortized_y``)."""
        if not self.amortized_y:
            raise ValueError("this mixture has no amortized q(y | x); y's posterior is exact given z")
        return self.classifier(join(x, self.data_ndim))

    def features(self, c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """What the guide family sees of the component beside x (``amortized_y``): its one-hot."""
        return one_hot(c, self.num_classes, like)


class SemiSupervised(nn.Module):
    """Kingma et al. (2014)'s M2: a class label y behind every example, observed for some of them.

    Model: y ~ Categorical(1/K), z ~ N(0, I), x | y, z ~ p(x | decoder([z, onehot(y)])).

    Guide: q(y | x) = Categorical(classifier(x)), enumerated where the label is missing (``c = -1``),
    fixed to the label where it is known; q(z | x, y) from the VAE's guide family on [x, onehot(y)].

    ``alpha`` weights the auxiliary classification term: every labelled example adds
    ``alpha * log q(y | x)`` to the objective (:meth:`auxiliary`), so that the classifier also learns from
    the labels directly, not only through the unlabelled examples' ELBO (where q(y | x) weights the
    enumerated labels). Kingma et al. (2014, eq. 9) add alpha' times the *mean* over the labelled set with
    alpha' = 0.1 N, which is alpha = 0.1 N / N_labelled per labelled example here (1.4 for the digits with
    100 labels). The default 5 was measured against 50 on the digits with 100 labels, 400 epochs, 5 seeds
    (``benchmarks/STRUCTURED.md``): 0.872 vs 0.862 held-out accuracy, a difference within its s.e.
    (0.008); alpha = 0 was far worse (0.685 at 100 epochs). Held-out evaluation leaves y
    latent: log p(x) sums it out exactly, and accuracy is the classifier's.
    """

    label_role = "semi"

    def __init__(self, latent_dim: int, num_classes: int, *, data_shape, hidden_dims=(256, 128), alpha: float = 5.0):
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"a class label needs at least 2 classes, got {num_classes}")
        if not float(alpha) >= 0:
            raise ValueError(f"alpha must be a non-negative number, got {alpha}")
        self.latent_dim, self.num_classes, self.alpha = int(latent_dim), int(num_classes), float(alpha)
        self.code_dim = self.latent_dim + self.num_classes
        self.guide_extra = self.num_classes
        self.data_ndim = len(data_shape)
        self.classifier = mlp(math.prod(data_shape), tuple(hidden_dims), self.num_classes)
        self.register_buffer("class_logits", torch.zeros(self.num_classes))
        self.register_buffer("loc", torch.zeros(self.latent_dim))
        self.register_buffer("scale", torch.ones(self.latent_dim))

    def forward(self, c=None) -> torch.Tensor:
        y = pyro.sample("y", dist.Categorical(logits=self.class_logits))  # the guide's draw (or enumeration)
        z = pyro.sample("z", dist.Normal(self.loc, self.scale).to_event(1))
        return append_label(z, one_hot(y, self.num_classes, z))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's logits of q(y | x): ``(N, K)``."""
        return self.classifier(join(x, self.data_ndim))

    def local_guide(self, x: torch.Tensor, encoder, c=None) -> torch.Tensor:
        logits = self.classify(x)
        if c is not None:  # known labels: all of q's mass on the label (exactly, see _IMPOSSIBLE)
            known = (c >= 0).unsqueeze(-1)
            fixed = torch.full_like(logits, _IMPOSSIBLE).scatter(-1, c.clamp(min=0).unsqueeze(-1), 0.0)
            logits = torch.where(known, fixed, logits)
        y = pyro.sample("y", dist.Categorical(logits=logits), infer=ENUMERATE)
        return pyro.sample("z", encoder(join(x, self.data_ndim, one_hot(y, self.num_classes, x))))

    def auxiliary(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``(N,)`` ``alpha * log q(c_n | x_n)`` for labelled examples, 0 for the others."""
        known = c >= 0
        log_q = torch.log_softmax(self.classify(x), -1).gather(-1, c.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return torch.where(known, self.alpha * log_q, torch.zeros_like(log_q))

    def code(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The decoder's input for latent values ``z (..., d)`` and classes ``c (...)``."""
        return append_label(z, one_hot(c, self.num_classes, z))

    def features(self, c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """What the guide family sees of the label beside x: its one-hot."""
        return one_hot(c, self.num_classes, like)


class Conditional(nn.Module):
    """A conditional VAE with a learned conditional prior: the class c of every example is observed.

    Model:  z | c ~ N(loc_c, diag scale_c^2) (learnable per class), x | z, c ~ p(x | decoder([z, onehot(c)])).
    Guide:  q(z | x, c) from the VAE's guide family on [x, onehot(c)].
    ``ppl-vae sample RUN --condition K`` generates examples of class K.
    """

    label_role = "covariate"

    def __init__(self, latent_dim: int, num_classes: int, *, data_shape):
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"a class label needs at least 2 classes, got {num_classes}")
        self.latent_dim, self.num_classes = int(latent_dim), int(num_classes)
        self.code_dim = self.latent_dim + self.num_classes
        self.guide_extra = self.num_classes
        self.data_ndim = len(data_shape)
        self.locs = nn.Parameter(torch.zeros(self.num_classes, self.latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(self.num_classes, self.latent_dim))

    def forward(self, c=None) -> torch.Tensor:
        if c is None:
            raise ValueError("the conditional prior needs the class c of every example")
        z = pyro.sample("z", dist.Normal(self.locs[c], self.log_scales[c].exp()).to_event(1))
        return self.code(z, c)

    def local_guide(self, x: torch.Tensor, encoder, c=None) -> torch.Tensor:
        if c is None:
            raise ValueError("the conditional guide q(z | x, c) needs the class c of every example")
        return pyro.sample("z", encoder(join(x, self.data_ndim, one_hot(c, self.num_classes, x))))

    def code(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The decoder's input for latent values ``z (..., d)`` and classes ``c (...)``."""
        return append_label(z, one_hot(c, self.num_classes, z))

    def features(self, c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """What the guide family sees of the class beside x: its one-hot."""
        return one_hot(c, self.num_classes, like)


class Covariates(nn.Module):
    """A conditional VAE on real covariates (columns of a table): ``c (N, M)`` observed for every example.

    Model:  z | c ~ N(A c + a, diag exp(B c + b)^2) (learned linear maps), x | z, c ~ p(x | decoder([z, c])).
    Guide:  q(z | x, c) from the VAE's guide family on [x, c].
    Standardize the covariates (the command line does, with the training rows' mean and deviation).
    """

    label_role = "covariate"

    def __init__(self, latent_dim: int, num_covariates: int, *, data_shape):
        super().__init__()
        if int(num_covariates) < 1:
            raise ValueError(f"a covariate model needs at least 1 covariate, got {num_covariates}")
        self.latent_dim, self.covariate_dim = int(latent_dim), int(num_covariates)
        self.code_dim = self.latent_dim + self.covariate_dim
        self.guide_extra = self.covariate_dim
        self.data_ndim = len(data_shape)
        self.loc = nn.Linear(self.covariate_dim, self.latent_dim)
        self.log_scale = nn.Linear(self.covariate_dim, self.latent_dim)
        for layer in (self.loc, self.log_scale):  # start at N(0, I) whatever c is
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, c=None) -> torch.Tensor:
        if c is None:
            raise ValueError("the covariate prior needs the covariates c of every example")
        c = c.to(self.loc.weight.dtype)
        z = pyro.sample("z", dist.Normal(self.loc(c), self.log_scale(c).exp()).to_event(1))
        return self.code(z, c)

    def local_guide(self, x: torch.Tensor, encoder, c=None) -> torch.Tensor:
        if c is None:
            raise ValueError("the covariate guide q(z | x, c) needs the covariates c of every example")
        return pyro.sample("z", encoder(join(x, self.data_ndim, self.features(c, x))))

    def code(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The decoder's input for latent values ``z (..., d)`` and covariates ``c (..., M)``."""
        return append_label(z, c.to(z.dtype))

    def features(self, c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """What the guide family sees of the covariates beside x: the covariates themselves."""
        return c.to(like.dtype)


class GroupEffects(nn.Module):
    """A hierarchical prior with per-group effects: examples of one group (batch, subject, site) share a
    mean in latent space.

    Model:  mu_g ~ N(0, I) for each of G groups (global site ``"mu"`` in plate ``"groups"``),
            tau_j ~ HalfCauchy(1) (global site ``"tau"``), z_n | g(n) ~ N(mu_{g(n)}, diag tau^2).
    Guide:  q(mu_g) = N(m_g, diag s_g^2) per group and q(tau) = LogNormal(a, b), non-amortized
            (``global_guide``); q(z | x) amortized as usual.

    Unlike the structured priors this one has global latents: ``forward(c)`` (c: each example's group
    index ``(N,)``) draws them outside the data plate and returns p(z | group, globals). Held-out examples
    of a known group are evaluated posterior-predictively, with the globals drawn from their guide.
    """

    label_role = "group"

    def __init__(self, latent_dim: int, num_groups: int):
        super().__init__()
        if int(num_groups) < 1:
            raise ValueError(f"group effects need at least 1 group, got {num_groups}")
        self.latent_dim, self.num_classes = int(latent_dim), int(num_groups)
        self.register_buffer("ones", torch.ones(self.latent_dim))
        self.q_mu_loc = nn.Parameter(torch.zeros(self.num_classes, self.latent_dim))
        self.q_mu_log_scale = nn.Parameter(torch.full((self.num_classes, self.latent_dim), -1.0))
        self.q_tau_loc = nn.Parameter(torch.zeros(self.latent_dim))
        self.q_tau_log_scale = nn.Parameter(torch.full((self.latent_dim,), -2.0))

    def forward(self, c=None) -> dist.Distribution:
        if c is None:
            raise ValueError("group effects need the group index c of every example")
        with pyro.plate("groups", self.num_classes):
            mu = pyro.sample("mu", dist.Normal(0 * self.ones, self.ones).to_event(1))  # (..., G, d)
        tau = pyro.sample("tau", dist.HalfCauchy(self.ones).to_event(1))
        return dist.Normal(mu.index_select(-2, c), tau).to_event(1)

    def global_guide(self) -> None:
        with pyro.plate("groups", self.num_classes):
            pyro.sample("mu", dist.Normal(self.q_mu_loc, self.q_mu_log_scale.exp()).to_event(1))
        pyro.sample("tau", dist.LogNormal(self.q_tau_loc, self.q_tau_log_scale.exp()).to_event(1))


def is_structured(prior) -> bool:
    """Whether ``prior`` draws its own local sites (has a ``local_guide``)."""
    return callable(getattr(prior, "local_guide", None))


def _count(option: str | None, what: str, default: int | None = None) -> int:
    if option is None:
        if default is None:
            raise ValueError(f"{what} needs its number of classes, covariates or groups after a colon, e.g. {what}:3")
        return default
    try:
        value = int(option)
    except ValueError:
        raise ValueError(f"{what}:{option}: the number after the colon must be an integer") from None
    return value


def build_structured(name: str, option: str | None, latent_dim: int, *, data_shape, hidden_dims=(256, 128), **_):
    """The structured prior for a registry spec ``name[:option]`` (``mixture:10``, ``semi-supervised:10:5``)."""
    if name == "mixture":  # mixture:K, or mixture:K:amortized for q(y | x) q(z | x, y)
        count, _, variant = (option or "").partition(":")
        if variant not in ("", "amortized"):
            raise ValueError(f"mixture:{option}: the part after the count must be 'amortized' (q(y | x) q(z | x, y))")
        return MixturePrior(
            latent_dim,
            _count(count or None, name, 10),
            amortized_y=variant == "amortized",
            data_shape=data_shape,
            hidden_dims=hidden_dims,
        )
    if name == "conditional":
        return Conditional(latent_dim, _count(option, name), data_shape=data_shape)
    if name == "groups":
        return GroupEffects(latent_dim, _count(option, name))
    if name == "covariates":
        return Covariates(latent_dim, _count(option, name), data_shape=data_shape)
    count, _, alpha = (option or "").partition(":")
    kwargs = {"alpha": float(alpha)} if alpha else {}
    return SemiSupervised(
        latent_dim, _count(count or None, name), data_shape=data_shape, hidden_dims=hidden_dims, **kwargs
    )


#: The registry names of the priors whose spec may add ``:option`` (classes, components or groups).
OPTION_PRIORS = ("mixture", "semi-supervised", "conditional", "covariates", "groups")
#: Those that draw their own local sites (a ``local_guide``); ``groups`` has global latents instead.
STRUCTURED_PRIORS = ("mixture", "semi-supervised", "conditional", "covariates")
