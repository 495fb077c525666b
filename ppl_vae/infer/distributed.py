"""Data-parallel training on ``torch.distributed``: ``torchrun --nproc-per-node N -m ppl_vae train ...``.

torchrun starts N copies of the command and gives each ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``. :func:`init_from_environment` reads them and joins the process group
(gloo on CPU, NCCL on CUDA, one GPU per process). Then, in :func:`ppl_vae.fit`:

* the VAE's loss is a module wrapped in ``DistributedDataParallel``: DDP broadcasts rank 0's
  parameters at the start and averages the gradients of every step;
* every process draws the same permutation and the same binarization of the training set and takes
  its own contiguous share of each global batch of ``N x batch_size`` examples (a distributed sampler);
  each share's loss is weighted so that the averaged gradient equals the gradient of one process on
  the whole global batch (the plate's ``num_data`` scaling is per shard);
* the draws of z come from a per-process random stream (``seed`` and the rank);
* learnable prior parameters and the guide of global latents (the hierarchical prior's scale) are
  parameters like any other: DDP keeps them identical;
* held-out evaluation is sharded and the per-example results are gathered; losses are averaged;
* only rank 0 writes the run folder; a stop signal is agreed on by all processes after each step, so
  they stop at the same step; a checkpoint holds every process's random stream, so resume is exact;
* a collective that waits longer than ``PPL_VAE_DIST_TIMEOUT`` seconds (default 300) raises, so a
  failed process ends the job with an error instead of a hang (torchrun also stops the others).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from ppl_vae.errors import ConfigError, DistributedError, PplVaeError


@dataclass(frozen=True)
class Context:
    """This process's place in a data-parallel job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def requested() -> bool:
    """True when launched by torchrun (or with its variables set) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device_name: str = "cpu") -> Context | None:
    """Join the process group described by torchrun's environment variables; None when not launched
    as part of a multi-process job. ``device_name`` ``cuda`` puts each process on ``cuda:LOCAL_RANK``."""
    if not requested():
        return None
    import torch.distributed as dist

    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE is set but {', '.join(missing)} is not; launch with torchrun "
            "(torchrun --nproc-per-node N -m ppl_vae train ...)"
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device_name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device_name!r} was requested but CUDA is not available here; use --device cpu")
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout())
        except (RuntimeError, ValueError) as error:
            raise DistributedError(
                f"could not join the distributed job at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} as "
                f"process {rank} of {world} ({' '.join(str(error).split())[:160]}); check that every process "
                "was started with the same address and port"
            ) from None
    return Context(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("PPL_VAE_DIST_TIMEOUT", "300")))


def shutdown(context: Context | None, *, wait: bool = True) -> None:
    """Leave the process group; with ``wait``, after every process got here (so none tears down its
    connections while another still uses them)."""
    if context is not None:
        import torch.distributed as dist

        if dist.is_initialized():
            if wait:
                try:
                    dist.barrier()
                except (RuntimeError, ValueError):
                    pass  # another process failed: its error is the one to report
            dist.destroy_process_group()


def _failure(error: BaseException, what: str) -> DistributedError:
    text = " ".join(str(error).split())
    text = text.split("] ", 1)[-1] if text.startswith("[") else text  # drop gloo's source location
    return DistributedError(
        f"another process of the distributed job failed or stopped responding while {what} "
        f"({text[:160] or type(error).__name__}); see that process's error"
    )


def _collective(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, ValueError) as error:
        if isinstance(error, PplVaeError):
            raise
        raise _failure(error, "exchanging results") from None


def exchanging(fn, *args, **kwargs):
    """Run a step that exchanges data with the other processes (DDP's forward and backward); a failed
    exchange becomes a one-line DistributedError instead of gloo's or NCCL's RuntimeError."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as error:
        text = str(error).lower()
        if any(word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout", "peer")):
            raise _failure(error, "averaging gradients") from None
        raise


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    _collective(dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj, context: Context) -> list:
    """Every process's ``obj`` (picklable, small), in rank order, on every process."""
    import torch.distributed as dist

    out = [None] * context.world_size
    _collective(dist.all_gather_object, out, obj)
    return out


def shard_bounds(total: int, context: Context) -> tuple[int, int]:
    """This process's contiguous share ``[start, stop)`` of ``total`` items (sizes differ by at most one)."""
    base, extra = divmod(total, context.world_size)
    start = context.rank * base + min(context.rank, extra)
    return start, start + base + (1 if context.rank < extra else 0)


class LossModule(torch.nn.Module):
    """The VAE's loss as a module, for ``DistributedDataParallel``: forward runs Pyro's ELBO on the
    VAE's model and guide and returns the differentiable loss times ``weight``."""

    def __init__(self, vae, elbo):
        super().__init__()
        self.vae = vae
        self.elbo = elbo

    def forward(self, x, weight: float, **kwargs):
        return self.elbo.differentiable_loss(self.vae.model, self.vae.guide, x, **kwargs) * weight


def wrap(vae, elbo, context: Context):
    """``DistributedDataParallel`` around the VAE's loss; parameters are broadcast from rank 0."""
    from torch.nn.parallel import DistributedDataParallel

    module = LossModule(vae, elbo)
    device_ids = [context.device] if context.device.type == "cuda" else None
    try:
        # The VAE's buffers are constants: synced once at the start, not before every step.
        import inspect

        option = (
            "forward_sync_buffers"
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
            else "broadcast_buffers"
        )
        return DistributedDataParallel(module, device_ids=device_ids, **{option: False})
    except RuntimeError as error:
        raise _failure(error, "starting data-parallel training") from None
