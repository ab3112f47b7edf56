"""The model registry seen from the stages: ``models:/`` URIs -> local checkpoint files.

``tempstop evaluate``, ``index`` and ``search`` accept ``models:/NAME@alias`` (e.g.
``models:/tempstop-unified@champion``), ``models:/NAME/VERSION`` and ``runs:/RUN_ID/PATH``
wherever a checkpoint path goes; :func:`resolve_model_uri` downloads the version's artifacts
once (:func:`tempstop.loading.resolve_checkpoint`) from the tracking URI of the params.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def resolve_model_uri(uri: str | Path, cfg: Any = None, cache_dir: str | Path | None = None) -> str:
    """A local checkpoint path for ``uri`` (plain paths come back unchanged); registry
    errors are raised as :class:`~.tracking.TrackingError`."""
    from tempstop.loading import is_registry_uri, resolve_checkpoint
    from tempstop.training.checkpoint import CheckpointError

    from .tracking import TrackingError, tracking_uri

    if not is_registry_uri(uri):
        return str(uri)
    try:
        return str(resolve_checkpoint(uri, tracking_uri(cfg), cache_dir))
    except CheckpointError as exc:
        raise TrackingError(str(exc)) from None
