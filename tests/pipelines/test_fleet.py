"""The team fleet on a real stack (PostgreSQL, MLflow server with proxied artifacts, Prefect
server; pipelines/fleet/stack.py) on loopback ports chosen free: two promotions at once, a training
killed with SIGKILL and retried, the tracking server killed mid-training.

Training here is the tiny stand-in model (tests/training/training_helpers.py) run by a driver
script in its own process, so that it can be killed like a worker; every other part (the
tracker, its outbox, the recovery, the locks, the servers) is the real one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import postgres_folder

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BIN = Path(sys.executable).parent
HELPERS = Path(__file__).resolve().parents[1] / "training"


@pytest.fixture(scope="module")
def stack():
    """One stack for the module, torn down after."""
    from tempstop_pipelines.fleet.stack import Stack

    base = postgres_folder("tempstop-fleet-")
    s = Stack(base / "stack")
    try:
        s.up(timeout_s=600)  # a loaded CI machine starts MLflow's workers slowly
        yield s
    finally:
        s.down()
        shutil.rmtree(base, ignore_errors=True)


def _env(stack, tmp_path: Path, prefect: bool) -> dict:
    urls = stack.urls()
    env = {**os.environ, "MLFLOW_TRACKING_URI": urls["MLFLOW_TRACKING_URI"], "PYTHONUNBUFFERED": "1",
           "PREFECT_HOME": str(tmp_path / "prefect-home")}  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    if prefect:
        env["PREFECT_API_URL"] = urls["PREFECT_API_URL"]
    return env


# ---- two promotions at once ------------------------------------------------------------------
RACE = """
import contextlib, json, sys, time
from tempstop.config import ProjectConfig
from tempstop_pipelines.fleet import locks
from tempstop_pipelines.stages import promote as P

version, start_at, delay, use_lock = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "lock"
real = P.decide
def slow_decide(*args, **kwargs):  # widens the window between reading the champion and moving it
    time.sleep(delay)
    return real(*args, **kwargs)
P.decide = slow_decide
if not use_lock:  # the control: what promotion did before the lock
    locks.hold = lambda *a, **k: contextlib.nullcontext("none")
cfg = ProjectConfig().with_overrides({"tracking.registered_model": "race", "tracking.experiment": "race"})
time.sleep(max(0.0, start_at - time.time()))
print(json.dumps(P.promote(cfg, version=version)))
"""


def _race(env: dict, tmp_path: Path, use_lock: bool) -> list[dict]:
    script = tmp_path / "race.py"
    script.write_text(RACE)
    start_at = time.time() + 30  # both processes are imported and waiting by then
    mode = "lock" if use_lock else "none"
    procs = [subprocess.Popen([sys.executable, str(script), version, str(start_at), str(delay), mode], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for version, delay in (("2", 2.0), ("3", 4.0))]  # fmt: skip
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_two_promotions_at_once_leave_the_better_champion(stack, tmp_path):
    """Versions 1, 2, 3 score 10, 30, 20; champion 1. Promoting 2 and 3 at the same moment
    (each decision takes seconds) must end with champion 2 and challenger 3 in any order. The
    control without the lock shows the race is real: 3, deciding last, overwrites 2."""
    from mlflow import MlflowClient

    env = _env(stack, tmp_path, prefect=True)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.create_experiment("race")
    client.create_registered_model("race")
    for score in (10, 30, 20):
        run = client.create_run(experiment)
        version = client.create_model_version("race", f"runs:/{run.info.run_id}/model", run.info.run_id)
        client.set_model_version_tag("race", version.version, "val_t2v_R1", str(score))

    def reset():
        client.set_registered_model_alias("race", "champion", "1")
        if "challenger" in client.get_registered_model("race").aliases:
            client.delete_registered_model_alias("race", "challenger")

    def aliases() -> dict:
        return {alias: str(v) for alias, v in client.get_registered_model("race").aliases.items()}

    reset()
    _race(env, tmp_path, use_lock=False)
    assert aliases()["champion"] == "3", "without the lock the later decision overwrites the better one"

    reset()
    results = _race(env, tmp_path, use_lock=True)
    assert aliases() == {"champion": "2", "challenger": "3"}
    assert {r["lock"] for r in results} == {"prefect"}  # a Prefect global concurrency limit, fleet-wide
    first, second = sorted(results, key=lambda r: r["champion_version"] != "1")
    assert first["champion_version"] == "1" and second["champion_version"] == first["version"]  # serialised


# ---- training in a process that can be killed --------------------------------------------------
DRIVER = """
import json, sys, time
sys.path.insert(0, {helpers!r})
import tempstop.model
import tempstop.training.trainer as T
from training_helpers import FakeModel
from tempstop.config import ProjectConfig
from tempstop_pipelines.fleet.recovery import recoverable
from tempstop_pipelines.training.run import TrainingRun, run_training_from

