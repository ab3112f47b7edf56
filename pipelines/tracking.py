"""Experiment tracking at the edges: MLflow runs, the model registry, ``models:/`` URIs.

The library (``src/tempstop``) returns metric dicts; the stages hand them to a :class:`Tracker`:

    check_tracking(cfg)                       # fail fast, before training, if the store is unreachable
    with open_tracker(cfg, job="train", run_name="joint") as tracker:
        tracker.log_metrics({"train_loss": 0.3, "val_t2v_R1": 0.41}, step=epoch)
        version = tracker.register_checkpoint("outputs/x/best_model.pth", best_metrics)

Opening a tracker already records what every run needs: the flattened config as params, the
config as a JSON artifact and tags (git commit, training mode, data version, job, and what the
caller adds: DVC stage and phase, Prefect pipeline run).
``tracking.enabled: false`` makes every call a no-op. ``MLFLOW_TRACKING_URI`` overrides
``tracking.uri`` (default ``sqlite:///mlflow.db`` in the project root).

Registered versions are pyfunc models (pipelines/pyfunc_model.py) that carry the checkpoint
and config as artifacts; ``resolve_model_uri`` (pipelines/registry.py) turns
``models:/NAME@alias`` back into a checkpoint path for evaluate and search, and
``selection_score`` is what promote compares.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The version metric that model selection and promotion compare (validation, never test).
SELECTION_METRIC = "val_t2v_R1"
#: Other spellings a trainer may use for the same figure, tried in order.
_SELECTION_ALIASES = ("val_t2v_R1", "best_val_t2v_R1", "t2v_R1", "val_R1", "best_metric")
#: Requirements written into registered models; given explicitly because MLflow's inference
#: imports the model and takes ~20 s.
PIP_REQUIREMENTS = ["tempstop", "torch", "open_clip_torch", "numpy", "pandas"]


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI."""


# ---- configuration ------------------------------------------------------------------------
def _tracking_section(cfg: Any):
    """Accept a UnifiedModelConfig, a TrackingConfig or None (defaults)."""
    if cfg is None:
        from tempstop.config import TrackingConfig

        return TrackingConfig()
    return getattr(cfg, "tracking", cfg)


def tracking_uri(cfg: Any = None) -> str:
    """The effective tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or _tracking_section(cfg).uri


def tracking_enabled(cfg: Any = None) -> bool:
    return bool(_tracking_section(cfg).enabled)


def sanitize_metric_name(name: str) -> str:
    """MLflow refuses ``@`` and other characters in names: ``R@1`` -> ``R_at_1``."""
    name = name.replace("@", "_at_")
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


def _numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Keep the numbers (flattening one level of nesting: ``t2v.R1`` -> ``t2v_R1``)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            for sub, inner in _numeric_metrics(value).items():
                out[sanitize_metric_name(f"{key}_{sub}")] = inner
        elif isinstance(value, int | float) and math.isfinite(float(value)):  # bools too
            out[sanitize_metric_name(key)] = float(value)
    return out


def selection_score(metrics: dict[str, Any]) -> float | None:
    """The validation R@1 in a metric dict, under any of the names a trainer uses."""
    flat = _numeric_metrics(metrics)
    for key in _SELECTION_ALIASES:
        if key in flat:
            return flat[key]
    return None


# ---- reachability -------------------------------------------------------------------------
def check_tracking(cfg: Any, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingError` naming the URI when the tracking store cannot be used.

    Called before training starts, so a typo in the server address costs seconds, not a
    training run whose results then cannot be logged.
    """
    if not tracking_enabled(cfg):
        return
    uri = tracking_uri(cfg)
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else "file"
    if scheme in {"http", "https"}:
        import requests

        url = uri.rstrip("/") + "/health"
        try:
            response = requests.get(url, timeout=timeout)
        except requests.RequestException as exc:
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({type(exc).__name__}: {exc}). "
                "Start it, fix tracking.uri / MLFLOW_TRACKING_URI, or set tracking.enabled=false."
            ) from None
        if response.status_code >= 400:
            raise TrackingError(
                f"MLflow tracking server {uri} answered {url} with HTTP {response.status_code}"
            )
    elif scheme == "sqlite":
        path = uri.split("///", 1)[1] if "///" in uri else ""
        if path and path != ":memory:":
            folder = Path(path).expanduser().resolve().parent
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise TrackingError(
                    f"MLflow tracking store {uri}: folder {folder} is missing or not writable"
                )
    elif scheme == "file":
        folder = Path(uri.removeprefix("file://")).expanduser().resolve()
        parent = folder if folder.exists() else folder.parent
        if not os.access(parent, os.W_OK):
            raise TrackingError(f"MLflow tracking store {uri}: {parent} is not writable")


