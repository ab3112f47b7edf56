"""The train / evaluate / index / search commands end to end on the stand-in model (fast)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from training_helpers import FakeModel, write_store

import tempstop.model
from tempstop_pipelines.cli import main as cli


@pytest.fixture
def fake_model(monkeypatch):
    monkeypatch.setattr(tempstop.model, "create_unified_model", lambda cfg: FakeModel(cfg), raising=False)


@pytest.fixture
def trained(fake_model, tmp_path_factory):
    """A checkpoint trained for one epoch by ``tempstop train`` (tracking off)."""
    root = tmp_path_factory.mktemp("stage")
    store = write_store(root / "data", videos=16)
    out = root / "ck"
    rc = cli(
        [
            "train", "--mode", "joint", "--seed", "3", "--epochs", "1", "--checkpoint-dir", str(out), "--no-progress",
            "--summary", str(root / "summary.json"),
            "--set", f"training.train_data_path={store}", "--set", f"training.val_data_path={store}",
            "--set", "training.batch_size=4", "--set", "data.datatype=demo", "--set", "tracking.enabled=false",
        ]
    )  # fmt: skip
    assert rc == 0
    return root, store, out


def test_train_command_outputs(trained):
    root, _, out = trained
    summary = json.loads((root / "summary.json").read_text())
    assert summary["epochs"] == 1 and "best_val_t2v_R1" in summary
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["seed"] == 3 and cfg["training"]["num_epochs"] == 1


def test_train_command_reports_setup_errors(fake_model, tmp_path, capsys):
    rc = cli(["train", "--no-progress", "--set", f"training.train_data_path={tmp_path / 'missing'}",
              "--set", "tracking.enabled=false"])  # fmt: skip
    assert rc == 2
    assert "training.train_data_path" in capsys.readouterr().err


def test_evaluate_command_writes_json(trained, tmp_path, capsys):
    _, store, out = trained
    report = tmp_path / "eval.json"
    rc = cli(["evaluate", "--checkpoint", str(out / "best_model.pth"), "--data", str(store), "--json", str(report),
              "--dsl", "--no-track", "--no-progress"])  # fmt: skip
    assert rc == 0
    result = json.loads(report.read_text())
    assert result["num_videos"] == 16 and result["num_queries"] == 32  # two captions per video
    assert result["datatype"] == "demo" and result["checkpoint"].endswith("best_model.pth")
    for name in ("t2v", "v2t", "t2v_dsl", "v2t_dsl"):
        assert set(result[name]) == {"R1", "R5", "R10", "MdR", "MnR"}
    assert len(result["recall_curve"]["t2v"]) == 16
    assert not any("@" in key for part in result.values() if isinstance(part, dict) for key in part)
    table = capsys.readouterr().out
    assert "t2v_dsl" in table and "R@1" in table


def test_evaluate_paragraph_level(trained, tmp_path):
    _, store, out = trained
    report = tmp_path / "eval.json"
    rc = cli(["evaluate", "--checkpoint", str(out / "best_model.pth"), "--data", str(store), "--json", str(report),
              "--datatype", "didemo", "--no-track", "--no-progress"])  # fmt: skip
    assert rc == 0
    result = json.loads(report.read_text())
    assert result["level"] == "paragraph" and result["num_queries"] == 16


def test_evaluate_rejects_bad_inputs(trained, tmp_path, capsys):
    _, store, out = trained
    assert (
        cli(["evaluate", "--checkpoint", str(tmp_path / "none.pth"), "--data", str(store), "--no-track"]) == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err
    assert (
        cli(["evaluate", "--checkpoint", str(out / "best_model.pth"), "--data", str(tmp_path), "--no-track"])
        == 2
    )
    assert "dataset root" in capsys.readouterr().err


def test_indexing_a_split_twice_writes_the_same_bytes(trained, tmp_path):
    # The pipeline's `index` stage is a DVC output: nothing in it may depend on when it ran.
    _, store, out = trained
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        assert cli(["index", "--checkpoint", str(out / "best_model.pth"), "--data", str(store), "--out", str(folder),
                    "--no-progress", "--set", "tracking.enabled=false"]) == 0  # fmt: skip
        time.sleep(1.1)  # a timestamp to the second would differ between the two

    def contents(folder):
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    first, second = (contents(f) for f in folders)
    assert "manifest.json" in first and any(k.startswith("thumbs/") for k in first)
    assert first == second


def test_index_and_search(trained, tmp_path, capsys):
    _, store, out = trained
    rc = cli(["index", "--checkpoint", str(out / "best_model.pth"), "--data", str(store), "--out", str(tmp_path / "idx"),
              "--no-progress"])  # fmt: skip
    assert rc == 0
    from tempstop.collection.manifest import live_embeddings, read_manifest

    manifest = read_manifest(tmp_path / "idx")
    vectors = live_embeddings(tmp_path / "idx", manifest)
    assert vectors.shape == (16, 8) and manifest["source"] == "store"
    assert torch.allclose(torch.from_numpy(vectors).norm(dim=1), torch.ones(16), atol=1e-2)
    assert manifest["videos"][0]["video_id"] == "v000"
    assert all((tmp_path / "idx" / v["thumbnail"]).is_file() for v in manifest["videos"])
    capsys.readouterr()
    assert (
        cli(
            [
                "search",
                "--index",
                str(tmp_path / "idx"),
                "red",
                "circle",
                "moves",
                "left",
                "--top-k",
                "3",
                "--json",
            ]
        )
        == 0
    )
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_search_reads_queries_from_stdin(trained, tmp_path, capsys, monkeypatch):
    import io

    _, store, out = trained
    assert cli(["index", "--checkpoint", str(out / "best_model.pth"), "--data", str(store),
                "--out", str(tmp_path / "i"), "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("red circle\n\nblue square moves up\n"))
    assert cli(["search", "--index", str(tmp_path / "i"), "--top-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("query:") == 2 and "  1. " in printed


def test_search_reports_missing_index(tmp_path, capsys):
    assert cli(["search", "--index", str(tmp_path / "nothing"), "query"]) == 2
    assert "no collection index here" in capsys.readouterr().err


def test_train_unified_model_script_uses_the_guide_config(fake_model, tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "train_unified_model.py"
    spec = importlib.util.spec_from_file_location("train_unified_model", script)
    train_unified_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_unified_model)
    store = write_store(tmp_path / "data", videos=8)
    config = tmp_path / "my_training_config.json"
    config.write_text(json.dumps({
        "training": {"training_mode": "sequential", "tempme_lr": 1e-4, "stop_lr": 1e-5, "batch_size": 4, "num_epochs": 2,
                     "datatype": "demo", "checkpoint_dir": str(tmp_path / "ck"), "train_data_path": str(store),
                     "val_data_path": str(store)},
        "tracking": {"enabled": False},
    }))  # fmt: skip
    assert (
        train_unified_model.main(
            ["--config", str(config), "--mode", "joint", "--seed", "42", "--no-progress"]
        )
        == 0
    )
    history = json.loads((tmp_path / "ck" / "history.json").read_text())
    assert [r["phase"] for r in history] == ["joint", "joint"]  # --mode overrides training_mode


def test_evaluate_resolves_registry_uris(trained, tmp_path, monkeypatch):
    import tempstop.inference.sources

    _, store, out = trained
    seen = []

    def download(uri, tracking_uri, cache_dir):  # the registry download, with the params' tracking URI
        seen.append((uri, tracking_uri))
        return out / "best_model.pth", "7"

    monkeypatch.setattr(tempstop.inference.sources, "_download", download)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    report = tmp_path / "eval.json"
    rc = cli(["evaluate", "--checkpoint", "models:/tempstop-unified@champion", "--data", str(store),
              "--json", str(report), "--no-track", "--no-progress", "--set", "tracking.uri=sqlite:///x.db"])  # fmt: skip
    assert rc == 0 and seen == [("models:/tempstop-unified@champion", "sqlite:///x.db")]
    assert json.loads(report.read_text())["checkpoint"] == "models:/tempstop-unified@champion"


def test_train_command_talks_to_the_tracker(fake_model, tmp_path, monkeypatch):
    """check_tracking before training, metrics every epoch, the best checkpoint registered."""
    from contextlib import contextmanager

    import tempstop_pipelines.tracking.runs

    calls = []

    class Recorder:
        def log_metrics(self, metrics, step=None):
            calls.append(("metrics", step, metrics["val_t2v_R1"]))

        def log_artifact(self, path, artifact_path=None):
            calls.append(("artifact", str(path).rsplit("/", 1)[-1]))

        def register_checkpoint(self, path, metrics):
            calls.append(("register", str(path).rsplit("/", 1)[-1], "val_t2v_R1" in metrics))
            return "7"

    @contextmanager
    def open_tracker(cfg, job, run_name=None, tags=None):
        calls.append(("open", job, run_name, tags))
        yield Recorder()

    monkeypatch.setattr(tempstop_pipelines.tracking.runs, "check_tracking", lambda cfg: calls.append(("check",)))
    monkeypatch.setattr(tempstop_pipelines.tracking.runs, "open_tracker", open_tracker)
    store = write_store(tmp_path / "data", videos=8)
    rc = cli(["train", "--mode", "joint", "--seed", "5", "--epochs", "2", "--no-progress",
              "--checkpoint-dir", str(tmp_path / "ck"), "--summary", str(tmp_path / "s.json"),
              "--set", f"training.train_data_path={store}", "--set", f"training.val_data_path={store}",
              "--set", "training.batch_size=4", "--tag", "owner=me"])  # fmt: skip
    assert rc == 0
    kinds = [c[0] for c in calls]
    assert kinds == ["check", "open", "metrics", "metrics", "artifact", "register"]
    assert calls[1] == ("open", "train", "joint-seed5", {"owner": "me", "train_mode": "joint"})
    assert [c[1] for c in calls if c[0] == "metrics"] == [1, 2]
    assert calls[-1] == ("register", "best_model.pth", True)
    assert json.loads((tmp_path / "s.json").read_text())["registered_version"] == "7"


def test_tensorboard_logs_come_from_the_cli_callback(trained):
    """TensorBoard is a callback of `tempstop train`: per-step loss and per-epoch metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, out = trained
    events = EventAccumulator(str(out / "logs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/grad_norm", "val/val_t2v_R1", "lr/lr_tempme", "epoch/train_loss"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]  # 16 videos, batch 4


def test_the_trainer_sets_up_every_attribute_in_init(fake_model, tmp_path):
    """The loop's state is one dataclass and every attribute exists from __init__ on."""
    from tempstop.config import ProjectConfig
    from tempstop.training.state import LoopState
    from tempstop.training.trainer import UnifiedModelTrainer

    store = write_store(tmp_path / "data", videos=8)
    cfg = ProjectConfig().with_overrides({
        "training.train_data_path": str(store), "training.val_data_path": str(store), "training.num_epochs": 1,
        "training.batch_size": 4, "training.checkpoint_dir": str(tmp_path / "ck"), "tracking.enabled": False})  # fmt: skip
    trainer = UnifiedModelTrainer(cfg, progress=False)
    before = set(vars(trainer))
    trainer.train()
    assert set(vars(trainer)) == before
    assert isinstance(trainer.state, LoopState) and trainer.state.epoch == 1 and trainer.state.step == 2


def test_train_phase_trains_its_phases_with_tags_as_arguments(fake_model, tmp_path, monkeypatch):
    """The DVC stage calls run_training in this process: its phases, its tags, no argv rebuilt."""
    from tempstop_pipelines.training import run as training

    seen = {}
    real = training.run_training

    def spy(cfg, **kw):
        seen.update(kw, cfg=cfg)
        return real(cfg, **kw)

    monkeypatch.setattr(training, "run_training", spy)
    store = write_store(tmp_path / "frames", videos=8)
    (tmp_path / "frames" / "train").symlink_to(store)
    (tmp_path / "frames" / "val").symlink_to(store)
    args = ["--set", "training.mode=sequential", "--set", "training.num_epochs=4", "--set", "training.batch_size=4",
            "--set", "tracking.enabled=false", "--no-progress"]  # fmt: skip
    assert cli(["train-phase", "tempme", "--frames", str(tmp_path / "frames"), "--out", str(tmp_path / "t"), *args]) == 0
    assert cli(["train-phase", "stop", "--frames", str(tmp_path / "frames"), "--init", str(tmp_path / "t"),
                "--out", str(tmp_path / "s"), *args, "--tag", "pipeline_run=r1"]) == 0  # fmt: skip
    assert seen["tags"] == {"pipeline_run": "r1", "stage": "train_stop", "phase": "stop"}
    assert [(p.mode, p.start, p.end) for p in seen["phases"]] == [("stop_only", 2, 4)]
    assert seen["init_from"] == str(tmp_path / "t" / "best_model.pth")
    assert seen["cfg"].training.mode == "sequential" and seen["cfg"].training.checkpoint_dir == str(tmp_path / "s")
    history = json.loads((tmp_path / "s" / "history.json").read_text())
    assert [(r["epoch"], r["phase"]) for r in history] == [(3, "stop_only"), (4, "stop_only")]  # epochs run on
    phase = json.loads((tmp_path / "s" / "phase.json").read_text())
    assert (phase["action"], phase["train_mode"], phase["epochs"]) == ("train", "stop_only", 2)
