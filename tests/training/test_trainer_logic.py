"""The training loop's logic on a tiny stand-in model (fast): checks at start, NaN handling,
sequential phases, outputs. The real-model tests are in test_trainer_real.py."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from training_helpers import FakeModel, write_store

import tempstop.model
from tempstop.config import UnifiedModelConfig
from tempstop.inference.checkpoint import load_checkpoint
from tempstop.training.setup import TrainingError
from tempstop.training.trainer import UnifiedModelTrainer, plan_phases


@pytest.fixture
def fake_model(monkeypatch):
    monkeypatch.setattr(tempstop.model, "create_unified_model", lambda cfg: FakeModel(cfg), raising=False)


@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "data", videos=16)


def _cfg(store, out, **training):
    over = {
        "training.train_data_path": str(store),
        "training.val_data_path": str(store),
        "training.checkpoint_dir": str(out),
        "training.batch_size": 4,
        "training.num_epochs": 2,
        "training.save_every": 1,
        "demo_recipe.keep_quadruples": True,
        "data.datatype": "demo",
        "tracking.enabled": False,
    }
    over.update({f"training.{k}": v for k, v in training.items()})
    return UnifiedModelConfig().with_overrides(over)


def test_the_same_training_writes_the_same_bytes(fake_model, store, tmp_path):
    # A training stage's folder is a DVC output: run again on the same inputs, it must not
    # change (nor make DVC rerun evaluation and indexing).
    out, runs = tmp_path / "ck", []
    for _ in range(2):
        UnifiedModelTrainer(_cfg(store, out), progress=False).train()
        runs.append({p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()})
        for p in out.iterdir():
            p.unlink()
    assert set(runs[0]) >= {"best_model.pth", "checkpoint_epoch_2.pth", "history.json"}
    assert runs[0] == runs[1]


def test_outputs_and_history(fake_model, store, tmp_path):
    out = tmp_path / "ck"
    summary = UnifiedModelTrainer(_cfg(store, out), progress=False).train()
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "best_model.pth",
        "checkpoint_epoch_1.pth",
        "checkpoint_epoch_2.pth",
        "config.json",
        "history.json",
    ]  # TensorBoard logs/ come from the CLI's callback (tests/training/test_stages_fake.py)
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    for key in (
        "step",
        "phase",
        "train_loss",
        "tempme_loss",
        "stop_loss",
        "val_loss",
        "val_t2v_R1",
        "val_v2t_MnR",
        "lr_tempme",
        "lr_stop",
        "lr_backbone",
        "grad_norm",
    ):
        assert key in history[0], key
    assert "epoch_seconds" not in history[0]  # wall-clock time goes to the log, MLflow and TensorBoard only
    assert summary["epochs"] == 2 and summary["steps"] == 8
    ckpt = load_checkpoint(out / "checkpoint_epoch_2.pth")  # weights_only=True inside
    assert ckpt["config"]["training"]["batch_size"] == 4 and ckpt["epoch"] == 2
    best = torch.load(out / "best_model.pth", weights_only=True)
    assert "optimizer" not in best and best["metrics"]["val_t2v_R1"] == summary["best_metric"]
    assert json.loads((out / "config.json").read_text())["training"]["num_epochs"] == 2


def test_checks_at_start(fake_model, store, tmp_path):
    with pytest.raises(TrainingError, match="batch_size=32 .* exceeds the 16 training videos"):
        UnifiedModelTrainer(_cfg(store, tmp_path / "a", batch_size=32), progress=False).train()
    with pytest.raises(TrainingError, match="train_data_path: .* does not exist"):
        UnifiedModelTrainer(_cfg(tmp_path / "nowhere", tmp_path / "b"), progress=False).train()
    (tmp_path / "root" / "train").mkdir(parents=True)
    (tmp_path / "root" / "train" / "annotations.json").write_text("[]")
    with pytest.raises(TrainingError, match="raw split folder, not a frame store: extract it first"):
        UnifiedModelTrainer(_cfg(tmp_path / "root" / "train", tmp_path / "c"), progress=False).train()
    with pytest.raises(TrainingError, match=r"not a frame store \(no index.json\) \(it holds stores: .*store"):
        UnifiedModelTrainer(_cfg(store.parent, tmp_path / "c"), progress=False).train()
    with pytest.raises(TrainingError, match="accumulation"):
        UnifiedModelTrainer(
            _cfg(store, tmp_path / "d", gradient_accumulation_steps=9), progress=False
        ).train()


def test_store_size_must_match_model(monkeypatch, store, tmp_path):
    def make(cfg):
        m = FakeModel(cfg)
        m.image_size = 32
        return m

    monkeypatch.setattr(tempstop.model, "create_unified_model", make, raising=False)
    with pytest.raises(TrainingError, match="16 px frames but the model takes 32 px"):
        UnifiedModelTrainer(_cfg(store, tmp_path / "a"), progress=False).train()


class _NanOn(FakeModel):
    """Loss is NaN whenever the batch holds one of ``bad`` videos (by mean pixel value)."""

    nan_always = False

    def compute_training_loss(self, video, *args, **kw):
        out = super().compute_training_loss(video, *args, **kw)
        if self.nan_always or (self.training and self._calls == 1):
            out = {k: v * float("nan") for k, v in out.items()}
        self._calls += self.training
        return out

    _calls = 0


def test_one_nan_loss_skips_the_step_with_a_warning(monkeypatch, store, tmp_path, caplog):
    monkeypatch.setattr(tempstop.model, "create_unified_model", lambda cfg: _NanOn(cfg), raising=False)
    with caplog.at_level(logging.WARNING):
        summary = UnifiedModelTrainer(_cfg(store, tmp_path / "a"), progress=False).train()
    assert summary["epochs"] == 2
    warnings = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert len(warnings) == 1 and "epoch 1, step 2, videos ['v" in warnings[0]
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)


def test_nan_losses_in_a_row_stop_the_run(monkeypatch, store, tmp_path):
    class Always(_NanOn):
        nan_always = True

    monkeypatch.setattr(tempstop.model, "create_unified_model", lambda cfg: Always(cfg), raising=False)
    with pytest.raises(TrainingError, match=r"3 non-finite losses in a row .* epoch 1, step 3, videos \['v"):
        UnifiedModelTrainer(_cfg(store, tmp_path / "a", max_bad_steps=3), progress=False).train()


def test_plan_phases():
    assert plan_phases("joint", 10, 0.5)[0].mode == "joint"
    seq = plan_phases("sequential", 10, 0.3)
    assert [(p.mode, p.start, p.end) for p in seq] == [("tempme_only", 0, 3), ("stop_only", 3, 10)]
    assert [(p.start, p.end) for p in plan_phases("sequential", 2, 0.9)] == [(0, 1), (1, 2)]


def test_sequential_freezes_the_other_group(fake_model, store, tmp_path):
    out = tmp_path / "ck"
    UnifiedModelTrainer(_cfg(store, out, mode="sequential", num_epochs=4), progress=False).train()
    history = json.loads((out / "history.json").read_text())
    assert [r["phase"] for r in history] == ["tempme_only"] * 2 + ["stop_only"] * 2
    states = [load_checkpoint(out / f"checkpoint_epoch_{e}.pth")["model"] for e in (1, 2, 3, 4)]
    # The fake's STOP part starts at zero: still zero after the TempMe phase.
    assert torch.equal(states[1]["prompt.weight"], torch.zeros_like(states[1]["prompt.weight"]))
    assert not torch.equal(states[3]["prompt.weight"], states[1]["prompt.weight"])  # and trains in phase 2
    for key in ("frame_proj.weight", "time_weight", "word.weight"):  # TempMe + backbone frozen in phase 2
        assert torch.equal(states[3][key], states[1][key])
    assert not torch.equal(
        states[1]["frame_proj.weight"], states[0]["frame_proj.weight"]
    )  # TempMe trains in phase 1


def _stop_after(epoch):
    class Stop(Exception):
        pass

    class Callback:
        def on_epoch_end(self, e, metrics):
            if e == epoch:
                raise Stop

    return Callback(), Stop


@pytest.mark.parametrize("mode,optimizer", [("joint", "AdamW"), ("sequential", "BertAdam")])
def test_resume_is_bit_identical_fake(fake_model, store, tmp_path, mode, optimizer):
    cfg = dict(mode=mode, optimizer=optimizer, num_epochs=4, save_every=1)
    straight = UnifiedModelTrainer(_cfg(store, tmp_path / "a", **cfg), progress=False)
    straight.train()
    cb, stop = _stop_after(2)
    with pytest.raises(stop):
        UnifiedModelTrainer(_cfg(store, tmp_path / "b", **cfg), callbacks=[cb], progress=False).train()
    resumed = UnifiedModelTrainer(
        _cfg(store, tmp_path / "b", **cfg), resume=tmp_path / "b" / "checkpoint_epoch_2.pth", progress=False
    )
    resumed.train()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((tmp_path / "a" / "history.json").read_text())
    hb = json.loads((tmp_path / "b" / "history.json").read_text())
    assert ha == hb


def test_resume_rejects_weights_only_and_other_model(fake_model, store, tmp_path):
    out = tmp_path / "a"
    UnifiedModelTrainer(_cfg(store, out, num_epochs=1), progress=False).train()
    with pytest.raises(TrainingError, match="weights only"):
        UnifiedModelTrainer(_cfg(store, out), resume=out / "best_model.pth", progress=False).train()
    other = _cfg(store, out).with_overrides({"model.max_words": 16})
    with pytest.raises(ValueError, match="model.max_words: 32 -> 16"):
        UnifiedModelTrainer(other, resume=out / "checkpoint_epoch_1.pth", progress=False).train()


def test_init_from_loads_weights_only(fake_model, store, tmp_path):
    UnifiedModelTrainer(_cfg(store, tmp_path / "a", num_epochs=1), progress=False).train()
    src = load_checkpoint(tmp_path / "a" / "best_model.pth")["model"]
    t = UnifiedModelTrainer(
        _cfg(store, tmp_path / "b", num_epochs=1, tempme_lr=0.0, stop_lr=0.0, backbone_lr=0.0),
        init_from=tmp_path / "a" / "best_model.pth",
        progress=False,
    )
    t.train()
    assert all(torch.equal(src[k], v) for k, v in t.model.state_dict().items())
