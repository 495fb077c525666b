"""Latent-space tools: interpolation, traversals, the decoded latent manifold and 2-D projections.

Pure computation on tensors (no files, no printing, no figures): :mod:`ppl_vae.app.latent_figures`
draws the results, and ``ppl_vae.cli.latent`` turns both into the ``interpolate``, ``traverse`` and
``latent-map`` commands.

Shapes: ``d`` is ``vae.latent_dim``; ``data_shape`` is the shape of one example, e.g. ``(1, 8, 8)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ppl_vae.diagnostics.kl import activity, kl_to_prior
from ppl_vae.errors import ConfigError
from ppl_vae.results import Result
from ppl_vae.validation import Bound, check_number

INTERPOLATION_METHODS = ("linear", "slerp")


PROJECTION_METHODS = ("pca", "tsne")


# Below this angle (radians) between two vectors, slerp is numerically linear interpolation.
_PARALLEL_EPS = 1e-4


# ---------------------------------------------------------------------------------------------
# computation
# ---------------------------------------------------------------------------------------------


def _check_steps(num_steps: int, what: str = "num_steps") -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ConfigError(f"{what} must be an integer of at least 2 (the two end points), got {num_steps!r}")
    return num_steps


def interpolate(z0: torch.Tensor, z1: torch.Tensor, num_steps: int, method: str = "linear") -> torch.Tensor:
    """Points on a path from ``z0`` to ``z1``, both ends included.

    Args:
        z0, z1: ``(d,)`` end points.
        num_steps: number of points, at least 2; ``t = 0, 1/(num_steps-1), ..., 1``.
        method: ``"linear"``: ``(1 - t) z0 + t z1``. ``"slerp"``: spherical linear interpolation,
            ``sin((1-t) w)/sin(w) z0 + sin(t w)/sin(w) z1`` with ``w`` the angle between ``z0`` and
            ``z1``. Under a standard Gaussian prior almost all mass lies near the sphere of radius
            ``sqrt(d)``; a straight line between two typical points cuts through the low-norm interior,
            slerp keeps the norm (exactly, for equal-norm ends). Parallel ends (or a zero end) fall
            back to linear interpolation; antiparallel ends follow a half great circle through a
            fixed perpendicular direction, with the norm interpolated linearly.

    Returns:
        ``(num_steps, d)``; row 0 is ``z0`` and row ``num_steps - 1`` is ``z1``.
    """
    _check_steps(num_steps)
    if method not in INTERPOLATION_METHODS:
        raise ConfigError(f"unknown interpolation method {method!r}; use one of {', '.join(INTERPOLATION_METHODS)}")
    z0 = torch.as_tensor(z0)
    z1 = torch.as_tensor(z1, dtype=z0.dtype, device=z0.device)
    if z0.dim() != 1 or z0.shape != z1.shape:
        raise ConfigError(
            f"interpolate needs two vectors of the same length, got shapes {tuple(z0.shape)} and {tuple(z1.shape)}"
        )
    dtype = z0.dtype if z0.is_floating_point() else torch.get_default_dtype()
    z0, z1 = z0.to(dtype), z1.to(dtype)
    t = torch.linspace(0.0, 1.0, num_steps, dtype=dtype, device=z0.device).unsqueeze(1)  # (S, 1)
    linear = (1 - t) * z0 + t * z1
    if method == "linear":
        return linear
    # Angles in double precision: acos is ill-conditioned near 0 and pi.
    n0, n1 = z0.double().norm(), z1.double().norm()
    if n0 == 0 or n1 == 0:
        return linear
    cos = (z0.double() @ z1.double() / (n0 * n1)).clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    if omega < _PARALLEL_EPS:
        return linear
    td = t.double()
    if math.pi - omega < _PARALLEL_EPS:  # antiparallel: the great circle is not unique; pick one
        if z0.numel() < 2:
            return linear  # no perpendicular direction in one dimension
        e0 = z0.double() / n0
        basis = torch.zeros_like(e0)
        basis[torch.argmin(e0.abs())] = 1.0  # the axis least aligned with e0
        u = basis - (basis @ e0) * e0
        u = u / u.norm()
        radius = (1 - td) * n0 + td * n1
        path = radius * (torch.cos(math.pi * td) * e0 + torch.sin(math.pi * td) * u)
    else:
        sin = torch.sin(omega)
        path = torch.sin((1 - td) * omega) / sin * z0.double() + torch.sin(td * omega) / sin * z1.double()
    path = path.to(dtype)
    path[0], path[-1] = z0, z1  # exact end points despite rounding
    return path


def _one_example(vae, x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    shape = tuple(vae.data_shape)
    if tuple(x.shape) == shape:
        return x.unsqueeze(0)
    if tuple(x.shape) == (1, *shape):
        return x
    raise ConfigError(f"{name} must be one example of shape {shape}, got shape {tuple(x.shape)}")


def interpolate_inputs(
    vae, x0: torch.Tensor, x1: torch.Tensor, num_steps: int, method: str = "linear", *, return_latents: bool = False
):
    """Decode a path between the posterior means of two inputs.

    Args:
        vae: anything with ``encode``, ``decode``, ``data_shape`` (a :class:`ppl_vae.VAE`).
        x0, x1: one example each, ``data_shape`` or ``(1, *data_shape)``.
        num_steps, method: as in :func:`interpolate`.
        return_latents: also return the latent path.

    Returns:
        ``(num_steps, *data_shape)``: the means of p(x | z) along the path from E[z | x0] to E[z | x1];
        with ``return_latents``, the pair ``(images, z_path (num_steps, d))``.
    """
    x = torch.cat([_one_example(vae, x0, "x0"), _one_example(vae, x1, "x1")]).to(vae.device)
    means, _ = vae.encode(x)
    path = interpolate(means[0], means[1], num_steps, method)
    images = vae.decode(path)
    return (images, path) if return_latents else images


def _check_dim(dim: int, latent_dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < latent_dim:
        raise ConfigError(
            f"latent dimension {dim!r} is out of range; the latent space has dimensions 0 to {latent_dim - 1}"
        )
    return dim


def traverse_points(z: torch.Tensor, dim: int, values) -> torch.Tensor:
    """Copies of ``z (d,)`` with coordinate ``dim`` set to each of ``values`` (``(V,)``): ``(V, d)``."""
    z = torch.as_tensor(z)
    if z.dim() != 1:
        raise ConfigError(f"traverse needs one latent vector of shape (latent_dim,), got shape {tuple(z.shape)}")
    _check_dim(dim, z.shape[0])
    values = torch.as_tensor(values, dtype=z.dtype if z.is_floating_point() else None).to(z.device).reshape(-1)
    if values.numel() == 0:
        raise ConfigError("traverse needs at least one value for the latent coordinate")
    points = z.to(values.dtype).repeat(values.shape[0], 1)
    points[:, dim] = values
    return points


def traverse(vae, z: torch.Tensor, dim: int, values) -> torch.Tensor:
    """Decode ``z (d,)`` with coordinate ``dim`` set to each of ``values`` (a sequence or ``(V,)``).

    Returns:
        ``(V, *data_shape)``, row ``i`` decoded from ``z`` with ``z[dim] = values[i]``.
    """
    _check_dim(dim, vae.latent_dim)
    z = torch.as_tensor(z, dtype=torch.get_default_dtype()).to(vae.device)
    if z.shape != (vae.latent_dim,):
        raise ConfigError(f"z must have shape ({vae.latent_dim},), got {tuple(z.shape)}")
    return vae.decode(traverse_points(z, dim, values))


def symmetric_values(extent: float, num: int, dtype=None) -> torch.Tensor:
    """``linspace(-extent, extent, num)`` with rounding noise snapped: the middle value of an odd
    count is exactly 0."""
    v = torch.linspace(-extent, extent, num, dtype=dtype)
    v[v.abs() < 1e-6 * extent] = 0.0
    return v


def grid_points(
    num_per_side: int, extent: float, latent_dim: int, dims: Sequence[int] = (0, 1), base: torch.Tensor | None = None
) -> torch.Tensor:
    """The latent points of :func:`latent_grid`: ``(n * n, d)`` with ``n = num_per_side``.

    Point ``r * n + c`` (row ``r``, column ``c`` of the picture, row 0 at the top) has
    ``z[dims[0]] = v[c]`` and ``z[dims[1]] = v[n - 1 - r]`` with ``v = linspace(-extent, extent, n)``,
    so the picture reads like a plot: ``dims[0]`` grows to the right, ``dims[1]`` grows upwards.
    All other coordinates are those of ``base`` (``(d,)``, default zeros).
    """
    _check_steps(num_per_side, "the grid size")
    if not (isinstance(extent, (int, float)) and math.isfinite(extent) and extent > 0):
        raise ConfigError(f"the grid extent must be a positive number, got {extent!r}")
    if latent_dim < 2:
        raise ConfigError(f"a 2-D latent grid needs latent_dim >= 2, the model has {latent_dim}")
    if len(dims) != 2 or dims[0] == dims[1]:
        raise ConfigError(f"dims must be two different latent dimensions, got {tuple(dims)}")
    for dim in dims:
        _check_dim(dim, latent_dim)
    if base is None:
        base = torch.zeros(latent_dim)
    base = torch.as_tensor(base, dtype=torch.get_default_dtype())
    if base.shape != (latent_dim,):
        raise ConfigError(f"base must have shape ({latent_dim},), got {tuple(base.shape)}")
    v = symmetric_values(extent, num_per_side, base.dtype)
    rows, cols = torch.meshgrid(torch.arange(num_per_side), torch.arange(num_per_side), indexing="ij")
    points = base.repeat(num_per_side * num_per_side, 1)
    points[:, dims[0]] = v[cols.reshape(-1)]
    points[:, dims[1]] = v[num_per_side - 1 - rows.reshape(-1)]
    return points


def latent_grid(
    vae, num_per_side: int, extent: float, dims: Sequence[int] = (0, 1), base: torch.Tensor | None = None
) -> torch.Tensor:
    """Decode a 2-D grid of latent points: the learned manifold of the two latent dimensions ``dims``.

    Returns:
        ``(n * n, *data_shape)`` in the order of :func:`grid_points` (row-major, top row first,
        ``dims[0]`` along the columns, ``dims[1]`` decreasing down the rows); ready for
        ``plots.image_grid(images, ncol=n)``.
    """
    points = grid_points(num_per_side, extent, vae.latent_dim, dims, base)
    return vae.decode(points.to(vae.device))


#: A latent dimension whose held-out KL to the prior (nats per example) or activity is at most this is
#: reported as collapsed (the activity threshold of ``compare.active_units``).
COLLAPSED_BELOW = 0.01


@dataclass(frozen=True)
class InformativeDims(Result):
    """The latent dimensions that carry the most information (see :func:`informative_dims`)."""

    dims: list
    criterion: str
    scores: list
    units: str
    collapsed: list
    reason: str


@torch.no_grad()
def informative_dims(vae, x: torch.Tensor, k: int = 2) -> InformativeDims:
    """The ``k`` latent dimensions that carry the most information about the examples ``x (N, *data_shape)``
    (held-out data), for figures that can show only a few of them (the latent map shows 2).

    The score of dimension j is its KL(q(z_j | x) || p(z_j)) to the model's prior, averaged over ``x``
    (:func:`ppl_vae.diagnostics.kl.kl_to_prior`), when the KL splits over dimensions; otherwise (a point-mass
    guide, a prior or guide that is not a product over coordinates, or a model without ``posterior``) its
    activity Var_x(E[z_j | x]) (:func:`ppl_vae.diagnostics.kl.activity`). Ties go to the lower index.

    Returns an :class:`InformativeDims`: ``dims`` (the chosen ``k`` dimensions in increasing order), ``criterion``
    (``"kl"`` or ``"activity"``), ``scores`` (one per latent dimension), ``units`` (``"nats"`` or
    ``"variance"``), ``collapsed`` (the chosen dimensions whose score is at most :data:`COLLAPSED_BELOW`:
    nothing to see along them) and ``reason`` (one line for a figure title or a printed message).
    """
    d = int(vae.latent_dim)
    check_number(k, "k", Bound(int, 1, d))
    scores, criterion = None, "activity"
    if callable(getattr(vae, "posterior", None)) and callable(getattr(vae, "prior_distribution", None)):
        try:
            per_dimension = kl_to_prior(vae, x).per_dimension
        except ConfigError:
            per_dimension = None
        if per_dimension is not None:
            scores, criterion = per_dimension.double(), "kl"
    if scores is None:
        scores = activity(vae, x).double()
    order = sorted(range(d), key=lambda j: (-float(scores[j]), j))
    dims = sorted(order[:k])
    units = "nats" if criterion == "kl" else "variance"
    what = "held-out KL per dimension" if criterion == "kl" else "held-out activity Var(E[z_j | x])"
    values = ", ".join(f"z[{j}] {float(scores[j]):.2f}" for j in dims)
    collapsed = [j for j in dims if float(scores[j]) <= COLLAPSED_BELOW]
    reason = f"largest {what}: {values}" + (" nats" if criterion == "kl" else "")
    if collapsed:
        reason += f"; z[{'], z['.join(map(str, collapsed))}] collapsed"
    return InformativeDims(
        dims=dims,
        criterion=criterion,
        scores=[float(v) for v in scores],
        units=units,
        collapsed=collapsed,
        reason=reason,
    )


def pca(z: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Principal component analysis by SVD of the centred data.

    Args:
        z: ``(N, d)``; k: number of components, ``k <= min(N, d)``.

    Returns:
        ``(scores (N, k), components (k, d), explained_variance (k,))``: unit-norm principal axes in
        decreasing order of variance (sign fixed so that each axis's largest-magnitude entry is
        positive), the centred data projected onto them, and the variance along each.
    """
    z = torch.as_tensor(z, dtype=torch.float64)
    if z.dim() != 2:
        raise ConfigError(f"pca needs a (N, d) matrix, got shape {tuple(z.shape)}")
    if not 1 <= k <= min(z.shape):
        raise ConfigError(f"pca of a {tuple(z.shape)} matrix can have 1 to {min(z.shape)} components, asked for {k}")
    centred = z - z.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:k]
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    components = components * signs
    variance = s[:k] ** 2 / max(z.shape[0] - 1, 1)
    return centred @ components.T, components, variance


