"""Small building blocks shared by the generative side (``ppl_vae.models``) and the inference side
(``ppl_vae.guides``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(in_features: int, hidden_dims: Sequence[int], out_features: int) -> nn.Sequential:
    """A multilayer perceptron ``in_features -> hidden_dims... -> out_features``.

    ReLU between layers, no activation on the output. With ``hidden_dims=()`` it is a single linear
    layer (the decoder of probabilistic PCA). Acts on the last dimension: input ``(..., in_features)``,
    output ``(..., out_features)``.
    """
    layers: list[nn.Module] = []
    width = in_features
    for hidden in hidden_dims:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)
