"""Every command that writes into a run folder holds the run's lock (``ppl_vae.app.folders``): ``evaluate``,
``sample``, ``interpolate``, ``traverse`` and ``latent-map`` refuse, in one line with exit 2, a run folder
that ``train --resume`` or ``diagnose`` is working in, and these refuse the run while one of them writes
into it (follow-up of issue 12). Commands that only read the run (outputs elsewhere) take no lock."""

import json
import shutil

import pytest

from ppl_vae.app import folders
from ppl_vae.cli import main

TINY = ["--epochs", "1", "--latent-dim", "2", "--hidden-dims", "8", "--quiet"]
#: ``diagnose`` reduced to its cheapest settings: refused or not, it must never run long here.
CHEAP_DIAGNOSE = [
    "--num-samples",
    "2",
    "--nuts-observations",
    "0",
    "--gap-observations",
    "0",
    "--sbc-simulations",
    "20",
    "--sbc-draws",
    "1",
    "--ppc-samples",
    "2",
    "--quiet",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("locks") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def held(run):
    """The run folder's lock, held as ``train --resume`` or ``diagnose`` hold it (another open file
    description: ``flock`` refuses it to this process too)."""
    with folders.locked(run, "diagnose"):
        yield run


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused_in_one_line(argv, capsys, action="diagnose") -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}: {err}"
    assert err.count("\n") == 1 and "Traceback" not in err and "in use by pid" in err and action in err, err
    return err


# -- the lock held by train --resume / diagnose refuses the writers ------------------------------------------


def test_evaluate_refuses_a_run_folder_in_use(held, capsys):
    before = _files(held)
    _refused_in_one_line(["evaluate", held, "-k", "4", "--quiet"], capsys)
    assert _files(held) == before and not (held / "eval.json").exists()


def test_sample_into_the_run_folder_refuses_it_in_use(held, capsys):
    before = _files(held)
    _refused_in_one_line(["sample", held, "-n", "4"], capsys)  # default: RUN/figures/samples-0.png
    _refused_in_one_line(["sample", held, "-n", "4", "--out", held / "mine.png"], capsys)
    assert _files(held) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["latent-map", "RUN", "--grid", "3"],
        ["interpolate", "RUN", "--pairs", "1", "--steps", "3"],
        ["traverse", "RUN", "--steps", "3"],
        ["latent-map", "RUN", "--grid", "3", "--out-dir", "RUN/figures/more"],
    ],
    ids=["latent-map", "interpolate", "traverse", "latent-map into a subfolder"],
)
def test_latent_figures_into_the_run_folder_refuse_it_in_use(argv, held, capsys):
    before = _files(held)
    _refused_in_one_line([a.replace("RUN", str(held)) for a in argv], capsys)
    assert _files(held) == before and not (held / "figures" / "more").exists()


# -- reading only: no lock -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "RUN", "-n", "4", "--out", "ELSEWHERE/s.png"],
        ["latent-map", "RUN", "--grid", "3", "--out-dir", "ELSEWHERE"],
        ["interpolate", "RUN", "--pairs", "1", "--steps", "3", "--out", "ELSEWHERE/i.png"],
        ["traverse", "RUN", "--steps", "3", "--out", "ELSEWHERE/t.png"],
    ],
    ids=["sample", "latent-map", "interpolate", "traverse"],
)
def test_commands_writing_elsewhere_read_a_run_in_use(argv, held, tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    argv = [a.replace("RUN", str(held)).replace("ELSEWHERE", str(tmp_path / "elsewhere")) for a in argv]
    assert main(argv) == 0, capsys.readouterr().err
    assert any((tmp_path / "elsewhere").iterdir())


def test_the_lock_is_released_after_a_write(run, capsys):
    assert main(["latent-map", str(run), "--grid", "3"]) == 0
    with folders.locked(run, "diagnose"):  # free again: this would be refused otherwise
        pass


# -- the writers refuse train --resume and diagnose while they write ----------------------------------------


def _intrude(monkeypatch, module, name, run, capsys, seen):
    """Replace ``module.name`` (called while the command under test holds the lock) by a version that first
    runs ``train --resume`` and ``diagnose`` on the same run and records their exit codes and messages."""
    original = getattr(module, name)

    def intruding(*args, **kwargs):
        capsys.readouterr()
        for argv in (["train", "--resume", str(run), "--quiet"], ["diagnose", str(run), *CHEAP_DIAGNOSE]):
            seen.append((argv[0], main(argv), capsys.readouterr().err))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, intruding)


def _check_refused(seen, action):
    assert [(command, code) for command, code, _ in seen] == [("train", 2), ("diagnose", 2)], seen
    for _, _, err in seen:
        assert err.count("\n") == 1 and "in use by pid" in err and f"({action})" in err, err


def test_latent_map_refuses_train_resume_and_diagnose_while_it_writes(run, monkeypatch, capsys):
    from ppl_vae.diagnostics import latent_space

    seen: list = []
    _intrude(monkeypatch, latent_space, "project_2d", run, capsys, seen)
    assert main(["latent-map", str(run), "--grid", "3"]) == 0
    _check_refused(seen, "latent-map")
    assert not (run / "diagnostics").exists()


def test_evaluate_refuses_train_resume_and_diagnose_while_it_writes(run, monkeypatch, capsys):
    from ppl_vae.app import run as run_module

    seen: list = []
    _intrude(monkeypatch, run_module, "evaluate", run, capsys, seen)
    assert main(["evaluate", str(run), "-k", "4", "--quiet"]) == 0
    _check_refused(seen, "evaluate")
    assert json.loads((run / "eval.json").read_text())["num_particles"] == 4
