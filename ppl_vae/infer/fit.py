"""Training: stochastic variational inference with Pyro's ELBOs.

:func:`fit` is the whole loop. The loss and its gradients come from Pyro's ELBO objects
(``TraceMeanField_ELBO`` for the default ``elbo="auto"``, ``Trace_ELBO``, ``RenyiELBO``) applied to the
VAE's model and guide, as ``pyro.infer.SVI`` would apply them; nothing here knows what a KL is.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import site_is_subsample

from ppl_vae.data.support import binarize as binarize_data
from ppl_vae.data.support import check_data_support
from ppl_vae.errors import ConfigError, PplVaeError
from ppl_vae.infer.evaluate import evaluate
from ppl_vae.infer.objectives import (
    check_compatible,
    resolve_binarize,
    to_likelihood_space,
)
from ppl_vae.infer.optim import GuardedAdam
from ppl_vae.infer.schedules import Constant, parse_schedule

#: Offset that separates the held-out binarization stream from every other seeded stream.
_HELDOUT_STREAM = 7919


class TrainingDiverged(PplVaeError):
    """The ELBO or a gradient became NaN or infinite."""


class TrainingInterrupted(PplVaeError):
    """SIGINT or SIGTERM (or ``stop``) ended training at a step boundary; ``state`` continues it exactly."""

    def __init__(self, message: str, state: dict, signal_name: str):
        super().__init__(message)
        self.state = state
        self.signal_name = signal_name


class _Signals:
    """While active, SIGINT and SIGTERM set a flag that the training loop reads after every step; a
    second SIGINT raises KeyboardInterrupt at once. Only the main thread can install handlers: elsewhere
    this does nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def fixed_binarization(x: torch.Tensor, mode: str, seed: int = 0) -> torch.Tensor:
    """Binarize held-out data once, the same way every time (a fixed stochastic binarization for
    ``mode="dynamic"``), so that held-out numbers are comparable across epochs and runs."""
    generator = torch.Generator(device=x.device).manual_seed(_HELDOUT_STREAM + seed)
    return binarize_data(x, mode, generator=generator)


def make_elbo(name: str, num_particles: int = 1):
    """The Pyro loss for an objective name (see ``ppl_vae.infer.objectives.OBJECTIVES``).

    ``auto`` and ``meanfield`` are the same Pyro object: ``TraceMeanField_ELBO`` takes the analytic KL
    at each latent site where ``torch.distributions.kl_divergence`` has a closed form for the guide/prior
    pair (scaled and masked like the site, so ``beta``, KL schedules and the plate's subsampling scale
    apply to it) and the Monte Carlo term log q(z) - log p(z) elsewhere. They differ only in
    :func:`ppl_vae.infer.objectives.check_compatible`, where ``meanfield`` refuses a site without a closed form.
    """
    vectorize = num_particles > 1
    if name == "trace":
        return Trace_ELBO(num_particles=num_particles, vectorize_particles=vectorize)
    if name in ("auto", "meanfield"):
        return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=vectorize)
    if name == "iwae":
        return RenyiELBO(alpha=0.0, num_particles=num_particles, vectorize_particles=vectorize)
    raise ConfigError(f"unknown objective {name!r}; choose one of: auto, trace, meanfield, iwae")


