"""What training does when a step's loss or gradient is NaN or infinite.

The guarded optimizer never applies such an update (:class:`ppl_vae.infer.optim.GuardedAdam`), so the
parameters are still the last good ones. :class:`DivergencePolicy` then stops training with a message
naming what went non-finite (:func:`divergence_message`), or skips the step and lowers the learning rate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppl_vae.errors import TrainingDiverged


class DivergencePolicy:
    """``"stop"``: raise :class:`ppl_vae.errors.TrainingDiverged`. ``"restore"``: skip the step, divide the
    learning rate by 10 and go on, at most :attr:`MAX_RESTORES` times in a run; then stop the same way.

    Args:
        mode: ``"stop"`` or ``"restore"``.
        optimizer: the :class:`ppl_vae.infer.optim.GuardedAdam` of the run (its ``nonfinite`` and learning rate).
        warn: shows a one-line message while training goes on.
    """

    MAX_RESTORES = 3

    def __init__(self, mode: str, optimizer, warn: Callable[[str], None]):
        self.mode = mode
        self.optimizer = optimizer
        self.warn = warn
        self.restores = 0

    def handle(
        self, vae, loss: float, x: torch.Tensor, beta: float, *, epoch: int, step: int, num_data: int, side=None
    ) -> None:
        """Return (skip the step) or raise TrainingDiverged for the non-finite step number ``step`` of
        ``epoch`` on the batch ``x`` at KL weight ``beta``, with ``loss`` the loss per example (nats);
        ``side``: the batch's other keyword arguments of the programs (labels ``c``)."""
        message = divergence_message(
            vae, loss, self.optimizer.nonfinite, x, beta, epoch=epoch, step=step, num_data=num_data, side=side
        )
        if self.mode == "restore" and self.restores < self.MAX_RESTORES and self.optimizer.nonfinite:
            self.restores += 1
            lr = self.optimizer.lr / 10
            self.optimizer.set_lr(lr)
            self.warn(
                f"{message}; skipped this step and lowered the learning rate to {lr:g} "
                f"({self.restores} of {self.MAX_RESTORES})"
            )
            return
        raise TrainingDiverged(message + "; lower the learning rate (--lr), or pass --on-divergence restore")


def divergence_message(
    vae,
    loss: float,
    nonfinite: list[str],
    x: torch.Tensor,
    beta: float,
    *,
    epoch: int,
    step: int,
    num_data: int,
    side: dict | None = None,
) -> str:
    """Name what went non-finite: the sample sites whose value or log-density is NaN/inf on this batch
    (at the current parameters) and the parameters whose gradient is NaN/inf (``nonfinite``, param-store names)."""
    parts = [f"training diverged at epoch {epoch}, step {step}: the loss is {loss:.6g}"]
    if nonfinite:
        nonfinite = [n.split(".", 1)[-1].replace("$$$", ".") for n in nonfinite]  # "vae.decoder$$$net.0.bias"
        shown = ", ".join(nonfinite[:4]) + (f" and {len(nonfinite) - 4} more" if len(nonfinite) > 4 else "")
        parts.append(f"non-finite gradients of {shown}")
    try:
        bad_sites = _non_finite_sites(vae, x, beta, num_data, side or {})
        if bad_sites:
            parts.append("sample sites: " + ", ".join(bad_sites))
    except Exception as error:  # noqa: BLE001 - the programs themselves may fail on non-finite parameters
        parts.append(
            f"the model/guide cannot even be traced on this batch ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        )
    return "; ".join(parts)


def _non_finite_sites(vae, x: torch.Tensor, beta: float, num_data: int, side: dict) -> list[str]:
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(vae.guide).get_trace(x, num_data=num_data, beta=beta, **side)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(
            x, num_data=num_data, beta=beta, **side
        )
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
    return bad_sites