# ---- tags ---------------------------------------------------------------------------------
def git_commit(cwd: str | Path = ".") -> str:
    """``HEAD`` of the working tree, with ``-dirty`` when tracked files are modified."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def data_version(cfg: Any) -> dict[str, str]:
    """Cheap, honest identifiers of the data a run saw.

    ``data_version`` hashes every split's annotations.json and the names and sizes of its
    videos (no video bytes are read). ``dvc_data_hash`` is DVC's own hash of the data folder
    when dvc.lock records it.
    """
    import hashlib

    data = getattr(cfg, "data", None)
    if data is None:
        return {}
    root = Path(data.root)
    digest = hashlib.sha256()
    seen = False
    for split in (data.train_split, data.val_split, data.test_split):
        ann = root / split / "annotations.json"
        if ann.is_file():
            seen = True
            digest.update(split.encode() + b"\0" + ann.read_bytes())
            videos = root / split / "videos"
            if videos.is_dir():
                for f in sorted(videos.iterdir()):
                    digest.update(f"{f.name}:{f.stat().st_size}\n".encode())
    tags = {"data_root": str(root)}
    if seen:
        tags["data_version"] = digest.hexdigest()[:16]
    lock = Path("dvc.lock")
    if lock.is_file():
        try:
            import yaml

            stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
            for stage in stages.values():
                for out in stage.get("outs", []) or []:
                    if Path(out.get("path", "")) == root and out.get("md5"):
                        tags["dvc_data_hash"] = out["md5"]
        except Exception as exc:  # a malformed lock file must not stop training
            log.debug("could not read dvc.lock: %s", exc)
    return tags


def run_tags(cfg: Any, job: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The tags every run carries, plus ``extra`` (the DVC stage and phase, the Prefect
    pipeline run: given by whoever starts the job)."""
    tags = {"job": job, "git_commit": git_commit()}
    training = getattr(cfg, "training", None)
    if training is not None:
        tags["mode"] = str(training.mode)
    model = getattr(cfg, "model", None)
    if model is not None:
        tags["variant"] = str(model.variant)
        tags["backbone"] = str(model.backbone)
    tags.update(data_version(cfg))
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags


# ---- trackers -----------------------------------------------------------------------------
class Tracker:
    """No-op tracker: what stages get when tracking is disabled."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def register_checkpoint(self, path: str | Path, metrics: dict[str, Any]) -> str | None:
        return None


class MlflowTracker(Tracker):
    """Logs to the active MLflow run. Logging failures mid-run are warnings: the checkpoint on
    disk is the result, and losing a curve point must not kill a long training run."""

    def __init__(self, cfg: Any, job: str, run: Any, tags: dict[str, str] | None = None):
        self.cfg = cfg
        self.job = job
        self.tags = run_tags(cfg, job, tags)
        self.run_id = run.info.run_id
        self._warned = False

    def _guard(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not self._warned:
                log.warning("MLflow %s failed (%s); training continues", what, exc)
                self._warned = True
            return None

    def log_params(self, params: dict[str, Any]) -> None:
        import mlflow

        # Values are stringified (lists, None); MLflow limits a value to 6000 characters.
        clean = {k: str(v)[:6000] for k, v in params.items()}
        try:
            mlflow.log_params(clean)
        except mlflow.exceptions.MlflowException as exc:
            # Re-logging a param with a different value is refused; keep the first value.
            log.warning("some params were not logged: %s", str(exc).splitlines()[0])

    def set_tags(self, tags: dict[str, str]) -> None:
        import mlflow

        self._guard("set_tags", mlflow.set_tags, {k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        import mlflow

        clean = _numeric_metrics(metrics)
        if clean:
            self._guard("log_metrics", mlflow.log_metrics, clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            self._guard("log_artifacts", mlflow.log_artifacts, str(path), artifact_path)
        elif path.is_file():
            self._guard("log_artifact", mlflow.log_artifact, str(path), artifact_path)
        else:
            log.warning("not logging %s: no such file", path)

    def register_checkpoint(self, path: str | Path, metrics: dict[str, Any]) -> str | None:
        """Log the checkpoint as a pyfunc model and register it as a new version.

        The version carries the selection metric (validation t2v R@1) as a tag, which
        ``tempstop promote`` compares with the champion's.
        """
        import mlflow
        from mlflow import MlflowClient

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot register {path}: no such checkpoint")
        name = _tracking_section(self.cfg).registered_model
        flat = _numeric_metrics(metrics)
        self.log_metrics({f"best_{k}": v for k, v in flat.items()})
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            # An input example would make MLflow load the checkpoint and run predict() at
            # registration; the explicit signature says what the input is.
            warnings.filterwarnings(
                "ignore", message=".*input example was not provided", category=UserWarning
            )
            config_path = Path(tmp) / "config.json"
            config_path.write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={"checkpoint": str(path), "config": str(config_path)},
                pip_requirements=PIP_REQUIREMENTS,
                signature=_pyfunc_signature(),
                registered_model_name=name,
            )
        version = str(info.registered_model_version)
        client = MlflowClient(tracking_uri())
        score = selection_score(metrics)
        tags = {"job": self.job, "run_id": self.run_id, "checkpoint": path.name}
        tags.update({k: f"{v:.6g}" for k, v in flat.items()})
        if score is not None:
            tags[SELECTION_METRIC] = f"{score:.6g}"
        tags.update({k: v for k, v in self.tags.items() if k != "job"})
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        log.info("registered %s version %s (%s=%s)", name, version, SELECTION_METRIC, score)
        return version


def _pyfunc_signature():
    """Input: a "text" column (queries) or a "video" column (mp4 paths); output: embeddings."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema(
            [ColSpec("string", "text", required=False), ColSpec("string", "video", required=False)]
        ),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]),
    )


def _ensure_experiment(name: str, uri: str) -> str:
    """Experiment id; a new experiment on a sqlite store keeps artifacts beside the database
    (``<db folder>/mlruns``) rather than wherever the first run happened to start."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        location = (db.parent / "mlruns").as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Created meanwhile by a concurrent run (Prefect task, DVC parallel stage).
        return mlflow.get_experiment_by_name(name).experiment_id


@contextmanager
def open_tracker(
    cfg: Any, job: str, run_name: str | None = None, tags: dict[str, str] | None = None
) -> Iterator[Tracker]:
    """An MLflow run for one job (train, evaluate, ...), ended when the block exits; ``tags``
    are added to :func:`run_tags` (and to the model versions it registers).

    A run whose block raises is marked FAILED. With tracking disabled this yields a no-op.
    """
    if not tracking_enabled(cfg):
        yield Tracker()
        return
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    experiment_id = _ensure_experiment(_tracking_section(cfg).experiment, uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        tracker = MlflowTracker(cfg, job, run, tags)
        tracker.set_tags(tracker.tags)
        if hasattr(cfg, "flat"):
            tracker.log_params(cfg.flat())
        if hasattr(cfg, "to_dict"):
            tracker._guard("log_dict", mlflow.log_dict, cfg.to_dict(), "config.json")
        log.info("MLflow run %s (%s) in %s", run.info.run_id, job, uri)
        yield tracker
