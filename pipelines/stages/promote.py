"""Move the registry's ``champion`` alias to a better model version.

The new version (``--version``; in a Prefect flow, the version this flow run registered,
found by its ``pipeline_run`` tag; else the latest) is compared with the current champion on
the validation t2v R@1 recorded on each version at registration (the test split never selects
models). Strictly better -> it becomes ``champion`` and the outgoing champion ``challenger``;
otherwise it becomes ``challenger`` if it beats the current challenger. So ``challenger`` is
always the best version that is not champion, whatever order promotions come in.

Read, compare and move happen under one lock (:mod:`tempstop_pipelines.fleet.locks`: a Prefect global concurrency
limit when a Prefect API is configured, a file lock otherwise), so two promotions at once,
from two machines, are serialised: neither decides on a champion the other has just replaced.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tempstop.config import ProjectConfig
from tempstop.utils import atomic_write_json
from tempstop_pipelines.fleet import locks
from tempstop_pipelines.fleet.events import emit_champion_moved
from tempstop_pipelines.options import add_params_arg
from tempstop_pipelines.tracking.runs import (
    SELECTION_METRIC,
    TrackingError,
    check_tracking,
    selection_score,
    tracking_uri,
)

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Promote:
    """``tempstop promote``: which registered model and version, by how much it must win, and
    where the decision goes."""

    name: str | None = None
    version: str | None = None
    min_delta: float = 0.0
    json_out: str | None = None


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop promote``."""
    p.add_argument("--name", default=None, help="registered model (default: tracking.registered_model)")
    p.add_argument("--version", default=None, help="version to consider (default: the latest)")
    p.add_argument("--min-delta", type=float, default=0.0, help="required improvement (default 0)")
    p.add_argument("--json", dest="json_out", default=None, help="write the decision as JSON to FILE")
    add_params_arg(p)
    p.set_defaults(job=Promote, run=run)


def version_score(client, name: str, version) -> float | None:
    """The selection metric of a model version: its tag, else the best metric of its run."""
    mv = client.get_model_version(name, str(version))
    if SELECTION_METRIC in (mv.tags or {}):
        return float(mv.tags[SELECTION_METRIC])
    if mv.run_id:
        metrics = client.get_run(mv.run_id).data.metrics
        for key in (f"best_{SELECTION_METRIC}", SELECTION_METRIC):
            if key in metrics:
                return float(metrics[key])
        return selection_score(metrics)
    return None


def decide(new: float | None, champion: float | None, min_delta: float = 0.0) -> bool:
    """Whether the new version should take the champion alias."""
    if new is None:
        return False
    return champion is None or new > champion + min_delta


def promote(cfg, name: str | None = None, version: str | None = None, min_delta: float = 0.0,
            pipeline_run: str | None = None) -> dict:  # fmt: skip
    """Compare and move aliases under the promotion lock; returns the decision (also what
    ``--json`` writes). ``pipeline_run``: take the newest version carrying that tag."""
    uri = tracking_uri(cfg)
    name = name or cfg.tracking.registered_model
    client = MlflowClient(uri)
    try:
        with locks.hold(locks.lock_name("promote", name)) as lock:
            result = _decide_and_move(client, name, version, min_delta, pipeline_run, uri)
    except MlflowException as exc:
        raise TrackingError(f"cannot read {name!r} from {uri}: {str(exc).splitlines()[0]}") from None
    except locks.LockTimeout as exc:
        raise TrackingError(str(exc)) from None
    return {"model": name, "metric": SELECTION_METRIC, **result, "tracking_uri": uri, "lock": lock}


def _candidate(client, name: str, version: str | None, pipeline_run: str | None, uri: str) -> str:
    if version is not None:
        return str(version)
    versions = client.search_model_versions(f"name='{name}'")
    if pipeline_run:
        versions = [v for v in versions if (v.tags or {}).get("pipeline_run") == pipeline_run]
    if not versions:
        which = f" registered by pipeline run {pipeline_run}" if pipeline_run else ""
        raise TrackingError(f"registered model {name!r} has no versions{which} in {uri}")
    return str(max(versions, key=lambda v: int(v.version)).version)


def _alias(client, name: str, alias: str) -> tuple[str | None, float | None]:
    """The version holding ``alias`` and its score (None, None without one)."""
    try:
        held = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None
    return str(held.version), version_score(client, name, held.version)


def _decide_and_move(client, name: str, version: str | None, min_delta: float, pipeline_run: str | None,
                     uri: str) -> dict:  # fmt: skip
    """Read, compare, set: the part that must not interleave with another promotion."""
    version = _candidate(client, name, version, pipeline_run, uri)
    new_score = version_score(client, name, version)
    champ_version, champ_score = _alias(client, name, CHAMPION)
    chall_version, chall_score = _alias(client, name, CHALLENGER)
    if champ_version == version:
        action, champion = "already champion", version
    elif decide(new_score, champ_score, min_delta):
        action, champion = "promoted to champion", version
    else:
        action, champion = "kept as challenger", champ_version
    # challenger: the best of the others (on a tie the current challenger stays)
    scores = {v: s for v, s in ((chall_version, chall_score), (champ_version, champ_score), (version, new_score))
              if v is not None and v != champion}  # fmt: skip
    challenger = max(scores, key=lambda v: (-math.inf if scores[v] is None else scores[v], v == chall_version),
                     default=None)  # fmt: skip
    if action == "kept as challenger" and challenger != version:
        action = "not promoted (the challenger scores higher)"
    if champion != champ_version:
        client.set_registered_model_alias(name, CHAMPION, champion)
    if challenger is not None and challenger != chall_version:
        client.set_registered_model_alias(name, CHALLENGER, challenger)
    elif challenger is None and chall_version is not None:
        client.delete_registered_model_alias(name, CHALLENGER)  # the challenger became champion
    return {"version": version, "score": new_score, "champion_version": champ_version, "champion_score": champ_score,
            "action": action, "champion": champion, "challenger": challenger}  # fmt: skip


def _fmt(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.4f}"


def run(cfg: ProjectConfig, job: Promote, tags: dict[str, str] | None = None) -> int:
    """Decide and move the aliases; print the decision. In a flow, the candidate is the version
    this flow run registered (its ``pipeline_run`` tag, passed in ``tags``)."""
    if not cfg.tracking.enabled:
        print("tempstop promote: tracking is disabled (tracking.enabled=false); nothing to promote")
        return 0
    try:
        check_tracking(cfg)
        pipeline_run = None if job.version else (tags or {}).get("pipeline_run")
        result = promote(cfg, job.name, job.version, job.min_delta, pipeline_run)
    except TrackingError as exc:
        print(f"tempstop promote: {exc}", file=sys.stderr)
        return 1
    champ = result["champion_version"]
    print(f"model {result['model']} ({result['tracking_uri']}), metric {result['metric']} (validation)")
    print(f"  candidate  version {result['version']}: {_fmt(result['score'])}")
    print(f"  champion   version {champ if champ else '-'}: {_fmt(result['champion_score'])}")
    print(f"  -> version {result['version']} {result['action']}; champion {result['champion'] or '-'}, "
          f"challenger {result['challenger'] or '-'} (lock: {result['lock']})")  # fmt: skip
    if result["action"] == "promoted to champion" and emit_champion_moved(
        result["model"], result["version"], champ, result["score"]
    ):
        print("  event tempstop.champion.moved sent (the reindex-on-promotion deployment re-embeds the collection)")
    if job.json_out:
        atomic_write_json(job.json_out, result)
    return 0
