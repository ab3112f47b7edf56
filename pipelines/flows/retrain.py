"""The ``tempstop-retrain`` Prefect flow: the DVC stages as tasks, then promotion.

Every task runs the same ``tempstop`` sub-command as the matching dvc.yaml stage, in this
process (see :mod:`.plan`), with the flow's validated config and its ``pipeline_run`` tag
passed as objects; there is no second implementation of any stage.
Order follows the training mode: sequential (and stop_only) trains the TempMe stage then the
STOP stage from its result; joint (and tempme_only) trains once. Frame extraction is retried
(I/O on many videos), a stage's failure fails the flow, and the last task moves the
registry's ``champion`` alias when the new model's validation R@1 is better.

Run it locally (a temporary Prefect server starts for the run):

    python -m tempstop_pipelines.flows.retrain --mode joint --smoke

or through a deployment (prefect.yaml) on a ``gpu-pool`` worker: ``make deploy``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from tempstop_pipelines.flows.plan import SMOKE_OVERRIDES, Paths, Step, pipeline_steps, run_checked

FLOW_NAME = "tempstop-retrain"


@task(name="stage", task_run_name="{name}", cache_policy=NO_CACHE, log_prints=True)
def run_stage_task(name: str, argv: list[str], config: Any, tags: dict[str, str]) -> None:
    """One pipeline stage (``tempstop ARGV`` with ``config`` and MLflow ``tags``); stages have
    side effects, so nothing is cached."""
    logger = get_run_logger()
    logger.info("stage %s: tempstop %s", name, shlex.join(argv))
    run_checked(argv, config, tags)


def _submit(step: Step, config: Any, tags: dict[str, str]) -> None:
    options: dict[str, Any] = {"retries": step.retries, "retry_delay_seconds": 10} if step.retries else {}
    run_stage_task.with_options(**options)(step.name, step.argv, config, tags)


def _effective_config(params: str | None, overrides: dict[str, Any]):
    from tempstop.config import load_config

    path = params or ("params.yaml" if Path("params.yaml").is_file() else None)
    cfg = load_config(path)
    return cfg.with_overrides(overrides, "flow overrides") if overrides else cfg


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
    """Validate, extract, train (by mode), evaluate, plot and promote.

    Args:
        mode: training mode (joint, sequential, tempme_only, stop_only); default params.yaml's.
        smoke: tiny data and one epoch (:data:`~.plan.SMOKE_OVERRIDES`).
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
    values: dict[str, Any] = dict(SMOKE_OVERRIDES) if smoke else {}
    values.update(overrides or {})
    if mode:
        values["training.mode"] = mode
    cfg = _effective_config(params, values)  # validates every override before any work
    paths = Paths.from_dvc_yaml()
    if data:
        paths = paths.with_data(data)

    from tempstop_pipelines.tracking import check_tracking, tracking_uri

    check_tracking(cfg)  # an unreachable tracking server fails the flow now, not after training
    logger.info(
        "mode %s, data %s, smoke %s, tracking %s",
        cfg.training.mode,
        paths.data,
        smoke,
        tracking_uri(cfg) if cfg.tracking.enabled else "off",
    )
    steps = pipeline_steps(
        paths, cfg.training, generate_demo=generate_demo, promote=promote and cfg.tracking.enabled
    )
    # Groups this run's MLflow runs and registry versions (tag pipeline_run).
    tags = {"pipeline_run": str(flow_run.get_id() or "local")}
    for step in steps:
        _submit(step, cfg, tags)

    result: dict[str, Any] = {"mode": cfg.training.mode, "evaluation": _read_json(paths.eval)}
    if promote and cfg.tracking.enabled:
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
    result = retrain(
        mode=args.mode,
        smoke=args.smoke,
        data=args.data,
        generate_demo=args.generate_demo,
        params=args.params,
        promote=args.promote,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
