"""The team's shared servers on this machine: PostgreSQL, an MLflow tracking server, a Prefect server.

    tempstop stack up [--dir .stack] [--artifacts s3://bucket/mlflow]   # make stack-up
    tempstop stack status | env | down                                    # make stack-down

`up` starts what is not running (a second `up` changes nothing) and prints the variables each
worker needs; `env` prints them again as `export` lines, and how a checkout adds the stack's
DVC remote folder. See pipelines/fleet/stack.py for the layout and docs/fleet.md for a fleet.
"""

from __future__ import annotations

import argparse
import sys

from tempstop_pipelines.fleet.stack import Stack, StackError


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop stack``."""
    p.add_argument("action", choices=["up", "down", "status", "env"])
    p.add_argument("--dir", default=".stack", help="the stack's folder (default .stack)")
    p.add_argument("--artifacts", default=None, help="MLflow artifact store: a folder or an fsspec/S3 URI")
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    """Bring the stack up or down, or print its status or environment."""
    stack = Stack(args.dir)
    try:
        if args.action == "up":
            state = stack.up(args.artifacts)
            started = ", ".join(state["started"]) or "nothing (already up)"
            print(f"stack {stack.root}: started {started}; logs in {stack.logs}")
            _print_env(stack)
        elif args.action == "down":
            stopped = stack.down()
            print(f"stack {stack.root}: stopped {', '.join(stopped) or 'nothing (not running)'}")
        elif args.action == "status":
            status = stack.status()
            if not status:
                print(f"stack {stack.root}: never started")
                return 1
            for name, s in status.items():
                print(f"{name:8s} {'up  ' if s['up'] else 'DOWN'} {s.get('url') or 'port ' + str(s.get('port'))}")
            return 0 if all(s["up"] for s in status.values()) else 1
        else:
            if not stack.state():
                print(f"stack {stack.root}: never started (tempstop stack up)", file=sys.stderr)
                return 1
            _print_env(stack)
    except StackError as exc:
        print(f"tempstop stack: {exc}", file=sys.stderr)
        return 2
    return 0


def _print_env(stack: Stack) -> None:
    urls = stack.urls()
    print(f"export MLFLOW_TRACKING_URI={urls['MLFLOW_TRACKING_URI']}")
    print(f"export PREFECT_API_URL={urls['PREFECT_API_URL']}")
    remote = stack.state().get("dvc_remote")
    if remote:  # a comment, so that `eval "$(tempstop stack env)"` still works
        print(f"# the shared DVC remote, once in each checkout: dvc remote add --local --force -d shared {remote}")
