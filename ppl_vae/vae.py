"""The VAE: a Pyro model p(z) p(x | z) and a Pyro guide q(z | x) that share the site names.

Both programs follow one contract (see the README):

* latent site ``"z"`` with event shape ``(latent_dim,)``; observed site ``"x"`` with event shape
  ``data_shape``; one ``pyro.plate("data", ...)`` around both;
* ``model(x)`` scores data; ``model(None, num_samples=n)`` generates ``n`` examples;
* ``num_data`` (the size of the whole data set) makes a mini-batch an unbiased estimate of the full
  data set's ELBO through the plate's subsampling scale, which matters once the prior has global latents.

Nothing here computes a KL or a loss: ``pyro.infer.SVI`` with any ELBO does that from the two programs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from ppl_vae.errors import ConfigError
from ppl_vae.guides import GUIDES
from ppl_vae.models import LIKELIHOODS, PRIORS, decoder_network
from ppl_vae.models.priors import support_name
from ppl_vae.models.structured import OPTION_PRIORS, STRUCTURED_PRIORS, is_structured, join
from ppl_vae.networks import resolve_network
from ppl_vae.plugins import load_prior_factory, prior_plugins


def _build(kind: str, registry: dict, spec, *args, **kwargs):
    """Resolve a component given by registry name, or pass through an object the user built.

    A structured prior's name may carry an option after a colon (``mixture:10``), passed as ``option``;
    so may a component whose factory sets ``accepts_option`` (``logistic-mixture:10``), given ``option``
    only when the spec has a colon."""
    if isinstance(spec, str):
        name, colon, option = spec.partition(":")
        factory = registry.get(name)
        if factory is None and kind == "prior":  # a prior another installed package provides
            factory = load_prior_factory(name)
            kwargs["option"] = option if colon else None
        elif name in OPTION_PRIORS:
            kwargs["option"] = option if colon else None
        elif colon and getattr(factory, "accepts_option", False):
            kwargs["option"] = option
        elif colon:
            factory = None
        if factory is None:
            raise ConfigError(f"unknown {kind} {spec!r}; choose one of: {', '.join(sorted(registry))}")
        try:
            return factory(*args, **kwargs)
        except ValueError as error:  # e.g. a sphere latent needs latent_dim >= 2
            raise ConfigError(f"{kind} {spec!r}: {error}") from None
    return spec


def _structured_spec(prior) -> bool:
    """Whether ``prior`` names or is a structured prior (one that draws its own local sites); a plugin
    prior's name counts too (it is built first, before the guide, and may be structured)."""
    if isinstance(prior, str):
        name = prior.partition(":")[0]
        return name in STRUCTURED_PRIORS or (name not in PRIORS and name in prior_plugins())
    return is_structured(prior)


#: The guide family that matches each latent space, for ``guide="auto"``.
GUIDE_FOR_SUPPORT = {"real": "normal", "sphere": "power-spherical", "simplex": "dirichlet"}
_PRIOR_SUPPORT = {"sphere": "sphere", "dirichlet": "simplex"}


def default_guide(prior) -> str:
    """The guide family matching a prior's support: normal, power-spherical or dirichlet."""
    if _structured_spec(prior) or getattr(prior, "label_role", "none") != "none":
        return "normal"
    if isinstance(prior, str):
        return GUIDE_FOR_SUPPORT[_PRIOR_SUPPORT.get(prior, "real")]
    with poutine.block():
        p = prior() if isinstance(prior, nn.Module) else prior
    return GUIDE_FOR_SUPPORT.get(support_name(p.support), "normal")


def _kl_weight(beta: float):
    """Scale the log-densities of the latent site by beta (``poutine.scale``); beta = 0 drops them
    (``poutine.mask``), which leaves the reconstruction term alone: a plain autoencoder objective."""
    if beta == 1.0:
        return contextlib.nullcontext()
    if beta == 0.0:
        return poutine.mask(mask=False)
    return poutine.scale(scale=beta)


