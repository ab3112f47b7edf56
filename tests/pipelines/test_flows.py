"""The Prefect flow under prefect_test_harness, at smoke size (real stages, no stubs)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest


@pytest.mark.slow
def test_unreachable_tracking_fails_the_flow_before_any_stage(harness, project, monkeypatch):
    from tempstop_pipelines.flows.retrain import retrain
    from tempstop_pipelines.tracking.runs import TrackingError

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
        "index",
        "promote",
    }
    assert (project / "outputs/index/manifest.json").is_file()  # the test split, indexed as dvc.yaml's stage does

    mlflow = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    champion = mlflow.get_model_version_by_alias("tempstop-unified", "champion")
    assert champion.tags["mode"] == "joint" and "pipeline_run" in champion.tags


@pytest.mark.slow
@pytest.mark.integration
def test_make_smoke_runs_in_a_scratch_folder_and_leaves_the_checkout_alone(helpers, tmp_path):
    checkout = helpers.copy_project(tmp_path / "checkout")  # full-size params, as a user's
    committed = (checkout / "metrics/eval.json").read_bytes()
    scratch = tmp_path / "scratch"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"SMOKE_DIR": str(scratch)}
    # -o setup: the test's own environment is the venv (VENV), nothing to install.
    proc = subprocess.run(["make", "-o", "setup", "smoke", f"VENV={helpers.BIN.parent}"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    evaluation = json.loads((scratch / "metrics/eval.json").read_text())
    assert evaluation["num_videos"] == 8  # smoke size: 2 test quadruples
    from mlflow import MlflowClient  # imported where used, as the module's other tests do

    mlflow = MlflowClient(f"sqlite:///{scratch / 'mlflow.db'}")
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("tempstop").experiment_id])
    assert runs and all(r.data.tags["git_commit"] != "unknown" for r in runs)  # the code that ran
    assert (checkout / "metrics/eval.json").read_bytes() == committed
    for made in ("data/demo", "data/frames", "outputs", "mlflow.db", "reports"):
        assert not (checkout / made).exists(), made
    status = subprocess.run(["git", "status", "--porcelain"], cwd=checkout, capture_output=True, text=True)
    assert status.stdout == ""
