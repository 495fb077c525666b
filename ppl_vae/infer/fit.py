"""Training: stochastic variational inference with Pyro's ELBOs.

:func:`fit` trains a VAE; it is a convenience that puts the parts together:
:class:`~ppl_vae.infer.settings.FitSettings` (its arguments, checked), :class:`~ppl_vae.infer.step.TrainStep`
(one step: the loss and gradients from Pyro's ELBO objects applied to the VAE's model and guide, as
``pyro.infer.SVI`` would apply them, then Adam; nothing here knows what a KL is),
:class:`~ppl_vae.infer.batches.Batches` and :class:`~ppl_vae.infer.batches.RandomStreams`, the strategy
(:mod:`ppl_vae.infer.strategy`: one process or data-parallel), :class:`~ppl_vae.infer.divergence.DivergencePolicy`,
the callbacks (:mod:`ppl_vae.infer.callbacks`) and :class:`~ppl_vae.infer.loop.TrainingLoop`, whose state
(:class:`~ppl_vae.infer.state.TrainState`) continues a run exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ppl_vae.data.support import binarize as binarize_data
from ppl_vae.data.support import check_data_support
from ppl_vae.errors import PplVaeError, TrainingDiverged, TrainingInterrupted
from ppl_vae.infer.batches import Batches, RandomStreams
from ppl_vae.infer.callbacks import (
    Callbacks,
    EpochEndHook,
    HeldoutEvaluation,
    ProgressBar,
    StartHook,
    StopRequests,
)
from ppl_vae.infer.divergence import DivergencePolicy
from ppl_vae.infer.evaluate import max_plate_nesting
from ppl_vae.infer.labels import check_fit_labels
from ppl_vae.infer.loop import TrainingLoop
from ppl_vae.infer.objectives import ENUMERATED, check_compatible, to_likelihood_space
from ppl_vae.infer.settings import FitSettings
from ppl_vae.infer.state import TrainState
from ppl_vae.infer.step import release_param_store_names
from ppl_vae.infer.strategy import make_strategy

#: ``TrainingDiverged`` and ``TrainingInterrupted`` live in :mod:`ppl_vae.errors`; also importable from here.
__all__ = ["FitResult", "TrainingDiverged", "TrainingInterrupted", "fit", "fixed_binarization"]

#: Offset that separates the held-out binarization stream from every other seeded stream.
_HELDOUT_STREAM = 7919


def fixed_binarization(x: torch.Tensor, mode: str, seed: int = 0) -> torch.Tensor:
    """Binarize held-out data once, the same way every time (a fixed stochastic binarization for
    ``mode="dynamic"``), so that held-out numbers are comparable across epochs and runs."""
    generator = torch.Generator(device=x.device).manual_seed(_HELDOUT_STREAM + seed)
    return binarize_data(x, mode, generator=generator)


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        vae: the trained VAE (the same object that was passed in).
        losses: per training step, the loss per example: -ELBO / num_data of that mini-batch, in nats.
        history: per epoch, a dict with ``epoch``, ``step``, ``train_elbo`` (mean over the epoch's
            steps of the training objective: the beta-weighted bound while beta != 1), ``beta`` (at the
            epoch's last step), ``heldout_elbo`` and ``heldout_elbo_se`` (when held-out data was given) and
            ``seconds`` (wall time of the epoch's training steps), and ``lr`` (the learning rate in force)
            once a divergence lowered it (``on_divergence="restore"``).
        optimizer_state: the state of the Adam optimizer (:meth:`ppl_vae.infer.optim.GuardedAdam.get_state`).
        state: the training state at the end (see :func:`fit`'s ``resume``): pass it back with more
            epochs to train on exactly as if the run had been longer.
        objective: the objective actually used: ``{"elbo": name, "sites": {site: term}}`` where each
            latent site's KL part is ``"analytic"``, ``"monte-carlo"`` or ``"importance-weighted"``
            (see :func:`ppl_vae.infer.objectives.check_compatible`).
        step: how the steps ran (:meth:`ppl_vae.infer.step.TrainStep.describe`): ``compile`` as asked,
            ``path`` (``"eager"``, ``"recorded"``, ``"compiled"`` or ``"mixed"``), ``eager_reason`` and per
            recorded batch shape its record and compile seconds and steps.
    """

    vae: torch.nn.Module
    losses: list[float] = field(repr=False)
    history: list[dict]
    optimizer_state: dict = field(repr=False)
    state: dict = field(repr=False, default_factory=dict)
    objective: dict = field(default_factory=dict)
    step: dict = field(default_factory=dict)


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
    on_epoch_end: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    on_divergence: str = "stop",
    handle_signals: bool = False,
    stop: Callable[[int], bool] | None = None,
    distributed=None,
    on_start: Callable[[], None] | None = None,
    labels: torch.Tensor | None = None,
    heldout_labels: torch.Tensor | None = None,
    compile: str = "auto",
) -> FitResult:
    """Train ``vae`` by stochastic variational inference with a Pyro ELBO and Adam.

    Args:
        vae: a :class:`ppl_vae.VAE` (anything with ``model``, ``guide``, ``param_store_names`` and ``parameters``).
            Its parameters are initialised when it is built: seed before building.
        train: ``(N, *data_shape)`` training examples in [0, 1] (grey levels; binarized here).
        heldout: ``(M, *data_shape)`` held-out examples, evaluated after every epoch.
        epochs, batch_size, lr: the optimisation budget. A batch larger than the data is one full batch.
        seed: seeds shuffling, binarization and the draws of z.
        binarize: ``"dynamic"`` (a fresh Bernoulli draw of every training image every epoch, held-out binarized
            once), ``"threshold"`` (x > 0.5), ``"none"``, or ``"auto"`` (dynamic for binary likelihoods such as
            Bernoulli, none for the others).
        elbo: ``"auto"`` (the default: per latent site, the analytic KL where torch registers one for the
            guide/prior pair and the Monte Carlo term otherwise; ``TraceMeanField_ELBO``), ``"trace"``
            (``Trace_ELBO``: the Monte Carlo term at every site), ``"meanfield"`` (like auto, but refused unless every
            site has an analytic KL) or ``"iwae"`` (``RenyiELBO(alpha=0)``, the importance-weighted bound). What
            each site got is in ``FitResult.objective``.
        num_particles: draws of z per example and step (vectorized); the iwae bound's K.
        beta: weight of the KL part (``poutine.scale`` on the latent site in model and guide).
        kl_schedule: ``None`` (constant ``beta``), a spec string (``"warmup:10"``, ``"cyclical:10:0.5"``, see
            :func:`ppl_vae.infer.schedules.parse_schedule`; they reach ``beta``) or any callable
            ``epoch_progress -> beta``. The beta in force at the end of each epoch is in the history.
        heldout_particles: draws of z per held-out example for the per-epoch held-out ELBO.
        heldout_seed: seeds the held-out binarization (the CLI passes the split seed).
        progress: show a progress bar; by default when standard error is a terminal.
        on_epoch_end: called after every epoch with the training state (a dict of tensors, numbers and lists, safe
            for ``torch.save``/``torch.load(weights_only=True)``; see :class:`ppl_vae.infer.state.TrainState`); the
            VAE's parameters are not in it. :func:`ppl_vae.app.run.train_run` writes checkpoints from here.
        resume: a state from ``on_epoch_end``, :class:`TrainingInterrupted` or ``FitResult.state``, with the VAE's
            parameters restored to the same moment: training continues exactly where it stopped (same batches,
            binarizations and draws of z), up to ``epochs`` in total.
        on_divergence: what to do when a gradient is NaN/inf (the update is never applied, so the parameters stay
            at their last good values): ``"stop"`` raises :class:`TrainingDiverged` naming the sample sites whose
            log-density is non-finite and the parameters concerned; ``"restore"`` skips the step, divides the
            learning rate by 10 and goes on (at most 3 times, then stops the same way).
        handle_signals: turn SIGINT/SIGTERM into a clean stop after the current step: raises
            :class:`TrainingInterrupted` carrying the state (main thread only).
        stop: called after every step with the number of steps done; True stops as a signal would.
        distributed: a :class:`ppl_vae.infer.distributed.Context` (from ``init_from_environment``): train
            data-parallel with this process's share of every global batch of ``batch_size x world_size`` examples.
        on_start: called once every input has been checked, before the first step (where
            :func:`ppl_vae.app.run.train_run` creates the run folder, so that a refused input writes nothing).
        labels, heldout_labels: ``(N,)`` and ``(M,)`` integer class labels for a model with a label site
            (``vae.label_role``): ``"semi"`` (semi-supervised: ``-1`` where a training label is missing;
            the held-out labels give ``heldout_accuracy`` and ``heldout_accuracy_se`` every epoch, the
            classifier's accuracy) or ``"covariate"`` (conditional: every label given, held-out ones too).
            Refused for a model without a label site.
        compile: how each step runs (:mod:`ppl_vae.infer.compiled`): ``"off"`` runs the Pyro programs and
            autograd eagerly at every step (the reference); ``"trace"`` records the step's tensor operations
            (loss and backward) once per batch shape and replays them, bit for bit the eager numbers;
            ``"on"`` also compiles the recording with ``torch.compile`` (same draws, float rounding
            differs); ``"auto"`` records a batch shape the run plans at least 1,000 steps of and, for fully
            connected networks, compiles one it plans at least two million examples of. Configurations the
            recording does not accept (iwae, KL schedules, data-parallel, enumerated models, programs that
            read ``pyro.param`` or branch on tensor values) take eager steps, with one line saying why.
            ``FitResult.step`` records the path taken.
    """
    strategy = make_strategy(distributed)
    settings = FitSettings.from_arguments(
        train,
        getattr(vae, "likelihood", None),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        binarize=binarize,
        elbo=elbo,
        num_particles=num_particles,
        beta=beta,
        kl_schedule=kl_schedule,
        heldout_particles=heldout_particles,
        heldout_seed=heldout_seed,
        on_divergence=on_divergence,
        world_size=strategy.world_size,
        compile=compile,
    )
    device = vae.device if hasattr(vae, "device") else train.device
    labels, heldout_labels = check_fit_labels(vae, train, heldout, labels, heldout_labels, device, distributed)
    streams = RandomStreams(seed, device, strategy)  # seeded before the checks, whose draws are forked from it
    train, heldout, objective = _prepare(vae, train, heldout, settings, device, labels)
    release_param_store_names(vae)
    enumerated = objective.pop("nesting", 0)
    stepper = _stepper(strategy, vae, settings, enumerated)
    loop = TrainingLoop(
        vae,
        stepper,
        settings,
        objective,
        strategy,
        streams,
        Batches(train, settings.binarize, settings.global_batch, streams, strategy, labels),
    )
    if resume is not None:
        loop.restore(TrainState.from_dict(resume).check_resumable(loop.state_settings, epochs))
    callbacks = Callbacks(
        [
            ProgressBar(progress, strategy.rank, epochs * settings.steps_per_epoch, initial=loop.step),
            StopRequests(handle_signals, stop),
            HeldoutEvaluation(vae, heldout, heldout_particles, seed, strategy, heldout_labels)
            if heldout is not None
            else None,
            EpochEndHook(on_epoch_end) if on_epoch_end is not None else None,
            StartHook(on_start) if on_start is not None else None,
        ]
    )  # every input accepted: outputs may be made
    stepper.log = callbacks.warn
    stepper.announce()
    state = loop.run(callbacks, DivergencePolicy(on_divergence, stepper.optimizer, callbacks.warn))
    return FitResult(
        vae=vae,
        losses=loop.losses,
        history=loop.history,
        optimizer_state=stepper.optimizer.get_state(),
        state=state,
        objective=objective,
        step=stepper.describe(),
    )


