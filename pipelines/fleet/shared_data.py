"""Data shared through a DVC remote: a worker pulls what another one computed, and pushes
what it computed itself.

    dvc remote add --local -d shared /mnt/team/dvc-remote     # once per checkout (or s3://, ssh://)

With a default remote configured, the retrain flow runs its data stages (``DATA_STAGES``)
through DVC, one at a time:

    dvc repro --pull --single-item <stage>     # unchanged: skipped; computed elsewhere: pulled
    dvc push --run-cache <stage>               # the outputs and the run record, for the others

``--pull`` fetches the remote's *run cache* (stage records keyed by the hashes of the stage's
code, params and inputs) and the outputs a record names, so a checkout whose dvc.lock never
saw the data still restores them instead of computing them, and writes its dvc.lock: ``dvc
status`` is then clean for the data stages. Extraction is never redone when frames, code and
params are unchanged. A checkout whose dvc.lock was committed by the producer needs only
``dvc pull``.

DVC's commands read params.yaml, so this applies only when the flow's config agrees with
params.yaml on every param the data stages read (:func:`dvc_reason` says why not otherwise,
and the flow then runs those stages in its own process, as without a remote).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tempstop.config import ProjectConfig
from tempstop_pipelines.env import TELEMETRY_OFF

#: The stages whose outputs are shared (validated annotations and extracted frames).
DATA_STAGES = ("demo_data", "validate", "extract_frames")
BIN = Path(sys.executable).parent


class DataSyncError(RuntimeError):
    """A DVC command failed; the message has its last lines."""


def dvc(args: list[str], cwd: str | Path = ".", timeout: float = 3600) -> subprocess.CompletedProcess:
    """``dvc ARGS`` with this environment's tools first on PATH (the stage commands)."""
    env = {**os.environ, **TELEMETRY_OFF, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def default_remote(cwd: str | Path = ".") -> str | None:
    """The name of the DVC default remote of the checkout in ``cwd`` (any config level)."""
    proc = dvc(["remote", "default"], cwd, timeout=120)
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and name else None


def stage_params(stages=DATA_STAGES, dvc_yaml: str | Path = "dvc.yaml") -> list[str]:
    """The params (dotted keys or sections) ``stages`` list in dvc.yaml."""
    doc = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8")) or {}
    found: list[str] = []
    for name in stages:
        for item in (doc.get("stages", {}).get(name, {}) or {}).get("params", []) or []:
            found += [item] if isinstance(item, str) else [k for k in item if isinstance(k, str)]
    return found


def differing_params(cfg, params_file: str | Path = "params.yaml", stages=DATA_STAGES) -> list[str]:
    """The keys the data stages read whose value in ``cfg`` differs from ``params_file``."""
    mine, theirs = cfg.flat(), ProjectConfig.from_file(params_file).flat()
    wanted = stage_params(stages)
    keys = [k for k in mine if any(k == p or k.startswith(p + ".") for p in wanted)]
    return sorted(k for k in keys if mine[k] != theirs.get(k))


def dvc_reason(cfg, default_paths: bool, generate_demo: bool) -> str | None:
    """None if the flow's data stages can go through DVC; else why not, in a few words."""
    if not Path("dvc.yaml").is_file() or not Path("params.yaml").is_file():
        return "no dvc.yaml / params.yaml here"
    if not default_paths or not generate_demo:
        return "the flow's data are not dvc.yaml's (data= or generate_demo=false)"
    remote = default_remote()
    if remote is None:
        return "no DVC default remote (dvc remote add --local -d shared PATH)"
    differ = differing_params(cfg)
    if differ:
        shown = ", ".join(differ[:4]) + (" ..." if len(differ) > 4 else "")
        return f"the flow's config differs from params.yaml in {shown}"
    return None


def repro_and_push(stage: str) -> str:
    """Bring ``stage``'s outputs up to date through DVC, pulling them when another checkout
    computed them, then push them; returns what happened (``unchanged``, ``pulled``, ``ran``)."""
    proc = dvc(["repro", "--pull", "--single-item", stage])
    out = proc.stdout + proc.stderr
    print(out.strip())
    if proc.returncode:
        raise DataSyncError(f"dvc repro {stage} failed: {' | '.join(out.strip().splitlines()[-3:])}")
    if re.search(rf"Running stage '{stage}'", out):
        action = "ran"
    elif "is cached - skipping run" in out or "Pulling data for" in out:
        action = "pulled"
    else:
        action = "unchanged"
    pushed = dvc(["push", "--run-cache", stage])
    if pushed.returncode:  # the data are here and correct; only sharing failed
        print(f"warning: dvc push {stage} failed: {(pushed.stdout + pushed.stderr).strip()[-500:]}", file=sys.stderr)
    return action