class TrainStep:
    """One optimisation step of :func:`fit`: the loss and its gradients from Pyro's ELBO
    (``Trace_ELBO``, ``TraceMeanField_ELBO`` or ``RenyiELBO``) on the VAE's model and guide, then
    :class:`ppl_vae.infer.optim.GuardedAdam`. Numerically the step of ``SVI(model, guide, Adam, elbo)``.

    What it leaves out of ``SVI.step`` is bookkeeping only: with a :class:`ppl_vae.VAE` it
    differentiates ``elbo.differentiable_loss`` itself (no ``pyro.module`` registration and no
    param-only trace per step) and steps the VAE's parameters, in a fixed order, with one Adam.
    Pyro's validation checks run on the first ``validate_steps`` steps (when validation is enabled)
    and are off after that: the same programs on batches of the same data, checked once. Anything else
    with ``model`` and ``guide`` is trained through ``SVI`` with the same optimizer.

    Calling it with ``(x, num_data=N, beta=b)`` returns the loss of the batch (the -ELBO estimate of
    the whole data set, like ``SVI.step``); :attr:`optimizer` ``.nonfinite`` is non-empty when the
    gradient was not finite and the step was not taken.
    """

    def __init__(self, vae, lr: float, elbo: str = "auto", num_particles: int = 1, validate_steps: int = 1,
                 distributed=None):
        self.vae = vae
        self.loss = make_elbo(elbo, num_particles)
        self.optimizer = GuardedAdam(lr)
        self.validate_steps = validate_steps
        self.steps = 0
        named = getattr(vae, "named_trainable_parameters", None)
        self.named = named() if named is not None else None
        # RenyiELBO has no differentiable_loss: it runs backward itself and needs the param sites.
        self.direct = self.named is not None and elbo != "iwae"
        self.svi = None if self.direct else SVI(vae.model, vae.guide, self.optimizer, loss=self.loss)
        self.ddp = None
        if distributed is not None:
            if not self.direct:
                raise ConfigError("distributed training needs a ppl_vae.VAE and --elbo auto, trace or meanfield "
                                  "(Pyro's RenyiELBO for iwae has no differentiable loss to wrap in DDP)")
            from ppl_vae.infer import distributed as dist_module

            self.ddp = dist_module.wrap(vae, self.loss, distributed)
            self._exchange = dist_module.exchanging

    def __call__(self, x: torch.Tensor, weight: float = 1.0, **kwargs) -> float:
        """One step on ``x``; ``weight`` multiplies this process's loss (distributed shards)."""
        validate = self.steps < self.validate_steps or not is_validation_enabled()
        with contextlib.nullcontext() if validate else pyro.validation_enabled(False):
            if self.svi is not None:
                loss = self.svi.step(x, **kwargs)
            else:
                # Drop the last step's gradients now rather than right after that step: freeing them just
                # before this step's backward re-allocates them measured 1.8 ms/step faster (784-400-50).
                for _, p in self.named:
                    p.grad = None
                self.vae._pyro_registration = False
                try:
                    if self.ddp is not None:               # DDP averages the gradients in backward
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
        optimizer_state: the state of the Adam optimizer (:meth:`ppl_vae.infer.optim.GuardedAdam.get_state`).
        state: the training state at the end (see :func:`fit`'s ``resume``): pass it back with more
            epochs to train on exactly as if the run had been longer.
        objective: the objective actually used: ``{"elbo": name, "sites": {site: term}}`` where each
            latent site's KL part is ``"analytic"``, ``"monte-carlo"`` or ``"importance-weighted"``
            (see :func:`ppl_vae.infer.objectives.check_compatible`).
    """

    vae: torch.nn.Module
    losses: list[float] = field(repr=False)
    history: list[dict]
    optimizer_state: dict = field(repr=False)
    state: dict = field(repr=False, default_factory=dict)
    objective: dict = field(default_factory=dict)


def _check_support(vae, x: torch.Tensor, what: str) -> None:
    check = getattr(getattr(vae, "likelihood", None), "check_support", None)
    if check is not None:
        try:
            check(x)
        except PplVaeError as error:
            raise type(error)(f"{what}: {error}") from None


#: Settings that must not change when a run is resumed (epochs may grow).
_RESUME_SETTINGS = ("batch_size", "seed", "binarize", "elbo", "num_particles", "beta", "kl_schedule", "num_data",
                    "world_size")


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
    elbo: str = "auto",
    num_particles: int = 1,
    beta: float = 1.0,
    kl_schedule=None,
    heldout_particles: int = 8,
    heldout_seed: int = 0,
    progress: bool | None = None,
    callback: Callable[[dict], None] | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    on_divergence: str = "stop",
    handle_signals: bool = False,
    stop: Callable[[int], bool] | None = None,
    distributed=None,
    on_start: Callable[[], None] | None = None,
) -> FitResult:
    """Train ``vae`` by stochastic variational inference with a Pyro ELBO and Adam.

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
        elbo: ``"auto"`` (the default: per latent site, the analytic KL where torch registers one for
            the guide/prior pair and the Monte Carlo term otherwise; ``TraceMeanField_ELBO``),
            ``"trace"`` (``Trace_ELBO``: the Monte Carlo term at every site), ``"meanfield"`` (like auto,
            but refused unless every site has an analytic KL) or ``"iwae"`` (``RenyiELBO(alpha=0)``, the
            importance-weighted bound). What each site got is in ``FitResult.objective``.
        num_particles: draws of z per example and step (vectorized); the iwae bound's K.
        beta: weight of the KL part (``poutine.scale`` on the latent site in model and guide).
        kl_schedule: ``None`` (constant ``beta``), a spec string (``"warmup:10"``, ``"cyclical:10:0.5"``,
            see :func:`ppl_vae.infer.schedules.parse_schedule`; they reach ``beta``) or any callable
            ``epoch_progress -> beta``. The beta in force at the end of each epoch is in the history.
        heldout_particles: draws of z per held-out example for the per-epoch held-out ELBO.
        heldout_seed: seeds the held-out binarization (the CLI passes the split seed).
        progress: show a progress bar; by default when standard error is a terminal.
        callback: called with each epoch's history record.
        on_epoch_end: called after every epoch with the training state (a dict of tensors, numbers and
            lists, safe for ``torch.save``/``torch.load(weights_only=True)``); the VAE's parameters are
            not in it. :func:`ppl_vae.app.run.train_run` writes checkpoints from here.
        resume: a state from ``on_epoch_end``, :class:`TrainingInterrupted` or ``FitResult.state``, with
            the VAE's parameters restored to the same moment: training continues exactly where it
            stopped (same batches, binarizations and draws of z), up to ``epochs`` in total.
        on_divergence: what to do when a gradient is NaN/inf (the update is never applied, so the
            parameters stay at their last good values): ``"stop"`` raises :class:`TrainingDiverged`
            naming the sample sites whose log-density is non-finite and the parameters concerned;
            ``"restore"`` skips the step, divides the learning rate by 10 and goes on (at most 3 times,
            then stops the same way).
        handle_signals: turn SIGINT/SIGTERM into a clean stop after the current step: raises
            :class:`TrainingInterrupted` carrying the state (main thread only).
        stop: called after every step with the number of steps done; True stops as a signal would.
        on_start: called once every input has been checked, before the first step (where
            :func:`ppl_vae.app.run.train_run` creates the run folder, so that a refused input writes nothing).
        distributed: a :class:`ppl_vae.infer.distributed.Context` (from ``init_from_environment``): train
            data-parallel with this process's share of every global batch of ``batch_size x world_size``
            examples; see :mod:`ppl_vae.infer.distributed`.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("heldout_particles", heldout_particles)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    if on_divergence not in ("stop", "restore"):
        raise ConfigError(f"on_divergence must be 'stop' or 'restore', got {on_divergence!r}")
    num_data = train.shape[0]
    if num_data < 1:
        raise ConfigError("the training set is empty")
    device = vae.device if hasattr(vae, "device") else train.device
    train = train.to(device)
    likelihood = getattr(vae, "likelihood", None)
    binarize = resolve_binarize(binarize, likelihood)
    train = to_likelihood_space(train, likelihood)
    ctx = distributed
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    # The draws of z: one stream per process. Shuffling and binarization: the same on every process.
    pyro.set_rng_seed(seed if rank == 0 else seed + 1_000_003 * rank)
    shuffle = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    if likelihood is not None:            # every row, in chunks (a bad value may sit anywhere)
        check_data_support(train, likelihood, "training data", binarize=binarize)
    probe = binarize_data(train[:2], binarize, generator=torch.Generator(device=device).manual_seed(0))
    schedule_spec = kl_schedule if kl_schedule is None or isinstance(kl_schedule, str) else repr(kl_schedule)
    schedule = parse_schedule(kl_schedule or "constant", beta) if kl_schedule is None or isinstance(kl_schedule, str) \
        else kl_schedule
    varies = not isinstance(schedule, Constant)
    terms = check_compatible(vae, probe, elbo=elbo, num_particles=num_particles,
                             beta=0.5 if varies else schedule(0.0))
    objective = {"elbo": elbo, "sites": terms}
    if heldout is not None:
        heldout = fixed_binarization(to_likelihood_space(heldout.to(device), likelihood), binarize, heldout_seed)
        _check_support(vae, heldout, "held-out data")
    settings = {"batch_size": batch_size, "seed": seed, "binarize": binarize, "elbo": elbo,
                "num_particles": num_particles, "beta": float(beta), "kl_schedule": schedule_spec, "num_data": num_data,
                "world_size": world, "objective": objective}

    # Where training goes through SVI (objects other than a ppl_vae.VAE, and iwae), SVI updates the
    # tensors in Pyro's param store: make sure the entries under this VAE's names are this VAE's own
    # parameters (not those of another VAE trained earlier in the same process).
    store = pyro.get_param_store()
    for name in vae.param_store_names():
        if name in store:
            del store[name]
    stepper = TrainStep(vae, lr, elbo, num_particles, distributed=ctx)
    optimizer = stepper.optimizer

    batch_size = min(batch_size, num_data)
    global_batch = min(batch_size * world, num_data)        # the examples of one step over all processes
    steps_per_epoch = math.ceil(num_data / global_batch)
    losses: list[float] = []
    history: list[dict] = []
    step, done_epochs, skip = 0, 0, 0
    epoch_losses: list[float] = []
    if resume is not None:
        _check_resume(resume, settings, epochs)
        losses = resume["losses"].tolist()
        history = [dict(r) for r in resume["history"]]
        step, done_epochs, skip = resume["step"], resume["epoch"], resume["step_in_epoch"]
        epoch_losses = resume["epoch_losses"].tolist()
        lr = resume["lr"]
        optimizer.set_lr(lr)
        optimizer.set_state(resume["optimizer"])
        shuffle.set_state(resume["rng"]["shuffle"])
        noise.set_state(resume["rng"]["noise"])
        own = resume["rng"]["ranks"][rank] if "ranks" in resume["rng"] else resume["rng"]
        resume = {**resume, "rng": {**resume["rng"], "torch": own["torch"], **({"cuda": own["cuda"]} if "cuda" in own else {})}}

    def state(step_in_epoch: int, epoch_start: tuple) -> dict:
        mine = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(device)
        rng = {**mine, "shuffle": epoch_start[0], "noise": epoch_start[1]}
        if ctx is not None:                       # every process's stream, for an exact resume
            from ppl_vae.infer.distributed import gather_objects

            rng["ranks"] = gather_objects(mine, ctx)
        return {"epoch": done_epochs, "step": step, "step_in_epoch": step_in_epoch,
                "losses": torch.tensor(losses, dtype=torch.float64),
                "epoch_losses": torch.tensor(epoch_losses, dtype=torch.float64),
                "history": [dict(r) for r in history], "lr": lr, "optimizer": copy.deepcopy(optimizer.get_state()),
                "rng": rng, "settings": dict(settings)}

    show = (sys.stderr.isatty() if progress is None else progress) and rank == 0
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, initial=step, desc="train", unit="step", dynamic_ncols=True)
    restores = 0
    try:
        with _Signals(handle_signals) as signals:
            if on_start is not None:          # every input accepted: the caller may now create its outputs
                on_start()
            for epoch in range(done_epochs + 1, epochs + 1):
                vae.train()
                start = time.perf_counter()
                epoch_start = (shuffle.get_state(), noise.get_state())
                order = torch.randperm(num_data, generator=shuffle).to(device)
                data = binarize_data(train, binarize, generator=noise)  # dynamic: fresh draws every epoch
                if resume is not None and step == resume["step"]:   # the global RNG as it was when stopped
                    torch.set_rng_state(resume["rng"]["torch"])
                    if device.type == "cuda" and "cuda" in resume["rng"]:
                        torch.cuda.set_rng_state(resume["rng"]["cuda"], device)
                if not skip:
                    epoch_losses = []
                for index, first in enumerate(range(0, num_data, global_batch)):
                    if index < skip:
                        continue
                    x, weight = _share(data, order, first, global_batch, num_data, ctx)
                    step_beta = float(schedule(step / steps_per_epoch))     # epochs completed, as a float
                    loss = stepper(x, weight, num_data=num_data, beta=step_beta) / num_data
                    bad = bool(optimizer.nonfinite) or not math.isfinite(loss)
                    stopping = bool(signals.received) or (stop is not None and stop(step + 1))
                    if ctx is not None:                   # every process takes the same decisions
                        from ppl_vae.infer.distributed import all_reduce_sum

                        flags = all_reduce_sum(torch.tensor([float(bad), float(stopping)], device=ctx.device))
                        bad, stopping = bool(flags[0] > 0), bool(flags[1] > 0)
                    if bad:
                        # The update was not applied when a gradient was non-finite: the parameters are
                        # still the last good ones, and the sites can be named at those values.
                        message = _divergence_message(vae, loss, optimizer.nonfinite, x, step_beta, epoch=epoch,
                                                      step=step + 1, num_data=num_data)
                        if on_divergence == "restore" and restores < 3 and optimizer.nonfinite:
                            restores += 1
                            lr = lr / 10
                            optimizer.set_lr(lr)
                            message += f"; skipped this step and lowered the learning rate to {lr:g} ({restores} of 3)"
                            if bar is not None:
                                bar.write(message)
                            else:
                                print(f"warning: {message}", file=sys.stderr)
                            continue
                        raise TrainingDiverged(message + "; lower the learning rate (--lr), or pass "
                                               "--on-divergence restore")
                    step += 1
                    epoch_losses.append(loss)
                    if bar is not None:
                        bar.update(1)
                    last = index == steps_per_epoch - 1
                    if not last and stopping:
                        raise _interrupted(signals.received, state(index + 1, epoch_start), done_epochs, step)
                skip = 0
                if not epoch_losses:
                    raise TrainingDiverged(f"training diverged: every step of epoch {epoch} had non-finite gradients")
                seconds = time.perf_counter() - start
                if ctx is not None:                       # the loss of a step: the mean over processes
                    from ppl_vae.infer.distributed import all_reduce_sum

                    epoch_losses = (all_reduce_sum(torch.tensor(epoch_losses, dtype=torch.float64, device=ctx.device))
                                    / world).tolist()
                losses += epoch_losses
                record = {"epoch": epoch, "step": step, "train_elbo": -sum(epoch_losses) / len(epoch_losses),
                          "beta": step_beta}
                if heldout is not None:
                    record["heldout_elbo"], record["heldout_elbo_se"] = _heldout_elbo(
                        vae, heldout, heldout_particles, seed + epoch, ctx)
                record["seconds"] = seconds
                if restores:
                    record["lr"] = lr                 # lowered after a divergence
                history.append(record)
                done_epochs = epoch
                epoch_losses = []
                if bar is not None:
                    bar.set_postfix({k: f"{v:.2f}" for k, v in record.items() if k.endswith("elbo")})
                if callback is not None:
                    callback(record)
                end_state = state(0, (shuffle.get_state(), noise.get_state()))
                if on_epoch_end is not None:
                    on_epoch_end(end_state)
                stopping = bool(signals.received) or (stop is not None and stop(step))
                if ctx is not None:
                    from ppl_vae.infer.distributed import any_true

                    stopping = any_true(stopping, ctx)
                if epoch < epochs and stopping:
                    raise _interrupted(signals.received, end_state, done_epochs, step)
    finally:
        if bar is not None:
            bar.close()
    vae.eval()
    final = state(0, (shuffle.get_state(), noise.get_state()))
    return FitResult(vae=vae, losses=losses, history=history, optimizer_state=optimizer.get_state(), state=final,
                     objective=objective)


