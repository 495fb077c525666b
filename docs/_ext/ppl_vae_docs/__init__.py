"""Sphinx extension of the ppl_vae documentation: pages generated from the code at build time, and the
checks that make a stale or incomplete page fail the build.

* A page asks for generated content with a fenced block ``{ppl-vae-generated} WHAT``: ``registries``
  (:mod:`.registries`), ``cli`` (:mod:`.cli`) or ``api PACKAGE`` (:mod:`.api`). The block is replaced
  by Markdown when the page is read, so nothing generated is committed; if this extension is not
  loaded, the block is an unknown directive and the build fails.
* Every public name of ``ppl_vae`` must have a docstring, and must end up in the API reference: a
  missing one is a warning (an error under ``sphinx-build -W``).
* Cross-references to another path of a documented object (``ppl_vae.infer.fit.fit`` for ``ppl_vae.fit``)
  resolve to where it is documented.
* The notebooks run in a Jupyter kernel of this interpreter, with the test suite's smoke settings
  (``PPL_VAE_SMOKE=1``, one thread), through a kernel spec in a temporary directory that only this
  build sees.

The generators import nothing from Sphinx, so the tests (``tests/docs``) run them without it.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

#: The kernel name every notebook is executed with (``nb_kernel_rgx_aliases`` in ``conf.py`` maps to it).
KERNEL_NAME = "ppl-vae-docs"
#: The environment of that kernel: the smoke settings of ``tests/test_notebooks.py``.
KERNEL_ENV = {"PPL_VAE_SMOKE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: Public names allowed to lack a docstring for now: modules the docs work may not edit (ppl_vae/infer is
#: being changed in parallel). Empty this list once they have docstrings.
KNOWN_UNDOCUMENTED = frozenset({"ppl_vae.infer.distributed.all_reduce_sum", "ppl_vae.infer.distributed.timeout"})

_DOCSTRING_OF = re.compile(r"docstring of ([\w.]+)")  # where autodoc says a node's text came from
_BLOCK = re.compile(r"^```\{ppl-vae-generated\}[ \t]*(?P<what>[^\n]*)\n```[ \t]*$", re.MULTILINE)


def generate(what: str) -> str:
    """The Markdown for one ``{ppl-vae-generated}`` block."""
    kind, _, argument = what.strip().partition(" ")
    if kind == "registries":
        from ppl_vae_docs.registries import registries_markdown

        return registries_markdown()
    if kind == "cli":
        from ppl_vae_docs.cli import cli_markdown

        return cli_markdown()
    if kind == "api" and argument:
        from ppl_vae_docs.api import api_markdown

        return api_markdown(argument.strip())
    raise ValueError(f"unknown generated block {what!r}: use registries, cli or api PACKAGE")


def expand(text: str) -> str:
    """A page's source with every generated block replaced by its content."""
    return _BLOCK.sub(lambda match: generate(match["what"]), text)


def _source_read(app, docname, source) -> None:
    if "{ppl-vae-generated}" in source[0]:
        source[0] = expand(source[0])


def _always_reread(app, env, added, changed, removed) -> list[str]:
    """Pages with generated blocks are read again on every build: they follow the code, which Sphinx
    does not watch (an incremental build would otherwise keep a stale registry or CLI page)."""
    docs = Path(app.srcdir)
    pages = [p for p in docs.rglob("*.md") if "_build" not in p.relative_to(docs).parts]
    return [str(p.relative_to(docs).with_suffix("")) for p in pages if "{ppl-vae-generated}" in p.read_text()]


def _check_docstrings(app) -> None:
    from sphinx.util import logging

    from ppl_vae_docs.api import undocumented

    logger = logging.getLogger(__name__)
    for path in undocumented():
        if path not in KNOWN_UNDOCUMENTED:
            logger.warning("public name without a docstring: %s (write one)", path, type="ppl_vae_docs")


def _check_reference(app, env) -> None:
    """Every public name is an object of the Python domain: it is on an API page."""
    from sphinx.util import logging

    from ppl_vae_docs.api import reference

    documented = set(env.get_domain("py").objects)
    for path in sorted(set(reference().primary.values()) - documented):
        logging.getLogger(__name__).warning(
            "public name missing from the API reference: %s (add its package page under docs/api/)",
            path,
            type="ppl_vae_docs",
        )


