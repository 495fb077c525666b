"""Training: stochastic variational inference with Pyro's ``Trace_ELBO``.

:func:`fit` is the whole loop. The loss and its gradients come from ``pyro.infer.SVI`` applied to the
VAE's model and guide; nothing here knows what a KL is.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from ppl_vae.compat import check_compatible, resolve_binarize, to_likelihood_space
from ppl_vae.data import binarize as binarize_data
from ppl_vae.errors import ConfigError, PplVaeError
from ppl_vae.evaluate import evaluate
from ppl_vae.schedules import Constant, parse_schedule

#: Offset that separates the held-out binarization stream from every other seeded stream.
_HELDOUT_STREAM = 7919


class TrainingDiverged(PplVaeError):
    """The ELBO became NaN or infinite."""


def fixed_binarization(x: torch.Tensor, mode: str, seed: int = 0) -> torch.Tensor:
    """Binarize held-out data once, the same way every time (a fixed stochastic binarization for
    ``mode="dynamic"``), so that held-out numbers are comparable across epochs and runs."""
    generator = torch.Generator(device=x.device).manual_seed(_HELDOUT_STREAM + seed)
    return binarize_data(x, mode, generator=generator)


def make_elbo(name: str, num_particles: int = 1):
    """The Pyro loss for an objective name (see ``ppl_vae.compat.OBJECTIVES``)."""
    vectorize = num_particles > 1
    if name == "trace":
        return Trace_ELBO(num_particles=num_particles, vectorize_particles=vectorize)
    if name == "meanfield":
        return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=vectorize)
    if name == "iwae":
        return RenyiELBO(alpha=0.0, num_particles=num_particles, vectorize_particles=vectorize)
    raise ConfigError(f"unknown objective {name!r}; choose one of: trace, meanfield, iwae")


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        vae: the trained VAE (the same object that was passed in).
        losses: per SVI step, the loss per example: -ELBO / num_data of that mini-batch, in nats.
        history: per epoch, a dict with ``epoch``, ``step``, ``train_elbo`` (mean over the epoch's
            steps of the training objective: the beta-weighted bound while beta != 1), ``beta`` (at the
            epoch's last step), ``heldout_elbo`` and ``heldout_elbo_se`` (when held-out data was given) and
            ``seconds`` (wall time of the epoch's training steps).
        optimizer_state: the state of Pyro's Adam (``pyro.optim.Adam.get_state()``).
    """

    vae: torch.nn.Module
    losses: list[float] = field(repr=False)
    history: list[dict]
    optimizer_state: dict = field(repr=False)


def _check_support(vae, x: torch.Tensor, what: str) -> None:
    check = getattr(getattr(vae, "likelihood", None), "check_support", None)
    if check is not None:
        try:
            check(x)
        except PplVaeError as error:
            raise type(error)(f"{what}: {error}") from None


