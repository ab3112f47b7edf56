"""Helpers shared by the stage entry points: config loading and common options."""

from __future__ import annotations

import argparse
from pathlib import Path

from tempstop.config import UnifiedModelConfig

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


def load_params(args: argparse.Namespace) -> UnifiedModelConfig:
    """Load and validate the config named by ``--params`` (once, at the entry point)."""
    path = args.params
    if path is None and Path(DEFAULT_PARAMS).is_file():
        path = DEFAULT_PARAMS
    cfg = UnifiedModelConfig.from_file(path) if path else UnifiedModelConfig()
    if args.overrides:
        cfg = cfg.with_overrides(parse_overrides(args.overrides))
    return cfg


def parse_overrides(items: list[str]) -> dict:
    """``["training.batch_size=4", ...]`` -> ``{"training.batch_size": 4}`` (values are YAML)."""
    import yaml

    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set needs KEY=VALUE, got {item!r}")
        pairs[key.strip()] = yaml.safe_load(value)
    return pairs
