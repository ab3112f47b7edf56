"""``tempstop promote``: move the registry's ``champion`` alias to a better model version.

The new version (``--version``, default the latest) is compared with the current champion on
the validation t2v R@1 recorded on each version at registration (the test split never selects
models). Strictly better -> it becomes ``champion``; otherwise it is labelled ``challenger`` and
the champion stays. Both figures are printed either way.
"""

from __future__ import annotations

import sys

from ..common import add_params_arg, load_params

CHAMPION = "champion"
CHALLENGER = "challenger"


def register(sub) -> None:
    p = sub.add_parser(
        "promote",
        help="make a registered model version the champion if its validation R@1 is better",
        description=__doc__,
    )
    p.add_argument("--name", default=None, help="registered model (default: tracking.registered_model)")
    p.add_argument("--version", default=None, help="version to consider (default: the latest)")
    p.add_argument("--min-delta", type=float, default=0.0, help="required improvement (default 0)")
    p.add_argument("--json", dest="json_out", default=None, help="write the decision as JSON to FILE")
    add_params_arg(p)
    p.set_defaults(func=main)


def version_score(client, name: str, version) -> float | None:
    """The selection metric of a model version: its tag, else the best metric of its run."""
    from ..tracking import SELECTION_METRIC, selection_score

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


def promote(cfg, name: str | None = None, version: str | None = None, min_delta: float = 0.0) -> dict:
    """Compare and move aliases; returns the decision (also what ``--json`` writes)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from ..tracking import SELECTION_METRIC, TrackingError, tracking_uri

    uri = tracking_uri(cfg)
    name = name or cfg.tracking.registered_model
    client = MlflowClient(uri)
    try:
        if version is None:
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise TrackingError(f"registered model {name!r} has no versions in {uri}")
            version = max(versions, key=lambda v: int(v.version)).version
        version = str(version)
        new_score = version_score(client, name, version)
        try:
            champ = client.get_model_version_by_alias(name, CHAMPION)
            champ_version, champ_score = str(champ.version), version_score(client, name, champ.version)
        except MlflowException:
            champ_version, champ_score = None, None
    except MlflowException as exc:
        raise TrackingError(f"cannot read {name!r} from {uri}: {str(exc).splitlines()[0]}") from None

    if champ_version == version:
        action = "already champion"
    elif decide(new_score, champ_score, min_delta):
        client.set_registered_model_alias(name, CHAMPION, version)
        action = "promoted to champion"
        if champ_version is not None:
            # The outgoing champion stays reachable as the runner-up.
            client.set_registered_model_alias(name, CHALLENGER, champ_version)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)
        action = "kept as challenger"
    return {
        "model": name,
        "metric": SELECTION_METRIC,
        "version": version,
        "score": new_score,
        "champion_version": champ_version,
        "champion_score": champ_score,
        "action": action,
        "champion": version if action != "kept as challenger" else champ_version,
        "tracking_uri": uri,
    }


def _fmt(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.4f}"


def main(args) -> int:
    from ..tracking import TrackingError, check_tracking

    cfg = load_params(args)
    if not cfg.tracking.enabled:
        print("tempstop promote: tracking is disabled (tracking.enabled=false); nothing to promote")
        return 0
    try:
        check_tracking(cfg)
        result = promote(cfg, args.name, args.version, args.min_delta)
    except TrackingError as exc:
        print(f"tempstop promote: {exc}", file=sys.stderr)
        return 1
    metric = result["metric"]
    champ = result["champion_version"]
    print(f"model {result['model']} ({result['tracking_uri']}), metric {metric} (validation)")
    print(f"  candidate  version {result['version']}: {_fmt(result['score'])}")
    print(f"  champion   version {champ if champ else '-'}: {_fmt(result['champion_score'])}")
    print(f"  -> version {result['version']} {result['action']}")
    if result["action"] == "promoted to champion":
        from ..events import emit_champion_moved

        if emit_champion_moved(result["model"], result["version"], champ, result["score"]):
            print("  event tempstop.champion.moved sent (the reindex-on-promotion deployment re-embeds the collection)")
    if args.json_out:
        from tempstop.utils import atomic_write_json

        atomic_write_json(args.json_out, result)
    return 0
