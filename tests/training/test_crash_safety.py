"""A run killed at any point and resumed ends with best_model.pth holding the history's best
epoch, and without the temporaries of interrupted writes.

The kill is simulated at every write boundary of a real run (FakeModel, so it is quick): just
before a file would be renamed into place (its temporary left behind, as SIGKILL leaves it) and
just after. Validation R@1 is scripted so that the best epoch is neither the first nor the last
and some epochs without a checkpoint are best. One test kills a real process with SIGKILL in
the middle of a checkpoint write.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import FakeModel, write_store

import tempstop.inference.checkpoint
import tempstop.model
import tempstop.utils
from tempstop.config import ProjectConfig
from tempstop.inference.checkpoint import load_checkpoint
from tempstop.training.setup import TrainingError
from tempstop.training.trainer import UnifiedModelTrainer

#: Validation t2v R@1 after epochs 1..6 (checkpoints every 2 epochs): better at 1 (no
#: checkpoint), 2 and 4 (with one), best at 4, and two epochs after it that are not better.
R1 = [10.0, 30.0, 20.0, 40.0, 25.0, 35.0]
BEST = R1.index(max(R1)) + 1


class Killed(BaseException):
    """The process died here (BaseException: nothing in the trainer may catch it)."""


def _row(r1: float) -> dict:
    row = {"val_loss": 1.0}
    for d in ("t2v", "v2t"):
        row.update(
            {
                f"val_{d}_R1": r1,
                f"val_{d}_R5": r1,
                f"val_{d}_R10": r1,
                f"val_{d}_MdR": 1.0,
                f"val_{d}_MnR": 1.0,
            }
        )
    return row


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setattr(tempstop.model, "create_unified_model", lambda cfg: FakeModel(cfg), raising=False)
    # validate() runs before the epoch counter moves on: state.epoch is the epoch being validated.
    monkeypatch.setattr(UnifiedModelTrainer, "validate", lambda self: _row(R1[self.state.epoch]))


class Writes:
    """Wraps atomic_write (behind every file the trainer writes) to count writes and die at one."""

    def __init__(self, monkeypatch, kill_at: int | None = None, mode: str = "after") -> None:
        self.real, self.count, self.kill_at, self.mode, self.names = (
            tempstop.utils.atomic_write,
            0,
            kill_at,
            mode,
            [],
        )
        monkeypatch.setattr(tempstop.utils, "atomic_write", self)
        monkeypatch.setattr(tempstop.inference.checkpoint, "atomic_write", self)

    def __call__(self, path, write) -> None:
        path = Path(path)
        self.count += 1
        self.names.append(path.name)
        if self.count == self.kill_at and self.mode == "mid":
            # What SIGKILL in the middle of a write leaves: a temporary named as atomic_write names them.
            (path.parent / f".{path.name}.k1ll3d.tmp").write_bytes(b"\0" * 4096)
            raise Killed
        self.real(path, write)
        if self.count == self.kill_at:
            raise Killed


def _cfg(store, out) -> ProjectConfig:
    return ProjectConfig().with_overrides({
        "training.train_data_path": str(store), "training.val_data_path": str(store),
        "training.checkpoint_dir": str(out), "training.batch_size": 4, "training.num_epochs": len(R1),
        "training.save_every": 2, "tracking.enabled": False,
    })  # fmt: skip


def _latest(out: Path) -> Path | None:
    ckpts = sorted(out.glob("checkpoint_epoch_*.pth"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    return ckpts[-1] if ckpts else None


def _strip(history):
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in history]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("crash"), videos=8)


@pytest.mark.slow
def test_best_model_matches_the_history_after_a_kill_at_every_write(scripted, store, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        writes = Writes(m)
        UnifiedModelTrainer(_cfg(store, tmp_path / "straight"), progress=False).train()
    straight = tmp_path / "straight"
    best = load_checkpoint(straight / "best_model.pth")
    history = json.loads((straight / "history.json").read_text())
    assert best["epoch"] == BEST == max(history, key=lambda r: r["val_t2v_R1"])["epoch"]
    # The boundaries: config.json, then per epoch best (if better), checkpoint (if saved), history.
    assert writes.names[:4] == ["config.json", "best_model.pth", "history.json", "best_model.pth"]
    assert writes.count == 13

    for kill_at in range(1, writes.count + 1):
        for mode in ("mid", "after"):
            out = tmp_path / f"k{kill_at}-{mode}"
            with monkeypatch.context() as m, pytest.raises(Killed):
                Writes(m, kill_at, mode)
                UnifiedModelTrainer(_cfg(store, out), progress=False).train()
            summary = UnifiedModelTrainer(_cfg(store, out), resume=_latest(out), progress=False).train()
            where = f"killed {mode} write {kill_at} ({writes.names[kill_at - 1]})"
            again = load_checkpoint(out / "best_model.pth")
            assert again["epoch"] == BEST and summary["best_epoch"] == BEST, where
            assert all(torch.equal(again["model"][k], v) for k, v in best["model"].items()), where
            assert _strip(json.loads((out / "history.json").read_text())) == _strip(history), where
            assert summary["best_checkpoint"] == str(out / "best_model.pth"), where
            assert not list(out.glob(".*.tmp")), f"{where}: temporaries left"


def test_a_run_never_names_a_best_model_that_is_not_there(scripted, store, tmp_path):
    out = tmp_path / "a"
    UnifiedModelTrainer(_cfg(store, out).with_overrides({"training.num_epochs": 4}), progress=False).train()
    (out / "best_model.pth").unlink()  # best is epoch 4, the checkpoint's own: restored from it
    cfg4 = _cfg(store, out).with_overrides({"training.num_epochs": 4})
    UnifiedModelTrainer(cfg4, resume=out / "checkpoint_epoch_4.pth", progress=False).train()
    assert load_checkpoint(out / "best_model.pth")["epoch"] == 4
    # Best epoch 2, resumed from checkpoint 3 without its best model: nothing can bring its
    # weights back, and the run says so instead of naming a file that does not hold them.
    out = tmp_path / "b"
    cfg3 = _cfg(store, out).with_overrides({"training.num_epochs": 3, "training.save_every": 1})
    UnifiedModelTrainer(cfg3, progress=False).train()
    (out / "best_model.pth").unlink()
    with pytest.raises(
        TrainingError, match=r"best_model.pth holds epoch \(none\), but the best validation epoch is 2"
    ):
        UnifiedModelTrainer(cfg3, resume=out / "checkpoint_epoch_3.pth", progress=False).train()


SCRIPT = """
import os, signal, sys
sys.path.insert(0, {helpers!r})
import torch
import tempstop.model
from training_helpers import FakeModel
from tempstop.config import ProjectConfig
from tempstop.training.trainer import UnifiedModelTrainer

