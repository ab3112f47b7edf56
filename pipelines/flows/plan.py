"""The pipeline as a list of typed stage calls, shared by the Prefect flow and the tests.

dvc.yaml is the source of truth for the paths (its ``vars: paths``, read by
:meth:`Paths.from_dvc_yaml`) and runs the same stages as ``tempstop`` commands. Each
:class:`Step` is a stage's ``run`` function with its job (a frozen dataclass of what the
command line would give); :func:`run_step` calls it in this process with the validated config
and the MLflow tags as objects. ``tests/pipelines/test_plan.py`` parses dvc.yaml's rendered
commands with the CLI's own parser into the same (run, job) pairs and compares, so the two
orchestrators cannot drift apart. Nothing here imports Prefect.

    python -m tempstop_pipelines.flows.plan                # the steps, for params.yaml
    python -m tempstop_pipelines.flows.plan --smoke-dvc    # `-S key=value ...` for `dvc exp run`
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tempstop.config import ProjectConfig, TrainingConfig
from tempstop_pipelines.options import project_config
from tempstop_pipelines.stages import demo_data, evaluate, extract, index, plots, train_phase, validate
from tempstop_pipelines.stages import promote as promotion

DVC_YAML = "dvc.yaml"

#: A tiny, fast run (about a minute on two CPU cores): CI, `make smoke`, the flow's ``smoke``.
SMOKE_OVERRIDES: dict[str, object] = {
    "demo.train_quadruples": 4,
    "demo.val_quadruples": 2,
    "demo.test_quadruples": 2,
    "demo.seconds": 2.0,
    "training.num_epochs": 1,
    "training.batch_size": 8,
    "training.eval_batch_size": 16,
    "evaluate.batch_size": 16,
    "index.batch_size": 16,
}

#: Stages whose failures are worth retrying (I/O-bound decoding of many videos).
RETRIES = {"extract_frames": 2}


class PlanError(ValueError):
    """dvc.yaml cannot be read or lacks a path the pipeline needs; one line."""


@dataclass(frozen=True)
class Paths:
    """Where each stage reads and writes: dvc.yaml's ``vars: paths`` (:meth:`from_dvc_yaml`)."""

    data: str
    frames: str
    tempme: str
    stop: str
    validate_report: str
    eval: str
    plots: str
    index: str
    promote: str

    @classmethod
    def from_dvc_yaml(cls, path: str | Path = DVC_YAML) -> Paths:
        """The ``paths`` var of dvc.yaml; a missing file or path is a :class:`PlanError`."""
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PlanError(f"{path}: cannot read the pipeline's paths ({exc})") from None
        found: dict[str, str] = {}
        for entry in doc.get("vars", []) or []:
            if isinstance(entry, dict) and isinstance(entry.get("paths"), dict):
                found.update(entry["paths"])
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in found]
        if missing:
            raise PlanError(f"{path}: vars.paths has no {', '.join(missing)}")
        return cls(**{f.name: str(found[f.name]) for f in dataclasses.fields(cls)})

    def with_data(self, data: str) -> Paths:
        """Another dataset root; its frames go to ``<frames parent>/<name>``."""
        return dataclasses.replace(self, data=data, frames=str(Path(self.frames).parent / Path(data).name))


@dataclass(frozen=True)
class Step:
    """One stage: its DVC name, its ``run(cfg, job, tags)`` function, its job, its retries."""

    name: str
    run: Callable[..., int]
    job: Any
    retries: int = 0

    def describe(self) -> str:
        """``name: Job(field=value, ...)``, for logs."""
        return f"{self.name}: {self.job!r}"


def dvc_set_args(overrides: dict[str, object]) -> list[str]:
    """``-S key=value`` arguments of ``dvc exp run`` for ``overrides`` (values YAML-encoded)."""
    args = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        args += ["-S", f"{key}={text}"]
    return args


def pipeline_steps(
    paths: Paths, training: TrainingConfig, generate_demo: bool = True, promote: bool = True,
    pass_through: bool = False,
) -> list[Step]:  # fmt: skip
    """The stages in order, as dvc.yaml runs them (plus the flow's ``promote``), for
    ``training`` (the training section: its mode decides what the training stages do).

    ``pass_through=False`` skips train_stop when it would only copy the model (joint,
    tempme_only), which a flow can do and DVC's static graph cannot.
    """

    def step(name: str, run: Callable[..., int], job: Any) -> Step:
        return Step(name, run, job, retries=RETRIES.get(name, 0))

    final = paths.tempme
    histories = [f"{paths.tempme}/history.json"]
    steps = [step("demo_data", demo_data.run, demo_data.DemoData(out=paths.data))] if generate_demo else []
    steps += [
        step("validate", validate.run, validate.Validate(data=paths.data, report=paths.validate_report)),
        step("extract_frames", extract.run, extract.Extract(data=paths.data, out=paths.frames)),
        step("train_tempme", train_phase.run, train_phase.TrainPhase("tempme", paths.frames, paths.tempme)),
    ]
    if pass_through or train_phase.stage_plan("stop", training)[0] == "train":
        job = train_phase.TrainPhase("stop", paths.frames, paths.stop, init=paths.tempme)
        steps.append(step("train_stop", train_phase.run, job))
        histories.append(f"{paths.stop}/history.json")
        final = paths.stop
    checkpoint = f"{final}/best_model.pth"
    steps += [
        step("evaluate", evaluate.run, evaluate.Evaluate(checkpoint=checkpoint, data=paths.frames, json=paths.eval)),
        step("plots", plots.run, plots.Plots(eval_json=paths.eval, out=paths.plots, histories=tuple(histories))),
        step("index", index.run, index.Index(checkpoint=checkpoint, out=paths.index, data=paths.frames)),
    ]
    if promote:
        steps.append(step("promote", promotion.run, promotion.Promote(json_out=paths.promote)))
    return steps


class StageFailed(RuntimeError):
    """A stage returned a non-zero exit status."""


def run_step(step: Step, cfg: ProjectConfig, tags: dict[str, str] | None = None) -> None:
    """Run ``step`` in this process with ``cfg`` and MLflow ``tags``; :class:`StageFailed`
    when it fails (the stage has printed why)."""
    code = step.run(cfg, step.job, dict(tags or {}))
    if code:
        raise StageFailed(f"stage {step.describe()} exited with status {code}")


def main(argv: list[str] | None = None) -> int:
    """Print the steps for params.yaml (or the ``-S`` arguments of the smoke run)."""
    parser = argparse.ArgumentParser(prog="python -m tempstop_pipelines.flows.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--smoke-dvc", action="store_true", help="print -S overrides for `dvc exp run`")
    parser.add_argument("--mode", default=None, help="training mode (default: params.yaml)")
    args = parser.parse_args(argv)
    if args.smoke_dvc:
        print(" ".join(shlex.quote(a) for a in dvc_set_args(SMOKE_OVERRIDES)))
        return 0
    cfg = project_config(overrides={"training.mode": args.mode} if args.mode else None, source="--mode")
    for step in pipeline_steps(Paths.from_dvc_yaml(), cfg.training, pass_through=True):
        print(step.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
