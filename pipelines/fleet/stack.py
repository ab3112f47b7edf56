"""The team stack on one machine: PostgreSQL, an MLflow tracking server and a Prefect server.

    tempstop stack up       # or: make stack-up   (a second `up` is a no-op)
    tempstop stack env      # the variables every worker needs
    tempstop stack down     # or: make stack-down

Everything lives in one folder (default ``.stack/`` of the checkout): the PostgreSQL cluster
(initdb'ed there, run as an unprivileged user, bound to 127.0.0.1, password authentication),
MLflow's artifact store (``artifacts/``; any fsspec/S3 URI with ``--artifacts``), Prefect's
home, the logs (``logs/*.log``), the generated passwords (``credentials.json``, mode 600) and
the state (``stack.json``: ports and process ids) and a DVC remote folder (``dvc-remote/``; on
a fleet, put it on storage every machine mounts, or use S3/SSH). MLflow and Prefect keep their
metadata in their own PostgreSQL databases, so every machine that reaches this one shares one
registry and one Prefect API. Prefect keeps its concurrency leases (the fleet's locks,
pipelines/fleet/locks.py) in files under its home, so a server restart does not lose who holds what.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import requests

from tempstop_pipelines.env import TELEMETRY_OFF

PG_BIN = Path(os.environ.get("TEMPSTOP_PG_BIN", "/usr/lib/postgresql/15/bin"))
DEFAULT_PORTS = {"postgres": 55432, "mlflow": 5000, "prefect": 4200}
BIN = Path(sys.executable).parent


class StackError(RuntimeError):
    """The stack cannot start or stop; the message says which part and where its log is."""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` system user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise StackError("running as root and there is no 'postgres' user to run PostgreSQL as") from None
    return "postgres"


def _as_pg(args: list, user: str | None) -> list[str]:
    return [*(["runuser", "-u", user, "--"] if user else []), *map(str, args)]


def _run(args: list[str], what: str, log: Path | None = None) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        hint = f" (log: {log})" if log else ""
        raise StackError(f"{what} failed{hint}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")


class Stack:
    """One stack folder: its state, and starting / stopping its three servers."""

    def __init__(self, root: str | Path = ".stack") -> None:
        self.root = Path(root).resolve()
        self.logs = self.root / "logs"
        self.state_file = self.root / "stack.json"

    # ---- state ---------------------------------------------------------------------------
    def state(self) -> dict:
        """What ``stack.json`` records (ports, process ids, artifact store); empty before the first up."""
        return json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}

    def _save(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    def _credentials(self) -> dict:
        path = self.root / "credentials.json"
        if not path.is_file():
            creds = {name: secrets.token_urlsafe(18) for name in ("admin", "mlflow", "prefect")}
            path.write_text(json.dumps(creds))
            path.chmod(0o600)
        return json.loads(path.read_text())

    def urls(self, state: dict | None = None) -> dict:
        """What clients use: tracking URI, Prefect API, and the databases (with passwords)."""
        state, creds = state or self.state(), self._credentials()
        pg = state["ports"]["postgres"]
        return {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{state['ports']['mlflow']}",
            "PREFECT_API_URL": f"http://127.0.0.1:{state['ports']['prefect']}/api",
            "mlflow_db": f"postgresql+psycopg2://mlflow:{creds['mlflow']}@127.0.0.1:{pg}/mlflow",
            "prefect_db": f"postgresql+asyncpg://prefect:{creds['prefect']}@127.0.0.1:{pg}/prefect",
        }

    # ---- up --------------------------------------------------------------------------------
    def up(self, artifacts: str | None = None, timeout_s: float = 120) -> dict:
        """Start what is not running; returns the state. Idempotent."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        state = self.state()
        state.setdefault("ports", {})
        for name, port in DEFAULT_PORTS.items():
            if name not in state["ports"]:
                state["ports"][name] = port if _port_free(port) else _free_port()
        state["artifacts"] = artifacts or state.get("artifacts") or str(self.root / "artifacts")
        state["dvc_remote"] = state.get("dvc_remote") or str(self.root / "dvc-remote")
        Path(state["dvc_remote"]).mkdir(parents=True, exist_ok=True)
        state.setdefault("pids", {})
        self._save(state)
        started = []
        if not self._postgres_ready(state):
            self._start_postgres(state, timeout_s)
            started.append("postgres")
        for name in ("mlflow", "prefect"):
            if not self._healthy(name, state):
                state["pids"][name] = self._start_server(name, state)
                self._save(state)
                self._wait(name, state, timeout_s)
                started.append(name)
        state["started"] = started
        return state

    def _start_postgres(self, state: dict, timeout_s: float) -> None:
        user, data, sock = _pg_user(), self.root / "postgres", self.root / "postgres-run"
        creds, log = self._credentials(), self.logs / "postgres.log"
        sock.mkdir(exist_ok=True)
        if user and subprocess.run(["runuser", "-u", user, "--", "test", "-w", str(sock.parent)]).returncode:
            self.root.chmod(0o755)  # our own folder; its parents must let the user through
            if subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(self.root)]).returncode:
                raise StackError(f"{self.root}: the '{user}' user PostgreSQL runs as cannot reach this folder "
                                 "(a parent folder is private); put the stack elsewhere with --dir")  # fmt: skip
        if user:  # the data folder and the log belong to the user PostgreSQL runs as
            log.touch()
            for path in (sock, log):
                shutil.chown(path, user)
        if not (data / "PG_VERSION").is_file():
            data.mkdir(exist_ok=True)
            pwfile = self.root / ".pwfile"
            pwfile.write_text(creds["admin"] + "\n")
            if user:
                for path in (data, pwfile):
                    shutil.chown(path, user)
            try:
                _run(_as_pg([PG_BIN / "initdb", "-D", data, "-U", "admin", "--auth-local=scram-sha-256",
                             "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"], user), "initdb")  # fmt: skip
            finally:
                pwfile.unlink(missing_ok=True)
        options = f"-c listen_addresses=127.0.0.1 -p {state['ports']['postgres']} -k {sock}"
        _run(_as_pg([PG_BIN / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", int(timeout_s), "start"],
                    user), "PostgreSQL start", log)  # fmt: skip
        self._create_databases(state)

    def _create_databases(self, state: dict) -> None:
        creds = self._credentials()
        conn = psycopg2.connect(host="127.0.0.1", port=state["ports"]["postgres"], user="admin",
                                password=creds["admin"], dbname="postgres")  # fmt: skip
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in ("mlflow", "prefect"):
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f"CREATE ROLE {name} LOGIN PASSWORD %s", (creds[name],))
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f"CREATE DATABASE {name} OWNER {name}")
        conn.close()

    def _postgres_ready(self, state: dict) -> bool:
        port = state["ports"]["postgres"]
        proc = subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True)
        return proc.returncode == 0 and (self.root / "postgres" / "postmaster.pid").is_file()

    def _start_server(self, name: str, state: dict) -> int:
        urls, port = self.urls(state), str(state["ports"][name])
        env = {**os.environ, **TELEMETRY_OFF, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        if name == "mlflow":
            args = [str(BIN / "mlflow"), "server", "--backend-store-uri", urls["mlflow_db"], "--artifacts-destination",
                    state["artifacts"], "--host", "127.0.0.1", "--port", port, "--workers", "2"]  # fmt: skip
        else:
            env.update(PREFECT_API_DATABASE_CONNECTION_URL=urls["prefect_db"], PREFECT_HOME=str(self.root / "prefect-home"),
                       PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE="prefect.server.concurrency.lease_storage.filesystem")  # fmt: skip
            args = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port]
        log = (self.logs / f"{name}.log").open("a")
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return proc.pid

    def _health_url(self, name: str, state: dict) -> str:
        port = state["ports"][name]
        return f"http://127.0.0.1:{port}/health" if name == "mlflow" else f"http://127.0.0.1:{port}/api/health"

    def _healthy(self, name: str, state: dict) -> bool:
        pid = state.get("pids", {}).get(name)
        if pid is None or not _alive(pid):
            return False
        try:
            return requests.get(self._health_url(name, state), timeout=10).ok
        except requests.RequestException:
            return False

    def _wait(self, name: str, state: dict, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._healthy(name, state):
            if not _alive(state["pids"][name]):
                raise StackError(f"{name} server exited at start; see {self.logs / f'{name}.log'}")
            if time.monotonic() > deadline:
                raise StackError(f"{name} server not healthy after {timeout_s:.0f} s; see {self.logs / f'{name}.log'}")
            time.sleep(0.5)

    # ---- status and down -------------------------------------------------------------------
    def status(self) -> dict:
        """Per part: up or down, with its URL."""
        state = self.state()
        if not state:
            return {}
        urls = self.urls(state)
        return {"postgres": {"up": self._postgres_ready(state), "port": state["ports"]["postgres"]},
                "mlflow": {"up": self._healthy("mlflow", state), "url": urls["MLFLOW_TRACKING_URI"]},
                "prefect": {"up": self._healthy("prefect", state), "url": urls["PREFECT_API_URL"]}}  # fmt: skip

    def down(self) -> list[str]:
        """Stop the servers, then PostgreSQL; returns what was stopped."""
        state, stopped = self.state(), []
        for name in ("prefect", "mlflow"):
            pid = state.get("pids", {}).pop(name, None)
            if pid is not None and _alive(pid):
                _stop_group(pid)
                stopped.append(name)
        if state and (self.root / "postgres" / "postmaster.pid").is_file():
            _run(_as_pg([PG_BIN / "pg_ctl", "-D", self.root / "postgres", "-m", "fast", "-w", "stop"], _pg_user()),
                 "PostgreSQL stop", self.logs / "postgres.log")  # fmt: skip
            stopped.append("postgres")
        if state:
            self._save(state)
        return stopped


def _alive(pid: int) -> bool:
    try:  # reap it first if it is our own child that exited (a zombie still answers kill 0)
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(pid: int, timeout_s: float = 20) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
