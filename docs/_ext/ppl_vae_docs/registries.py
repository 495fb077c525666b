"""The registries page, generated from the registries themselves at build time.

Every name comes from the registry that ``ppl_vae`` looks names up in (``ppl_vae.models.PRIORS``,
``ppl_vae.guides.GUIDES``, ``ppl_vae.models.LIKELIHOODS``, ``ppl_vae.infer.objectives.OBJECTIVES``,
``ppl_vae.networks.NETWORK_CHOICES``), the one-line description from :mod:`ppl_vae.catalog` (what
``ppl-vae list`` prints), and the class behind each name from building it on a tiny example, so a page
cannot list a name the code does not have, or miss one it has.
"""

from __future__ import annotations

from dataclasses import dataclass

from ppl_vae_docs.api import public_path
from ppl_vae_docs.cli import escape_markdown

#: Small enough to build every prior, guide and network in milliseconds; an image, so conv networks apply.
_SHAPE, _LATENT, _HIDDEN = (1, 16, 16), 2, (8,)


@dataclass(frozen=True)
class Row:
    """One registered name: its description (as ``ppl-vae list`` prints it) and what implements it."""

    name: str
    description: str
    implementation: tuple[str, ...]  # dotted paths of the classes (documented in the API reference)
    note: str = ""  # a short fact read from the implementation (space of z, data kind, Pyro loss)


@dataclass(frozen=True)
class Registry:
    """One registry: where it lives, the flag and argument that choose from it, and its rows."""

    title: str
    anchor: str
    source: str  # dotted path of the registry object
    flag: str
    python: str  # the call that takes a name from it
    note_header: str
    rows: tuple[Row, ...]


def _described(catalog: dict, names) -> dict:
    missing = [n for n in names if n not in catalog]
    if missing:  # ppl_vae's own test holds them equal; the docs refuse to print an empty description
        raise RuntimeError(f"registered but not in ppl_vae.catalog: {missing}")
    return catalog


def prior_rows() -> tuple[Row, ...]:
    from ppl_vae import catalog
    from ppl_vae.guides import GUIDES
    from ppl_vae.models import PRIORS
    from ppl_vae.plugins import prior_plugins

    described = _described(catalog.PRIORS, PRIORS)
    guide = GUIDES["normal"](_SHAPE, _LATENT, _HIDDEN)  # the VampPrior reuses the guide's encoder
    rows = []
    for name, build in PRIORS.items():
        prior = build(_LATENT, data_shape=_SHAPE, hidden_dims=_HIDDEN, guide=guide, option="2")
        rows.append(Row(name, described[name], (public_path(type(prior)),)))
    for name, value in sorted(prior_plugins().items()):
        if name not in PRIORS:
            rows.append(Row(name, f"from an installed package: {value} (entry point ppl_vae.priors)", ()))
    return tuple(rows)


def guide_rows() -> tuple[Row, ...]:
    from ppl_vae import catalog
    from ppl_vae.guides import GUIDES
    from ppl_vae.models import support_name

    described = _described(catalog.GUIDES, GUIDES)
    rows = []
    for name, build in GUIDES.items():
        family = type(build(_SHAPE, 3, _HIDDEN))  # 3: the sphere and the simplex need d >= 2
        rows.append(Row(name, described[name], (public_path(family),), support_name(family.support)))
    return tuple(rows)


def likelihood_rows() -> tuple[Row, ...]:
    from ppl_vae import catalog
    from ppl_vae.models import LIKELIHOODS

    described = _described(catalog.LIKELIHOODS, LIKELIHOODS)
    return tuple(Row(name, described[name], (public_path(cls),), cls.data_kind) for name, cls in LIKELIHOODS.items())


def objective_rows() -> tuple[Row, ...]:
    from ppl_vae import catalog
    from ppl_vae.infer.objectives import OBJECTIVES
    from ppl_vae.infer.step import make_elbo

    described = _described(catalog.OBJECTIVES, OBJECTIVES)
    return tuple(Row(name, described[name], (), f"pyro.infer.{type(make_elbo(name)).__name__}") for name in OBJECTIVES)


