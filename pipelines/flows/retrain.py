"""The ``tempstop-retrain`` Prefect flow: the DVC stages as tasks, then promotion.

Every task calls the same stage function as the matching dvc.yaml command, in this process
(see :mod:`tempstop_pipelines.flows.plan`), with its typed job, the flow's validated config and
its ``pipeline_run`` tag passed as objects; there is no second implementation of any stage.
Order follows the training mode: sequential (and stop_only) trains the TempMe stage then the
STOP stage from its result; joint (and tempme_only) trains once. After evaluation and plots,
the test split is indexed for search (the ``index`` stage). Frame extraction is retried
(I/O on many videos), a stage's failure fails the flow, and the last task moves the
registry's ``champion`` alias when the new model's validation R@1 is better (the version this
flow run registered, under the promotion lock).

With a DVC default remote, the data stages go through DVC
(:mod:`tempstop_pipelines.fleet.shared_data`): pulled when another worker computed them, pushed
when this run did. The training stages are crash-safe (:mod:`tempstop_pipelines.fleet.recovery`):
a new run of the same training resumes where a killed one stopped.
Every MLflow run and registered version carries the tags ``pipeline_run`` (this flow run),
``worker`` (the Prefect worker running it), ``data_sync`` and the DVC hashes of the data.

Run it locally (a temporary Prefect server starts for the run):

    python -m tempstop_pipelines.flows.retrain --mode joint --smoke

or through a deployment (prefect.yaml) on a ``gpu-pool`` worker: ``make deploy``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from tempstop.config import ProjectConfig
from tempstop_pipelines.fleet.recovery import end_dead_runs
from tempstop_pipelines.fleet.shared_data import (
    DATA_STAGES,
    default_remote,
    dvc_reason,
    repro_and_push,
)
from tempstop_pipelines.flows.plan import SMOKE_OVERRIDES, Paths, Step, pipeline_steps, run_step
from tempstop_pipelines.options import project_config
from tempstop_pipelines.tracking.provenance import locked_hashes
from tempstop_pipelines.tracking.runs import check_tracking, tracking_uri

FLOW_NAME = "tempstop-retrain"


@task(name="stage", task_run_name="{name}", cache_policy=NO_CACHE, log_prints=True)
def run_stage_task(name: str, step: Step, config: ProjectConfig, tags: dict[str, str]) -> None:
    """One pipeline stage (``step`` with ``config`` and MLflow ``tags``); stages have side
    effects, so nothing is cached."""
    get_run_logger().info("stage %s", step.describe())
    run_step(step, config, tags)


@task(name="dvc-stage", task_run_name="{name}", cache_policy=NO_CACHE, log_prints=True)
def dvc_stage_task(name: str) -> str:
    """One data stage through DVC: pulled if computed elsewhere, run if not, then pushed."""
    action = repro_and_push(name)
    get_run_logger().info("stage %s through DVC: %s", name, action)
    return action


def _submit(step: Step, config: ProjectConfig, tags: dict[str, str], through_dvc: bool = False) -> None:
    options: dict[str, Any] = {"retries": step.retries, "retry_delay_seconds": 10} if step.retries else {}
    if through_dvc:
        dvc_stage_task.with_options(**options)(step.name)
    else:
        run_stage_task.with_options(**options)(step.name, step, config, tags)


def worker_name() -> str:
    """The worker running this flow run. A Prefect worker labels the flow run record with its
    name (``prefect.worker.name``) before the run starts, so the run reads it from the API;
    a run started without a worker gets this machine's name."""
    run_id = flow_run.get_id()
    if run_id:
        with get_client(sync_client=True) as client:
            labels = client.read_flow_run(run_id).labels or {}
        if labels.get("prefect.worker.name"):
            return str(labels["prefect.worker.name"])
    return f"{socket.gethostname()} (no worker)"


def _run_tags(cfg: ProjectConfig, paths: Paths, generate_demo: bool) -> tuple[dict[str, str], str | None]:
    """The tags of every MLflow run and registry version of this flow run (``pipeline_run``
    groups them, ``worker`` says who ran them, ``data_sync`` how the data stages ran), and why
    the data stages run here rather than through DVC (None: through DVC)."""
    no_dvc = dvc_reason(cfg, paths == Paths.from_dvc_yaml(), generate_demo)
    tags = {"pipeline_run": str(flow_run.get_id() or "local"), "worker": worker_name(),
            "data_sync": f"dvc remote {default_remote()}" if no_dvc is None else f"none: {no_dvc}"}  # fmt: skip
    if no_dvc is not None:  # dvc.lock does not describe these data
        tags.update(dvc_data_hash="n/a", dvc_frames_hash="n/a")
    return tags, no_dvc


