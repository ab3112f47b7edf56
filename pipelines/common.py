"""Helpers shared by the stage entry points: config loading, common options, reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tempstop.config import ProjectConfig

DEFAULT_PARAMS = "params.yaml"


def add_params_arg(parser: argparse.ArgumentParser) -> None:
    """``--params FILE`` (params.yaml or a JSON/YAML config) and ``--set key=value``."""
    parser.add_argument(
        "--params",
        "--config",
        dest="params",
        default=None,
        help=f"params/config file, JSON or YAML (default: {DEFAULT_PARAMS} if present)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. --set training.batch_size=4 (YAML value)",
    )


def add_tags_arg(parser: argparse.ArgumentParser) -> None:
    """``--tag key=value`` (repeatable): extra tags of the MLflow run."""
    parser.add_argument(
        "--tag", dest="tag_items", action="append", default=[], metavar="KEY=VALUE",
        help="an extra tag for the MLflow run (repeatable)",
    )  # fmt: skip


def load_params(args: argparse.Namespace) -> ProjectConfig:
    """The config of this command: the one its caller passed in (``tempstop.cli.main(argv,
    config=...)``, e.g. the Prefect flow), else the file named by ``--params`` plus ``--set``,
    validated here, once."""
    given = getattr(args, "config", None)
    if given is not None:
        return given
    path = args.params
    if path is None and Path(DEFAULT_PARAMS).is_file():
        path = DEFAULT_PARAMS
    cfg = ProjectConfig.from_file(path) if path else ProjectConfig()
    if args.overrides:
        cfg = cfg.with_overrides(parse_overrides(args.overrides), "--set")
    return cfg


def run_tags(args: argparse.Namespace) -> dict[str, str]:
    """The tags a caller passed in (``tempstop.cli.main(argv, tags=...)``) and ``--tag`` ones."""
    tags = dict(getattr(args, "tags", None) or {})
    for item in getattr(args, "tag_items", []):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--tag needs KEY=VALUE, got {item!r}")
        tags[key.strip()] = value
    return tags


def parse_overrides(items: list[str]) -> dict:
    """``["training.batch_size=4", ...]`` -> ``{"training.batch_size": 4}`` (values are YAML,
    read as config files are: ``1e-4`` is a number)."""
    from tempstop.config_files import parse_yaml

    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set needs KEY=VALUE, got {item!r}")
        pairs[key.strip()] = parse_yaml(value)
    return pairs


def report_failures(source: str | Path, failures: list[dict], out=None) -> None:
    """Name every video that failed extraction (``video_id``, file, reason), one per line."""
    out = out or sys.stderr
    if failures:
        print(f"{source}: {len(failures)} video(s) failed and are left out:", file=out)
    for f in failures:
        print(f"  failed: {f['video_id']} ({f['file']}): {f['reason']}", file=out)
