"""The memory-limit message names where the limit came from (the machine's default, ``--max-memory`` or
``PPL_VAE_MAX_MEMORY``) and the fix that fits it (follow-up of issue 12). Each test failed before its fix:
the message always said "(a quarter of this machine's memory)", whoever had set the limit."""

import pytest

from ppl_vae import limits
from ppl_vae.cli import main
from ppl_vae.errors import ConfigError

#: A network of 2 x 60,000 units: about 58 GB with its gradients and Adam moments, over any limit below.
HUGE = ["train", "--hidden-dims", "60000", "60000", "--quiet"]
MACHINE = "a quarter of this machine's memory"


def _refusal(monkeypatch, env=None) -> str:
    """The message of :func:`limits.check_bytes` for 10 TiB, with ``PPL_VAE_MAX_MEMORY`` set to ``env``."""
    if env is None:
        monkeypatch.delenv(limits.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(limits.ENV_VAR, env)
    with pytest.raises(ConfigError) as refused:
        limits.check_bytes(10 * 1024**4, "a 10 TiB buffer")
    return str(refused.value)


def test_the_machine_default_is_named_with_both_ways_to_raise_it(monkeypatch):
    message = _refusal(monkeypatch)
    assert MACHINE in message and "--max-memory" in message and "PPL_VAE_MAX_MEMORY=SIZE" in message, message
    assert limits.memory_limit_source() == "machine"


def test_the_fallback_of_a_machine_that_does_not_report_its_memory_is_named(monkeypatch):
    monkeypatch.setattr(limits, "physical_memory", lambda: None)
    message = _refusal(monkeypatch)
    assert "2.0 GiB" in message and "does not report its memory" in message and MACHINE not in message, message


def test_a_limit_from_the_environment_names_the_variable_and_its_value(monkeypatch):
    message = _refusal(monkeypatch, "64M")
    assert "more than the limit of 64.0 MiB" in message, message
    assert "PPL_VAE_MAX_MEMORY=64M" in message and "environment" in message, message
    assert MACHINE not in message and "--max-memory" in message, message  # the other way to raise it
    assert limits.memory_limit_source() == "environment"


def _train_refusal(argv, tmp_path, capsys) -> str:
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()
    return err


def test_a_limit_from_the_flag_names_the_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(limits.ENV_VAR, raising=False)  # restored after the test: main() sets it for --max-memory
    err = _train_refusal([*HUGE, "--max-memory", "64M"], tmp_path, capsys)
    assert "more than the limit of 64.0 MiB" in err and "set with --max-memory" in err, err
    assert MACHINE not in err and "environment" not in err, err


def test_the_flag_over_the_environment_names_the_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, "1G")
    err = _train_refusal([*HUGE, "--max-memory", "32M"], tmp_path, capsys)
    assert "more than the limit of 32.0 MiB" in err and "set with --max-memory" in err, err
    assert MACHINE not in err and "PPL_VAE_MAX_MEMORY=1G" not in err, err


def test_a_limit_from_the_environment_is_named_at_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, "48M")
    err = _train_refusal(HUGE, tmp_path, capsys)
    assert "more than the limit of 48.0 MiB" in err and "PPL_VAE_MAX_MEMORY=48M" in err, err
    assert MACHINE not in err and "set with --max-memory" not in err, err


def test_after_a_flag_a_changed_environment_is_named_again(tmp_path, capsys, monkeypatch):
    """The flag's record does not outlive it: once the variable holds another value, that is the source."""
    monkeypatch.delenv(limits.ENV_VAR, raising=False)
    _train_refusal([*HUGE, "--max-memory", "64M"], tmp_path, capsys)
    assert limits.memory_limit_source() == "--max-memory"
    message = _refusal(monkeypatch, "80M")
    assert "PPL_VAE_MAX_MEMORY=80M" in message and "set with --max-memory" not in message, message
