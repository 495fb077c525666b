"""Encoders: networks from an observation ``x`` to the parameters of q(z | x)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ppl_vae.networks import mlp


class MLPEncoder(nn.Module):
    """``x (..., *data_shape) -> (..., out_features)``: flattens each example, then an MLP."""

    def __init__(self, data_shape: Sequence[int], hidden_dims: Sequence[int], out_features: int):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.net = mlp(math.prod(self.data_shape), hidden_dims, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[: x.dim() - len(self.data_shape)] + (-1,))  # (..., *data_shape) -> (..., D)
        return self.net(flat)
