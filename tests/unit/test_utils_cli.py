"""Atomic writes, model_mode and the CLI dispatcher."""

from __future__ import annotations

import json

import pytest

from tempstop.utils import atomic_write, atomic_write_json, model_mode
from tempstop_pipelines.cli import STAGE_MODULES, build_parser, main


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


def test_every_stage_registers_a_subcommand():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = set(sub.choices)
    for module in STAGE_MODULES:
        assert module.replace("_", "-") in names


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
