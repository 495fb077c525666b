"""``--threads auto`` runs the README's default digits model on one intra-op thread, whatever the machine,
and ``run.json`` records that choice (follow-up of issue 12; the rule: ``ppl_vae/threads.py``, measured in
``benchmarks/THREADS.md``: one thread below 5e7 multiply-adds per step, more only for larger steps with
idle cores)."""

import json

import pytest
import torch

from ppl_vae import threads
from ppl_vae.app.config import Config
from ppl_vae.app.run import build_vae, load_data, step_work
from ppl_vae.cli import main


@pytest.fixture
def keep_threads(monkeypatch):
    """Whatever a test sets (torch's count, the thread module's choice) is undone after it."""
    monkeypatch.setattr(threads, "_state", dict(threads._state))
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def default_work() -> float:
    """Multiply-adds of one training step of the default run (``ppl-vae train``: digits, 64-256-128-8, batch
    128, one particle), computed as ``train`` computes it for the thread choice."""
    config = Config()
    vae = build_vae(config, load_data(config).data_shape)
    return step_work(vae, config.batch_size * config.particles)


def test_the_default_model_is_small_work(default_work):
    assert 1e7 < default_work < threads.WORK_PER_THREAD, default_work  # THREADS.md: 1.3e7


@pytest.mark.parametrize("idle", [1, 2, 4, 64])
def test_auto_picks_one_thread_for_the_default_model_however_many_cores_are_idle(default_work, idle):
    count, reason = threads.choose(default_work, idle)
    assert count == 1 and reason == threads.AUTO_ONE


def test_the_rule_raises_the_count_only_for_large_work_on_idle_cores():
    """The rule is not "always one": large steps get one thread per 5e7 multiply-adds, at most the idle
    cores; without a second idle core they stay on one."""
    big = 12 * threads.WORK_PER_THREAD
    assert threads.choose(threads.WORK_PER_THREAD - 1, 64)[0] == 1
    assert threads.choose(threads.WORK_PER_THREAD, 2)[0] == 2
    assert threads.choose(big, 4) == (4, f"auto: 4 threads for {big:.2g} multiply-adds per step with 4 idle cores")
    assert threads.choose(big, 64)[0] == 13
    count, reason = threads.choose(big, 1)
    assert count == 1 and "no idle core" in reason


def test_adapt_keeps_one_thread_for_the_default_model_on_an_idle_machine(default_work, monkeypatch, keep_threads):
    monkeypatch.setattr(threads, "idle_cores", lambda: 64)
    torch.set_num_threads(2)  # torch's own choice on a 2-core machine: auto must bring it down to one
    assert threads.apply(None) == 1
    assert threads.adapt(default_work) == 1 and torch.get_num_threads() == 1
    assert threads.record() == {"intra_op": 1, "choice": threads.AUTO_ONE}


def test_adapt_sets_what_the_rule_chooses_and_records_why(monkeypatch, keep_threads):
    monkeypatch.setattr(threads, "idle_cores", lambda: 2)
    threads.apply(None)
    assert threads.adapt(10 * threads.WORK_PER_THREAD) == 2 == torch.get_num_threads()
    assert threads.record()["choice"].startswith("auto: 2 threads for 5e+08 multiply-adds per step")
    threads.apply(3)  # --threads 3: fixed, whatever the work
    assert threads.adapt(10 * threads.WORK_PER_THREAD) == 3
    assert threads.record() == {"intra_op": 3, "choice": "--threads"}


def test_the_default_train_records_one_thread_in_run_json(tmp_path, monkeypatch, keep_threads):
    """``ppl-vae train`` with the default model and no ``--threads``, on a machine whose cores all look idle:
    one thread, and run.json says so and why."""
    monkeypatch.setattr(threads, "idle_cores", lambda: 64)
    torch.set_num_threads(2)  # what torch would pick on a 2-core machine: auto must bring it down to one
    assert main(["train", "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())["threads"]
    assert record == {"intra_op": 1, "choice": threads.AUTO_ONE}, record
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset"] == "digits" and config["hidden_dims"] == [256, 128] and config["latent_dim"] == 8
