"""What every process of the project sets up first: telemetry off for each tool (MLflow,
Prefect, DVC, great_expectations, anything honouring ``DO_NOT_TRACK``), and logging that
prints our messages and no other library's chatter.

The variables are listed once, in ``telemetry.env`` beside this module (the Makefile includes
the same file). The ``tempstop`` command sets them for itself and the libraries it loads;
servers and workers it starts get them in their environment.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from importlib import resources


def _read() -> dict[str, str]:
    text = resources.files(__package__).joinpath("telemetry.env").read_text(encoding="utf-8")
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


#: Each tool's telemetry switch, off.
TELEMETRY_OFF: dict[str, str] = _read()


def telemetry_off(environ: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set every switch of :data:`TELEMETRY_OFF` in ``environ`` (default: this process's
    environment) where it is not set already; returns ``environ``."""
    if environ is None:  # this process: what the libraries it imports read
        for key, value in TELEMETRY_OFF.items():
            os.environ.setdefault(key, value)
        return os.environ
    for key, value in TELEMETRY_OFF.items():
        environ.setdefault(key, value)
    return environ


#: Loggers that print at INFO; every other library's logger (faiss's loader, MLflow, Prefect...)
#: only from WARNING on, unless verbose.
OWN_LOGGERS = ("tempstop", "tempstop_pipelines")


def configure_logging(verbose: bool = False) -> None:
    """Our loggers at INFO (DEBUG when ``verbose``); third-party loggers from WARNING on, so a
    normal run prints no loader chatter (``tempstop -v`` shows everything)."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format=fmt, datefmt="%H:%M:%S")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
