"""``--compile`` and the ``compile`` config field: validated before any work, recorded in run.json."""

from __future__ import annotations

import json

import pytest

from ppl_vae.app.config import Config
from ppl_vae.cli import main
from ppl_vae.errors import ConfigError

TINY = ["--epochs", "1", "--latent-dim", "2", "--hidden-dims", "16", "--quiet"]


def test_train_records_the_path_of_its_steps(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--compile", "trace", *TINY]) == 0
    step = json.loads((out / "run.json").read_text())["step"]
    assert step["compile"] == "trace" and step["path"] == "recorded"
    assert [g["shape"] for g in step["graphs"]] == [[128, 1, 8, 8], [30, 1, 8, 8]]  # 1438 = 11 x 128 + 30
    assert json.loads((out / "config.json").read_text())["compile"] == "trace"


def test_auto_keeps_a_short_run_eager(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0  # 12 steps: nothing worth recording
    step = json.loads((out / "run.json").read_text())["step"]
    assert (step["compile"], step["path"], step["graphs"]) == ("auto", "eager", [])
    assert "1,000 steps planned" in step["eager_reason"]


@pytest.mark.parametrize("value", ["fast", "ON", ""])
def test_a_bad_compile_flag_is_one_line_and_writes_nothing(tmp_path, capsys, value):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--compile", value, *TINY]) == 2
    err = capsys.readouterr().err
    assert "--compile" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("value", ["fast", 1, None, True])
def test_a_bad_compile_field_is_refused(value):
    with pytest.raises(ConfigError, match="compile"):
        Config.from_dict({"compile": value})


def test_a_config_file_sets_compile_and_older_runs_were_eager(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"compile": "off"}))
    assert Config.from_file(path).compile == "off"
    values = {k: v for k, v in Config().to_dict().items() if k != "compile"}
    assert Config.from_dict(values, complete=True).compile == "off"  # a run folder from before: eager steps
    assert Config.from_dict(values).compile == "auto"
