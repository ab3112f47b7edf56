"""The pipeline as a list of ``tempstop`` commands, shared by the Prefect flow and the tests.

dvc.yaml is the source of truth for the paths (its ``vars: paths``) and runs the same
commands; ``tests/pipelines`` checks that the commands rendered by DVC equal the ones built
here, so the two orchestrators cannot drift apart. Nothing here imports Prefect or torch.

    python -m pipelines.flows.plan                # the commands, for the current params.yaml
    python -m pipelines.flows.plan --smoke-dvc    # `-S key=value ...` for `dvc exp run`
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from dataclasses import dataclass, field
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

#: Sub-commands that read params (take ``--params`` / ``--set``).
PARAMS_COMMANDS = frozenset({"demo-data", "validate", "extract", "train-phase", "evaluate", "promote"})
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
    tags: list[str] = field(default_factory=list)

    def command(self) -> str:
        return "tempstop " + shlex.join(self.argv)


def override_args(params: str | None = None, overrides: dict[str, object] | None = None) -> list[str]:
    """``--params FILE --set k=v ...`` (values YAML-encoded, as ``--set`` parses them)."""
    import yaml

    args = ["--params", params] if params else []
    for key, value in (overrides or {}).items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        args += ["--set", f"{key}={text}"]
    return args


def trains_stop(mode: str) -> bool:
    """Whether the STOP stage trains (sequential, stop_only) or only passes the model on."""
    return mode in ("sequential", "stop_only")


def pipeline_steps(
    paths: Paths,
    mode: str,
    generate_demo: bool = True,
    extra: list[str] | None = None,
    promote: bool = True,
    pass_through: bool = False,
) -> list[Step]:
    """The stages in order, as dvc.yaml runs them (plus the flow's ``plots`` and ``promote``).

    ``pass_through=False`` skips train_stop when it would only copy the model (joint,
    tempme_only), which a flow can do and DVC's static graph cannot.
    """
    extra = list(extra or [])

    def step(name: str, argv: list[str], **kw) -> Step:
        if argv[0] in PARAMS_COMMANDS:
            argv = argv + extra
        return Step(name, argv, retries=RETRIES.get(name, 0), **kw)

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
    if pass_through or trains_stop(mode):
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


def run_stage(argv: list[str]) -> int:
    """``tempstop ARGV`` in this process; returns the exit status like the console script.

    Sub-commands the CLI does not list yet (``train-phase``) are dispatched to their module.
    """
    from pipelines import cli

    module = argv[0].replace("-", "_")
    try:
        if module in cli.STAGE_MODULES:
            return cli.main(argv)
        import importlib

        from tempstop.config import ConfigError

        for key, value in cli.TELEMETRY_OFF.items():
            os.environ.setdefault(key, value)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        parser = argparse.ArgumentParser(prog="tempstop")
        importlib.import_module(f"pipelines.stages.{module}").register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(argv)
        try:
            return int(args.func(args) or 0)
        except ConfigError as exc:
            print(f"tempstop {argv[0]}: config error:\n{exc}", file=sys.stderr)
            return 2
    except SystemExit as exc:  # stages exit with a message for user errors
        if exc.code is None or exc.code == 0:
            return 0
        if not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
            return 1
        return exc.code


def run_checked(argv: list[str]) -> None:
    """:func:`run_stage`, raising :class:`StageFailed` on a non-zero status."""
    code = run_stage(argv)
    if code:
        raise StageFailed(f"`tempstop {shlex.join(argv)}` exited with status {code}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.flows.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--smoke-dvc", action="store_true", help="print -S overrides for `dvc exp run`")
    parser.add_argument("--mode", default=None, help="training mode (default: params.yaml)")
    args = parser.parse_args(argv)
    if args.smoke_dvc:
        print(" ".join(f"-S {a.split('=', 1)[0]}={shlex.quote(a.split('=', 1)[1])}"
                       for a in override_args(None, SMOKE_OVERRIDES)[1::2]))  # fmt: skip
        return 0
    from tempstop.config import load_config

    mode = args.mode or load_config("params.yaml" if Path("params.yaml").is_file() else None).training.mode
    for step in pipeline_steps(Paths.from_dvc_yaml(), mode, pass_through=True):
        print(f"{step.name:15s} {step.command()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
