"""The distribution ships ppl_vae, ppl_vae.models and ppl_vae.guides, and claims no generic names."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_subpackages_import_and_generic_names_do_not(tmp_path):
    done = _python(
        "import ppl_vae.models, ppl_vae.guides; "
        "print(type(ppl_vae.models.PRIORS['normal'](2)).__name__, "
        "type(ppl_vae.guides.GUIDES['normal']((4,), 2, ())).__name__)",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["StandardNormal", "DiagonalNormal"]
    for name in ("models", "guides"):
        done = _python(f"import {name}", tmp_path)
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr


def test_models_never_import_guides_or_the_cli():
    forbidden = {"models": ("ppl_vae.guides", "ppl_vae.cli"), "guides": ("ppl_vae.cli",)}
    for folder, names in forbidden.items():
        for path in (ROOT / folder).rglob("*.py"):
            imports = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", path.read_text(), flags=re.MULTILINE)
            assert imports, path
            assert not [m for m in imports if m.startswith(names)], path


def test_wheel_contains_the_subpackages_under_ppl_vae(tmp_path):
    build_meta = pytest.importorskip("setuptools.build_meta")
    del build_meta
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("ppl_vae", "models", "guides"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    code = "import setuptools.build_meta as b, sys; print(b.build_wheel(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "dist")], cwd=source, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = tmp_path / "dist" / done.stdout.strip().splitlines()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    assert "ppl_vae/models/__init__.py" in names and "ppl_vae/guides/__init__.py" in names
    assert "ppl_vae/models/priors.py" in names and "ppl_vae/guides/normal.py" in names
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"ppl_vae"}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ppl-vae = ppl_vae.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
