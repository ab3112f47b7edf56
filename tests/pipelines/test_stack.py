"""`tempstop stack`: a real PostgreSQL, MLflow server and Prefect server in a temporary folder:
up, health, a second up that changes nothing, the registry and a flow run stored in PostgreSQL,
down, and up again with everything still there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from servers import postgres_folder

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BIN = Path(sys.executable).parent


def test_stack_up_serves_mlflow_and_prefect_on_postgres_and_comes_back(tmp_path):
    from mlflow import MlflowClient

    from tempstop_pipelines.fleet.stack import Stack

    base = postgres_folder("tempstop-stack-")
    stack = Stack(base / "stack")
    try:
        state = stack.up()
        assert state["started"] == ["postgres", "mlflow", "prefect"]
        assert all(part["up"] for part in stack.status().values())
        start = time.monotonic()
        assert stack.up()["started"] == [] and time.monotonic() - start < 30  # already up: a no-op
        urls = stack.urls()
        assert (stack.root / "credentials.json").stat().st_mode & 0o777 == 0o600
        assert (stack.root / "logs" / "mlflow.log").is_file() and (stack.root / "logs" / "prefect.log").is_file()

        client = MlflowClient(urls["MLFLOW_TRACKING_URI"])
        experiment = client.create_experiment("stack-test")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "val_t2v_R1", 42.0)
        (tmp_path / "note.txt").write_text("artifact")
        env = {**os.environ, "MLFLOW_TRACKING_URI": urls["MLFLOW_TRACKING_URI"]}
        subprocess.run([str(BIN / "python"), "-c", "import mlflow, sys; mlflow.log_artifact(sys.argv[2], run_id=sys.argv[1])",
                        run.info.run_id, str(tmp_path / "note.txt")], env=env, check=True, timeout=120)  # fmt: skip
        assert list((stack.root / "artifacts").rglob("note.txt")), "artifacts are proxied into the stack folder"
        client.create_registered_model("stack-model")
        client.create_model_version("stack-model", f"runs:/{run.info.run_id}/note.txt", run.info.run_id)

        flow = "from prefect import flow\n@flow(name='stack-check')\ndef f():\n    return 7\nprint(f())\n"
        env = {**os.environ, "PREFECT_API_URL": urls["PREFECT_API_URL"], "PREFECT_HOME": str(tmp_path / "ph")}
        out = subprocess.run([str(BIN / "python"), "-c", flow], env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0 and out.stdout.strip().endswith("7"), out.stderr[-2000:]
        runs = requests.post(f"{urls['PREFECT_API_URL']}/flow_runs/filter", json={}, timeout=10).json()
        assert any(r["state_type"] == "COMPLETED" for r in runs)

        assert stack.down() == ["prefect", "mlflow", "postgres"]
        assert not any(part["up"] for part in stack.status().values())
        with pytest.raises(requests.RequestException):
            requests.get(f"{urls['MLFLOW_TRACKING_URI']}/health", timeout=2)

        assert stack.up()["started"] == ["postgres", "mlflow", "prefect"]
        again = MlflowClient(stack.urls()["MLFLOW_TRACKING_URI"])
        assert again.get_run(run.info.run_id).data.metrics["val_t2v_R1"] == 42.0  # kept in PostgreSQL
        assert again.get_model_version("stack-model", "1").run_id == run.info.run_id
    finally:
        stack.down()
        shutil.rmtree(base, ignore_errors=True)