tempstop.model.create_unified_model = lambda cfg: FakeModel(cfg)
real_save = torch.save

def save_and_die_in_checkpoint_2(obj, f, *args, **kwargs):
    if "checkpoint_epoch_2" in str(getattr(f, "name", f)):
        f.write(os.urandom(1 << 16))  # half a file, then the power goes
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save_and_die_in_checkpoint_2
UnifiedModelTrainer(ProjectConfig.from_json(sys.argv[1]), progress=False).train()
"""


@pytest.mark.slow
def test_sigkill_in_a_checkpoint_write_leaves_only_a_temporary_that_resuming_removes(
    store, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    cfg = _cfg(store, out).with_overrides({"training.save_every": 1})
    cfg.to_json(tmp_path / "cfg.json")
    script = tmp_path / "die.py"
    script.write_text(SCRIPT.format(helpers=str(Path(__file__).parent)))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "cfg.json")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": ""})  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    stale = list(out.glob(".checkpoint_epoch_2.pth.*.tmp"))
    assert len(stale) == 1 and stale[0].stat().st_size == 1 << 16
    assert not (out / "checkpoint_epoch_2.pth").exists() and (out / "checkpoint_epoch_1.pth").is_file()
    monkeypatch.setattr(tempstop.model, "create_unified_model", lambda c: FakeModel(c), raising=False)
    summary = UnifiedModelTrainer(cfg, resume=out / "checkpoint_epoch_1.pth", progress=False).train()
    assert summary["epochs"] == len(R1) and not list(out.glob(".*.tmp"))
    best = load_checkpoint(out / "best_model.pth")
    assert best["epoch"] == summary["best_epoch"]