def _resolve_alias(app, env, node, contnode):
    """A reference to any path that reaches a documented object by import (``ppl_vae.infer.fit.fit`` for
    ``ppl_vae.fit``; ``ConfigError`` in a module that imports it) resolves to where it is documented; so
    does a short name that exactly one documented object of the right kind ends with. Anything else
    stays unresolved, and ``-n`` reports it."""
    from ppl_vae_docs.api import resolve

    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip("~.")
    origin = _DOCSTRING_OF.search(node.source or "")
    primary = resolve(target, node.get("py:module"), node.get("py:class"), origin and origin[1])
    domain = env.get_domain("py")
    if primary is None:  # last, a name written without its module: accepted when exactly one object has it
        kinds = domain.objtypes_for_role(node.get("reftype", "obj")) or []
        matches = [
            name
            for name, obj in domain.objects.items()
            if name.endswith("." + target) and not obj.aliased and obj.objtype in kinds
        ]
        primary = matches[0] if len(matches) == 1 else None
    if primary is None or primary == target:
        return None
    results = domain.resolve_any_xref(env, node["refdoc"], app.builder, primary, node, contnode)
    return results[0][1] if results else None


def _no_type_docstring(app, what, name, obj, options, lines) -> None:
    """A re-exported constant has no ``#:`` comment where autodoc looks, so autodoc shows its type's
    docstring (``dict``'s, ``float``'s); drop that (the generated page adds the real comment)."""
    if what == "data" and lines and obj is not None and type(obj).__doc__:
        if "\n".join(lines).strip() == inspect.cleandoc(type(obj).__doc__).strip():
            lines.clear()


def _public_bases(app, name, obj, options, bases) -> None:
    """Show a class's public bases: a private base (``_Likelihood``) is replaced by its own bases."""
    i = 0
    while i < len(bases):
        base = bases[i]
        if getattr(base, "__name__", "").startswith("_") and getattr(base, "__module__", "").startswith("ppl_vae"):
            bases[i : i + 1] = [b for b in base.__bases__ if b not in bases]
        else:
            i += 1


def _prose_attributes(app) -> None:
    """Napoleon reads the first line of a constant's or a property's docstring as ``type: description``;
    ours are prose ("Tables: at most ..."), so napoleon is kept from data, attributes and properties."""
    listeners = app.events.listeners.get("autodoc-process-docstring", [])
    for listener in list(listeners):
        if getattr(listener.handler, "__module__", "") == "sphinx.ext.napoleon":
            app.disconnect(listener.id)
            napoleon = listener.handler

            def process(app, what, name, obj, options, lines, _napoleon=napoleon):
                if what not in ("data", "attribute", "property"):
                    _napoleon(app, what, name, obj, options, lines)

            app.connect("autodoc-process-docstring", process, priority=listener.priority)


def _kernel(app, config) -> None:
    """A Jupyter data directory with one kernel spec (this interpreter, the smoke settings), seen only by
    this process and the kernels it starts; removed when the build ends."""
    root = Path(tempfile.mkdtemp(prefix="ppl-vae-docs-jupyter-"))
    spec = root / "data" / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (root / "runtime").mkdir()
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "ppl_vae docs (this interpreter, smoke mode)",
                "language": "python",
                "env": {**KERNEL_ENV, "IPYTHONDIR": str(root / "ipython")},
            }
        )
    )
    os.environ["JUPYTER_PATH"] = str(root / "data")
    os.environ["JUPYTER_RUNTIME_DIR"] = str(root / "runtime")
    app.connect("build-finished", lambda *_: shutil.rmtree(root, ignore_errors=True))


def setup(app):
    from docutils.parsers.rst import Directive

    class Unexpanded(Directive):
        """Reached only when a generated block was not expanded: fail loudly."""

        has_content, optional_arguments, final_argument_whitespace = True, 1, True

        def run(self):
            raise self.error("a {ppl-vae-generated} block was not expanded (is the ppl_vae_docs extension loaded?)")

    app.add_directive("ppl-vae-generated", Unexpanded)
    app.connect("config-inited", _kernel)
    app.connect("builder-inited", _prose_attributes)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-process-docstring", _no_type_docstring)
    app.connect("builder-inited", _check_docstrings)
    app.connect("source-read", _source_read)
    app.connect("env-get-outdated", _always_reread)
    app.connect("env-check-consistency", _check_reference)
    app.connect("missing-reference", _resolve_alias)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