class VAE(nn.Module):
    """A variational autoencoder written as a Pyro model and guide.

    Args:
        data_shape: shape of one example, e.g. ``(1, 8, 8)`` for the digits.
        latent_dim: dimension of ``z``.
        hidden_dims: widths of the encoder's hidden (fully connected) layers; the decoder uses them reversed.
        prior: a registry name (``ppl_vae.models.PRIORS``), a Pyro distribution with event shape
            ``(latent_dim,)``, an ``nn.Module`` whose ``forward()`` returns one, or a structured prior
            (``mixture:K``, ``semi-supervised:K``, ``conditional:K``, or your own module with
            ``forward(c=None)`` and ``local_guide(x, encoder, c=None)``: see :mod:`ppl_vae.models.structured`).
        likelihood: a registry name (``ppl_vae.models.LIKELIHOODS``) or a likelihood module
            (``params -> distribution over x``, with a ``params_per_feature`` attribute).
        guide: a registry name (``ppl_vae.guides.GUIDES``), a module ``x -> q(z | x)``, or ``"auto"``:
            the family matching the prior's support (normal, power-spherical, dirichlet).
        decoder: your own ``nn.Module`` ``z (..., code_dim) -> params (..., params_per_feature * D)``, with
            ``D = prod(data_shape)``, ``code_dim = latent_dim`` (or the structured prior's ``code_dim``) and
            the parameters in the likelihood's layout ``(..., params_per_feature, *data_shape)`` flattened
            (e.g. ``decoder=nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64))`` for 8 x 8 images
            and the Bernoulli likelihood). Any architecture works; it is trained with the rest. Default: the
            ``network``'s decoder. A VAE with your own decoder saves its weights but is rebuilt in Python
            (``ppl_vae.load`` refuses it), then ``vae.load_state_dict(...)``.
        network: the encoder's and decoder's architecture: ``"mlp"`` (default; flattens each example),
            ``"conv"`` or ``"resnet"`` (convolutional, with residual blocks for ``"resnet"``; images
            ``(C, H, W)`` with ``H, W >= 4`` of any size and channels, see :mod:`ppl_vae.networks`), or
            ``"auto"``: ``"conv"`` for images of at least 16 x 16 pixels or with colour, ``"mlp"``
            otherwise. Stored, resolved, as ``vae.network``. ``hidden_dims`` are the fully connected layers
            around the convolutions. Guide families given as registry names use it; a guide module you
            pass keeps its own network. With a structured prior whose guide sees ``x`` with a label
            appended (``guide_extra``: ``semi-supervised``, ``conditional``, ``covariates``,
            ``mixture:K:amortized``) the convolutional encoder joins the label after its convolutions;
            such a prior's own classifier q(y | x) stays an MLP.
        name: prefix of this VAE's parameters in Pyro's param store.

    Attributes ``prior``, ``likelihood``, ``decoder`` and ``encoder`` (the guide's network and family)
    are ordinary submodules, so ``state_dict()``, ``to(device)`` and ``parameters()`` cover all of them.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        latent_dim: int = 8,
        hidden_dims: Sequence[int] = (256, 128),
        *,
        prior="normal",
        likelihood="bernoulli",
        guide="auto",
        decoder: nn.Module | None = None,
        network: str = "mlp",
        name: str = "vae",
    ):
        super().__init__()
        if int(latent_dim) < 1:
            raise ConfigError(f"latent_dim must be a positive integer, got {latent_dim}")
        if any(int(h) < 1 for h in hidden_dims):
            raise ConfigError(f"hidden_dims must be positive integers, got {list(hidden_dims)}")
        self.data_shape = tuple(int(s) for s in data_shape)
        self.latent_dim = int(latent_dim)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.name = name
        self.network = resolve_network(network, self.data_shape)
        self.likelihood = _build("likelihood", LIKELIHOODS, likelihood, self.data_shape)
        if guide == "auto":
            guide = default_guide(prior)
        structured = None
        if _structured_spec(prior):  # built first: its guide_extra sets what the guide family sees
            structured = _build(
                "prior", PRIORS, prior, self.latent_dim, data_shape=self.data_shape, hidden_dims=self.hidden_dims
            )
        extra = getattr(structured, "guide_extra", 0) if is_structured(structured) else 0
        self.encoder = _build(
            "guide",
            GUIDES,
            guide,
            self.data_shape,
            self.latent_dim,
            self.hidden_dims,
            network=self.network,
            extra_features=extra,
        )
        # Other priors come last: the VampPrior needs the guide.
        self.prior = structured or _build(
            "prior", PRIORS, prior, self.latent_dim, data_shape=self.data_shape, guide=self.encoder
        )
        code_dim = getattr(self.prior, "code_dim", self.latent_dim)
        if decoder is None:
            k = self.likelihood.params_per_feature
            decoder = decoder_network(self.network, code_dim, self.hidden_dims[::-1], self.data_shape, k)
            built = self.network
        else:
            built = None
        self.decoder = decoder
        # What `ppl_vae.load` needs to rebuild this VAE; None where the user passed an object.
        self.spec = {
            "data_shape": list(self.data_shape),
            "latent_dim": self.latent_dim,
            "hidden_dims": list(self.hidden_dims),
            "prior": prior if isinstance(prior, str) else None,
            "likelihood": likelihood if isinstance(likelihood, str) else None,
            "guide": guide if isinstance(guide, str) else None,
            "decoder": built,  # the network of the decoder built here; None for the user's own
            "network": self.network,
        }

    # -- the two Pyro programs -------------------------------------------------------------------

    def model(
        self,
        x: torch.Tensor | None = None,
        *,
        c: torch.Tensor | None = None,
        num_samples: int | None = None,
        num_data: int | None = None,
        beta: float = 1.0,
    ):
        """p(z) p(x | z). Scores ``x (N, *data_shape)``, or generates ``num_samples`` examples.

        ``beta`` scales the log-density of ``"z"`` here and in the guide, hence the KL part of the ELBO
        (beta-VAE; KL schedules). Global latents of the prior are drawn before the data plate.
        Returns the value at ``"x"``: the data when observed, a draw ``(num_samples, *data_shape)``
        otherwise.

        A structured prior (:attr:`structured`) draws its own local sites inside the data plate from
        the per-example labels ``c`` (``(N,)`` class indices; ``-1`` where a label is missing) and returns
        the decoder's input; its ``auxiliary(x, c)`` term (M2's classification term), when it has one,
        enters as ``pyro.factor("auxiliary", ...)`` for observed data with labels.
        """
        self._register("decoder", self.decoder)
        self._register("prior", self.prior)
        self._register("likelihood", self.likelihood)
        batch = self._batch_size(x, num_samples)
        if self.structured:
            with self._data_plate(batch, num_data, x):
                with _kl_weight(beta):
                    code = self.prior(c)
                auxiliary = getattr(self.prior, "auxiliary", None)
                if auxiliary is not None and x is not None and c is not None:
                    pyro.factor("auxiliary", auxiliary(x, c))
                return pyro.sample("x", self.likelihood(self.decoder(code)), obs=x)
        # may draw global latents (outside the plate); group effects need each example's group c
        prior = self.prior(c) if self.label_role == "group" else self.prior_distribution()
        with self._data_plate(batch, num_data, x):
            with _kl_weight(beta):
                z = pyro.sample("z", prior)
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(
        self,
        x: torch.Tensor | None = None,
        *,
        c: torch.Tensor | None = None,
        num_samples: int | None = None,
        num_data: int | None = None,
        beta: float = 1.0,
    ):
        """q(z | x), amortized: one encoder pass for the whole batch ``x (N, *data_shape)``.

        Takes the same arguments as :meth:`model` so that both run under one SVI call; it needs ``x``.
        A prior with global latents contributes their (non-amortized) guide first.
        Returns the draw of ``"z"``, ``(N, latent_dim)``.
        """
        if x is None:
            raise ValueError("the guide q(z | x) needs data x; to generate, run the model alone")
        self._register("encoder", self.encoder)
        if self.structured:
            self._register("prior", self.prior)
            with self._data_plate(x.shape[0], num_data, x):
                with _kl_weight(beta):
                    return self.prior.local_guide(x, self.encoder, c)
        if self.has_global_latents:
            self._register("prior", self.prior)
            self.prior.global_guide()
        with self._data_plate(x.shape[0], num_data, x):
            with _kl_weight(beta):
                return pyro.sample("z", self.encoder(x))

    @property
    def structured(self) -> bool:
        """True when the prior draws its own local sites (``mixture``, ``semi-supervised``, ``conditional``,
        or a user's module with ``local_guide``)."""
        return is_structured(self.prior)

    @property
    def label_role(self) -> str:
        """What per-example labels ``c`` are to this model: ``"none"``, ``"semi"`` (a class observed for
        some examples), ``"covariate"`` (a class always observed) or ``"group"`` (each example's group)."""
        return getattr(self.prior, "label_role", "none") if isinstance(self.prior, nn.Module) else "none"

    @property
    def has_global_latents(self) -> bool:
        """True when the prior has latent variables shared by all examples (e.g. ``hierarchical``)."""
        return hasattr(self.prior, "global_guide")

    # -- conveniences built on the programs ------------------------------------------------------

    def prior_distribution(self) -> dist.Distribution:
        """p(z) as a distribution with event shape ``(latent_dim,)``.

        A structured prior gives its marginal over z where it has one (``mixture``: the mixture density
        with y summed out) and raises :class:`ConfigError` otherwise (z's prior there depends on a label)."""
        if self.structured:
            marginal = getattr(self.prior, "marginal", None)
            if marginal is None:
                raise ConfigError(
                    f"the {type(self.prior).__name__} prior has no distribution of z alone (it depends on a "
                    "label); generate with sample(..., c=labels) instead"
                )
            return marginal()
        return self.prior() if isinstance(self.prior, nn.Module) else self.prior

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        """q(z | x) for ``x (N, *data_shape)``: batch shape ``(N,)``, event shape ``(latent_dim,)``.

        A structured model whose q(z | x, y) also sees a label has no q(z | x): :class:`ConfigError`."""
        if getattr(self.prior, "guide_extra", 0) and self.structured:
            raise ConfigError(
                f"this model's guide is q(z | x, label): z's posterior depends on each example's label or "
                f"covariates (the {type(self.prior).__name__} prior), so there is no q(z | x) to encode with"
            )
        return self.encoder(x)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation of z, each ``(N, latent_dim)``."""
        q = self.posterior(x)
        return q.mean, q.stddev

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z) for ``z (..., latent_dim)``: ``(..., *data_shape)`` (pixel probabilities for
        the Bernoulli likelihood)."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean: ``(N, *data_shape)``.

        A structured model decodes the mean of q(z | x, label) with the label ``c`` (``(N,)``; a
        semi-supervised model uses its classifier's guess where ``c`` is None or -1)."""
        if not self.structured:
            return self.decode(self.encode(x)[0])
        prior, role = self.prior, self.label_role
        if role == "semi" or (c is None and getattr(prior, "guide_extra", 0) and hasattr(prior, "classify")):
            guess = prior.classify(x).argmax(-1)
            c = guess if c is None else torch.where(c >= 0, c, guess)
        elif role == "covariate" and c is None:
            raise ConfigError("this conditional model reconstructs given each example's class: pass c")
        if getattr(prior, "guide_extra", 0):
            loc = self.encoder(join(x, len(self.data_shape), prior.features(c, x))).mean
        else:
            loc = self.encoder(x).mean
        code = prior.code(loc, c) if hasattr(prior, "code") else loc
        return self.likelihood.mean(self.decoder(code))

    @torch.no_grad()
    def sample(self, num_samples: int, *, mean: bool = True, c=None) -> torch.Tensor:
        """Generate ``num_samples`` examples from p(z) p(x | z): ``(num_samples, *data_shape)``.

        With ``mean=True`` returns the mean of p(x | z) at the drawn z (what figures show), otherwise
        a draw of x. ``c`` (a class index, or ``(num_samples,)`` indices) fixes the label of a model
        with one (``semi-supervised``, ``conditional``: required there).
        """
        if self.structured:
            return self._sample_structured(num_samples, mean, c)
        if self.label_role == "group":
            if c is None:
                raise ConfigError("a model with group effects generates for a given group: pass c (e.g. --condition 0)")
            c = torch.as_tensor(c, dtype=torch.long, device=self.device).expand(num_samples)
        with poutine.block():
            if self.has_global_latents:  # generate with the globals drawn from their posterior
                globals_trace = poutine.trace(self.prior.global_guide).get_trace()
                program = (lambda: self.prior(c)) if self.label_role == "group" else self.prior_distribution
                prior = poutine.replay(program, trace=globals_trace)()
            else:
                prior = self.prior_distribution()
        # group effects: p(z | group) has one batch entry per sample already
        z = (
            prior.sample()
            if self.label_role == "group"
            else prior.expand(torch.Size([num_samples]) + prior.batch_shape).sample()
        )
        params = self.decoder(z)
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    def _sample_structured(self, num_samples: int, mean: bool, c) -> torch.Tensor:
        role = self.label_role
        covariates = getattr(self.prior, "covariate_dim", None)
        if c is not None and covariates is not None:  # real covariates: one row, or one per sample
            c = torch.as_tensor(c, dtype=torch.float32, device=self.device).expand(num_samples, covariates)
        elif c is not None:
            c = torch.as_tensor(c, dtype=torch.long, device=self.device).expand(num_samples)
        elif role == "covariate":
            raise ConfigError("this conditional model generates for a given class: pass c (e.g. --condition 3)")
        with poutine.block(), pyro.plate("data", num_samples):
            program = self.prior
            if role == "semi" and c is not None:
                program = poutine.condition(self.prior, data={"y": c})
            params = self.decoder(program(c if role == "covariate" else None))
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    # -- internals --------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        for tensor in self.state_dict().values():
            return tensor.device
        return torch.device("cpu")

    #: ``pyro.module`` registration of the networks on every call of model and guide. ``fit`` turns it
    #: off while it computes the loss itself (it differentiates the ELBO and steps the parameters
    #: directly, so the param store is not needed there).
    _pyro_registration = True

    def _register(self, part: str, module) -> None:
        if (
            self._pyro_registration
            and isinstance(module, nn.Module)
            and any(p.requires_grad for p in module.parameters())
        ):
            pyro.module(f"{self.name}.{part}", module)

    def named_trainable_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """``(param store name, parameter)`` of every trainable parameter, sorted by name."""
        out = []
        for part in ("decoder", "prior", "likelihood", "encoder"):
            module = getattr(self, part)
            if isinstance(module, nn.Module):
                out += [(f"{self.name}.{part}$$${n}", p) for n, p in module.named_parameters() if p.requires_grad]
        return sorted(out, key=lambda item: item[0])

    def param_store_names(self) -> list[str]:
        """The names under which this VAE's parameters appear in Pyro's param store."""
        names = []
        for part in ("decoder", "prior", "likelihood", "encoder"):
            module = getattr(self, part)
            if isinstance(module, nn.Module):
                names += [f"{self.name}.{part}$$${n}" for n, p in module.named_parameters() if p.requires_grad]
        return names

    @staticmethod
    def _batch_size(x, num_samples) -> int:
        if x is not None:
            if num_samples is not None and num_samples != x.shape[0]:
                raise ValueError(f"num_samples={num_samples} does not match the {x.shape[0]} examples in x")
            return x.shape[0]
        return 1 if num_samples is None else int(num_samples)

    def _data_plate(self, batch: int, num_data: int | None, x) -> pyro.plate:
        if num_data is None or num_data == batch:
            return pyro.plate("data", batch)
        device = x.device if x is not None else self.device
        # A mini-batch of `batch` examples out of `num_data`: the plate scales local log-densities by
        # num_data / batch. Explicit indices, so that no random numbers are drawn for subsampling.
        return pyro.plate("data", num_data, subsample=torch.arange(batch, device=device))
