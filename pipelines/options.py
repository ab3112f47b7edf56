"""What every command shares: its config (``--params FILE``, ``--set key=value``), its MLflow
tags (``--tag key=value``), the typed job it runs, and the report of failed videos.

A stage that dvc.yaml and the Prefect flow both run is a *job*: a frozen dataclass of what the
command line gives (paths, switches), run as ``run(cfg, job, tags) -> exit status``. The CLI
builds the job from its options (:func:`job_from_args`: the dataclass fields are the options'
``dest`` names); the flow builds the same object directly. The config travels as an object:
never turned back into options or environment variables.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tempstop.config import ProjectConfig
from tempstop.config_files import parse_yaml

DEFAULT_PARAMS = "params.yaml"


def add_params_arg(parser: argparse.ArgumentParser) -> None:
    """``--params FILE`` (params.yaml or a JSON/YAML config) and ``--set key=value``."""
    parser.add_argument(
        "--params", "--config", dest="params", default=None,
        help=f"params/config file, JSON or YAML (default: {DEFAULT_PARAMS} if present)",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a param, e.g. --set training.batch_size=4 (YAML value)",
    )  # fmt: skip


def add_tags_arg(parser: argparse.ArgumentParser) -> None:
    """``--tag key=value`` (repeatable): extra tags of the MLflow run."""
    parser.add_argument(
        "--tag", dest="tag_items", action="append", default=[], metavar="KEY=VALUE",
        help="an extra tag for the MLflow run (repeatable)",
    )  # fmt: skip


# ---- fields several jobs share, each with its command-line option ---------------------------
@dataclass(frozen=True, kw_only=True)
class ProgressJob:
    """A job that shows progress bars unless ``--no-progress``."""

    progress: bool = True

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


@dataclass(frozen=True, kw_only=True)
class ModelJob(ProgressJob):
    """A job that opens a trained model: a checkpoint file or a ``models:/`` URI, on a device."""

    checkpoint: str
    device: str | None = None

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--checkpoint", required=True, help="checkpoint file or models:/NAME@alias")
        parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
        ProgressJob.add_arguments(parser)


def project_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                   source: str = "overrides") -> ProjectConfig:  # fmt: skip
    """The config of a command or a flow run: ``path`` (else params.yaml in the working
    directory if there is one, else the defaults) with dotted-key ``overrides``, validated."""
    if path is None and Path(DEFAULT_PARAMS).is_file():
        path = DEFAULT_PARAMS
    cfg = ProjectConfig.from_file(path) if path else ProjectConfig()
    return cfg.with_overrides(overrides, source) if overrides else cfg


def load_params(args: argparse.Namespace) -> ProjectConfig:
    """The file named by ``--params`` plus ``--set`` (:func:`project_config`), validated here, once."""
    overrides = getattr(args, "overrides", None)
    return project_config(getattr(args, "params", None), parse_overrides(overrides) if overrides else None, "--set")


def run_tags(args: argparse.Namespace) -> dict[str, str]:
    """The ``--tag key=value`` pairs."""
    tags = {}
    for item in getattr(args, "tag_items", []):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--tag needs KEY=VALUE, got {item!r}")
        tags[key.strip()] = value
    return tags


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["training.batch_size=4", ...]`` -> ``{"training.batch_size": 4}`` (values are YAML,
    read as config files are: ``1e-4`` is a number)."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set needs KEY=VALUE, got {item!r}")
        pairs[key.strip()] = parse_yaml(value)
    return pairs


class UsageError(ValueError):
    """A command line the command cannot run; the message is the one line to print."""


def job_from_args(job_type: type, args: argparse.Namespace) -> Any:
    """The job dataclass ``job_type`` filled from the parsed options of the same names (lists
    become tuples, so two jobs from the same command line compare equal)."""
    values = {}
    for field in dataclasses.fields(job_type):
        value = getattr(args, field.name)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return job_type(**values)


def report_failures(source: str | Path, failures: list[dict], out=None) -> None:
    """Name every video that failed extraction (``video_id``, file, reason), one per line."""
    out = out or sys.stderr
    if failures:
        print(f"{source}: {len(failures)} video(s) failed and are left out:", file=out)
    for f in failures:
        print(f"  failed: {f['video_id']} ({f['file']}): {f['reason']}", file=out)
