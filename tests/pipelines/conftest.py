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

from tempstop_pipelines.env import telemetry_off

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

telemetry_off()  # tests/conftest.py did already; here too before anything imports prefect
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
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
    from tempstop_pipelines.flows.plan import SMOKE_OVERRIDES

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


@pytest.fixture(scope="module")
def harness():
    """A temporary Prefect API (prefect_test_harness) for the module's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def store_contents(path: Path) -> tuple[dict, dict[str, bytes]]:
    """A frame store's index (without its source path) and its arrays' bytes by key: two
    stores written from the same split compare equal."""
    from tempstop.data.store import read_index

    index = read_index(path)
    index.pop("source")
    return index, {it["key"]: (path / it["file"]).read_bytes() for it in index["items"]}


@pytest.fixture(scope="session")
def helpers():
    """The module-level helpers, for tests (test modules do not import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        ROOT=ROOT, BIN=BIN, copy_project=copy_project, smoke_overrides=smoke_overrides,
        free_port=free_port, write_params=write_params, store_contents=store_contents,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- a real Prefect server and process worker on loopback -------------------------------------
def start_process(args: list[str], env: dict, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``args`` in its own process group (stopping it stops its children too)."""
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM the process group, SIGKILL it if it does not stop within 20 s."""
    import signal

    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def prefect_env(tmp_path: Path, project: Path, port: int) -> dict:
    """The environment of a Prefect server, the CLI and a worker serving ``project``."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "tempstop,tempstop_pipelines",
        "TEMPSTOP_ROOT": str(project),
    }


def start_prefect_server(env: dict, log: Path, timeout_s: float = 120) -> subprocess.Popen:
    """``prefect server start`` on the port of ``env``'s API URL, once it answers /health."""
    import time

    import requests

    api = env["PREFECT_API_URL"]
    port = api.rsplit(":", 1)[1].split("/")[0]
    server = start_process([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port], env, log)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(f"{api}/health", timeout=2).ok:
                return server
        except requests.RequestException:
            pass
        assert server.poll() is None, f"server exited:\n{tail(log)}"
        assert time.monotonic() < deadline, f"server not up in {timeout_s} s:\n{tail(log)}"
        time.sleep(1)


def prefect_cli(args: list[str], env: dict, cwd: Path) -> str:
    """``prefect ARGS`` in ``cwd``; its output (fails the test on a non-zero exit)."""
    proc = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="session")
def prefect_tools():
    """The Prefect process helpers above, for tests."""
    from types import SimpleNamespace

    return SimpleNamespace(start_process=start_process, stop_process=stop_process, tail=tail, env=prefect_env,
                           start_server=start_prefect_server, cli=prefect_cli)  # fmt: skip