def _share(data, order, first: int, global_batch: int, num_data: int, ctx):
    """This process's examples of the global batch starting at ``first``, and the weight of its loss.

    One process: the whole batch, weight 1. Several: a contiguous share; the weight
    ``share x world / batch`` makes the average over processes of the weighted gradients (the plate
    scales each share by num_data / share) equal the gradient of the whole batch in one process.
    """
    indices = order[first:first + global_batch]
    if ctx is None:
        return data[indices], 1.0
    from ppl_vae.infer.distributed import shard_bounds

    m = indices.numel()
    start, stop = shard_bounds(m, ctx)
    if stop == start:              # fewer examples than processes: take part in the step with weight 0
        return data[indices[:1]], 0.0
    return data[indices[start:stop]], (stop - start) * ctx.world_size / m


def _heldout_elbo(vae, heldout, particles: int, seed: int, ctx) -> tuple[float, float]:
    """Held-out ELBO and its Monte Carlo s.e.; with several processes each evaluates its share."""
    if ctx is None:
        result = evaluate(vae, heldout, num_particles=particles, seed=seed)
        return result.elbo, result.elbo_se
    from ppl_vae.infer.distributed import gather_objects, shard_bounds

    start, stop = shard_bounds(heldout.shape[0], ctx)
    part = (0.0, 0.0, 0)
    if stop > start:
        result = evaluate(vae, heldout[start:stop], num_particles=particles, seed=seed + 7919 * ctx.rank)
        n = stop - start
        part = (result.elbo * n, (result.elbo_se * n) ** 2, n)
    parts = gather_objects(part, ctx)
    total = sum(p[2] for p in parts)
    return sum(p[0] for p in parts) / total, math.sqrt(sum(p[1] for p in parts)) / total