def fit(
    vae,
    train: torch.Tensor,
    heldout: torch.Tensor | None = None,
    *,
    epochs: int = 200,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    binarize: str = "auto",
    elbo: str = "trace",
    num_particles: int = 1,
    beta: float = 1.0,
    kl_schedule=None,
    heldout_particles: int = 8,
    heldout_seed: int = 0,
    progress: bool | None = None,
    callback: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train ``vae`` by SVI with ``Trace_ELBO`` and Adam.

    Args:
        vae: a :class:`ppl_vae.VAE` (anything with ``model``, ``guide``, ``param_store_names`` and
            ``parameters``). Its parameters are initialised when it is built: seed before building.
        train: ``(N, *data_shape)`` training examples in [0, 1] (grey levels; binarized here).
        heldout: ``(M, *data_shape)`` held-out examples, evaluated after every epoch.
        epochs, batch_size, lr: the optimisation budget. A batch larger than the data is one full batch.
        seed: seeds shuffling, binarization and the draws of z.
        binarize: ``"dynamic"`` (a fresh Bernoulli draw of every training image every epoch, held-out
            binarized once), ``"threshold"`` (x > 0.5), ``"none"``, or ``"auto"`` (dynamic for binary
            likelihoods such as Bernoulli, none for the others).
        elbo: ``"trace"`` (``Trace_ELBO``), ``"meanfield"`` (``TraceMeanField_ELBO``, analytic KL) or
            ``"iwae"`` (``RenyiELBO(alpha=0)``, the importance-weighted bound).
        num_particles: draws of z per example and step (vectorized); the iwae bound's K.
        beta: weight of the KL part (``poutine.scale`` on the latent site in model and guide).
        kl_schedule: ``None`` (constant ``beta``), a spec string (``"warmup:10"``, ``"cyclical:10:0.5"``,
            see :func:`ppl_vae.schedules.parse_schedule`; they reach ``beta``) or any callable
            ``epoch_progress -> beta``. The beta in force at the end of each epoch is in the history.
        heldout_particles: draws of z per held-out example for the per-epoch held-out ELBO.
        heldout_seed: seeds the held-out binarization (the CLI passes the split seed).
        progress: show a progress bar; by default when standard error is a terminal.
        callback: called with each epoch's history record.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("heldout_particles", heldout_particles)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    num_data = train.shape[0]
    if num_data < 1:
        raise ConfigError("the training set is empty")
    device = vae.device if hasattr(vae, "device") else train.device
    train = train.to(device)
    likelihood = getattr(vae, "likelihood", None)
    binarize = resolve_binarize(binarize, likelihood)
    train = to_likelihood_space(train, likelihood)
    pyro.set_rng_seed(seed)
    shuffle = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    probe = binarize_data(train[:256], binarize, generator=torch.Generator(device=device).manual_seed(0))
    _check_support(vae, probe, "training data")
    schedule = parse_schedule(kl_schedule or "constant", beta) if kl_schedule is None or isinstance(kl_schedule, str) \
        else kl_schedule
    varies = not isinstance(schedule, Constant)
    check_compatible(vae, probe[:2], elbo=elbo, num_particles=num_particles, beta=0.5 if varies else schedule(0.0))
    if heldout is not None:
        heldout = fixed_binarization(to_likelihood_space(heldout.to(device), likelihood), binarize, heldout_seed)
        _check_support(vae, heldout, "held-out data")

    # SVI updates the tensors in Pyro's param store: make sure the entries under this VAE's names are
    # this VAE's own parameters (not those of another VAE trained earlier in the same process).
    store = pyro.get_param_store()
    for name in vae.param_store_names():
        if name in store:
            del store[name]
    optimizer = pyro.optim.Adam({"lr": lr})
    svi = SVI(vae.model, vae.guide, optimizer, loss=make_elbo(elbo, num_particles))

    batch_size = min(batch_size, num_data)
    steps_per_epoch = math.ceil(num_data / batch_size)
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, desc="train", unit="step", dynamic_ncols=True)
    losses: list[float] = []
    history: list[dict] = []
    step = 0
    try:
        for epoch in range(1, epochs + 1):
            vae.train()
            start = time.perf_counter()
            order = torch.randperm(num_data, generator=shuffle).to(device)
            data = binarize_data(train, binarize, generator=noise)  # dynamic: fresh draws every epoch
            epoch_losses = []
            for first in range(0, num_data, batch_size):
                x = data[order[first:first + batch_size]]
                step_beta = float(schedule(step / steps_per_epoch))     # epochs completed, as a float
                loss = svi.step(x, num_data=num_data, beta=step_beta) / num_data
                step += 1
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"training diverged at epoch {epoch}, step {step}: the ELBO is {loss}; "
                        "lower the learning rate (--lr) or check the data")
                epoch_losses.append(loss)
                if bar is not None:
                    bar.update(1)
            seconds = time.perf_counter() - start
            losses += epoch_losses
            record = {"epoch": epoch, "step": step, "train_elbo": -sum(epoch_losses) / len(epoch_losses), "beta": step_beta}
            if heldout is not None:
                result = evaluate(vae, heldout, num_particles=heldout_particles, seed=seed + epoch)
                record["heldout_elbo"] = result.elbo
                record["heldout_elbo_se"] = result.elbo_se
            record["seconds"] = seconds
            history.append(record)
            if bar is not None:
                bar.set_postfix({k: f"{v:.2f}" for k, v in record.items() if k.endswith("elbo")})
            if callback is not None:
                callback(record)
    finally:
        if bar is not None:
            bar.close()
    vae.eval()
    return FitResult(vae=vae, losses=losses, history=history, optimizer_state=optimizer.get_state())