tempstop.model.create_unified_model = lambda cfg: FakeModel(cfg)
pause = float(sys.argv[2])
tags = json.loads(sys.argv[3])  # e.g. the Prefect flow run this training belongs to

class Pause:  # an epoch of the tiny model takes well under a second; a real one takes minutes
    def on_epoch_end(self, epoch, metrics):
        time.sleep(pause)

init = T.UnifiedModelTrainer.__init__
def init_with_pause(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self.callbacks.append(Pause())
T.UnifiedModelTrainer.__init__ = init_with_pause

with recoverable(TrainingRun(ProjectConfig.from_json(sys.argv[1]), progress=False, tags=tags)) as run:
    summary = run_training_from(run)
print(json.dumps({{"tags": run.tags, "resume": run.resume, "version": summary.get("registered_version")}}))
"""
EPOCHS = 6


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    sys.path.insert(0, str(HELPERS))
    from training_helpers import write_store

    return write_store(tmp_path_factory.mktemp("fleet-data"), videos=16)


def _driver(tmp_path: Path, store: Path, out: Path, experiment: str, **tracking):
    from tempstop.config import ProjectConfig

    cfg = ProjectConfig().with_overrides({
        "training.train_data_path": str(store), "training.val_data_path": str(store), "data.datatype": "demo",
        "training.checkpoint_dir": str(out), "training.batch_size": 4, "training.num_epochs": EPOCHS,
        "training.save_every": 1, "tracking.experiment": experiment, "tracking.registered_model": experiment,
        **{f"tracking.{k}": v for k, v in tracking.items()},
    })  # fmt: skip
    spec = tmp_path / f"{out.name}.json"
    cfg.to_json(spec)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(helpers=str(HELPERS)))
    return [sys.executable, str(script), str(spec)]


def _start(args: list[str], pause: float, env: dict, log: Path, tags: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([*args, str(pause), json.dumps(tags or {})], env=env, cwd=log.parent,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _running_flow_run(api: str) -> str:
    """A flow run in state RUNNING on the Prefect server at ``api`` (what a worker's run is
    while it trains); its id."""
    import requests

    flow = requests.post(f"{api}/flows/", json={"name": "victim-retrain"}, timeout=10)
    assert flow.ok, flow.text
    created = requests.post(f"{api}/flow_runs/", timeout=10, json={
        "flow_id": flow.json()["id"], "state": {"type": "RUNNING", "name": "Running"}})  # fmt: skip
    assert created.ok, created.text
    return created.json()["id"]


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 400) -> dict:
    proc.wait(timeout=timeout)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return json.loads(text.strip().splitlines()[-1])


def _wait_for(what: str, check, timeout: float, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert proc.poll() is None, f"exited before {what}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s:\n{log.read_text()[-4000:]}"
        time.sleep(0.5)


def _runs(client, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []


def _weights(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_a_killed_training_resumes_from_its_last_checkpoint_in_mlflow(stack, store, tmp_path):
    """SIGKILL mid-training (after epoch 2's checkpoint is in MLflow); the local outputs are
    lost too (the retry runs on another machine). The retry ends the dead run as FAILED and
    its Prefect flow run as CRASHED, downloads the checkpoint, resumes after it, and ends with
    the uninterrupted run's weights."""
    import requests
    from mlflow import MlflowClient

    # The fleet's lock: a Prefect global concurrency limit whose lease the server revokes about
    # a minute after its holder was killed (then the retry gets in).
    env = _env(stack, tmp_path, prefect=True)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    out, ref = tmp_path / "crash", tmp_path / "reference"
    crash_log, ref_log = tmp_path / "crash.log", tmp_path / "reference.log"
    flow_run = _running_flow_run(env["PREFECT_API_URL"])  # the dead attempt's flow run
    victim = _start(_driver(tmp_path, store, out, "crash"), 1.5, env, crash_log, {"pipeline_run": flow_run})
    reference = _start(_driver(tmp_path, store, ref, "crash-reference"), 0.0, env, ref_log)

    def checkpoint_2_recorded():
        runs = _runs(client, "crash")
        return runs and int(runs[0].data.tags.get("checkpoint_epoch", 0)) >= 2 and runs[0]

    dead = _wait_for("checkpoint 2 in MLflow", checkpoint_2_recorded, 300, victim, crash_log)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    killed_at = int(client.get_run(dead.info.run_id).data.tags["checkpoint_epoch"])
    assert killed_at < EPOCHS and client.get_run(dead.info.run_id).info.status == "RUNNING"
    shutil.rmtree(out)  # the retry's machine has none of the dead one's files

    retry_log = tmp_path / "retry.log"
    start = time.monotonic()
    retried = _finish(_start(_driver(tmp_path, store, out, "crash"), 0.0, env, retry_log), retry_log)
    print(f"retry after a kill at epoch {killed_at}: resumed from epoch {retried['tags']['resumed_from_epoch']}, "
          f"{time.monotonic() - start:.0f} s")  # fmt: skip
    assert retried["tags"]["resumed_from_epoch"] == str(killed_at)
    assert retried["tags"]["resumed_from_run"] == dead.info.run_id
    ended = client.get_run(dead.info.run_id)
    assert ended.info.status == "FAILED" and ended.data.tags["crashed"] == "true"
    assert ended.data.tags["pipeline_run"] == flow_run
    state = requests.get(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run}", timeout=10).json()["state"]
    assert state["type"] == "CRASHED", state
    new = client.get_run(_runs(client, "crash")[-1].info.run_id)
    assert new.info.status == "FINISHED" and new.info.run_id != dead.info.run_id
    epochs = [m.step for m in client.get_metric_history(new.info.run_id, "train_loss")]
    assert epochs == list(range(killed_at + 1, EPOCHS + 1)), "trained only the epochs after the checkpoint"

    _finish(reference, ref_log)
    for name in ("best_model.pth", f"checkpoint_epoch_{EPOCHS}.pth"):
        mine, theirs = _weights(out / name), _weights(ref / name)
        assert mine.keys() == theirs.keys()
        assert all(bool((mine[k] == theirs[k]).all()) for k in mine), f"{name} differs from the uninterrupted run"


def test_training_goes_on_while_the_tracking_server_is_down(stack, store, tmp_path):
    """The MLflow server is killed after epoch 1 and started again only once training wrote
    its last checkpoint: training never stopped, and every epoch's metrics reach the run."""
    from mlflow import MlflowClient

    env = _env(stack, tmp_path, prefect=False)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    out, log = tmp_path / "outage", tmp_path / "outage.log"
    proc = _start(_driver(tmp_path, store, out, "outage"), 1.0, env, log)

    def epoch_1_logged():
        runs = _runs(client, "outage")
        return runs and client.get_metric_history(runs[0].info.run_id, "train_loss") and runs[0]

    run = _wait_for("epoch 1 in MLflow", epoch_1_logged, 300, proc, log)
    os.killpg(stack.state()["pids"]["mlflow"], signal.SIGKILL)
    down_at = time.monotonic()
    _wait_for("the last checkpoint", lambda: (out / f"checkpoint_epoch_{EPOCHS}.pth").is_file(), 300, proc, log)
    trained_without_server = time.monotonic() - down_at
    assert proc.poll() is None, "the run waits for the server to send what it kept"
    assert "mlflow" in stack.up(timeout_s=600)["started"]
    result = _finish(proc, log)
    text = log.read_text()
    print(f"training went on {trained_without_server:.0f} s with the server down; all sent once it was back")
    assert "unreachable" in text and "is back" in text and "NOT recorded" not in text
    done = client.get_run(run.info.run_id)
    assert done.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == list(range(1, EPOCHS + 1))
    assert result["version"] is not None  # registered once the server was back


def test_the_end_of_a_run_names_what_the_server_never_got(stack, store, tmp_path):
    """A server that does not come back within tracking.flush_timeout_s: training still ends
    (exit 0, the model on disk) with one warning naming what was not recorded."""
    from mlflow import MlflowClient

    env = _env(stack, tmp_path, prefect=False)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    out, log = tmp_path / "lost", tmp_path / "lost.log"
    proc = _start(_driver(tmp_path, store, out, "lost", flush_timeout_s=5), 1.0, env, log)
    _wait_for("the run", lambda: _runs(client, "lost"), 300, proc, log)
    try:
        os.killpg(stack.state()["pids"]["mlflow"], signal.SIGKILL)
        result = _finish(proc, log)
    finally:
        stack.up(timeout_s=600)
    text = log.read_text()
    assert "NOT recorded" in text and "metrics of step" in text, text[-3000:]
    assert result["version"] is None and (out / "best_model.pth").is_file()


# ---- shared data through a DVC remote ----------------------------------------------------------
def test_a_second_checkout_pulls_the_data_stages_instead_of_recomputing(tmp_path, helpers, monkeypatch):
    """Checkout A computes the data stages and pushes them (with DVC's run cache) to a remote
    folder; a fresh checkout B that never saw them pulls them, runs none, and `dvc status`
    is clean for the data stages there."""
    from tempstop_pipelines.fleet.shared_data import DATA_STAGES, dvc, repro_and_push

    remote = tmp_path / "dvc-remote"
    remote.mkdir()
    checkouts = [helpers.copy_project(tmp_path / name, helpers.smoke_overrides()) for name in ("a", "b")]
    actions, took = {}, {}
    for root in checkouts:
        monkeypatch.chdir(root)
        assert dvc(["remote", "add", "--local", "-d", "shared", str(remote)]).returncode == 0
        start = time.monotonic()
        actions[root.name] = [repro_and_push(stage) for stage in DATA_STAGES]
        took[root.name] = time.monotonic() - start
    print(f"data stages: computed and pushed in {took['a']:.0f} s, pulled in {took['b']:.0f} s")
    # validate's report is not in DVC's cache (cache: false), so the run cache cannot restore the
    # stage: it checks the pulled data again (seconds), writes the same report, and the frames
    # that depend on it are pulled, not extracted.
    assert actions == {"a": ["ran"] * 3, "b": ["pulled", "ran", "pulled"]}
    status = dvc(["status", *DATA_STAGES], cwd=checkouts[1])
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    import yaml

    locks = [yaml.safe_load((root / "dvc.lock").read_text())["stages"] for root in checkouts]
    for stage in DATA_STAGES:
        assert locks[0][stage]["outs"] == locks[1][stage]["outs"]
    assert any((checkouts[1] / "data/frames/demo").rglob("*.npy"))


# ---- two workers, two checkouts, one registry --------------------------------------------------
def test_two_workers_train_at_once_into_one_registry(stack, tmp_path, helpers, prefect_tools):
    """Two process workers serving two checkouts (two GPU machines) each take a smoke-size run
    of `joint-on-demand` from gpu-pool at the same time; the data stages go through the stack's
    DVC remote; both versions land in the shared registry with their provenance tags, and the
    two promotions leave champion on the better one and challenger on the other."""
    import requests
    from mlflow import MlflowClient

    pt, urls = prefect_tools, stack.urls()
    api, remote = urls["PREFECT_API_URL"], stack.state()["dvc_remote"]
    checkouts = [helpers.copy_project(tmp_path / name, helpers.smoke_overrides()) for name in ("machine-a", "machine-b")]
    workers, envs = [], []
    for root in checkouts:
        env = {**pt.env(tmp_path / root.name, root, 1), "PREFECT_API_URL": api,
               "MLFLOW_TRACKING_URI": urls["MLFLOW_TRACKING_URI"]}  # fmt: skip
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL")
        subprocess.run([str(BIN / "dvc"), "remote", "add", "--local", "-d", "shared", remote], cwd=root, check=True)
        envs.append(env)
    try:
        pt.cli(["work-pool", "create", "gpu-pool", "--type", "process"], envs[0], checkouts[0])
        pt.cli(["--no-prompt", "deploy", "--name", "joint-on-demand"], envs[0], checkouts[0])
        deployment = requests.get(f"{api}/deployments/name/tempstop-retrain/joint-on-demand", timeout=10).json()
        run_ids = []
        for seed in (1, 2):
            created = requests.post(f"{api}/deployments/{deployment['id']}/create_flow_run", timeout=10, json={
                "parameters": {"mode": "joint", "smoke": True, "overrides": {"training.seed": seed}}})  # fmt: skip
            assert created.ok, created.text
            run_ids.append(created.json()["id"])
        start = time.monotonic()
        for root, env in zip(checkouts, envs, strict=True):
            workers.append(pt.start_process([str(BIN / "prefect"), "worker", "start", "--pool", "gpu-pool", "--type",
                                             "process", "--limit", "1", "--name", f"worker-{root.name}"], env,
                                            tmp_path / f"worker-{root.name}.log", cwd=root))  # fmt: skip
        logs = "\n".join(pt.tail(tmp_path / f"worker-{root.name}.log", 6000) for root in checkouts)
        deadline, runs = time.monotonic() + 1800, {}
        while True:
            runs = {rid: requests.get(f"{api}/flow_runs/{rid}", timeout=10).json() for rid in run_ids}
            if all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs.values()):
                break
            assert all(w.poll() is None for w in workers), "a worker exited"
            assert time.monotonic() < deadline, "runs not done in 30 minutes"
            time.sleep(5)
        took = time.monotonic() - start
        logs = "\n".join(pt.tail(tmp_path / f"worker-{root.name}.log", 6000) for root in checkouts)
        assert all(r["state"]["type"] == "COMPLETED" for r in runs.values()), logs
    finally:
        for worker in workers:
            pt.stop_process(worker)
    print(f"two smoke retrains on two workers at once: {took:.0f} s")
    for root in checkouts:  # each worker ran in its own checkout (prefect.yaml's pull step)
        assert (root / "metrics/eval.json").is_file() and (root / "reports/promote.json").is_file(), root
    a, b = runs.values()
    assert a["start_time"] < b["end_time"] and b["start_time"] < a["end_time"], "the two runs overlapped"

    client = MlflowClient(urls["MLFLOW_TRACKING_URI"])
    versions = {v.version: v for v in client.search_model_versions("name='tempstop-unified'")}
    assert len(versions) == 2
    tags = [versions[v].tags for v in sorted(versions)]
    assert {t["pipeline_run"] for t in tags} == set(run_ids)
    assert {t["worker"] for t in tags} == {"worker-machine-a", "worker-machine-b"}
    for t in tags:
        assert len(t["git_commit"]) >= 40 and len(t["dvc_data_hash"]) >= 32 and t["dvc_data_hash"] != "n/a", t
    aliases = {k: str(v) for k, v in client.get_registered_model("tempstop-unified").aliases.items()}
    assert sorted(aliases) == ["challenger", "champion"] and set(aliases.values()) == set(versions)
    score = {v: float(versions[v].tags["val_t2v_R1"]) for v in versions}
    assert score[aliases["champion"]] >= score[aliases["challenger"]]
