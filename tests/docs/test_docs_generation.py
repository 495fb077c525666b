"""The documentation site's generated pages cover the code: every registered name, every command and
flag, every public name with a docstring (docs/_ext/ppl_vae_docs). These run the generators directly;
Sphinx is not needed (it is in the ``docs`` extra, not the ``test`` one)."""

import argparse
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

from ppl_vae_docs import KNOWN_UNDOCUMENTED, expand  # noqa: E402
from ppl_vae_docs import api as api_pages  # noqa: E402
from ppl_vae_docs import cli as cli_page  # noqa: E402
from ppl_vae_docs import registries as registry_page  # noqa: E402


def _sections(markdown: str) -> dict[str, str]:
    """``## title`` -> the text up to the next such heading."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


# -- registries


def test_registry_page_lists_every_registered_name():
    from ppl_vae.guides import GUIDES
    from ppl_vae.infer.objectives import OBJECTIVES
    from ppl_vae.models import LIKELIHOODS, PRIORS
    from ppl_vae.networks import NETWORK_CHOICES

    sections = _sections(registry_page.registries_markdown())
    expected = {
        "Priors": PRIORS,
        "Guides": GUIDES,
        "Likelihoods": LIKELIHOODS,
        "Objectives": OBJECTIVES,
        "Networks": NETWORK_CHOICES,
    }
    assert set(expected) <= set(sections)
    for title, names in expected.items():
        listed = re.findall(r"^\| `([^`]+)` \|", sections[title], flags=re.MULTILINE)
        assert listed == list(names), title


def test_registry_page_has_every_section_of_ppl_vae_list():
    from ppl_vae.catalog import CATALOG

    registries = registry_page.registries()
    assert [r.flag for r in registries] == [title.rpartition("(")[2].rstrip(")") for title in CATALOG]
    for registry, rows in zip(registries, CATALOG.values()):
        assert {row.name: row.description for row in registry.rows if row.name in rows} == rows


def test_every_registered_class_is_linked_to_the_api_reference():
    documented = {e.path for entries in api_pages.reference().members.values() for e in entries}
    documented |= {e.path for entries in api_pages.reference().exports.values() for e in entries}
    for registry in registry_page.registries():
        for row in registry.rows:
            assert set(row.implementation) <= documented, (registry.title, row)


def test_a_name_missing_from_the_catalog_is_refused(monkeypatch):
    from ppl_vae.models import PRIORS

    monkeypatch.setitem(PRIORS, "made-up", PRIORS["normal"])
    with pytest.raises(RuntimeError, match="made-up"):
        registry_page.prior_rows()


# -- command line


def test_cli_page_covers_every_command_and_flag():
    from ppl_vae.cli import build_parser

    parser, handlers = build_parser()
    sections = _sections(cli_page.cli_markdown())
    common = sections.pop("Options every command takes")
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert (
        set(sections)
        == {f"`ppl-vae {name}`" for name in subparsers.choices}
        == {f"`ppl-vae {name}`" for name in handlers}
    )
    for name, sub in subparsers.choices.items():
        text = sections[f"`ppl-vae {name}`"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings or [action.dest]:
                assert re.search(rf"`{re.escape(flag)}[ `]", text + common), (name, flag)


def test_cli_page_follows_a_new_flag(monkeypatch):
    import ppl_vae.cli

    build = ppl_vae.cli.build_parser

    def with_new_flag():
        parser, handlers = build()
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.choices["evaluate"].add_argument("--made-up-flag", metavar="N", help="a flag only this test adds")
        return parser, handlers

    monkeypatch.setattr(ppl_vae.cli, "build_parser", with_new_flag)
    section = _sections(cli_page.cli_markdown())["`ppl-vae evaluate`"]
    assert "`--made-up-flag N`\n: a flag only this test adds" in section


def test_help_text_is_escaped_outside_code_spans():
    assert cli_page.escape_markdown("a | b <c> *d* `e | f`") == "a \\| b \\<c\\> \\*d\\* `e | f`"


# -- API reference


def test_every_public_name_is_on_an_api_page():
    ref = api_pages.reference()
    pages = {package: api_pages.api_markdown(package) for package in api_pages.page_packages()}
    everything = "\n".join(pages.values())
    for package, entries in ref.exports.items():
        for e in entries:
            assert re.search(rf"^\.\. auto\w+:: {re.escape(e.path)}$", pages[package], re.MULTILINE), e.path
    for module, entries in ref.members.items():
        for e in entries:
            assert re.search(rf"^\.\. auto\w+:: {re.escape(e.path)}$", everything, re.MULTILINE), e.path
    # ppl_vae's own exports, from its lazy table, are all there
    import ppl_vae

    assert {e.path for e in ref.exports["ppl_vae"]} == {f"ppl_vae.{name}" for name in ppl_vae.__all__}


def test_every_public_name_has_a_docstring():
    assert set(api_pages.undocumented()) <= KNOWN_UNDOCUMENTED, "write docstrings for these"


def test_the_docstring_check_sees_a_new_undocumented_function(monkeypatch):
    import ppl_vae.limits

    def new_helper():
        pass

    new_helper.__module__, new_helper.__qualname__ = "ppl_vae.limits", "new_helper"
    monkeypatch.setattr(ppl_vae.limits, "new_helper", new_helper, raising=False)
    api_pages.reference.cache_clear()
    try:
        assert "ppl_vae.limits.new_helper" in api_pages.undocumented()
        assert ".. autofunction:: ppl_vae.limits.new_helper" in api_pages.api_markdown("ppl_vae")
    finally:
        monkeypatch.undo()
        api_pages.reference.cache_clear()


def test_every_package_has_a_page_in_the_api_toctree():
    pages = {p.stem for p in (DOCS / "api").glob("*.md")} - {"index"}
    assert pages == set(api_pages.page_packages())
    toctree = (DOCS / "api" / "index.md").read_text()
    assert all(re.search(rf"^{re.escape(p)}$", toctree, re.MULTILINE) for p in pages)
    for package in pages:
        assert f"{{ppl-vae-generated}} api {package}\n" in (DOCS / "api" / f"{package}.md").read_text()


@pytest.mark.parametrize(
    "target, origin, expected",
    [
        ("ppl_vae.infer.fit.fit", None, "ppl_vae.fit"),  # another path of an exported function
        ("ConfigError", "ppl_vae.networks.resolve_network", "ppl_vae.ConfigError"),  # imported where written
        ("TrainingInterrupted", "ppl_vae.fit", "ppl_vae.errors.TrainingInterrupted"),  # defining module's scope
        ("to_dict", "ppl_vae.EvalResult", "ppl_vae.results.Result.to_dict"),  # an inherited method
        ("no_such_name", "ppl_vae.fit", None),
    ],
)
def test_cross_references_resolve_to_where_a_name_is_documented(target, origin, expected):
    assert api_pages.resolve(target, origin=origin) == expected


# -- pages, notebooks, packaging


def test_generated_blocks_all_expand():
    pages = [p for p in DOCS.rglob("*.md") if "_build" not in p.parts and "{ppl-vae-generated}" in p.read_text()]
    assert {p.name for p in pages} >= {"registries.md", "cli.md", "ppl_vae.md"}
    for page in pages:
        assert "{ppl-vae-generated}" not in expand(page.read_text()), page


def test_every_tutorial_is_in_the_site():
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert (DOCS / "tutorials").resolve() == (ROOT / "notebooks").resolve()
    toctree = (DOCS / "model-and-guide.md").read_text()
    assert re.findall(r"^tutorials/(\S+)$", toctree, re.MULTILINE) == notebooks


def test_the_docs_extras_and_the_build_folder():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {key: {re.split(r"[<>=!\[ ]", req)[0].lower() for req in reqs} for key, reqs in extras.items()}
    assert {"sphinx", "myst-nb", "furo"} <= names["docs"]
    assert "jupyterlab" in names["notebooks"]
    assert not names["test"] & {"sphinx", "myst-nb", "myst-parser", "furo"}
    assert "docs/_build/" in (ROOT / ".gitignore").read_text().splitlines()