def project_2d(z: torch.Tensor, method: str = "pca", *, random_state: int = 0) -> torch.Tensor:
    """Two coordinates per row of ``z (N, d)`` for a scatter plot: ``(N, 2)``.

    ``d == 2``: ``z`` itself (whatever the method). ``d == 1``: ``z`` and a column of zeros.
    ``"pca"``: the scores on the two leading principal axes (:func:`pca`). ``"tsne"``:
    ``sklearn.manifold.TSNE`` with ``init="pca"``, ``random_state`` fixed and the perplexity capped
    below the number of points.
    """
    if method not in PROJECTION_METHODS:
        raise ConfigError(f"unknown projection {method!r}; use one of {', '.join(PROJECTION_METHODS)}")
    z = torch.as_tensor(z)
    if z.dim() != 2 or z.shape[0] < 1:
        raise ConfigError(f"project_2d needs a (N, d) matrix with N >= 1, got shape {tuple(z.shape)}")
    dtype = z.dtype if z.is_floating_point() else torch.get_default_dtype()
    z = z.detach().cpu().to(dtype)
    n, d = z.shape
    if d == 2:
        return z.clone()
    if d == 1:
        return torch.cat([z, torch.zeros_like(z)], 1)
    if method == "pca":
        if n < 2:
            return torch.zeros(n, 2, dtype=dtype)
        scores, _, _ = pca(z, 2)
        return scores.to(dtype)
    if n < 3:
        raise ConfigError(f"t-SNE needs at least 3 points, got {n}; use --method pca")
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    embedding = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=random_state).fit_transform(
        z.double().numpy()
    )
    return torch.as_tensor(embedding, dtype=dtype)
