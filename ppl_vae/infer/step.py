"""One optimisation step: the loss and its gradients from Pyro's ELBO on the VAE's model and guide, then Adam.

:func:`make_elbo` turns an objective name into the Pyro loss object; :class:`TrainStep` runs one step
with it. :func:`ppl_vae.infer.fit.fit` calls one :class:`TrainStep` per mini-batch.
"""

from __future__ import annotations

import contextlib
import logging

import pyro
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.infer.util import is_validation_enabled

from ppl_vae.errors import ConfigError
from ppl_vae.infer.compiled import AUTO_RECORD_STEPS, COMPILE_CHOICES, CapturedLoss, refusal
from ppl_vae.infer.optim import GuardedAdam

_log = logging.getLogger("ppl_vae.compile")


def make_elbo(name: str, num_particles: int = 1, enumerated: bool = False, max_plate_nesting: int = 1):
    """The Pyro loss for an objective name (see ``ppl_vae.infer.objectives.OBJECTIVES``).

    With ``enumerated`` (the programs have discrete sites marked ``infer={"enumerate": "parallel"}``)
    ``auto`` and ``trace`` are ``TraceEnum_ELBO``, which sums those sites out exactly and takes the Monte
    Carlo term at the continuous ones (``max_plate_nesting``: the plates the programs use, so that the
    enumerated dimensions go to their left); ``meanfield`` and ``iwae`` are refused before this by
    :func:`ppl_vae.infer.objectives.check_compatible`.

    ``auto`` and ``meanfield`` are the same Pyro object: ``TraceMeanField_ELBO`` takes the analytic KL
    at each latent site where ``torch.distributions.kl_divergence`` has a closed form for the guide/prior
    pair (scaled and masked like the site, so ``beta``, KL schedules and the plate's subsampling scale
    apply to it) and the Monte Carlo term log q(z) - log p(z) elsewhere. They differ only in
    :func:`ppl_vae.infer.objectives.check_compatible`, where ``meanfield`` refuses a site without a closed form.
    """
    vectorize = num_particles > 1
    if enumerated and name in ("auto", "trace"):
        return TraceEnum_ELBO(
            max_plate_nesting=max_plate_nesting, num_particles=num_particles, vectorize_particles=vectorize
        )
    if name == "trace":
        return Trace_ELBO(num_particles=num_particles, vectorize_particles=vectorize)
    if name in ("auto", "meanfield"):
        return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=vectorize)
    if name == "iwae":
        return RenyiELBO(alpha=0.0, num_particles=num_particles, vectorize_particles=vectorize)
    raise ConfigError(f"unknown objective {name!r}; choose one of: auto, trace, meanfield, iwae")


def release_param_store_names(vae) -> None:
    """Drop the entries of Pyro's param store under ``vae``'s names.

    Where training goes through ``SVI`` (objects other than a ``ppl_vae.VAE``, and iwae), SVI updates the
    tensors in Pyro's param store: the entries under this VAE's names must be this VAE's own parameters
    (not those of another VAE trained earlier in the same process).
    """
    store = pyro.get_param_store()
    for name in vae.param_store_names():
        if name in store:
            del store[name]


