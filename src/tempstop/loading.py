"""Loading a trained model from a checkpoint file or the MLflow model registry.

    import tempstop
    model = tempstop.load_model("outputs/stop/best_model.pth")            # a checkpoint file
    model = tempstop.load_model("models:/tempstop-unified@champion")       # a registered version
    ids, mask = model.tokenize(["a red circle moves left, then a blue square moves up"])
    text = model.encode_text(ids, mask)                                    # [1, E], L2-normalised

A registry URI (``models:/NAME@alias``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/PATH``) is
downloaded once per version into a cache folder; reading the registry needs ``mlflow`` (the
``pipeline`` extra). Nothing is tracked or logged to MLflow here.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

#: Where registry checkpoints are downloaded to (git-ignored), one folder per version.
MODEL_CACHE = Path(".tempstop") / "models"
#: Extensions that identify the checkpoint inside a registered model's artifacts.
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
_REGISTRY_SCHEMES = ("models:/", "runs:/")


def load_model(source: str | Path, device: str = "cpu", tracking_uri: str | None = None):
    """The model of a checkpoint file or registry URI, on ``device``, in eval mode.

    ``tracking_uri`` is the registry's MLflow tracking URI for ``models:/`` and ``runs:/``
    sources (default: ``$MLFLOW_TRACKING_URI``, else the project's ``sqlite:///mlflow.db``).
    Raises :class:`tempstop.training.checkpoint.CheckpointError` with a one-line message.
    """
    from tempstop.training.checkpoint import load_model as load_checkpoint_model

    model, _, _ = load_checkpoint_model(resolve_checkpoint(source, tracking_uri), device)
    return model


def model_identity(source: str | Path, tracking_uri: str | None = None) -> tuple[Path, dict]:
    """The local checkpoint of ``source`` and what identifies the model in it:
    ``{"source", "checkpoint", "sha256", "registry"}``. ``sha256`` is of the checkpoint's bytes
    (the same for a registered version and the file it was made from). For a ``models:/``
    source, ``source`` is pinned to the version (``models:/NAME/VERSION``: an alias moves) and
    ``registry`` is ``{"name", "version", "alias"}``; otherwise ``registry`` is None."""
    import hashlib

    uri = str(source)
    path, version = _download(uri, tracking_uri, None) if is_registry_uri(uri) else (Path(uri), None)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    registry = None
    if uri.startswith("models:/"):
        name, alias, _ = _parse_models_uri(uri)
        registry = {"name": name, "alias": alias, "version": str(version)}
        uri = f"models:/{name}/{version}"
    info = {"source": uri, "checkpoint": str(path.resolve()), "sha256": digest.hexdigest(), "registry": registry}
    return path, info


def is_registry_uri(source: str | Path) -> bool:
    """``models:/...`` or ``runs:/...``."""
    return str(source).startswith(_REGISTRY_SCHEMES)


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the ``tracking.uri`` default (``sqlite:///mlflow.db``)."""
    from tempstop.config import TrackingConfig

    return os.environ.get("MLFLOW_TRACKING_URI") or TrackingConfig().uri


def resolve_checkpoint(
    source: str | Path, tracking_uri: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """A local checkpoint path for ``source``.

    Paths come back unchanged. ``models:/NAME@alias``, ``models:/NAME/VERSION`` and
    ``runs:/RUN_ID/PATH`` are downloaded once into ``cache_dir`` (default
    ``.tempstop/models/``; per version, so a moved alias is picked up and an unchanged one is
    not downloaded again).
    """
    uri = str(source)
    if not is_registry_uri(uri):
        return Path(uri)
    return _download(uri, tracking_uri, cache_dir)[0]


def _download(uri: str, tracking_uri: str | None, cache_dir: str | Path | None) -> tuple[Path, str | None]:
    """The checkpoint of a registry URI, downloaded once, and the model version it is."""
    from tempstop.training.checkpoint import CheckpointError

    try:
        import mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise CheckpointError(
            f"{uri}: reading the model registry needs mlflow (pip install 'tempstop[pipeline]')"
        ) from None

    tracking = tracking_uri or default_tracking_uri()
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
            raise CheckpointError(f"cannot resolve {uri} in {tracking}: {str(exc).splitlines()[0]}") from None
        target = cache / _safe(name) / f"v{version}"
        artifacts = f"models:/{name}/{version}"
    else:
        target = cache / "runs" / _safe(uri.removeprefix("runs:/"))
        artifacts, version = uri, None
    found = _find_checkpoint(target)
    if found is None:
        target.mkdir(parents=True, exist_ok=True)
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=artifacts, dst_path=str(target))
        except MlflowException as exc:
            raise CheckpointError(
                f"cannot download {uri} from {tracking}: {str(exc).splitlines()[0]}"
            ) from None
        found = _find_checkpoint(target)
    if found is None:
        raise CheckpointError(f"{uri} holds no checkpoint file ({', '.join(_CHECKPOINT_SUFFIXES)})")
    log.info("%s -> %s", uri, found)
    return found, version


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


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _find_checkpoint(folder: Path) -> Path | None:
    if folder.is_file():
        return folder
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*") if p.suffix in _CHECKPOINT_SUFFIXES and p.is_file())
    return files[0] if files else None
