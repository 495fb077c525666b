"""A process killed at any moment while it writes checkpoints and metrics leaves the previous files
whole: checked by SIGKILL at random times during a loop of saves, many times over."""

import json
import random
import signal
import subprocess
import sys
import time

import torch

from ppl_vae.app.checkpoint import load_checkpoint

WRITER = r"""
import sys, torch
from ppl_vae.app.checkpoint import save_checkpoint, write_json
path = sys.argv[1]
i = int(sys.argv[2])
while True:
    i += 1
    big = torch.full((512, 1024), float(i))           # 2 MB: a save takes long enough to be hit
    save_checkpoint(path + "/checkpoint.pt", model_spec={"i": i}, state_dict={"w": big}, epoch=i)
    write_json(path + "/metrics.json", {"i": i, "history": [{"epoch": e} for e in range(i % 50)]})
    print(i, flush=True)
"""


def test_killed_during_saves_leaves_loadable_files(tmp_path):
    rng = random.Random(0)
    last = 0
    kills = 0
    for round_ in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(last)], stdout=subprocess.PIPE, text=True
        )
        first = proc.stdout.readline()  # one save done: now kill at a random moment
        assert first, "the writer did not start"
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        payload = load_checkpoint(tmp_path / "checkpoint.pt")
        i = payload["epoch"]
        assert payload["model_spec"] == {"i": i}
        assert torch.equal(payload["state_dict"]["w"], torch.full((512, 1024), float(i)))  # whole, not mixed
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        assert metrics["i"] in (i, i - 1) and len(metrics["history"]) == metrics["i"] % 50
        assert i > last
        last = i
    assert kills == 8
    # temporary files of killed writers may remain until a later save removes them; the real files are whole
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")} == {"checkpoint.pt", "metrics.json"}


def test_temporaries_of_killed_writers_are_cleaned_up_by_the_next_save(tmp_path):
    import os

    from ppl_vae.app.checkpoint import write_json

    stale = tmp_path / ".metrics.json.abc123.tmp"
    stale.write_text("half a file")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    fresh = tmp_path / ".metrics.json.def456.tmp"  # perhaps another writer's, still at work
    fresh.write_text("in progress")
    write_json(tmp_path / "metrics.json", {"ok": 1})
    assert not stale.exists() and fresh.exists()
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"ok": 1}
