"""The pipeline as a list of ``tempstop`` commands, shared by the Prefect flow and the tests.

dvc.yaml is the source of truth for the paths (its ``vars: paths``) and runs the same
commands; ``tests/pipelines`` checks that the commands rendered by DVC equal the ones built
here, so the two orchestrators cannot drift apart. The flow runs each command in its own
process with the validated config and its tags as objects (:func:`run_stage`), never as
rebuilt command-line options. Nothing here imports Prefect or torch.

    python -m tempstop_pipelines.flows.plan                # the commands, for params.yaml
    python -m tempstop_pipelines.flows.plan --smoke-dvc    # `-S key=value ...` for `dvc exp run`
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

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
}

#: Stages whose failures are worth retrying (I/O-bound decoding of many videos).
RETRIES = {"extract_frames": 2}


@dataclass(frozen=True)
class Paths:
    """Where each stage reads and writes; defaults are dvc.yaml's ``vars: paths``."""

    data: str = "data/demo"
    frames: str = "data/frames/demo"
    tempme: str = "outputs/tempme"
    stop: str = "outputs/stop"
    validate_report: str = "reports/validate.json"
    eval: str = "metrics/eval.json"
    plots: str = "metrics/plots"
    promote: str = "reports/promote.json"

    @classmethod
    def from_dvc_yaml(cls, path: str | Path = DVC_YAML) -> Paths:
        """The ``paths`` var of dvc.yaml (keys this class does not know are ignored)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            return cls()
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        found: dict[str, str] = {}
        for entry in doc.get("vars", []) or []:
            if isinstance(entry, dict) and isinstance(entry.get("paths"), dict):
                found.update(entry["paths"])
        known = {k: str(v) for k, v in found.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def with_data(self, data: str) -> Paths:
        """Another dataset root; its frames go to ``data/frames/<name>``."""
        name = Path(data).name
        return Paths(**{**self.__dict__, "data": data, "frames": str(Path(self.frames).parent / name)})


@dataclass
class Step:
    """One stage: its DVC name, the ``tempstop`` arguments and how often to retry it."""

    name: str
    argv: list[str]
    retries: int = 0

    def command(self) -> str:
        return "tempstop " + shlex.join(self.argv)


def dvc_set_args(overrides: dict[str, object]) -> list[str]:
    """``-S key=value`` arguments of ``dvc exp run`` for ``overrides`` (values YAML-encoded)."""
    import yaml

    args = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        args += ["-S", f"{key}={text}"]
    return args


def trains_stop(training) -> bool:
    """Whether the STOP stage trains for ``training`` (the training section) or only passes
    the model on (:func:`~..stages.train_phase.stage_plan`)."""
    from ..stages.train_phase import stage_plan

    return stage_plan("stop", training)[0] == "train"


def pipeline_steps(
    paths: Paths,
    training,
    generate_demo: bool = True,
    promote: bool = True,
    pass_through: bool = False,
) -> list[Step]:
    """The stages in order, as dvc.yaml runs them (plus the flow's ``plots`` and ``promote``),
    for ``training`` (the training section: its mode decides what the stages do).

    ``pass_through=False`` skips train_stop when it would only copy the model (joint,
    tempme_only), which a flow can do and DVC's static graph cannot.
    """

    def step(name: str, argv: list[str]) -> Step:
        return Step(name, argv, retries=RETRIES.get(name, 0))

    steps: list[Step] = []
    if generate_demo:
        steps.append(step("demo_data", ["demo-data", "--out", paths.data]))
    steps += [
        step("validate", ["validate", "--data", paths.data, "--report", paths.validate_report]),
        step("extract_frames", ["extract", "--data", paths.data, "--out", paths.frames]),
        step("train_tempme", ["train-phase", "tempme", "--frames", paths.frames, "--out", paths.tempme]),
    ]
    histories = [f"{paths.tempme}/history.json"]
    final = paths.tempme
    if pass_through or trains_stop(training):
        steps.append(
            step(
                "train_stop",
                [
                    "train-phase",
                    "stop",
                    "--frames",
                    paths.frames,
                    "--init",
                    paths.tempme,
                    "--out",
                    paths.stop,
                ],
            )
        )
        histories.append(f"{paths.stop}/history.json")
        final = paths.stop
    steps.append(
        step(
            "evaluate",
            [
                "evaluate",
                "--checkpoint",
                f"{final}/best_model.pth",
                "--data",
                paths.frames,
                "--json",
                paths.eval,
            ],
        )
    )
    plot_args = ["plots", "--eval", paths.eval]
    for history in histories:
        plot_args += ["--history", history]
    steps.append(step("plots", [*plot_args, "--out", paths.plots]))
    if promote:
        steps.append(step("promote", ["promote", "--json", paths.promote]))
    return steps


# ---- running a stage in this process ------------------------------------------------------
class StageFailed(RuntimeError):
    """A ``tempstop`` sub-command exited with a non-zero status."""


def run_stage(argv: list[str], config=None, tags: dict[str, str] | None = None) -> int:
    """``tempstop ARGV`` in this process, with ``config`` (a validated ProjectConfig, instead
    of params.yaml) and MLflow ``tags``; returns the exit status like the console script."""
    from .. import cli

    try:
        return cli.main(argv, config=config, tags=tags)
    except SystemExit as exc:  # stages exit with a message for user errors
        if exc.code is None or exc.code == 0:
            return 0
        if not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
            return 1
        return exc.code


def run_checked(argv: list[str], config=None, tags: dict[str, str] | None = None) -> None:
    """:func:`run_stage`, raising :class:`StageFailed` on a non-zero status."""
    code = run_stage(argv, config, tags)
    if code:
        raise StageFailed(f"`tempstop {shlex.join(argv)}` exited with status {code}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tempstop_pipelines.flows.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--smoke-dvc", action="store_true", help="print -S overrides for `dvc exp run`")
    parser.add_argument("--mode", default=None, help="training mode (default: params.yaml)")
    args = parser.parse_args(argv)
    if args.smoke_dvc:
        print(" ".join(shlex.quote(a) for a in dvc_set_args(SMOKE_OVERRIDES)))
        return 0
    from tempstop.config import load_config

    cfg = load_config("params.yaml" if Path("params.yaml").is_file() else None)
    if args.mode:
        cfg = cfg.with_overrides({"training.mode": args.mode}, "--mode")
    for step in pipeline_steps(Paths.from_dvc_yaml(), cfg.training, pass_through=True):
        print(f"{step.name:15s} {step.command()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
