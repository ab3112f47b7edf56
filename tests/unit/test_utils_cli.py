"""Atomic writes, model_mode and the CLI dispatcher."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tempstop.utils import atomic_write, atomic_write_json, model_mode
from tempstop_pipelines.cli import COMMANDS, build_parser, command_module, main


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_every_command_registers_its_options_and_what_runs():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)
    for name in COMMANDS:
        full = build_parser([name])
        chosen = next(a for a in full._actions if a.dest == "command").choices[name]
        defaults = chosen._defaults
        assert ("job" in defaults and "run" in defaults) or "main" in defaults, name
        assert command_module(name).__doc__, name  # the command's description


def test_help_lists_every_command_without_importing_them():
    # `tempstop --help` must stay fast: no command module (torch, MLflow, Prefect) is imported.
    code = ("import sys; from tempstop_pipelines import cli; cli.build_parser([]); "
            "print(sorted(m for m in sys.modules if m.startswith(('torch', 'mlflow', 'prefect', "
            "'tempstop_pipelines.stages'))))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_usage_error_is_one_line_and_exit_2(capsys):
    assert main(["validate", "--data", ".", "--set", "no_equals_sign"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "tempstop validate: --set needs KEY=VALUE, got 'no_equals_sign'"


def test_config_error_is_reported_with_key_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"training": {"batch_sise": 4}}))
    assert main(["extract", "--params", str(bad), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "training.batch_sise" in capsys.readouterr().err


def test_model_mode_switches_for_the_block_and_restores_on_error():
    import torch

    model = torch.nn.Sequential(torch.nn.Dropout(0.5)).train()
    with model_mode(model):
        assert not model.training and not model[0].training
    assert model.training and model[0].training
    with pytest.raises(RuntimeError), model_mode(model):
        raise RuntimeError("boom")
    assert model.training
    model.eval()
    with model_mode(model, training=True):
        assert model.training
    assert not model.training


@pytest.mark.parametrize("verbose", [False, True])
def test_other_libraries_log_chatter_only_with_verbose(verbose):
    # faiss logs at INFO when it loads ("Could not load library with AVX512 support ...
    # ModuleNotFoundError"), which reads as an error on a normal run.
    code = (f"from tempstop_pipelines.env import configure_logging; configure_logging({verbose}); "
            "import faiss, logging; logging.getLogger('tempstop.probe').info('ours')")  # fmt: skip
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert "tempstop.probe: ours" in err
    assert ("faiss.loader" in err) == verbose
