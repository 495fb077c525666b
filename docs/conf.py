"""Sphinx configuration of the ppl_vae documentation site.

Build (from the repository root, with the docs extra installed: ``pip install -e ".[docs]"``)::

    .venv/bin/sphinx-build -W --keep-going -n -b html docs docs/_build/html

Warnings are errors (``-W``): a broken reference, a public name without a docstring or missing from the
API reference, or a notebook that fails. The notebooks are executed on every build in smoke mode
(``PPL_VAE_SMOKE=1``); ``PPL_VAE_DOCS_EXECUTE=cache`` reuses outputs of unchanged notebooks (kept in
``docs/_build/.jupyter_cache``) while writing prose, ``off`` skips execution (pages then have no outputs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

from ppl_vae.version import __version__  # noqa: E402  (the package is installed: pip install -e ".[docs]")

project = "ppl_vae"
author = "ppl_vae developers"
copyright = "ppl_vae developers"  # noqa: A001  (Sphinx's name)
release = version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",  # Markdown pages (MyST) and notebooks, executed
    "ppl_vae_docs",  # docs/_ext: generated pages (registries, CLI, API) and their checks
]

root_doc = "index"
exclude_patterns = ["_build", "_ext", "**/.ipynb_checkpoints", "jupyter_execute"]
nitpicky = True  # every cross-reference must resolve (also `sphinx-build -n`)
smartquotes_action = "qe"  # curly quotes and ellipses, but `--flag` stays two hyphens (no en dashes)

# -- MyST and notebooks
myst_enable_extensions = ["dollarmath", "amsmath", "deflist", "colon_fence"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("PPL_VAE_DOCS_EXECUTE", "force")
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_show_tb = True
nb_execution_timeout = 600  # seconds per cell; the slowest smoke-mode cell takes a few seconds
nb_execution_in_temp = True  # each notebook runs in a temporary folder: run folders never land in the repo
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
nb_kernel_rgx_aliases = {".*": "ppl-vae-docs"}  # the kernel spec ppl_vae_docs writes (smoke settings)
nb_merge_streams = True

# -- API reference
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True  # show `("mlp",)`, not the value's repr at import time
autodoc_inherit_docstrings = False  # an override without a docstring shows nothing, not torch's or Pyro's text
python_maximum_signature_line_length = 100
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# No inventories of other projects can be fetched while building (no network beyond the package
# registries), so references to their types cannot resolve; ours must.
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|pyro|numpy|np|arviz|az|matplotlib|plt|sklearn|scipy|tqdm|PIL)(\..*)?"),
    (r"py:.*", r"(argparse|pathlib|os|collections|typing|datetime|dataclasses|enum|abc|io|types|contextlib)(\..*)?"),
    (r"py:.*", r"(signal|threading|numbers|json|zipfile|subprocess|multiprocessing|logging)(\..*)?"),
    (r"py:class", r"(Tensor|Path|Sequence|Mapping|Callable|Iterable|Iterator|Any|optional|nn\.Module|Module)"),
]

# References in the docstrings of ppl_vae/infer (being changed in parallel) to names that are not
# documented: instance attributes, a class constant without a comment, a special method. Remove each
# once its docstring is fixed.
nitpick_ignore = [
    ("py:attr", "captured"),  # ppl_vae.infer.step.TrainStep
    ("py:attr", "eager_reason"),  # ppl_vae.infer.step.TrainStep
    ("py:attr", "log"),  # ppl_vae.infer.step.TrainStep
    ("py:attr", "MAX_RESTORES"),  # ppl_vae.infer.divergence.DivergencePolicy
    ("py:meth", "GuardedAdam.__call__"),  # ppl_vae.infer.optim
    ("py:attr", "optimizer"),  # ppl_vae.infer.step.TrainStep
    ("py:meth", "FitSettings.state_settings"),  # ppl_vae.infer.state.TrainState.check_resumable
]

# -- HTML
html_theme = "furo"
html_title = f"ppl_vae {release}"
html_static_path: list[str] = []
