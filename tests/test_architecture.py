"""The architecture holds after us: layers and no import cycles (import-linter), short functions, no
private names across modules, and the lint and format checks (ruff). See docs/architecture.md."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "ppl_vae", ROOT / "models", ROOT / "guides"]
#: What models/ and guides/ (ppl_vae.models, ppl_vae.guides) may import from the package: the core only.
CORE = (
    "ppl_vae.errors",
    "ppl_vae.networks",
    "ppl_vae.validation",
    "ppl_vae.limits",
    "ppl_vae.results",
    "ppl_vae.rng",
    "ppl_vae.models",
    "ppl_vae.guides",
)
MAX_LINES, MAX_FIT_LINES = 80, 60


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install the test extra: pip install -e '.[test]'")
    return found


def _python_files():
    for root in SOURCES:
        yield from sorted(root.rglob("*.py"))


def _imports(tree: ast.AST):
    """(module, names) of every import statement, at any depth (function-level imports included)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_import_contracts_hold():
    proc = subprocess.run(
        [_tool("lint-imports"), "--config", str(ROOT / ".importlinter")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "BROKEN" not in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.stdout.count("KEPT") == 2


def test_a_reversed_layer_order_is_caught(tmp_path):
    """The contract has teeth: with infer placed above app, the imports of the real code break it."""
    config = (ROOT / ".importlinter").read_text()
    reversed_config = config.replace("    app\n    diagnostics\n    infer\n", "    infer\n    diagnostics\n    app\n")
    assert reversed_config != config
    path = tmp_path / "reversed.ini"
    path.write_text(reversed_config)
    proc = subprocess.run(
        [_tool("lint-imports"), "--config", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0 and "BROKEN" in proc.stdout


def test_models_and_guides_import_only_the_core():
    # import-linter sees the ppl_vae/ folder; models/ and guides/ ship as ppl_vae.models and ppl_vae.guides.
    for folder in (ROOT / "models", ROOT / "guides"):
        for file in sorted(folder.glob("*.py")):
            for module, _ in _imports(ast.parse(file.read_text())):
                if module.startswith("ppl_vae"):
                    assert module.startswith(CORE), f"{file.relative_to(ROOT)} imports {module}, above the core"
                if folder.name == "models":  # the VampPrior receives the encoder; it does not import guides
                    assert not module.startswith("ppl_vae.guides"), f"{file.relative_to(ROOT)} imports {module}"


#: The one package that may import ArviZ (a move to ArviZ 1.x touches it alone).
ARVIZ_HOME = ROOT / "ppl_vae" / "diagnostics" / "arviz_bridge"


def test_arviz_is_called_from_one_package_only():
    for file in _python_files():
        if ARVIZ_HOME in file.parents:
            continue
        for module, _ in _imports(ast.parse(file.read_text())):
            assert module.split(".")[0] != "arviz", f"{file.relative_to(ROOT)} imports arviz outside {ARVIZ_HOME.name}/"


def test_no_module_imports_a_private_name_from_another():
    for file in _python_files():
        for module, names in _imports(ast.parse(file.read_text())):
            if module.startswith("ppl_vae"):
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                assert not private, f"{file.relative_to(ROOT)} imports {private} from {module}"


def _length(node) -> int:
    """Lines of a function's body without its docstring: the signature (one parameter per line once
    formatted) and the documentation of the arguments are not what makes a function long to read."""
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        body = body[1:] or body
    return body[-1].end_lineno - body[0].lineno + 1


def test_functions_are_short():
    long = []
    for file in _python_files():
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = _length(node)
                limit = MAX_FIT_LINES if (file.name, node.name) == ("fit.py", "fit") else MAX_LINES
                if lines > limit:
                    long.append(f"{file.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines > {limit})")
    assert not long, "\n".join(long)


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(command):
    proc = subprocess.run([_tool("ruff"), *command], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
