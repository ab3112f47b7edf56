"""Fixtures for the orchestration tests: isolated MLflow stores, Prefect homes, project copies.

Everything that runs a stage runs in a copy of the repository (what a fresh clone has: tracked
files plus new, not ignored ones), so tests never write data, outputs or mlflow.db into the
working tree, and DVC sees a clean project.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

for _key, _value in {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}.items():
    os.environ.setdefault(_key, _value)
# One Prefect home per test session (before anything imports prefect): ~/.prefect is untouched.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="tempstop-prefect-home-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """A fresh sqlite tracking store for one test (MLFLOW_TRACKING_URI wins over params)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def smoke_overrides(mode: str | None = None) -> dict:
    from pipelines.flows.plan import SMOKE_OVERRIDES

    values = dict(SMOKE_OVERRIDES)
    if mode:
        values["training.mode"] = mode
    return values


def write_params(path: Path, overrides: dict) -> None:
    """Apply dotted overrides to a params.yaml in place."""
    doc = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        node = doc
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture(name="write_params")
def write_params_fixture():
    """:func:`write_params` for tests (test modules do not import conftest)."""
    return write_params


def copy_project(target: Path, overrides: dict | None = None) -> Path:
    """Copy what a fresh clone would hold (plus uncommitted, not ignored files), apply params
    overrides and commit it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():
            dst = target / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    if overrides:
        write_params(target / "params.yaml", overrides)
    git = ["git", "-c", "user.name=tests", "-c", "user.email=tests@localhost", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=target, check=True)
    subprocess.run([*git, "add", "-A"], cwd=target, check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot"], cwd=target, check=True)
    return target


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A committed copy of the project at smoke size; the cwd and PATH of a user in it."""
    root = copy_project(tmp_path / "project", smoke_overrides())
    monkeypatch.chdir(root)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


@pytest.fixture
def helpers():
    """The module-level helpers, for tests (test modules do not import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        ROOT=ROOT, BIN=BIN, copy_project=copy_project, smoke_overrides=smoke_overrides,
        free_port=free_port, write_params=write_params,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
