"""The output-folder check refuses the root directory, the home directory and the current directory, however
they are spelled (follow-up of issue 12: ``--out /`` left the adversarial sweep, because running a sweep
against a version without the check could delete real files). Nothing here runs a command: the check
itself is called, with every way of writing or deleting a file made to fail the test, and the home
directory is a sandbox."""

import builtins
import os
import shutil
from pathlib import Path

import pytest

from ppl_vae.app import folders

KINDS = ["run", "diagnostics", "compare-ae"]


@pytest.fixture
def no_writes(monkeypatch):
    """Make every way of creating, replacing or deleting a file fail the test while the check runs."""

    def refuse(name):
        def call(*args, **kwargs):
            raise AssertionError(f"the output check called {name}{args!r}: it must only look")

        return call

    for module, names in (
        (os, ["mkdir", "makedirs", "replace", "rename", "remove", "unlink", "rmdir", "removedirs", "symlink"]),
        (shutil, ["rmtree", "move", "copytree", "copy", "copy2", "copyfile"]),
        (Path, ["mkdir", "touch", "write_text", "write_bytes", "unlink", "rmdir", "rename", "replace"]),
    ):
        for name in names:
            monkeypatch.setattr(module, name, refuse(f"{getattr(module, '__name__', module)}.{name}"))
    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            raise AssertionError(f"the output check opened {file} to write")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
            raise AssertionError(f"the output check opened {path} to write")
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A sandbox home (``HOME``), empty (the case no other rule refuses: an empty folder may be written), a
    current directory holding only an empty ``sub``, and a symbolic link to the sandbox, for spellings
    through links."""
    (tmp_path / "home").mkdir()
    (tmp_path / "work" / "sub").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "home-link").symlink_to(tmp_path / "home", target_is_directory=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "work")
    assert Path.home() == tmp_path / "home"
    return tmp_path


def _refused(path, kind, overwrite, needle) -> str:
    with pytest.raises(folders.FolderError) as refused:
        folders.check_output_dir(path, kind, overwrite=overwrite)
    message = str(refused.value)
    assert needle in message and "\n" not in message, message
    return message


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spelling", ["/", "//", "///", "/.", "/..", "/./", "/tmp/..", "/tmp/../."])
def test_the_root_directory_is_refused(spelling, kind, overwrite, places, no_writes):
    _refused(spelling, kind, overwrite, "cannot be /")


@pytest.fixture
def root_link(tmp_path) -> Path:
    """A symbolic link to ``/`` (made before ``no_writes`` takes effect)."""
    os.symlink("/", tmp_path / "root-link")
    return tmp_path / "root-link"


@pytest.mark.parametrize("suffix", ["", "/.", "/tmp/..", "/tmp/../."])
def test_the_root_directory_through_a_link_is_refused(suffix, root_link, no_writes):
    with pytest.raises(folders.FolderError):
        folders.check_output_dir(f"{root_link}{suffix}", "run", overwrite=True)


HOME_SPELLINGS = {
    "its path": lambda p: p / "home",
    "with a trailing slash": lambda p: f"{p / 'home'}/",
    "with a dot": lambda p: p / "home" / ".",
    "through a sibling": lambda p: p / "work" / ".." / "home",
    "through a linked parent": lambda p: p / "alias" / "home",
    "through a link to it": lambda p: p / "home-link" / ".",
}


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spelling", sorted(HOME_SPELLINGS))
def test_the_home_directory_is_refused_even_when_empty(spelling, kind, overwrite, places, no_writes):
    _refused(HOME_SPELLINGS[spelling](places), kind, overwrite, "cannot be")


def test_the_home_directory_is_refused_when_home_is_a_link(places, monkeypatch, no_writes):
    monkeypatch.setenv("HOME", str(places / "home-link"))
    for spelling in (places / "home", places / "home-link", places / "alias" / "home-link"):
        _refused(spelling, "run", True, "cannot be")


CWD_SPELLINGS = {
    "empty": lambda p: "",
    "a dot": lambda p: ".",
    "a dot and a slash": lambda p: "./",
    "its absolute path": lambda p: p / "work",
    "its path and a dot": lambda p: p / "work" / ".",
    "through its parent": lambda p: Path("..") / "work",
    "through a child": lambda p: Path("sub") / "..",
    "through a linked parent": lambda p: p / "alias" / "work",
}


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spelling", sorted(CWD_SPELLINGS))
def test_the_current_directory_is_refused_even_when_empty(spelling, kind, overwrite, places, no_writes):
    _refused(CWD_SPELLINGS[spelling](places), kind, overwrite, "current directory")


@pytest.mark.parametrize("spelling", ["..", "../..", "through a linked grandparent"])
def test_a_parent_of_the_current_directory_is_refused(spelling, places, no_writes):
    path = places / "alias" if spelling.startswith("through") else spelling
    _refused(path, "run", True, "current directory")


def test_a_run_folder_that_is_the_current_directory_is_not_replaced(places, monkeypatch):
    """The dangerous case: the user works inside a run folder and names it through a link with --overwrite,
    which would otherwise move the current directory aside and delete it."""
    run = places / "work"
    folders.write_marker(run, "run")
    (run / "config.json").write_text("{}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shutil, "rmtree", lambda *a, **k: pytest.fail("rmtree"))
        _refused(places / "alias" / "work", "run", True, "current directory")
    assert (run / "config.json").exists() and Path.cwd() == run


def test_an_ordinary_new_folder_is_still_accepted(places, no_writes):
    """The refusals are not blanket: a new folder beside them, spelled through the same link, is fine."""
    for spelling in (places / "alias" / "new-run", "new-run", Path("sub") / "new-run"):
        assert folders.check_output_dir(spelling, "run", overwrite=True) == Path(spelling)
