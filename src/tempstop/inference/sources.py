"""Where a model comes from: a checkpoint file or a version of the MLflow model registry.

    import tempstop
    model = tempstop.load_model("outputs/stop/best_model.pth")            # a checkpoint file
    model = tempstop.load_model("models:/tempstop-unified@champion")       # a registered version
    ids, mask = model.tokenize(["a red circle moves left, then a blue square moves up"])
    text = model.encode_text(ids, mask)                                    # [1, E], L2-normalised

A registry URI (``models:/NAME@alias``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/PATH``) is
downloaded once per version into a cache folder; reading the registry needs ``mlflow`` (the
``pipeline`` extra: imported only for such a URI). The tracking URI is passed to each MLflow
call: nothing here changes MLflow's process-wide settings, and nothing is tracked or logged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from tempstop.config import ProjectConfig, TrackingConfig
from tempstop.inference.checkpoint import CheckpointError, model_from_checkpoint
from tempstop.utils import sha256_file

log = logging.getLogger(__name__)

#: Where registry checkpoints are downloaded to (git-ignored), one folder per version.
MODEL_CACHE = Path(".tempstop") / "models"
#: Extensions that identify the checkpoint inside a registered model's artifacts.
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
_REGISTRY_SCHEMES = ("models:/", "runs:/")


@dataclass(frozen=True)
class LoadedModel:
    """A model opened for inference: the model (eval mode), the config it was trained with
    (``model.pretrained`` cleared), what identifies it (:func:`model_identity`) and its
    local checkpoint file."""

    model: torch.nn.Module
    config: ProjectConfig
    identity: dict
    path: Path


def pick_device(name: str | None = None) -> torch.device:
    """``name`` ("cpu", "cuda"), else CUDA when there is a GPU, else the CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def open_model(
    source: str | Path, device: str | torch.device = "cpu", tracking_uri: str | None = None
) -> LoadedModel:
    """The model of a checkpoint file or registry URI with its config and identity.
    Raises :class:`CheckpointError` with a one-line message."""
    path, identity = model_identity(source, tracking_uri)
    model, cfg, _ = model_from_checkpoint(path, device)
    return LoadedModel(model, cfg, identity, path)


def load_model(source: str | Path, device: str | torch.device = "cpu", tracking_uri: str | None = None):
    """The model of a checkpoint file or registry URI, on ``device``, in eval mode.

    ``tracking_uri`` is the registry's MLflow tracking URI for ``models:/`` and ``runs:/``
    sources (default: ``$MLFLOW_TRACKING_URI``, else the project's ``sqlite:///mlflow.db``).
    Raises :class:`CheckpointError` with a one-line message.
    """
    return model_from_checkpoint(resolve_checkpoint(source, tracking_uri), device)[0]


def model_identity(source: str | Path, tracking_uri: str | None = None) -> tuple[Path, dict]:
    """The local checkpoint of ``source`` and what identifies the model in it:
    ``{"source", "checkpoint", "sha256", "registry"}``. ``sha256`` is of the checkpoint's bytes
    (the same for a registered version and the file it was made from). For a ``models:/``
    source, ``source`` is pinned to the version (``models:/NAME/VERSION``: an alias moves) and
    ``registry`` is ``{"name", "version", "alias"}``; otherwise ``registry`` is None."""
    uri = str(source)
    path, version = _download(uri, tracking_uri, None) if is_registry_uri(uri) else (Path(uri), None)
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    registry = None
    if uri.startswith("models:/"):
        name, alias, _ = _parse_models_uri(uri)
        registry = {"name": name, "alias": alias, "version": str(version)}
        uri = f"models:/{name}/{version}"
    info = {"source": uri, "checkpoint": str(path.resolve()), "sha256": sha256_file(path), "registry": registry}
    return path, info


def is_registry_uri(source: str | Path) -> bool:
    """``models:/...`` or ``runs:/...``."""
    return str(source).startswith(_REGISTRY_SCHEMES)


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the ``tracking.uri`` default (``sqlite:///mlflow.db``)."""
    return TrackingConfig().effective_uri()


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
    try:  # optional: the library without the `pipeline` extra has no registry
        import mlflow.artifacts
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise CheckpointError(
            f"{uri}: reading the model registry needs mlflow (pip install 'tempstop[pipeline]')"
        ) from None

    tracking = tracking_uri or default_tracking_uri()
    cache = Path(cache_dir) if cache_dir else MODEL_CACHE
    if uri.startswith("models:/"):
        name, alias, version = _parse_models_uri(uri)
        client = MlflowClient(tracking, registry_uri=tracking)
        try:
            version = _resolve_version(client, name, alias, version)
        except MlflowException as exc:
            raise CheckpointError(f"cannot resolve {uri} in {tracking}: {str(exc).splitlines()[0]}") from None
        if version is None:
            raise CheckpointError(f"cannot resolve {uri} in {tracking}: no versions of {name}")
        target = cache / _safe(name) / f"v{version}"
        # The version's own artifact location: MLflow resolves a models:/ URI against its
        # process-wide registry, not the registry_uri given to download_artifacts.
        artifacts = client.get_model_version_download_uri(name, version)
    else:
        target = cache / "runs" / _safe(uri.removeprefix("runs:/"))
        artifacts, version = uri, None
    found = _find_checkpoint(target)
    if found is None:
        target.mkdir(parents=True, exist_ok=True)
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=artifacts, dst_path=str(target), tracking_uri=tracking)
        except MlflowException as exc:
            raise CheckpointError(
                f"cannot download {uri} from {tracking}: {str(exc).splitlines()[0]}"
            ) from None
        found = _find_checkpoint(target)
    if found is None:
        raise CheckpointError(f"{uri} holds no checkpoint file ({', '.join(_CHECKPOINT_SUFFIXES)})")
    log.info("%s -> %s", uri, found)
    return found, version


def _resolve_version(client, name: str, alias: str | None, version: str | None) -> str | None:
    """The version an alias names, the version given, or the newest version of ``name``
    (None: it has none)."""
    if alias:
        return client.get_model_version_by_alias(name, alias).version
    if version is not None:
        return version
    versions = client.search_model_versions(f"name='{name}'")
    return max(versions, key=lambda v: int(v.version)).version if versions else None


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