def _stepper(strategy, vae, settings: FitSettings, enumerated: int):
    """The step of every batch (:class:`ppl_vae.infer.step.TrainStep`), with what ``compile`` decides from."""
    return strategy.train_step(
        vae,
        settings.lr,
        settings.elbo,
        settings.num_particles,
        enumerated,
        compile=settings.compile,
        planned=settings.planned_steps(),
        varies=settings.varies,
    )


def _prepare(
    vae,
    train: torch.Tensor,
    heldout: torch.Tensor | None,
    settings: FitSettings,
    device: torch.device,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """The training data on ``device`` in the likelihood's space (every row checked), the held-out data
    binarized once (checked), and the objective checked on two examples: ``{"elbo": name, "sites": {...},
    "nesting": n}`` (``n``: the plate nesting for ``TraceEnum_ELBO`` when a site is enumerated, else 0)."""
    likelihood = getattr(vae, "likelihood", None)
    train = to_likelihood_space(train.to(device), likelihood)
    if likelihood is not None:  # every row, in chunks (a bad value may sit anywhere)
        check_data_support(train, likelihood, "training data", binarize=settings.binarize)
    probe = binarize_data(train[:2], settings.binarize, generator=torch.Generator(device=device).manual_seed(0))
    terms = check_compatible(
        vae,
        probe,
        elbo=settings.elbo,
        num_particles=settings.num_particles,
        beta=0.5 if settings.varies else settings.schedule(0.0),
        c=None if labels is None else labels[:2],
    )
    side = {} if labels is None else {"c": labels[:2]}
    nesting = max_plate_nesting(vae.model, vae.guide, probe, **side) if ENUMERATED in terms.values() else 0
    if heldout is not None:
        heldout = fixed_binarization(
            to_likelihood_space(heldout.to(device), likelihood), settings.binarize, settings.heldout_seed
        )
        _check_support(vae, heldout, "held-out data")
    return train, heldout, {"elbo": settings.elbo, "sites": terms, "nesting": nesting}


def _check_support(vae, x: torch.Tensor, what: str) -> None:
    check = getattr(getattr(vae, "likelihood", None), "check_support", None)
    if check is not None:
        try:
            check(x)
        except PplVaeError as error:
            raise type(error)(f"{what}: {error}") from None
