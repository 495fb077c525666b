"""Run-folder JSON is read within a bound and strictly; a failed write (disk full, folder read-only)
is one ppl_vae error line and leaves the previous file whole."""

import errno
import json
import os
import tempfile

import pytest

from ppl_vae import CheckpointError
from ppl_vae.app.checkpoint import WriteError, atomic_write, read_json, write_json
from ppl_vae.errors import PplVaeError


def one_line(error, path):
    message = str(error)
    assert "\n" not in message and str(path) in message
    return message


# --- read_json ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, match",
    [
        (b'{"lr": NaN}', "NaN"),
        (b'{"lr": -Infinity}', "Infinity"),
        (b"[1, 2, 3]", "not an object"),
        (b'"config"', "not an object"),
        (b'{"name": "caf\xe9"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not an object"),
        (b'{"seed": ' + b"7" * 5000 + b"}", "digits|not valid JSON"),
        (b'{"a": 1', "not valid JSON"),
    ],
)
def test_bad_run_folder_json_is_one_line(tmp_path, content, match):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        read_json(path, "config")
    one_line(info.value, path)


def test_nan_is_read_where_allowed(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"final": {"heldout_elbo": NaN}}')
    value = read_json(path, "metrics", allow_nan=True)["final"]["heldout_elbo"]
    assert value != value


def test_an_oversized_json_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("PPL_VAE_MAX_MEMORY", "100M")  # bound: 100 MB / 8 = 12.5 MB
    path = tmp_path / "run.json"
    with open(path, "w") as handle:
        handle.write('{"pad": "')
        handle.write("x" * (14 * 1024**2))
        handle.write('"}')
    with pytest.raises(CheckpointError, match="larger than") as info:
        read_json(path, "run.json")
    one_line(info.value, path)


def test_valid_run_folder_json_still_reads(tmp_path):
    path = tmp_path / "config.json"
    write_json(path, {"lr": 0.001, "hidden_dims": [32], "name": "café"})
    assert read_json(path, "config") == {"lr": 0.001, "hidden_dims": [32], "name": "café"}


# --- atomic_write ------------------------------------------------------------------------------------


def _old(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"epoch": 1})
    return path


def _assert_untouched(path):
    assert json.loads(path.read_text()) == {"epoch": 1}
    assert sorted(os.listdir(path.parent)) == [path.name]  # no temporary file left behind


def test_disk_full_midway_is_one_line_and_keeps_the_old_file(tmp_path):
    path = _old(tmp_path)

    def write(handle):
        handle.write(b'{"epoch": 2, "hist')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match="No space left on device.*free space") as info:
        atomic_write(path, write)
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, PplVaeError)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC  # callers catching OSError
    one_line(info.value, path)
    _assert_untouched(path)


def test_fsync_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = _old(tmp_path)

    def broken_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(WriteError, match="Input/output error") as info:
        write_json(path, {"epoch": 2})
    monkeypatch.undo()
    one_line(info.value, path)
    _assert_untouched(path)


def test_unwritable_folder_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = _old(tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(WriteError, match="Permission denied.*writable") as info:
        write_json(path, {"epoch": 2})
    monkeypatch.undo()
    one_line(info.value, path)
    _assert_untouched(path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_really_read_only_folder(tmp_path):
    path = _old(tmp_path)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(WriteError, match="writable") as info:
            write_json(path, {"epoch": 2})
        one_line(info.value, path)
    finally:
        tmp_path.chmod(0o755)
    _assert_untouched(path)


def test_folder_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(WriteError) as info:
        write_json(blocker / "run" / "metrics.json", {"epoch": 1})
    one_line(info.value, blocker / "run" / "metrics.json")


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = _old(tmp_path)

    def broken_replace(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(WriteError):
        write_json(path, {"epoch": 2})
    monkeypatch.undo()
    _assert_untouched(path)


def test_an_interrupt_is_not_hidden_and_keeps_the_old_file(tmp_path):
    path = _old(tmp_path)

    def write(handle):
        handle.write(b"{")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, write)
    _assert_untouched(path)
