"""MLflow tracking, registry and promotion (pipelines/tracking/runs.py, tempstop promote), and
loading a registered version (tempstop.inference.sources)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tempstop.config import UnifiedModelConfig
from tempstop.inference.sources import CheckpointError, resolve_checkpoint
from tempstop_pipelines.stages import promote as promote_stage
from tempstop_pipelines.tracking.runs import (
    Tracker,
    TrackingError,
    check_tracking,
    open_tracker,
    sanitize_metric_name,
    selection_score,
    tracking_uri,
)


def _cfg(**tracking):
    return UnifiedModelConfig().with_overrides({f"tracking.{k}": v for k, v in tracking.items()})


def _checkpoint(path, value: float):
    import torch

    torch.save({"format": "tempstop-checkpoint/1", "model": {"w": torch.full((2,), value)}}, path)
    return path


def test_unreachable_server_is_reported_fast_naming_the_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(uri="http://127.0.0.1:1")
    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"http://127\.0\.0\.1:1"):
        check_tracking(cfg, timeout=2)
    assert time.monotonic() - start < 5


def test_env_uri_overrides_params(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    with pytest.raises(TrackingError, match="127.0.0.1:1"):
        check_tracking(_cfg(uri="sqlite:///mlflow.db"), timeout=2)


def test_disabled_tracking_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(enabled=False, uri="http://127.0.0.1:1")
    check_tracking(cfg)  # not even checked
    with open_tracker(cfg, job="train") as tracker:
        assert type(tracker) is Tracker
        tracker.log_metrics({"a": 1.0}, step=0)
        assert tracker.register_checkpoint("missing.pth", {}) is None
    assert list(tmp_path.iterdir()) == []


def test_metric_names_and_selection_score():
    assert sanitize_metric_name("t2v_R@1") == "t2v_R_at_1"
    assert selection_score({"val_t2v_R1": 41.0, "t2v_R1": 3.0}) == 41.0
    assert selection_score({"t2v": {"R1": 12.5}}) == 12.5
    assert selection_score({"loss": 1.0}) is None


def test_run_records_params_tags_config_metrics(mlflow_uri):
    from mlflow import MlflowClient

    cfg = _cfg()
    with open_tracker(cfg, job="train", run_name="unit", tags={"stage": "train_stop", "phase": "stop"}) as tracker:
        tracker.log_params(cfg.flat())  # what the train stage does again: must not fail
        for epoch in range(2):
            tracker.log_metrics(
                {"train_loss": 1.0 / (epoch + 1), "val_t2v_R@1": 10.0 * epoch, "phase": "x"}, step=epoch
            )
        run_id = tracker.run_id
    client = MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["training.mode"] == "joint"
    assert run.data.params["model.tempme.clipme_k"] == "[2, 2, 3]"
    assert {"git_commit", "mode", "job"} <= set(run.data.tags)
    assert (run.data.tags["stage"], run.data.tags["phase"]) == ("train_stop", "stop")  # given as arguments
    assert [m.value for m in client.get_metric_history(run_id, "val_t2v_R_at_1")] == [0.0, 10.0]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert "config.json" in artifacts


def test_failed_block_marks_run_failed(mlflow_uri):
    from mlflow import MlflowClient

    with pytest.raises(RuntimeError), open_tracker(_cfg(), job="train") as tracker:
        run_id = tracker.run_id
        raise RuntimeError("diverged")
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "FAILED"


def _register(tmp_path, cfg, score: float) -> str:
    ckpt = _checkpoint(tmp_path / f"best_{score}.pth", score)
    with open_tracker(cfg, job="train") as tracker:
        return tracker.register_checkpoint(ckpt, {"val_t2v_R1": score, "val_loss": 1.0})


def test_register_promote_and_resolve(mlflow_uri, tmp_path, capsys):
    import torch
    from mlflow import MlflowClient

    cfg = _cfg(registered_model="unit-model")
    client = MlflowClient(mlflow_uri)
    v1 = _register(tmp_path, cfg, 40.0)
    assert client.get_model_version("unit-model", v1).tags["val_t2v_R1"] == "40"

    first = promote_stage.promote(cfg)
    assert (first["version"], first["action"]) == (v1, "promoted to champion")

    v2 = _register(tmp_path, cfg, 30.0)
    second = promote_stage.promote(cfg)
    assert second["action"] == "kept as challenger"
    assert str(client.get_model_version_by_alias("unit-model", "champion").version) == v1
    assert str(client.get_model_version_by_alias("unit-model", "challenger").version) == v2

    v3 = _register(tmp_path, cfg, 50.0)
    job = promote_stage.Promote(name="unit-model", json_out=str(tmp_path / "p.json"))
    assert promote_stage.run(cfg, job) == 0
    out = capsys.readouterr().out
    assert "50.0000" in out and "40.0000" in out and "promoted to champion" in out
    assert json.loads((tmp_path / "p.json").read_text())["champion"] == v3
    assert str(client.get_model_version_by_alias("unit-model", "challenger").version) == v1

    uri = tracking_uri(cfg)
    path = resolve_checkpoint("models:/unit-model@champion", uri, cache_dir=tmp_path / "cache")
    assert torch.load(path, weights_only=True)["model"]["w"][0].item() == 50.0
    # cached: a second resolution does not download again
    assert resolve_checkpoint("models:/unit-model@champion", uri, cache_dir=tmp_path / "cache") == path
    assert resolve_checkpoint("outputs/x.pth") == Path("outputs/x.pth")
    with pytest.raises(CheckpointError, match="unit-model@nope"):
        resolve_checkpoint("models:/unit-model@nope", uri, cache_dir=tmp_path / "cache")


