"""``ppl-vae train``: a new run or a resumed one, in one process or as one of many started by torchrun.

:func:`train_command` decides between :func:`ppl_vae.app.run.train_run` and
:func:`ppl_vae.app.run.resume_run`, joins the process group when torchrun started it (and leaves it
however training ends), and returns a :class:`TrainSummary` of what was trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ppl_vae.app.config import resolve_config
from ppl_vae.app.run import read_config, resume_run, train_run
from ppl_vae.errors import ConfigError
from ppl_vae.results import Result


@dataclass(frozen=True)
class TrainSummary(Result):
    """What :func:`train_command` trained: the run folder, its data, the epochs trained in all, the last
    epoch's train and held-out ELBO (nats per example, in ``units``), the number of processes of a
    distributed run (None otherwise) and whether this process is the one that reports (rank 0)."""

    run_dir: Path
    dataset: str
    num_train: int
    num_heldout: int
    data_shape: tuple[int, ...]
    epochs: int
    train_elbo: float | None
    heldout_elbo: float | None
    units: str
    processes: int | None
    is_main: bool
    heldout_accuracy: float | None = None  # semi-supervised runs: the classifier's, last epoch
    heldout_accuracy_se: float | None = None
    heldout_bits_per_dim: float | None = None  # 8-bit likelihoods: -heldout_elbo / (D ln 2), >= bits/dim


def check_resume_options(
    resume: str | Path, overrides: dict, *, config_file=None, out=None, overwrite: bool = False
) -> None:
    """Refuse settings next to ``--resume``: a resumed run continues as its ``config.json`` says; only
    ``epochs`` may change (to train longer). ``overrides``: the config fields given (field -> value)."""
    given = [name for name, value in overrides.items() if name != "epochs" and value is not None]
    if not (given or config_file is not None or out is not None or overwrite):
        return
    extra = (
        [f"--{name.replace('_', '-')}" for name in given]
        + (["--config"] if config_file else [])
        + (["--out"] if out else [])
        + (["--overwrite"] if overwrite else [])
    )
    raise ConfigError(
        f"--resume continues {resume} as configured in its config.json; drop {' '.join(extra)} (only "
        "--epochs may change, to train longer)"
    )


def train_command(
    *,
    overrides: dict | None = None,
    config_file: str | Path | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    progress: bool | None = None,
    command: list[str] | None = None,
    handle_signals: bool = False,
) -> TrainSummary:
    """Train a new run (config: ``config_file`` with ``overrides`` of single fields, see
    :func:`ppl_vae.app.config.resolve_config`; written to ``out``) or, with ``resume``, continue that run
    folder (only ``overrides["epochs"]`` may be given, see :func:`check_resume_options`).

    Started by torchrun, every process joins the process group (:mod:`ppl_vae.infer.distributed`) and
    trains its share, rank 0 writes, and a new run needs ``out`` (the same for every process)."""
    from ppl_vae.infer import distributed

    overrides = dict(overrides or {})
    if resume is not None:
        check_resume_options(resume, overrides, config_file=config_file, out=out, overwrite=overwrite)
        config = read_config(resume)
    else:
        config = resolve_config(config_file, overrides)
    context = distributed.init_from_environment(config.device)  # torchrun: join the process group
    failed = True
    try:
        if resume is not None:
            run = resume_run(
                resume,
                epochs=overrides.get("epochs"),
                progress=progress,
                command=command,
                handle_signals=handle_signals,
                distributed=context,
            )
            config = read_config(run.run_dir)
        else:
            if context is not None and out is None:
                raise ConfigError("distributed training needs --out RUN_DIR, the same for every process")
            run = train_run(
                config,
                out,
                overwrite=overwrite,
                progress=progress,
                command=command,
                handle_signals=handle_signals,
                distributed=context,
            )
        failed = False
    finally:
        distributed.shutdown(context, wait=not failed)
    return _summary(run, config.epochs, context)


def _summary(run, epochs: int, context) -> TrainSummary:
    final = run.result.history[-1] if run.result.history else {}
    shift = run.units_shift
    return TrainSummary(
        run_dir=run.run_dir,
        dataset=run.data.name,
        num_train=int(run.data.train.shape[0]),
        num_heldout=int(run.data.heldout.shape[0]),
        data_shape=tuple(run.data.data_shape),
        epochs=epochs,
        train_elbo=final["train_elbo"] + shift if "train_elbo" in final else None,
        heldout_elbo=final["heldout_elbo"] + shift if "heldout_elbo" in final else None,
        units=run.units,
        processes=None if context is None else context.world_size,
        is_main=context is None or context.is_main,
        heldout_accuracy=final.get("heldout_accuracy"),
        heldout_accuracy_se=final.get("heldout_accuracy_se"),
        heldout_bits_per_dim=_elbo_bits(run, final.get("heldout_elbo")),
    )


def _elbo_bits(run, heldout_elbo: float | None) -> float | None:
    """The held-out ELBO in bits per dimension for a run whose likelihood models 8-bit data (None otherwise):
    an upper bound on the bits/dim that ``ppl-vae evaluate`` estimates."""
    import math

    from ppl_vae.app.run import read_config
    from ppl_vae.infer.evaluate import bits_per_dim
    from ppl_vae.models import LIKELIHOODS

    likelihood = LIKELIHOODS.get(read_config(run.run_dir).likelihood.partition(":")[0])
    if heldout_elbo is None or getattr(likelihood, "data_kind", None) != "8bit":
        return None
    return float(bits_per_dim(-heldout_elbo, math.prod(run.data.data_shape)))
