"""`dvc repro` end to end at smoke size, then `dvc exp run -S training.mode=joint`.

Checks what the pipeline promises: the stages run in a fresh clone, sequential training
chains the two stages (weights handed over), the metrics and plots exist, MLflow recorded
runs and registered versions, and a mode change retrains and re-evaluates only what it must.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _run(args, cwd, timeout=600, with_stderr=False):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr if with_stderr else proc.stdout


def _git_commit(root, message):
    git = ["git", "-c", "user.name=tests", "-c", "user.email=tests@localhost"]
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", message], cwd=root, check=True)


def test_dvc_repro_sequential_then_joint_experiment(project, write_params):
    from mlflow import MlflowClient

    write_params(project / "params.yaml", {"training.mode": "sequential", "training.num_epochs": 2})
    _git_commit(project, "sequential smoke")

    start = time.monotonic()
    out = _run(["dvc", "repro"], project, with_stderr=True)
    repro_seconds = time.monotonic() - start
    for stage in ("demo_data", "validate", "extract_frames", "train_tempme", "train_stop", "evaluate", "index"):
        assert f"Running stage '{stage}'" in out, stage
    assert "Could not load library" not in out and "Loading faiss" not in out  # no loader chatter

    tempme = json.loads((project / "outputs/tempme/phase.json").read_text())
    stop = json.loads((project / "outputs/stop/phase.json").read_text())
    assert (tempme["action"], tempme["train_mode"], tempme["epochs"]) == ("train", "tempme_only", 1)
    assert (stop["action"], stop["train_mode"], stop["epochs"]) == ("train", "stop_only", 1)
    assert stop["init_from"] == "outputs/tempme/best_model.pth"

    evaluation = json.loads((project / "metrics/eval.json").read_text())
    assert evaluation["split"] == "test" and 0 <= evaluation["t2v"]["R1"] <= 100
    for name in ("recall_at_k.png", "training_curves.png", "recall_at_k.csv", "training_curves.csv"):
        assert (project / "metrics/plots" / name).stat().st_size > 0, name
    curves = (project / "metrics/plots/training_curves.csv").read_text().splitlines()
    assert len(curves) == 3 and "tempme_only" in curves[1] and "stop_only" in curves[2]
    assert "t2v.R1" in _run(["dvc", "metrics", "show"], project)
    hits = json.loads(_run(["tempstop", "search", "--index", "outputs/index", "--json", "a red circle"], project))
    assert len(hits["hits"]) == 5 and hits["hits"][0]["path"].endswith(".mp4")  # the index stage's test split

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tempstop").experiment_id])
    stages = sorted(r.data.tags.get("stage", r.data.tags["job"]) for r in runs)
    assert stages == ["evaluate", "train_stop", "train_tempme"]
    train_run = next(r for r in runs if r.data.tags.get("stage") == "train_stop")
    assert train_run.data.tags["data_version"] and train_run.data.tags["git_commit"] != "unknown"
    assert train_run.data.params["training.mode"] == "sequential"  # the run's whole config ...
    assert (train_run.data.tags["train_mode"], train_run.data.tags["phase"]) == ("stop_only", "stop")  # ... its part
    assert "val_t2v_R1" in train_run.data.metrics
    versions = client.search_model_versions("name='tempstop-unified'")
    assert len(versions) == 2 and all("val_t2v_R1" in v.tags for v in versions)

    # Every output is the same when a stage runs again on the same inputs: forced reruns of the
    # frames and of a training stage leave nothing for DVC to redo downstream.
    _run(["dvc", "repro", "--force", "--single-item", "extract_frames"], project)
    _run(["dvc", "repro", "--force", "--single-item", "train_stop"], project)
    assert "up to date" in _run(["dvc", "status"], project)

    # Promotion, then the registry URI works wherever a checkpoint path does.
    assert "promoted to champion" in _run(["tempstop", "promote"], project)
    _run(["tempstop", "evaluate", "--checkpoint", "models:/tempstop-unified@champion", "--data",
          "data/frames/demo", "--json", "reports/champion.json", "--no-track"], project)  # fmt: skip
    assert (
        json.loads((project / "reports/champion.json").read_text())["num_videos"] == evaluation["num_videos"]
    )

    # A mode change retrains both stages and re-evaluates; data stages come from the cache.
    _run(["git", "add", "dvc.lock"], project)
    out = _run(["dvc", "exp", "run", "-S", "training.mode=joint", "-S", "training.num_epochs=1"], project)
    assert "Running stage 'train_tempme'" in out and "Running stage 'evaluate'" in out
    assert "Running stage 'extract_frames'" not in out
    stop = json.loads((project / "outputs/stop/phase.json").read_text())
    assert (stop["action"], stop["mode"]) == ("pass", "joint")
    assert json.loads((project / "outputs/stop/history.json").read_text()) == []
    shown = _run(["dvc", "exp", "show", "--no-pager", "--csv"], project)
    assert "joint" in shown and "sequential" in shown
    print(f"dvc repro (sequential, smoke): {repro_seconds:.0f} s")
