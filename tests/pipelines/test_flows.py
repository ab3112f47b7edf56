"""The Prefect flow under prefect_test_harness, at smoke size (real stages, no stubs)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_unreachable_tracking_fails_the_flow_before_any_stage(harness, project, monkeypatch):
    from tempstop_pipelines.flows.retrain import retrain
    from tempstop_pipelines.tracking import TrackingError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    with pytest.raises(TrackingError, match=r"127\.0\.0\.1:1"):
        retrain(mode="joint", smoke=True)
    assert not (project / "data" / "demo").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_joint_flow_runs_every_stage_and_promotes(harness, project):
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client

    from tempstop_pipelines.flows.retrain import retrain

    state = retrain(mode="joint", smoke=True, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["mode"] == "joint"
    assert 0 <= result["evaluation"]["t2v"]["R1"] <= 100
    assert result["promotion"]["action"] == "promoted to champion"

    # joint trains once: no pass-through stage, the model is evaluated where it was trained
    assert not (project / "outputs" / "stop").exists()
    assert json.loads((project / "outputs/tempme/phase.json").read_text())["train_mode"] == "joint"
    assert (project / "metrics/plots/training_curves.png").is_file()

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs()
    names = {r.name for r in runs if r.flow_run_id == state.state_details.flow_run_id}
    assert names == {
        "demo_data",
        "validate",
        "extract_frames",
        "train_tempme",
        "evaluate",
        "plots",
        "promote",
    }

    mlflow = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    champion = mlflow.get_model_version_by_alias("tempstop-unified", "champion")
    assert champion.tags["mode"] == "joint" and "pipeline_run" in champion.tags
