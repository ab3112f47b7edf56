"""The ``tempstop`` command: one sub-command per module of ``stages/``.

``tempstop --help`` lists the commands from :data:`COMMANDS` without importing any of them
(they import torch, MLflow, Prefect); ``tempstop NAME ...`` imports NAME's module only. A
command module defines ``register(parser)``, which adds its options and sets either
``job=<dataclass>, run=<function>`` (a typed stage: ``run(cfg, job, tags) -> int``, the form
dvc.yaml and the Prefect flow share) or ``main=<function>`` (``main(args) -> int``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tempstop.config import ConfigError
from tempstop_pipelines.env import configure_logging, telemetry_off
from tempstop_pipelines.options import UsageError, job_from_args, load_params, run_tags

#: Sub-command -> (module in stages/, one-line help), in the order ``tempstop --help`` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-data": ("demo_data", "generate the moving-shapes demo dataset"),
    "import-dataset": ("import_dataset", "import an official dataset (annotations + videos) into the native layout"),
    "import-checkpoint": ("import_checkpoint", "convert a checkpoint of the official TempMe code"),
    "validate": ("validate", "check annotations (great_expectations) and probe every video"),
    "extract": ("extract", "pre-extract uniformly sampled frames into frame stores (OUT/<split>/)"),
    "profile": ("profile", "GFLOPs, tokens per layer, trainable parameters and speed of a model variant"),
    "train": ("train", "train the unified TempMe-STOP model (joint, tempme_only, stop_only, sequential)"),
    "train-phase": ("train_phase", "one of the pipeline's two chained training stages (reads training.mode)"),
    "evaluate": ("evaluate", "t2v / v2t R@1, R@5, R@10, MdR, MnR of a checkpoint on a split"),
    "plots": ("plots", "recall-at-K and training-curve plots (PNG + DVC plot data)"),
    "promote": ("promote", "make a registered model version the champion if its validation R@1 is better"),
    "index": ("index", "embed a folder of videos (or a dataset split) into a search index"),
    "reindex": ("reindex", "embed a collection with another model into a new index version and make it current"),
    "search": ("search", "rank the videos of an index for a text query"),
    "serve": ("serve", "serve search over a collection index: HTTP API, web page, metrics"),
    "stack": ("stack", "start / stop the shared PostgreSQL + MLflow + Prefect stack"),
}  # fmt: skip


def command_module(name: str):
    """The stages/ module of sub-command ``name``."""
    return importlib.import_module(f"tempstop_pipelines.stages.{COMMANDS[name][0]}")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the sub-command named in ``argv`` (if any) gets its full options."""
    parser = argparse.ArgumentParser(
        prog="tempstop",
        description="TempMe-STOP: train, evaluate, index and serve text-to-video retrieval models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, other libraries' too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv or [] if not a.startswith("-")), None)
    for name, (_, help_text) in COMMANDS.items():
        if name != chosen:
            sub.add_parser(name, help=help_text)
            continue
        module = command_module(name)
        p = sub.add_parser(name, help=help_text, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        module.register(p)
    return parser


def parse_job(argv: list[str]):
    """``(run, job)`` of a typed stage's command line (what the Prefect flow would call)."""
    args = build_parser(argv).parse_args(argv)
    return args.run, job_from_args(args.job, args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status. A user's mistake (a bad
    config key, a bad option value) is one line on stderr and exit status 2."""
    telemetry_off()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    configure_logging(args.verbose)
    try:
        if hasattr(args, "job"):
            return int(args.run(load_params(args), job_from_args(args.job, args), run_tags(args)) or 0)
        return int(args.main(args) or 0)
    except ConfigError as exc:
        print(f"tempstop {args.command}: config error:\n{exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"tempstop {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
