"""Crash-safe training stages: a retry resumes where a dead attempt of the same training stopped.

    with recoverable(run) as run:     # run.resume set when a dead attempt left a checkpoint
        launch(run, nproc)

A *run key* names one training: a hash of everything that decides its result (the stage's
whole config, its phases, the weights it starts from, the git commit, the data's hashes),
never of who runs it. Every MLflow run of a training stage carries it (tag ``run_key``) and,
after each full checkpoint, tags ``checkpoint_epoch`` and ``checkpoint_sha256`` (with a
tracking server, the file is first uploaded to the run's ``checkpoints/`` artifacts, with
best_model.pth: :class:`~tempstop_pipelines.tracking.callbacks.MlflowCallback`).

While it trains, an attempt holds the key's lock (:mod:`.locks`: a Prefect global concurrency
limit with a lease the Prefect server revokes about a minute after the holder dies; a file
lock without Prefect). A new attempt takes the lock first, so every earlier attempt of the key
still RUNNING in MLflow is dead (killed with its worker): it is ended as FAILED (tag
``crashed``) and its Prefect flow run, if still running, is set to CRASHED. The new attempt
then resumes from the newest checkpoint those dead attempts recorded, from the local file when
its hash matches, else downloaded from the tracking server, and tags ``resumed_from_run`` and
``resumed_from_epoch``. The trainer's resume is bit-identical, so the final model equals what
an uninterrupted run gives. A FINISHED attempt ends the search: the same training run again
later starts from epoch 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from uuid import UUID

from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.states import Crashed

from tempstop.training.outputs import BEST, checkpoint_name
from tempstop.utils import sha256_file
from tempstop_pipelines.fleet.locks import delete_limit, hold, lock_name, prefect_api, try_hold
from tempstop_pipelines.tracking.provenance import data_version, git_commit
from tempstop_pipelines.tracking.runs import check_tracking, tracking_enabled, tracking_uri
from tempstop_pipelines.training.run import TrainingRun

log = logging.getLogger(__name__)

#: How long an attempt waits for a living attempt of the same training to finish.
WAIT_FOR_TWIN_S = 7 * 24 * 3600.0


def run_key(run: TrainingRun) -> str:
    """16 hex digits naming the training ``run`` does (not who runs it, nor where)."""
    inputs = {
        "config": run.config.to_dict(),
        "phases": [p.to_dict() for p in run.phases] if run.phases is not None else None,
        "init_from": sha256_file(run.init_from) if run.init_from and Path(run.init_from).is_file() else None,
        "git_commit": git_commit(),
        "data": {k: v for k, v in data_version(run.config).items() if k != "data_root"},
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def recoverable(run: TrainingRun) -> Iterator[TrainingRun]:
    """Hold the training's lock for the block; yield ``run`` with its run key tag, checkpoint
    logging on and, when a dead attempt left a checkpoint, ``resume`` set to it. Without
    tracking (nothing records attempts) or with an explicit ``resume``, ``run`` as it is."""
    if not tracking_enabled(run.config) or run.resume is not None:
        yield run
        return
    check_tracking(run.config)  # one line naming the server, before anything waits on it
    key = run_key(run)
    name = lock_name("train", key)
    with hold(name, timeout_s=WAIT_FOR_TWIN_S):
        tags = {**run.tags, "run_key": key}
        found = _resume_point(run.config, key, tags.get("pipeline_run"))
        if found is not None:
            path, run_id, epoch = found
            tags.update(resumed_from_run=run_id, resumed_from_epoch=str(epoch))
            log.warning("resuming from %s (epoch %d) of the crashed MLflow run %s", path, epoch, run_id)
        yield replace(run, resume=str(path) if found else None, tags=tags, log_checkpoints=True)
    delete_limit(name)  # finished: nobody waits on this training any more


def _resume_point(cfg, key: str, by: str | None) -> tuple[Path, str, int] | None:
    """The newest checkpoint of the dead attempts of ``key``: (local file, run id, epoch)."""
    uri = tracking_uri(cfg)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.run_key = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=100)  # fmt: skip
    dead = []
    for r in runs:
        if r.info.status == "FINISHED":
            break  # attempts before a finished one are history
        if r.info.status == "RUNNING":  # its holder lost the lock we now hold: it died
            end_dead_run(client, r, by)
            dead.append(r)
        elif r.data.tags.get("crashed") == "true":
            dead.append(r)
    with_checkpoint = [r for r in dead if r.data.tags.get("checkpoint_epoch", "").isdigit()]
    for r in sorted(with_checkpoint, key=lambda r: int(r.data.tags["checkpoint_epoch"]), reverse=True):
        epoch = int(r.data.tags["checkpoint_epoch"])
        path = _fetch(client, r, epoch, Path(cfg.training.checkpoint_dir))
        if path is not None:
            return path, r.info.run_id, epoch
    return None


def end_dead_runs(cfg, by: str | None = None) -> list[str]:
    """End every dead training attempt still RUNNING in MLflow, whatever its run key (one that
    no retry will ever look for: the data changed meanwhile); returns their run ids. A run is
    dead when its key's lock is free (:func:`~.locks.try_hold`: a living attempt holds it)."""
    client = MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return []
    running = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                 max_results=200)  # fmt: skip
    ended = []
    for r in running:
        key = r.data.tags.get("run_key")
        if key and try_hold(lock_name("train", key)):
            end_dead_run(client, r, by)
            ended.append(r.info.run_id)
            delete_limit(lock_name("train", key))
    return ended


