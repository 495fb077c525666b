"""Priors from other installed packages: the ``ppl_vae.priors`` entry-point group.

A package makes its prior usable by name everywhere a registry name is (``--prior NAME`` on the command
line, ``config.json``, ``VAE(prior="NAME")``, and when a run folder is loaded again) by declaring, in its
``pyproject.toml``::

    [project.entry-points."ppl_vae.priors"]
    sparse = "my_package.priors:Sparse"

The object named is called like the built-in factories, ``factory(latent_dim, data_shape=...,
hidden_dims=..., option=...)`` (``option``: the text after a colon in ``NAME:OPTION``, or None), and
returns a prior module: a plain prior (``forward()`` returns p(z)) or a structured one (``forward(c=None)``
and ``local_guide(x, encoder, c=None)``, see :mod:`ppl_vae.models.structured`). Built-in names win over
plugins of the same name. Loading a run folder imports the installed package that provides the prior,
as ``import`` would; nothing is ever executed from the run folder itself.

Nothing here imports torch: ``ppl-vae list`` shows the plugins without loading them.
"""

from __future__ import annotations

from importlib import metadata

from ppl_vae.errors import ConfigError

#: The entry-point group that packages declare their priors in.
PRIOR_GROUP = "ppl_vae.priors"


def prior_plugins() -> dict[str, str]:
    """Installed plugin priors: ``{name: "module:attribute"}``, without importing them."""
    return {ep.name: ep.value for ep in metadata.entry_points(group=PRIOR_GROUP)}


def load_prior_factory(name: str):
    """The factory of the plugin prior ``name`` (imported now), or None when no package provides it.

    Raises :class:`ConfigError` (one line) when the package that declares it cannot be imported."""
    for ep in metadata.entry_points(group=PRIOR_GROUP):
        if ep.name == name:
            try:
                return ep.load()
            except Exception as error:  # noqa: BLE001 - any failure of someone else's import
                raise ConfigError(
                    f"prior {name!r} is declared by an installed package as {ep.value}, but importing it failed "
                    f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                    "fix or reinstall that package"
                ) from None
    return None
