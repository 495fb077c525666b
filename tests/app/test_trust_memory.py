"""Hostile inputs are refused before they are allocated: the peak memory of a ``ppl-vae`` process fed a
bomb stays near that of a tiny honest run (issue 12). Each command runs under a small wrapper process
that reports its child's peak resident size (``RUSAGE_CHILDREN``); measuring from the test process
itself would count the test's own pages, which a forked child holds until it execs."""

import io
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

#: Headroom over the honest run: far below what any of the bombs would take (gigabytes to terabytes).
HEADROOM_MB = 200


_WRAPPER = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "sys.stderr.write('PEAK %d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
    "sys.exit(done.returncode)"
)


def _cli(*args, cwd) -> tuple[int, str, float]:
    """Exit code, standard error without the wrapper's line, and the peak resident size in MB."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PPL_VAE_MAX_MEMORY": "256M", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "ppl_vae", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    *lines, peak = done.stderr.splitlines()
    assert peak.startswith("PEAK "), done.stderr
    return done.returncode, "".join(line + "\n" for line in lines), int(peak.split()[1]) / 1024  # kB on Linux


def _npy_header_only(shape) -> bytes:
    header = repr({"descr": "<f8", "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in kB is Linux's convention")
def test_bombs_are_refused_without_allocating_them(tmp_path):
    from PIL import Image

    tiny = ["--epochs", "1", "--latent-dim", "2", "--hidden-dims", "8", "--quiet"]
    code, err, baseline = _cli("train", *tiny, "--out", str(tmp_path / "honest"), cwd=tmp_path)
    assert code == 0, err

    with zipfile.ZipFile(tmp_path / "declared.npz", "w") as archive:  # 10^13 float64 declared in 80 bytes
        archive.writestr("x_train.npy", _npy_header_only((10**7, 10**6)))
        archive.writestr("x_test.npy", _npy_header_only((10, 10)))
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x_train.npy", "w", force_zip64=True) as member:  # 1 GiB of zeros in ~1 MB
            member.write(_npy_header_only((1024, 1024, 1024)).replace(b"<f8", b"|u1"))
            block = bytes(2**24)
            for _ in range(64):
                member.write(block)
        archive.writestr("x_test.npy", _npy(np.zeros((10, 8, 8), np.uint8)))
    (tmp_path / "big").mkdir()
    Image.new("1", (20_000, 20_000)).save(tmp_path / "big" / "big.png")  # 400 Mpx in a small file
    cases = {
        "npz declaring terabytes": ["--dataset", f"npz:{tmp_path / 'declared.npz'}"],
        "npz zip bomb": ["--dataset", f"npz:{tmp_path / 'bomb.npz'}"],
        "400-megapixel image": ["--dataset", f"folder:{tmp_path / 'big'}"],
        "network of 2 x 60000^2 weights": ["--hidden-dims", "60000", "60000"],
        "digits resized to 4000 x 4000": ["--image-size", "4000"],
    }
    for name, args in cases.items():
        code, err, peak = _cli("train", *tiny, *args, "--out", str(tmp_path / "r"), cwd=tmp_path)
        assert code == 2 and err.count("\n") == 1, (name, err)
        assert peak < baseline + HEADROOM_MB, (name, peak, baseline)
        assert not (tmp_path / "r").exists(), name