def end_dead_run(client, run, by: str | None) -> None:
    """End a dead attempt's MLflow run as FAILED (tag ``crashed``) and crash its flow run."""
    run_id = run.info.run_id
    client.set_tag(run_id, "crashed", "true")
    if by:
        client.set_tag(run_id, "crash_found_by", by)
    client.set_terminated(run_id, "FAILED")
    log.warning("MLflow run %s (run key %s) was left RUNNING by a dead attempt: ended as FAILED",
                run_id, run.data.tags.get("run_key"))  # fmt: skip
    mark_flow_run_crashed(run.data.tags.get("pipeline_run"), f"training lost its worker (MLflow run {run_id})")


def mark_flow_run_crashed(flow_run_id: str | None, message: str) -> bool:
    """Set Prefect flow run ``flow_run_id`` to CRASHED unless it already ended; True if set."""
    try:
        run_uuid = UUID(str(flow_run_id))
    except ValueError:
        return False  # "local", a DVC run: no flow run
    if not prefect_api():
        return False
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_uuid).state
        if state is not None and state.is_final():
            return False
        client.set_flow_run_state(run_uuid, Crashed(message=message), force=True)
    log.warning("Prefect flow run %s set to CRASHED: %s", flow_run_id, message)
    return True


def _fetch(client, run, epoch: int, out_dir: Path) -> Path | None:
    """``checkpoint_epoch_{epoch}.pth`` of ``run`` in ``out_dir``: the local file if it is the
    one the run recorded (same SHA-256), else downloaded with the run's best_model.pth."""
    want = run.data.tags.get("checkpoint_sha256")
    local = out_dir / checkpoint_name(epoch)
    if local.is_file() and sha256_file(local) == want:
        return local
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".download-") as tmp:
        try:
            got = Path(client.download_artifacts(run.info.run_id, f"checkpoints/{checkpoint_name(epoch)}", tmp))
        except Exception as exc:
            log.warning("checkpoint of epoch %d of run %s is neither here nor in MLflow (%s)",
                        epoch, run.info.run_id, str(exc).splitlines()[0][:200])  # fmt: skip
            return None
        if sha256_file(got) != want:
            log.warning("downloaded %s does not match its recorded SHA-256; not resuming from it", got.name)
            return None
        try:  # the best model as of the checkpoint (or later), which the resumed run keeps in line
            best = Path(client.download_artifacts(run.info.run_id, f"checkpoints/{BEST}", tmp))
            os.replace(best, out_dir / BEST)
        except Exception as exc:
            log.warning("no best_model.pth among the artifacts of run %s (%s)", run.info.run_id, exc)
        os.replace(got, local)
    log.info("downloaded %s from MLflow run %s", local, run.info.run_id)
    return local
