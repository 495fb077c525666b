"""Data-parallel training with torchrun: two CPU processes (gloo on loopback) train exactly like one
process with the doubled batch, resume exactly, and a failed process ends the job with an error."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from ppl_vae.app.checkpoint import load_checkpoint

TINY = ["--epochs", "2", "--latent-dim", "2", "--hidden-dims", "16", "--quiet", "--checkpoint-every", "100"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    # 180 s: a hang still fails the test, while a step or a checkpoint slowed by a loaded machine does not
    return {**os.environ, "OMP_NUM_THREADS": "1", "PPL_VAE_DIST_TIMEOUT": "180", **extra}


def _torchrun(cwd, *args, nproc=2):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_port()),
        "-m",
        "ppl_vae",
        "train",
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


def _single(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "ppl_vae", "train", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _params(run_dir):
    return load_checkpoint(run_dir / "checkpoint.pt")["state_dict"]


def _history(run_dir):
    return [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in json.loads((run_dir / "metrics.json").read_text())["history"]
    ]


def test_two_processes_match_one_process_with_the_doubled_batch(tmp_path):
    # A deterministic guide (delta) and a learnable prior: every difference would come from the
    # sharding, the gradient averaging, the plate scaling or the prior's synchronization.
    args = [*TINY, "--guide", "delta", "--prior", "learned-normal"]
    one = _single(tmp_path, *args, "--batch-size", "64", "--out", "one")
    assert one.returncode == 0, one.stderr[-2000:]
    two = _torchrun(tmp_path, *args, "--batch-size", "32", "--out", "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stdout and two.stdout.count("run folder:") == 1  # rank 0 reports
    a, b = _params(tmp_path / "one"), _params(tmp_path / "two")
    assert set(a) == set(b) and any(k.startswith("prior.") for k in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    # losses and held-out ELBO agree too (1438 examples: the last global batch of 30 splits 15 + 15)
    for r1, r2 in zip(_history(tmp_path / "one"), _history(tmp_path / "two"), strict=True):
        assert r1["step"] == r2["step"] == 23 * r1["epoch"]
        assert r1["train_elbo"] == pytest.approx(r2["train_elbo"], rel=1e-5)
        assert r1["heldout_elbo"] == pytest.approx(r2["heldout_elbo"], rel=1e-5)
    assert not (tmp_path / "two" / "figures").exists() or (tmp_path / "two" / "figures" / "elbo.png").exists()


def test_distributed_resume_is_exact_and_the_hierarchical_prior_trains(tmp_path):
    # Stochastic guide and a global latent: exactness needs every process's random stream restored.
    args = [
        "--latent-dim",
        "2",
        "--hidden-dims",
        "16",
        "--quiet",
        "--checkpoint-every",
        "1",
        "--prior",
        "hierarchical",
        "--batch-size",
        "64",
    ]
    full = _torchrun(tmp_path, *args, "--epochs", "3", "--out", "full")
    assert full.returncode == 0, full.stderr[-3000:]
    part = _torchrun(tmp_path, *args, "--epochs", "2", "--out", "part")
    assert part.returncode == 0, part.stderr[-3000:]
    resumed = _torchrun(tmp_path, "--resume", "part", "--epochs", "3", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _params(tmp_path / "full"), _params(tmp_path / "part")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _history(tmp_path / "full") == _history(tmp_path / "part")
    # a resumed distributed run needs the same number of processes
    again = _single(tmp_path, "--resume", "part", "--epochs", "4", "--quiet")
    assert again.returncode == 2 and "processes was 2" in again.stderr


def test_a_failing_process_ends_the_job_with_an_error_not_a_hang(tmp_path):
    port = str(_port())
    procs = []
    for rank, dataset in ((0, "digits"), (1, "npz:missing.npz")):  # rank 1 cannot read its data
        env = _env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            PPL_VAE_DIST_TIMEOUT="30",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "ppl_vae", "train", *TINY, "--dataset", dataset, "--out", f"run{rank}"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=120) for p in procs]
    assert procs[1].returncode == 2 and "missing.npz does not exist" in outputs[1][1]
    assert procs[0].returncode == 2, outputs[0][1][-2000:]
    err = outputs[0][1].strip().splitlines()
    assert err[-1].startswith("ppl-vae train: error:") and "another process of the distributed job" in err[-1]
    assert not (tmp_path / "run0").exists()


def test_a_process_killed_during_training_ends_the_others_with_an_error(tmp_path):
    import signal
    import time

    port = str(_port())
    procs = []
    for rank in (0, 1):
        env = _env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            PPL_VAE_DIST_TIMEOUT="30",
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ppl_vae",
                    "train",
                    "--epochs",
                    "200",
                    "--latent-dim",
                    "2",
                    "--hidden-dims",
                    "16",
                    "--quiet",
                    "--checkpoint-every",
                    "1",
                    "--out",
                    "run",
                ],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.time() + 120
    while not (tmp_path / "run" / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)  # a worker dies mid-training
    _, err = procs[0].communicate(timeout=120)
    procs[1].wait(timeout=30)
    assert procs[0].returncode == 2, err[-2000:]
    assert "another process of the distributed job failed" in err.strip().splitlines()[-1]
    load_checkpoint(tmp_path / "run" / "checkpoint.pt")  # the last checkpoint is whole