class TrainStep:
    """One optimisation step of :func:`ppl_vae.infer.fit.fit`: the loss and its gradients from Pyro's ELBO
    (``Trace_ELBO``, ``TraceMeanField_ELBO`` or ``RenyiELBO``) on the VAE's model and guide, then
    :class:`ppl_vae.infer.optim.GuardedAdam`. Numerically the step of ``SVI(model, guide, Adam, elbo)``.

    What it leaves out of ``SVI.step`` is bookkeeping only: with a :class:`ppl_vae.VAE` it
    differentiates ``elbo.differentiable_loss`` itself (no ``pyro.module`` registration and no
    param-only trace per step) and steps the VAE's parameters, in a fixed order, with one Adam.
    Pyro's validation checks run on the first ``validate_steps`` steps (when validation is enabled)
    and are off after that: the same programs on batches of the same data, checked once. Anything else
    with ``model`` and ``guide`` (and the iwae objective, whose ``RenyiELBO`` has no differentiable loss)
    is trained through ``SVI`` with the same optimizer.

    Calling it with ``(x, num_data=N, beta=b)`` returns the loss of the batch (the -ELBO estimate of
    the whole data set, like ``SVI.step``); :attr:`optimizer` ``.nonfinite`` is non-empty when the
    gradient was not finite and the step was not taken. ``distributed`` (a
    :class:`ppl_vae.infer.distributed.Context`) wraps the loss in ``DistributedDataParallel``.
    ``enumerated``: 0, or the programs' plate nesting when they have discrete sites to enumerate
    (``TraceEnum_ELBO``).

    ``compile`` (``"auto"``, ``"on"``, ``"trace"`` or ``"off"``, see :mod:`ppl_vae.infer.compiled`): after the
    validated first step, take the loss and gradients from a graph recorded once per batch shape (and
    compiled with ``torch.compile`` for ``"on"``); :attr:`captured` is that recorder, None when the
    steps are eager, and then :attr:`eager_reason` says why. ``planned`` (``{batch rows: steps}``) is
    what ``"auto"`` decides from; ``varies``: beta changes during the run (a KL schedule). Set
    :attr:`log` to show the one line that says why a step falls back.
    """

    def __init__(
        self,
        vae,
        lr: float,
        elbo: str = "auto",
        num_particles: int = 1,
        validate_steps: int = 1,
        distributed=None,
        enumerated: int = 0,
        compile: str = "off",
        planned: dict[int, int] | None = None,
        varies: bool = False,
    ):
        if compile not in COMPILE_CHOICES:
            raise ConfigError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {compile!r}")
        self.vae = vae
        self.loss = make_elbo(elbo, num_particles, bool(enumerated), max(1, enumerated))
        self.validate_steps = validate_steps
        self.steps = 0
        self.compile = compile
        self.log = None
        named = getattr(vae, "named_trainable_parameters", None)
        self.named = named() if named is not None else None
        self.eager_reason = "compile='off'" if compile == "off" else refusal(vae, elbo, distributed, varies)
        self.captured = None
        if self.eager_reason is None:
            self.captured = CapturedLoss(vae, self.loss, self.named, compile, log=self._say)
            self.captured.planned = planned
        self.optimizer = GuardedAdam(lr, fused=self.captured is not None)
        # RenyiELBO has no differentiable_loss: it runs backward itself and needs the param sites.
        self.direct = self.named is not None and elbo != "iwae"
        self.svi = None if self.direct else SVI(vae.model, vae.guide, self.optimizer, loss=self.loss)
        self.ddp = None
        if distributed is not None:
            if enumerated:
                raise ConfigError(
                    "data-parallel training of a model with enumerated discrete sites is not supported; "
                    "train it in one process"
                )
            if not self.direct:
                raise ConfigError(
                    "distributed training needs a ppl_vae.VAE and --elbo auto, trace or meanfield "
                    "(Pyro's RenyiELBO for iwae has no differentiable loss to wrap in DDP)"
                )
            from ppl_vae.infer import distributed as dist_module

            self.ddp = dist_module.wrap(vae, self.loss, distributed)
            self._exchange = dist_module.exchanging

    def _say(self, message: str) -> None:
        """The one line on the step's path: shown when compiling was asked for, logged under ``auto``."""
        if self.compile != "auto" and self.log is not None:
            self.log(message)
        else:
            _log.info(message)

    def announce(self) -> None:
        """Say why the steps are eager (once, before training), unless nobody asked for a compiled step."""
        if self.compile != "off" and self.eager_reason is not None:
            self._say(f"compile: eager steps, because {self.eager_reason}")

    def describe(self) -> dict:
        """The path the steps took, for the run's record: ``{"compile": requested, "path": "eager" |
        "recorded" | "compiled" | "mixed", "eager_reason": ..., "graphs": [...]}``."""
        graphs = self.captured.describe()["graphs"] if self.captured is not None else []
        reason = self.eager_reason or (self.captured.refused if self.captured is not None else None)
        kinds = {"compiled" if g["compiled"] else "recorded" for g in graphs}
        path = "eager" if not graphs else kinds.pop() if len(kinds) == 1 else "mixed"
        if path == "eager" and reason is None and self.compile == "auto":
            reason = f"auto: no batch shape had {AUTO_RECORD_STEPS:,} steps planned, too few to repay recording"
        return {"compile": self.compile, "path": path, "eager_reason": reason, "graphs": graphs}

    def __call__(self, x: torch.Tensor, weight: float = 1.0, **kwargs) -> float:
        """One step on ``x``; ``weight`` multiplies this process's loss (distributed shards)."""
        validate = self.steps < self.validate_steps or not is_validation_enabled()
        checking = self.steps < self.validate_steps and is_validation_enabled()
        recorded = None if self.captured is None or checking else self.captured(x, kwargs)
        with contextlib.nullcontext() if validate else pyro.validation_enabled(False):
            if recorded is not None:
                loss_value, grads, finite = recorded
                for (_, p), grad in zip(self.named, grads):
                    p.grad = grad
                loss = loss_value.item()
                self.optimizer.step(self.named, finite=bool(finite))
            elif self.svi is not None:
                loss = self.svi.step(x, **kwargs)
            else:
                # Drop the last step's gradients now rather than right after that step: freeing them just
                # before this step's backward re-allocates them measured 1.8 ms/step faster (784-400-50).
                for _, p in self.named:
                    p.grad = None
                self.vae._pyro_registration = False
                try:
                    if self.ddp is not None:  # DDP averages the gradients in backward
                        value = self._exchange(self.ddp, x, weight, **kwargs)
                    else:
                        value = self.loss.differentiable_loss(self.vae.model, self.vae.guide, x, **kwargs)
                finally:
                    self.vae._pyro_registration = True
                loss = value.item()
                if self.ddp is not None:
                    self._exchange(value.backward)
                else:
                    value.backward()
                self.optimizer.step(self.named)
        self.steps += 1
        return loss