def _check_resume(resume: dict, settings: dict, epochs: int) -> None:
    required = ("epoch", "step", "step_in_epoch", "losses", "epoch_losses", "history", "lr", "optimizer", "rng",
                "settings")
    missing = [k for k in required if k not in resume]
    if missing:
        raise ConfigError(f"the training state to resume is incomplete (missing {', '.join(missing)}); "
                          "it was not written by ppl_vae's fit")
    for name in _RESUME_SETTINGS:
        before = resume["settings"].get(name, 1 if name == "world_size" else None)
        if before != settings[name]:
            what = "processes" if name == "world_size" else name
            raise ConfigError(f"cannot resume: {what} was {before!r} when training started and is {settings[name]!r} "
                              "now; resume with the original settings")
    if epochs < resume["epoch"] or (epochs == resume["epoch"] and resume["step_in_epoch"] == 0):
        raise ConfigError(f"nothing to resume: {resume['epoch']} epochs are already done and epochs is {epochs}; "
                          "ask for more epochs to train longer")


def _interrupted(received, state: dict, done_epochs: int, step: int) -> TrainingInterrupted:
    name = received or "stop"
    where = f"after epoch {done_epochs}" if state["step_in_epoch"] == 0 else \
        f"in epoch {done_epochs + 1} after step {state['step_in_epoch']}"
    return TrainingInterrupted(f"training stopped by {name} {where} ({step} steps in all)", state, name)


