"""Every tutorial notebook runs top to bottom in smoke mode, and is committed without outputs.

The notebooks run in a real Jupyter kernel (``nbclient`` + ``ipykernel``), one fresh kernel per notebook,
as a reader would run them: IPython syntax and display hooks are live, figures are rendered to PNG, and a
notebook cannot lean on modules that an earlier notebook happened to import. The kernel is this venv's
interpreter, through a kernel spec written to a temporary directory that only this test process sees
(``JUPYTER_PATH``); nothing is registered with the user's or the system's Jupyter. Each notebook runs in
its own temporary working directory. Smoke mode is the ``PPL_VAE_SMOKE=1`` environment variable, which
every notebook's parameter cell reads (``SMOKE = bool(os.environ.get("PPL_VAE_SMOKE"))``) to shrink
epochs, data and sample counts.
"""

import json
import re
import sys
import warnings
from pathlib import Path

import nbclient
import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
# Register each notebook here; test_every_notebook_is_registered fails when one is missing.
NOTEBOOKS = [
    "01_vae_as_a_pyro_program.ipynb",
    "02_swapping_priors.ipynb",
    "03_autoencoder_vs_vae.ipynb",
    "04_reparameterization_trick.ipynb",
    "05_posterior_diagnostics.ipynb",
    "06_structured_models.ipynb",
]

KERNEL_NAME = "ppl-vae-tests"
CELL_TIMEOUT = 300  # seconds per cell; the slowest smoke-mode cell takes a few seconds
KERNEL_ENV = {"PPL_VAE_SMOKE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Appended (in memory only) to every notebook: proves which interpreter, directory and settings ran it.
PROBE = (
    "import json as _j, os as _o, sys as _s\n"
    "print(_j.dumps({'executable': _s.executable, 'prefix': _s.prefix, 'cwd': _o.getcwd(),\n"
    "                'env': {k: _o.environ.get(k) for k in %r}}))" % sorted(KERNEL_ENV)
)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def test_every_notebook_is_registered():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stripped(name):
    cells = json.loads((NOTEBOOK_DIR / name).read_text())["cells"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")


@pytest.fixture(scope="module")
def jupyter_root(tmp_path_factory):
    """A Jupyter data directory holding one kernel spec: this interpreter running ipykernel."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "data" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "ppl_vae tests (venv)",
                "language": "python",
                # Merged into the test process's environment by jupyter_client when it launches the kernel.
                "env": {**KERNEL_ENV, "IPYTHONDIR": str(root / "ipython")},
            }
        )
    )
    (root / "runtime").mkdir()
    return root


def _error_text(cell, exc):
    """The traceback the kernel reported for ``cell``, else the exception (timeout, dead kernel)."""
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    text = "\n".join("\n".join(o.get("traceback") or [f"{o.get('ename')}: {o.get('evalue')}"]) for o in errors)
    return _ANSI.sub("", text or f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, jupyter_root, monkeypatch, tmp_path):
    # Only this process (and the kernel it starts) sees these: the kernel spec and the connection files.
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_root / "data"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter_root / "runtime"))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    before = sorted(p.name for p in NOTEBOOK_DIR.iterdir())

    with warnings.catch_warnings():  # older notebooks have no cell ids; nbformat would only warn
        warnings.simplefilter("ignore", nbformat.validator.MissingIDFieldWarning)
        nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    n_cells = len(nb.cells)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    current = {}
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT,
        allow_errors=False,
        shutdown_kernel="immediate",
        resources={"metadata": {"path": str(workdir)}},  # the kernel's working directory
        on_cell_start=lambda cell, cell_index: current.update(cell=cell, index=cell_index),
    )
    failure = None
    try:
        client.execute()
    except (CellExecutionError, TimeoutError, RuntimeError) as exc:  # RuntimeError covers DeadKernelError
        failure = exc
    if failure is not None:  # reported outside the except block: no chained nbclient traceback
        cell, index = current.get("cell"), current.get("index")
        if cell is None:
            pytest.fail(
                f"{name}: the kernel failed before any cell ran: {type(failure).__name__}: {failure}", pytrace=False
            )
        where = "the environment probe" if index >= n_cells else f"cell {index}"
        pytest.fail(
            f"{name}: {where} failed\n---- source ----\n{cell.source}\n---- error ----\n{_error_text(cell, failure)}",
            pytrace=False,
        )

    # The probe: the venv's interpreter ran the notebook, in the temporary directory, in smoke mode.
    probe = json.loads("".join(o["text"] for o in nb.cells[-1].outputs if o.get("output_type") == "stream"))
    assert probe["executable"] == sys.executable and probe["prefix"] == sys.prefix, probe
    assert Path(probe["cwd"]).resolve() == workdir.resolve(), probe
    assert probe["env"] == KERNEL_ENV, probe

    code = [c for c in nb.cells[:n_cells] if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{name}: some code cells did not run"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # Every tutorial shows at least one figure, rendered by the kernel's inline backend.
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no figure was displayed"
    # Nothing was written next to the notebooks (checkpoints, run folders, figures).
    assert sorted(p.name for p in NOTEBOOK_DIR.iterdir()) == before
