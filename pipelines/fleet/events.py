"""Prefect events the pipeline emits: a stage announces, a deployment trigger reacts.

``tempstop.champion.moved`` (resource ``tempstop.model.<registered name>``, payload ``name``,
``version``, ``previous``, ``score``): ``tempstop promote`` moved the ``champion`` alias; the
``reindex-on-promotion`` deployment (prefect.yaml) re-embeds the served collection with it.
"""

from __future__ import annotations

from prefect.events import emit_event

from tempstop_pipelines.fleet.locks import prefect_api

CHAMPION_MOVED = "tempstop.champion.moved"
MODEL_RESOURCE = "tempstop.model."


def emit_champion_moved(name: str, version: str, previous: str | None, score: float | None) -> bool:
    """Send the event when a Prefect API is configured (``PREFECT_API_URL``); True if sent."""
    if not prefect_api():
        return False
    event = emit_event(
        event=CHAMPION_MOVED,
        resource={"prefect.resource.id": f"{MODEL_RESOURCE}{name}", "prefect.resource.name": name},
        payload={"name": name, "version": str(version), "previous": previous, "score": score},
    )
    return event is not None
