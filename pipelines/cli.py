"""The ``tempstop`` command: one sub-command per stage module in ``stages/``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Sub-command modules, in the order `tempstop --help` lists them. Each is imported when the
# parser is built, so a module must keep heavy imports (torch, mlflow, prefect) inside main().
STAGE_MODULES = [
    "demo_data",
    "import_dataset",
    "import_checkpoint",
    "validate",
    "extract",
    "profile",
    "train",
    "evaluate",
    "search",
    "serve",
    "stack",
    "promote",
    "plots",
    "train_phase",
]

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="tempstop",
        description="TempMe-STOP: train, evaluate and serve text-to-video retrieval models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in STAGE_MODULES:
        module = importlib.import_module(f"{__package__}.stages.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None, *, config=None, tags: dict[str, str] | None = None) -> int:
    """Entry point of the console script; returns the exit status.

    A caller in this process (the Prefect flow) may pass the validated ``config`` (a
    :class:`tempstop.config.ProjectConfig`, used instead of ``--params``/``--set``) and MLflow
    ``tags`` as objects.
    """
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.config, args.tags = config, dict(tags or {})
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from tempstop.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"tempstop {args.command}: config error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
