"""Hostile and broken input to train, evaluate and index: one line naming the file, key or item,
exit status 2, no traceback. And a checkpoint cannot make the loader open a file or run code."""

from __future__ import annotations

import json
import resource
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from training_helpers import FakeModel, write_store

import tempstop.model
from tempstop.config import ProjectConfig
from tempstop.inference.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from tempstop_pipelines.cli import main as cli

NESTED = "[" * 100_000 + "]" * 100_000
NO_TRACKING = ["--set", "tracking.enabled=false"]


def one_error_line(err: str, command: str) -> str:
    """The message of a failed command: exactly one line, after ``tempstop COMMAND:``."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(f"tempstop {command}")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


@pytest.fixture
def fake_model(monkeypatch):
    monkeypatch.setattr(tempstop.model, "create_unified_model", lambda cfg: FakeModel(cfg), raising=False)


def _raw_split(path: Path, annotations: str) -> Path:
    (path / "videos").mkdir(parents=True)
    (path / "annotations.json").write_text(annotations)
    return path


def _train(store_or_split, tmp_path, *extra) -> int:
    return cli(["train", "--epochs", "1", "--no-progress", "--checkpoint-dir", str(tmp_path / "ck"),
                "--set", f"training.train_data_path={store_or_split}", "--set", f"training.val_data_path={store_or_split}",
                "--set", "training.batch_size=4", "--set", f"data.frames_cache={tmp_path / 'cache'}",
                *NO_TRACKING, *extra])  # fmt: skip


@pytest.mark.parametrize(
    ("annotations", "names"),
    [
        (NESTED, "nested too deeply"),
        (
            json.dumps([{"video_id": "v0", "captions": "not a list"}]),
            "item 0 (video_id v0): 'captions' must be",
        ),
        (json.dumps([{"video_id": "v0", "captions": ["word " * 200_000]}]), "caption 0 has 200000 words"),
    ],
)
def test_train_from_a_raw_split_refuses_bad_annotations_in_one_line(
    fake_model, tmp_path, capsys, annotations, names
):
    split = _raw_split(tmp_path / "train", annotations)
    assert _train(split, tmp_path) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert str(split / "annotations.json") in line and names in line


def test_a_zero_byte_array_is_named_before_training(fake_model, tmp_path, capsys):
    store = write_store(tmp_path / "data", videos=8)
    (store / "arrays" / "v003.npy").write_bytes(b"")
    assert _train(store, tmp_path) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert "v003.npy: array of item 'v003' has 0 bytes" in line


def test_an_unknown_backbone_is_named(tmp_path, capsys):
    store = write_store(tmp_path / "data", videos=8)
    assert _train(store, tmp_path, "--set", "model.backbone=ViT-NOPE") == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert "model.backbone" in line and "ViT-NOPE" in line


def test_a_store_with_other_frames_than_the_model_is_named(tmp_path, capsys):
    store = write_store(tmp_path / "data", videos=8, frames=4, size=64)
    assert _train(store, tmp_path, "--set", "model.frames=8") == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert "holds 4 frames per video but the model takes 8 (model.frames)" in line


class _Heavy(FakeModel):
    """A checkpoint of several MB: what a full disk refuses while the small files still fit."""

    def __init__(self, cfg=None) -> None:
        super().__init__(cfg)
        self.register_buffer("ballast", torch.zeros(1 << 20))  # 4 MB


def test_a_full_disk_is_one_line_naming_the_checkpoint(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(tempstop.model, "create_unified_model", lambda cfg: _Heavy(cfg), raising=False)
    store = write_store(tmp_path / "data", videos=8)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))  # files of at most 1 MB: "full"
    try:
        rc = _train(store, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert rc == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert f"{tmp_path / 'ck' / 'best_model.pth'}: cannot write" in line and "disk full" in line
    assert not list((tmp_path / "ck").glob(".*.tmp"))  # the failed write left nothing behind


def test_save_checkpoint_on_a_full_disk_keeps_the_previous_file(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint(path, {"config": {}, "model": {"w": torch.ones(2)}})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, hard))
    try:
        with pytest.raises(CheckpointError, match=r"c.pth: cannot write .*disk full"):
            save_checkpoint(path, {"config": {}, "model": {"w": torch.zeros(1 << 20)}})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]


# ---- checkpoints that name files -------------------------------------------------------------
TINY = {"model": {"backbone": "tempstop-tiny", "frames": 4, "tempme": {"imgme_layers": [0, 1, 2],
        "clipme_layers": [3, 4], "clipme_k": [2, 2]}, "stop": {"layers": 2}}}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A real model's checkpoint (weights + config), and its state dict."""
    from tempstop.model import create_unified_model

    cfg = ProjectConfig.from_dict(TINY)
    model = create_unified_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "good.pth"
    save_checkpoint(path, {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": 1})
    return path, model.state_dict()


def _crafted(tiny_checkpoint, tmp_path, pretrained: str) -> Path:
    path, _ = tiny_checkpoint
    ckpt = load_checkpoint(path)
    ckpt["config"]["model"]["pretrained"] = pretrained
    out = tmp_path / "crafted.pth"
    save_checkpoint(out, {k: v for k, v in ckpt.items() if k != "format"})
    return out


def _torchscript_file(tmp_path) -> Path:
    class Evil(torch.nn.Module):
        def forward(self, x):
            return x + 1

    path = tmp_path / "backbone.pt"
    torch.jit.save(torch.jit.script(Evil()), str(path))
    return path


@pytest.mark.parametrize("target", ["torchscript", "/etc/passwd", "/nonexistent/ViT-B-32.pt", "openai"])
def test_a_checkpoint_cannot_make_the_loader_open_a_file(tiny_checkpoint, tmp_path, target):
    """``model.pretrained`` in a checkpoint is ignored: every weight comes from its state dict.
    Each of these would fail to load (a TorchScript file that is no CLIP, a text file, a missing
    file, a download without internet) if the loader opened it."""
    pretrained = str(_torchscript_file(tmp_path)) if target == "torchscript" else target
    model, cfg, _ = model_from_checkpoint(_crafted(tiny_checkpoint, tmp_path, pretrained))
    assert cfg.model.pretrained is None
    _, state = tiny_checkpoint
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_evaluate_with_a_crafted_checkpoint_reads_only_its_weights(tiny_checkpoint, tmp_path, capsys):
    crafted = _crafted(tiny_checkpoint, tmp_path, "/etc/passwd")
    store = write_store(tmp_path / "data", videos=8, frames=4, size=64)
    assert (
        cli(["evaluate", "--checkpoint", str(crafted), "--data", str(store), "--no-track", "--no-progress"])
        == 0
    )
    assert "t2v" in capsys.readouterr().out


def test_evaluate_and_index_name_bad_data_in_one_line(tiny_checkpoint, tmp_path, capsys):
    path, _ = tiny_checkpoint
    split = _raw_split(tmp_path / "data" / "test", NESTED)
    common = [
        "--checkpoint",
        str(path),
        "--data",
        str(split),
        "--cache",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    assert cli(["evaluate", *common, "--no-track"]) == 2
    assert "nested too deeply" in one_error_line(capsys.readouterr().err, "evaluate")
    assert cli(["index", *common, "--out", str(tmp_path / "idx")]) == 2
    assert "nested too deeply" in one_error_line(capsys.readouterr().err, "index")
    store = write_store(tmp_path / "s", videos=4, frames=4, size=64)
    np.save(store / "arrays" / "v001.npy", np.zeros((4, 64, 64, 3), np.uint8))
    (store / "arrays" / "v002.npy").write_bytes(b"")
    assert (
        cli(["evaluate", "--checkpoint", str(path), "--data", str(store), "--no-track", "--no-progress"]) == 2
    )
    assert "v002.npy: array of item 'v002' has 0 bytes" in one_error_line(capsys.readouterr().err, "evaluate")