def _parameters_finite(vae) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in vae.parameters())


def _divergence_message(vae, loss: float, nonfinite: list[str], x: torch.Tensor, beta: float, *, epoch: int,
                        step: int, num_data: int) -> str:
    """Name what went non-finite: the sample sites whose value or log-density is NaN/inf on this batch
    (at the current parameters) and the parameters whose gradient is NaN/inf."""
    from pyro import poutine

    parts = [f"training diverged at epoch {epoch}, step {step}: the loss is {loss:.6g}"]
    if nonfinite:
        nonfinite = [n.split(".", 1)[-1].replace("$$$", ".") for n in nonfinite]   # "vae.decoder$$$net.0.bias"
        shown = ", ".join(nonfinite[:4]) + (f" and {len(nonfinite) - 4} more" if len(nonfinite) > 4 else "")
        parts.append(f"non-finite gradients of {shown}")
    try:
        with torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(vae.guide).get_trace(x, num_data=num_data, beta=beta)
            model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(
                x, num_data=num_data, beta=beta)
        bad_sites = []
        for where, trace in (("model", model_trace), ("guide", guide_trace)):
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or site_is_subsample(site):
                    continue
                values_ok = bool(torch.isfinite(torch.as_tensor(site["value"])).all())
                log_prob_ok = bool(torch.isfinite(site["fn"].log_prob(site["value"])).all())
                if not (values_ok and log_prob_ok):
                    what = "value and log-density" if not values_ok else "log-density"
                    bad_sites.append(f"{name!r} in the {where} (non-finite {what})")
        if bad_sites:
            parts.append("sample sites: " + ", ".join(bad_sites))
    except Exception as error:  # noqa: BLE001 - the programs themselves may fail on non-finite parameters
        parts.append(f"the model/guide cannot even be traced on this batch ({type(error).__name__}: "
                     f"{str(error).splitlines()[0] if str(error) else ''})")
    return "; ".join(parts)