def _run_steps(steps: list[Step], cfg: ProjectConfig, paths: Paths, tags: dict[str, str], no_dvc: str | None) -> None:
    for step in steps:
        through_dvc = no_dvc is None and step.name in DATA_STAGES
        _submit(step, cfg, tags, through_dvc)
        if through_dvc and step.name == "extract_frames":
            tags.update(locked_hashes({"dvc_data_hash": paths.data, "dvc_frames_hash": paths.frames}))


@flow(name=FLOW_NAME, log_prints=True)
def retrain(
    mode: str | None = None,
    smoke: bool = False,
    data: str | None = None,
    generate_demo: bool = True,
    params: str | None = None,
    overrides: dict[str, Any] | None = None,
    promote: bool = True,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Validate, extract, train (by mode), evaluate, plot, index and promote.

    Args:
        mode: training mode (joint, sequential, tempme_only, stop_only); default params.yaml's.
        smoke: tiny data and one epoch (:data:`~tempstop_pipelines.flows.plan.SMOKE_OVERRIDES`).
        data: dataset root in the native layout (default dvc.yaml's ``paths.data``, the demo).
        generate_demo: (re)generate the demo dataset first; false for imported datasets.
        params: params file (default params.yaml in the working directory).
        overrides: extra ``{"section.key": value}`` params, like ``--set``.
        promote: finish by comparing with the registry's champion (needs tracking).
        workdir: project directory to run in (default: the current one).

    Returns the evaluation JSON plus the promotion decision.
    """
    logger = get_run_logger()
    if workdir:
        os.chdir(workdir)
    values: dict[str, Any] = {**(SMOKE_OVERRIDES if smoke else {}), **(overrides or {})}
    if mode:
        values["training.mode"] = mode
    cfg = project_config(params, values, "flow overrides")  # validates every override before any work
    paths = Paths.from_dvc_yaml()
    if data:
        paths = paths.with_data(data)
    check_tracking(cfg)  # an unreachable tracking server fails the flow now, not after training
    if cfg.tracking.enabled:  # attempts killed with their worker: FAILED in MLflow, CRASHED in Prefect
        end_dead_runs(cfg, by=str(flow_run.get_id() or "local"))
    logger.info("mode %s, data %s, smoke %s, tracking %s", cfg.training.mode, paths.data, smoke,
                tracking_uri(cfg) if cfg.tracking.enabled else "off")  # fmt: skip
    promote = promote and cfg.tracking.enabled
    steps = pipeline_steps(paths, cfg.training, generate_demo=generate_demo, promote=promote)
    tags, no_dvc = _run_tags(cfg, paths, generate_demo)
    logger.info("data stages: %s", "through DVC" if no_dvc is None else f"in this process ({no_dvc})")
    _run_steps(steps, cfg, paths, tags, no_dvc)
    result: dict[str, Any] = {"mode": cfg.training.mode, "evaluation": _read_json(paths.eval)}
    if promote:
        result["promotion"] = _read_json(paths.promote)
    t2v = (result["evaluation"] or {}).get("t2v", {})
    logger.info("test t2v R@1 %s, R@5 %s, R@10 %s", t2v.get("R1"), t2v.get("R5"), t2v.get("R10"))
    return result


def _read_json(path: str) -> dict[str, Any] | None:
    p = Path(path)
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """``python -m tempstop_pipelines.flows.retrain``: run the flow once, locally."""
    parser = argparse.ArgumentParser(prog="python -m tempstop_pipelines.flows.retrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--mode", default=None)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--data", default=None)
    parser.add_argument("--no-demo", dest="generate_demo", action="store_false")
    parser.add_argument("--params", default=None)
    parser.add_argument("--no-promote", dest="promote", action="store_false")
    args = parser.parse_args(argv)
    result = retrain(mode=args.mode, smoke=args.smoke, data=args.data, generate_demo=args.generate_demo,
                     params=args.params, promote=args.promote)  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
