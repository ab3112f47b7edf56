"""The model registry seen from the stages: ``models:/`` URIs -> local checkpoint files.

``tempstop evaluate`` and ``tempstop search`` accept ``models:/NAME@alias`` (e.g.
``models:/tempstop-unified@champion``), ``models:/NAME/VERSION`` and ``runs:/RUN_ID/PATH``
wherever a checkpoint path goes; :func:`resolve_model_uri` downloads the version's artifacts
once and returns the checkpoint inside them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Where ``models:/`` checkpoints are downloaded to (git-ignored), one folder per version.
MODEL_CACHE = Path(".tempstop") / "models"
#: Extensions that identify the checkpoint inside a registered model's artifacts.
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")


def _parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@alias`` or ``models:/NAME/VERSION`` -> (name, alias, version)."""
    body = uri.removeprefix("models:/").strip("/")
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        return name, alias, None
    if "/" in body:
        name, version = body.rsplit("/", 1)
        return name, None, version
    return body, None, None


def resolve_model_uri(uri: str | Path, cfg: Any = None, cache_dir: str | Path | None = None) -> str:
    """A local checkpoint path for ``uri``.

    Plain paths come back unchanged. ``models:/NAME@alias``, ``models:/NAME/VERSION`` and
    ``runs:/RUN_ID/PATH`` are downloaded once into ``.tempstop/models/`` (per version, so a
    moved alias is picked up and an unchanged one is not downloaded again).
    """
    uri = str(uri)
    if not uri.startswith(("models:/", "runs:/")):
        return uri
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipelines.tracking import TrackingError, tracking_uri

    tracking = tracking_uri(cfg)
    mlflow.set_tracking_uri(tracking)
    cache = Path(cache_dir) if cache_dir else MODEL_CACHE
    if uri.startswith("models:/"):
        name, alias, version = _parse_models_uri(uri)
        client = MlflowClient(tracking)
        try:
            if alias:
                version = client.get_model_version_by_alias(name, alias).version
            elif version is None:
                versions = client.search_model_versions(f"name='{name}'")
                if not versions:
                    raise MlflowException(f"no versions of {name}")
                version = max(versions, key=lambda v: int(v.version)).version
        except MlflowException as exc:
            raise TrackingError(f"cannot resolve {uri} in {tracking}: {str(exc).splitlines()[0]}") from None
        target = cache / _safe(name) / f"v{version}"
        source = f"models:/{name}/{version}"
    else:
        target = cache / "runs" / _safe(uri.removeprefix("runs:/"))
        source = uri
    found = _find_checkpoint(target)
    if found is None:
        target.mkdir(parents=True, exist_ok=True)
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(target))
        except MlflowException as exc:
            raise TrackingError(
                f"cannot download {uri} from {tracking}: {str(exc).splitlines()[0]}"
            ) from None
        found = _find_checkpoint(target)
    if found is None:
        raise TrackingError(f"{uri} holds no checkpoint file ({', '.join(_CHECKPOINT_SUFFIXES)})")
    log.info("%s -> %s", uri, found)
    return str(found)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _find_checkpoint(folder: Path) -> Path | None:
    if folder.is_file():
        return folder
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*") if p.suffix in _CHECKPOINT_SUFFIXES and p.is_file())
    return files[0] if files else None