def network_rows() -> tuple[Row, ...]:
    from ppl_vae import catalog
    from ppl_vae.guides import encoder_network
    from ppl_vae.models import decoder_network
    from ppl_vae.networks import NETWORK_CHOICES, resolve_network

    described = _described(catalog.NETWORKS, NETWORK_CHOICES)
    rows = []
    for name in NETWORK_CHOICES:
        if name == "auto":
            rows.append(Row(name, described[name], (public_path(resolve_network),), "chosen per data shape"))
            continue
        encoder = encoder_network(name, _SHAPE, _HIDDEN, 2 * _LATENT)
        decoder = decoder_network(name, _LATENT, _HIDDEN, _SHAPE)
        rows.append(Row(name, described[name], (public_path(type(encoder)), public_path(type(decoder)))))
    return tuple(rows)


def _flag(catalog_title: str) -> str:
    """``"priors (--prior)"`` -> ``"--prior"``."""
    return catalog_title.rpartition("(")[2].rstrip(")")


def catalog_only(known: tuple[Registry, ...]) -> tuple[Registry, ...]:
    """Sections of ``ppl-vae list`` (:data:`ppl_vae.catalog.CATALOG`) that no registry above covers: listed
    from the catalog alone (names and descriptions), so that a new one is on the page before it has a
    table of its own here."""
    from ppl_vae.catalog import CATALOG

    covered = {registry.flag for registry in known}
    found = []
    for title, rows in CATALOG.items():
        flag = _flag(title)
        if flag not in covered:
            name = title.partition(" (")[0]
            anchor = "registry-" + "-".join(name.split())
            entries = tuple(Row(key, text, ()) for key, text in rows.items())
            found.append(Registry(name[0].upper() + name[1:], anchor, "ppl_vae.catalog.CATALOG", flag, "", "", entries))
    return tuple(found)


def registries() -> tuple[Registry, ...]:
    """Every registry ``ppl-vae list`` prints, in its order."""
    from ppl_vae.catalog import CATALOG

    known = _known_registries()
    order = [_flag(title) for title in CATALOG]
    found = known + catalog_only(known)
    return tuple(sorted(found, key=lambda r: order.index(r.flag) if r.flag in order else len(order)))


def _known_registries() -> tuple[Registry, ...]:
    return (
        Registry(
            "Priors",
            "registry-priors",
            "ppl_vae.models.PRIORS",
            "--prior",
            "ppl_vae.VAE(..., prior=NAME)",
            "",
            prior_rows(),
        ),
        Registry(
            "Guides",
            "registry-guides",
            "ppl_vae.guides.GUIDES",
            "--guide",
            "ppl_vae.VAE(..., guide=NAME)",
            "space of z",
            guide_rows(),
        ),
        Registry(
            "Likelihoods",
            "registry-likelihoods",
            "ppl_vae.models.LIKELIHOODS",
            "--likelihood",
            "ppl_vae.VAE(..., likelihood=NAME)",
            "data",
            likelihood_rows(),
        ),
        Registry(
            "Objectives",
            "registry-objectives",
            "ppl_vae.infer.objectives.OBJECTIVES",
            "--elbo",
            "ppl_vae.fit(..., elbo=NAME)",
            "Pyro loss",
            objective_rows(),
        ),
        Registry(
            "Networks",
            "registry-networks",
            "ppl_vae.networks.NETWORK_CHOICES",
            "--network",
            "ppl_vae.VAE(..., network=NAME)",
            "",
            network_rows(),
        ),
    )


def _table(registry: Registry) -> list[str]:
    note = f" {registry.note_header} |" if registry.note_header else ""
    lines = [f"| name | what it is |{note} implemented by |", "| --- | --- |" + (" --- |" if note else "") + " --- |"]
    for row in registry.rows:
        impl = ", ".join(f"{{py:obj}}`~{path}`" for path in row.implementation) or "—"
        extra = f" {escape_markdown(row.note)} |" if note else ""
        lines.append(f"| `{row.name}` | {escape_markdown(row.description)} |{extra} {impl} |")
    return lines


def registries_markdown() -> str:
    """The body of the registries page: one section and one table per registry."""
    lines = []
    for registry in registries():
        lines += [
            f"({registry.anchor})=",
            f"## {registry.title}",
            "",
            f"Chosen with `ppl-vae train {registry.flag} NAME`"
            + (f" or `{registry.python}` in Python" if registry.python else "")
            + f"; the registry is `{registry.source}` ({len(registry.rows)} names).",
            "",
            *_table(registry),
            "",
        ]
    return "\n".join(lines)
