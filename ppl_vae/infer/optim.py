"""The optimizer of ``fit``: Adam over every parameter at once, guarded.

``pyro.optim.Adam`` builds one ``torch.optim.Adam`` per parameter tensor and steps them one by one.
:class:`GuardedAdam` is a :class:`pyro.optim.PyroOptim` that

* keeps one ``torch.optim.Adam`` for all parameters (in the param store's name order, so its state
  is the same from run to run) — the same arithmetic per element, one call per step;
* looks at the gradients before stepping: if any is NaN or infinite it does not step, and records the
  names of the parameters concerned in :attr:`GuardedAdam.nonfinite`, so that the parameters stay at
  their last good values and training can name what diverged.

:class:`ppl_vae.infer.step.TrainStep` differentiates the ELBO of a :class:`ppl_vae.VAE` itself and calls
:meth:`GuardedAdam.step` with the VAE's parameters; only for other models and for the iwae objective does
the loss go through ``pyro.infer.SVI``, which calls the optimizer like any ``PyroOptim``
(:meth:`GuardedAdam.__call__`).
"""

from __future__ import annotations

import pyro
import torch
from pyro.optim import PyroOptim


class GuardedAdam(PyroOptim):
    """Adam (``torch.optim.Adam``) over all parameters at once that refuses non-finite gradients.

    Args:
        lr, betas, eps: Adam's settings.
        fused: use torch's fused Adam kernel (one pass over each parameter for the whole update; 2 ms of
            a 10 ms step at 784-400-50, batch 128, on one CPU thread), where torch has one for the
            parameters' device and dtype. The same update up to float rounding; the compiled step
            (:mod:`ppl_vae.infer.compiled`) uses it, the eager reference (``compile="off"``) does not.
    """

    def __init__(
        self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, fused: bool = False
    ):
        super().__init__(torch.optim.Adam, {"lr": lr, "betas": betas, "eps": eps})
        self.lr = lr
        self.fused = fused
        self._optimizer: torch.optim.Adam | None = None
        self._names: list[str] = []
        self._waiting: dict | None = None
        #: names of the parameters whose gradient was NaN/inf at the last call (then no step was taken)
        self.nonfinite: list[str] = []

    def __call__(self, params, *args, **kwargs) -> None:
        """What ``SVI.step`` calls: step the given parameters (unconstrained tensors of the param store)."""
        store = pyro.get_param_store()
        self.step(sorted(((store.param_name(p), p) for p in params), key=lambda item: item[0]))

    def step(self, named: list[tuple[str, torch.Tensor]], finite: bool | None = None) -> None:
        """One Adam step of ``(name, parameter)`` pairs (always in the same order), unless a gradient
        is NaN/inf: then nothing changes and :attr:`nonfinite` names the culprits. ``finite``: the result
        of that check when the caller made it already (the compiled step does, inside its graph)."""
        grads = [p.grad for _, p in named if p.grad is not None]
        # The sum of a tensor is NaN/inf when any element is (or when the finite sum overflows float32,
        # which is divergence too): one reduction per tensor, no boolean copies.
        if finite is None:
            finite = not grads or bool(torch.isfinite(torch.stack([g.sum() for g in grads])).all())
        if not finite:
            self.nonfinite = [
                name for name, p in named if p.grad is not None and not bool(torch.isfinite(p.grad).all())
            ]
            return
        self.nonfinite = []
        if self._optimizer is None:
            params = [p for _, p in named]
            fused = self.fused and _fused_kernel_for(params)
            self._optimizer = torch.optim.Adam(params, **self.pt_optim_args, **({"fused": True} if fused else {}))
            self._names = [name for name, _ in named]
            if self._waiting is not None:
                self._load(self._waiting)
                self._waiting = None
        elif len(named) != len(self._names):
            known = set(self._names)
            new = [(name, p) for name, p in named if name not in known]
            if new:
                self._optimizer.add_param_group({"params": [p for _, p in new]})
                self._names += [name for name, _ in new]
        self._optimizer.step()

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        self.pt_optim_args["lr"] = lr
        if self._optimizer is not None:
            for group in self._optimizer.param_groups:
                group["lr"] = lr

    def get_state(self) -> dict:
        """``{"names": [...], "adam": torch state_dict}``; plain data, safe for weights-only loading."""
        if self._optimizer is None:
            return dict(self._waiting) if self._waiting is not None else {"names": [], "adam": None}
        return {"names": list(self._names), "adam": self._optimizer.state_dict()}

    def set_state(self, state: dict) -> None:
        """Restore a :meth:`get_state`; applied when the parameters are first seen."""
        if self._optimizer is None:
            self._waiting = state
        else:
            self._load(state)

    def _load(self, state: dict) -> None:
        if state.get("adam") is None:
            return
        if list(state["names"]) != self._names:
            raise ValueError(
                f"optimizer state is for parameters {state['names'][:3]}..., these are "
                f"{self._names[:3]}...; it belongs to another model"
            )
        self._optimizer.load_state_dict(state["adam"])
        for group in self._optimizer.param_groups:  # the current learning rate wins
            group["lr"] = self.lr


def _fused_kernel_for(params: list[torch.Tensor]) -> bool:
    """Does torch have a fused Adam kernel for all of ``params`` (floating point, on the CPU or a GPU)?"""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
