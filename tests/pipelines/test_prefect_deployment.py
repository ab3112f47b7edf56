"""A real Prefect server, a process work pool and worker, prefect.yaml's deployments, one run.

The same path a GPU machine takes (`make prefect-server`, `make deploy`, `make prefect-worker`),
on localhost with a temporary PREFECT_HOME and database, at smoke size on the CPU.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.integration]
FLOW, DEPLOYMENT, POOL = "tempstop-retrain", "joint-on-demand", "gpu-pool"
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_prefect_yaml_declares_the_deployments():
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in doc["deployments"]}
    nightly = deployments["nightly-retrain"]
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    assert deployments[DEPLOYMENT]["parameters"]["mode"] == "joint"
    for name, d in deployments.items():
        assert d["work_pool"]["name"] == POOL
        flow = "reindex.py:reindex_flow" if name == "reindex-on-promotion" else "retrain.py:retrain"
        if name.startswith("train-node-"):
            flow = "train_node.py:train_node"
        assert d["entrypoint"] == f"pipelines/flows/{flow}"
    trigger = deployments["reindex-on-promotion"]["triggers"][0]
    assert trigger["expect"] == ["tempstop.champion.moved"] and "event.payload.version" in trigger["parameters"]["model"]
    multi = deployments["joint-multi-gpu"]["work_pool"]["job_variables"]["env"]
    assert multi["CUDA_VISIBLE_DEVICES"] == "0,1,2,3" and multi["TEMPSTOP_NPROC"] == "4"
    nodes = [deployments[f"train-node-{r}"]["work_pool"] for r in (0, 1)]
    assert [n["work_queue_name"] for n in nodes] == ["node-0", "node-1"]
    envs = [n["job_variables"]["env"] for n in nodes]
    assert [e["TEMPSTOP_NODE_RANK"] for e in envs] == ["0", "1"] and {e["TEMPSTOP_NNODES"] for e in envs} == {"2"}
    assert envs[0]["TEMPSTOP_RDZV_ENDPOINT"] == envs[1]["TEMPSTOP_RDZV_ENDPOINT"]


def test_deployment_runs_to_completion_on_a_process_worker(tmp_path, helpers, prefect_tools):
    pt = prefect_tools
    project = helpers.copy_project(tmp_path / "project", helpers.smoke_overrides())
    env = pt.env(tmp_path, project, helpers.free_port())
    api = env["PREFECT_API_URL"]
    env.pop("MLFLOW_TRACKING_URI", None)
    server = worker = None
    try:
        server = pt.start_server(env, tmp_path / "server.log")
        pt.cli(["work-pool", "create", POOL, "--type", "process"], env, project)
        pt.cli(["--no-prompt", "deploy", "--all"], env, project)  # every deployment of prefect.yaml
        deployment = requests.get(f"{api}/deployments/name/{FLOW}/{DEPLOYMENT}", timeout=10).json()
        assert deployment["work_pool_name"] == POOL
        nightly = requests.get(f"{api}/deployments/name/{FLOW}/nightly-retrain", timeout=10).json()
        assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"

        created = requests.post(
            f"{api}/deployments/{deployment['id']}/create_flow_run",
            json={"parameters": {"mode": "joint", "smoke": True}},
            timeout=10,
        )
        assert created.ok, created.text
        run_id = created.json()["id"]

        worker = pt.start_process([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process",
                                   "--limit", "1"], env, tmp_path / "worker.log")  # fmt: skip
        deadline = time.monotonic() + 420
        while True:
            state = requests.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert worker.poll() is None, f"worker exited:\n{pt.tail(tmp_path / 'worker.log')}"
            assert time.monotonic() < deadline, f"run still {state['type']}:\n{pt.tail(tmp_path / 'worker.log')}"
            time.sleep(3)
        assert state["type"] == "COMPLETED", f"{state}\n{pt.tail(tmp_path / 'worker.log', 8000)}"
    finally:
        for proc in (worker, server):
            pt.stop_process(proc)

    evaluation = json.loads((project / "metrics/eval.json").read_text())
    assert 0 <= evaluation["t2v"]["R1"] <= 100
    promotion = json.loads((project / "reports/promote.json").read_text())
    assert promotion["action"] == "promoted to champion"
    assert (project / "outputs/index/manifest.json").is_file()  # the flow's index stage, as dvc.yaml's
