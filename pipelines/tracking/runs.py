"""Experiment tracking at the edges: MLflow runs, the model registry, ``models:/`` URIs.

The library (``src/tempstop``) returns metric dicts; the stages hand them to a :class:`Tracker`:

    check_tracking(cfg)                       # fail fast, before training, if the store is unreachable
    with open_tracker(cfg, job="train", run_name="joint") as tracker:
        tracker.log_metrics({"train_loss": 0.3, "val_t2v_R1": 0.41}, step=epoch)
        version = tracker.register_checkpoint("outputs/x/best_model.pth", best_metrics)

Opening a tracker already records what every run needs: the flattened config as params, the
config as a JSON artifact and tags (:mod:`.provenance`: git commit, training mode, data
version, job, and what the caller adds: DVC stage and phase, Prefect pipeline run, worker).
Only opening the run talks to the server directly (it was checked just before); every record
after goes through an outbox (:mod:`.outbox`), so a tracking server that goes away mid-run
delays the records instead of stopping training, and what could not be sent by the end is
named in one warning.
``tracking.enabled: false`` makes every call a no-op. ``MLFLOW_TRACKING_URI`` overrides
``tracking.uri`` (default ``sqlite:///mlflow.db`` in the project root).

Registered versions are pyfunc models (pipelines/tracking/pyfunc_model.py) that carry the
checkpoint and config as artifacts; :mod:`tempstop.inference.sources` turns
``models:/NAME@alias`` back into a checkpoint file for evaluate, index and search, and
``selection_score`` is what promote compares.

MLflow is reached through clients given the tracking URI; nothing here changes MLflow's
process-wide settings, except for the one call that has no client form (logging the pyfunc
model: :func:`_fluent_tracking_uri`), and only for that call.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking.context.registry import resolve_tags
from mlflow.types import ColSpec, Schema, TensorSpec

from tempstop.config import TrackingConfig
from tempstop.utils import sha256_file
from tempstop_pipelines.tracking.outbox import Outbox, server_health_url, server_up
from tempstop_pipelines.tracking.provenance import run_tags

log = logging.getLogger(__name__)

#: The version metric that model selection and promotion compare (validation, never test).
SELECTION_METRIC = "val_t2v_R1"
#: Other spellings a trainer may use for the same figure, tried in order.
_SELECTION_ALIASES = (SELECTION_METRIC, f"best_{SELECTION_METRIC}", "t2v_R1", "val_R1", "best_metric")
#: Requirements written into registered models; given explicitly because MLflow's inference
#: imports the model and takes ~20 s.
PIP_REQUIREMENTS = ["tempstop", "torch", "open_clip_torch", "numpy", "pandas"]


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI."""


# ---- configuration ------------------------------------------------------------------------
def _tracking_section(cfg: Any):
    """Accept a UnifiedModelConfig, a TrackingConfig or None (defaults)."""
    if cfg is None:
        return TrackingConfig()
    return getattr(cfg, "tracking", cfg)


def tracking_uri(cfg: Any = None) -> str:
    """The effective tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri``."""
    return _tracking_section(cfg).effective_uri()


def tracking_enabled(cfg: Any = None) -> bool:
    """Whether ``tracking.enabled`` (the default config: yes)."""
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


# ---- trackers -----------------------------------------------------------------------------
class Tracker:
    """No-op tracker: what stages get when tracking is disabled; the interface of
    :class:`MlflowTracker`."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        """Record ``params`` (values stringified) on the run."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Add ``tags`` to the run."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Record the numbers in ``metrics`` (nested dicts flattened) at ``step``."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or folder to the run's artifacts."""

    def log_checkpoint(self, path: str | Path, epoch: int, best: str | Path | None = None) -> None:
        """Record that ``path`` holds ``epoch`` (what a retry of a crashed run resumes from)."""

    def register_checkpoint(self, path: str | Path, metrics: dict[str, Any]) -> str | None:
        """Register ``path`` as a new model version; its number (None: not registered)."""
        return None


class MlflowTracker(Tracker):
    """Logs to one MLflow run through an :class:`~.outbox.Outbox`: calls return at once, a
    tracking server that goes away mid-run delays the records (sent when it is back) instead of
    stopping training, and :meth:`close` names in one warning whatever was not recorded."""

    def __init__(self, cfg: Any, job: str, run_id: str, uri: str, tags: dict[str, str] | None = None):
        self.cfg = cfg
        self.job = job
        self.uri = uri
        self.tags = run_tags(cfg, job, tags)
        self.run_id = run_id
        self.outbox = Outbox(uri)
        self.flush_timeout_s = float(_tracking_section(cfg).flush_timeout_s)

    def log_params(self, params: dict[str, Any]) -> None:
        # Values are stringified (lists, None); MLflow takes 6000 characters and 100 per call.
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            chunk = items[i : i + 100]
            self.outbox.put("params", lambda c, chunk=chunk: c.log_batch(self.run_id, params=chunk))

    def set_tags(self, tags: dict[str, str]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self.outbox.put(f"tags {', '.join(tags)}", lambda c: c.log_batch(self.run_id, tags=items))

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        clean, now = _numeric_metrics(metrics), int(time.time() * 1000)  # the time it was measured
        items = [Metric(k, v, now, step or 0) for k, v in clean.items()]
        if items:
            label = f"metrics of step {step}" if step is not None else f"metrics {', '.join(clean)}"
            self.outbox.put(label, lambda c: c.log_batch(self.run_id, metrics=items))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.outbox.put(f"artifacts {path}", lambda c: c.log_artifacts(self.run_id, str(path), artifact_path))
        elif path.is_file():
            self.outbox.put(f"artifact {path}", lambda c: c.log_artifact(self.run_id, str(path), artifact_path))
        else:
            log.warning("not logging %s: no such file", path)

    def log_checkpoint(self, path: str | Path, epoch: int, best: str | Path | None = None) -> None:
        """Record that ``path`` (a full checkpoint) holds ``epoch``: tags ``checkpoint_epoch``
        and ``checkpoint_sha256``. With a tracking server (shared by every machine) the file,
        and ``best`` (best_model.pth, when it changed) before it, are first uploaded to the
        run's ``checkpoints/`` artifacts, so a tag never names a checkpoint that is not there
        (:mod:`tempstop_pipelines.fleet.recovery` reads them)."""
        path, upload = Path(path), server_health_url(self.uri) is not None

        def send(client) -> None:
            if upload:
                if best is not None:
                    client.log_artifact(self.run_id, str(best), "checkpoints")
                client.log_artifact(self.run_id, str(path), "checkpoints")
            client.set_tag(self.run_id, "checkpoint_sha256", sha256_file(path))
            client.set_tag(self.run_id, "checkpoint_epoch", str(epoch))

        self.outbox.put(f"checkpoint {path.name}", send)

    def register_checkpoint(self, path: str | Path, metrics: dict[str, Any]) -> str | None:
        """Log the checkpoint as a pyfunc model and register it as a new version (None, with a
        warning, when the tracking server is still away after ``tracking.flush_timeout_s``).

        The version carries the selection metric (validation t2v R@1) as a tag, which
        ``tempstop promote`` compares with the champion's, and the run's tags (git commit,
        data hashes, pipeline run, worker).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot register {path}: no such checkpoint")
        flat = _numeric_metrics(metrics)
        self.log_metrics({f"best_{k}": v for k, v in flat.items()})
        if not self.outbox.drain(self.flush_timeout_s) or not server_up(self.uri):
            log.warning("MLflow %s still unreachable: %s NOT registered (register it later from the file)",
                        self.uri, path)  # fmt: skip
            return None
        version = self._log_model(path)
        score = selection_score(metrics)
        tags = {"job": self.job, "run_id": self.run_id, "checkpoint": path.name}
        tags.update({k: f"{v:.6g}" for k, v in flat.items()})
        if score is not None:
            tags[SELECTION_METRIC] = f"{score:.6g}"
        tags.update({k: v for k, v in self.tags.items() if k != "job"})
        client, name = MlflowClient(self.uri), _tracking_section(self.cfg).registered_model
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        log.info("registered %s version %s (%s=%s)", name, version, SELECTION_METRIC, score)
        return version

    def _log_model(self, path: Path) -> str:
        """The pyfunc model of ``path`` in this run (active for the call), registered."""
        with _fluent_tracking_uri(self.uri), tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            # An input example would make MLflow load the checkpoint and run predict() at
            # registration; the explicit signature says what the input is.
            warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
            config_path = Path(tmp) / "config.json"
            config_path.write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
            mlflow.start_run(run_id=self.run_id)
            try:
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                    artifacts={"checkpoint": str(path), "config": str(config_path)},
                    pip_requirements=PIP_REQUIREMENTS,
                    signature=_pyfunc_signature(),
                    registered_model_name=_tracking_section(self.cfg).registered_model,
                )
            finally:
                mlflow.end_run()  # the final status is set by close()
        return str(info.registered_model_version)

    def close(self, status: str) -> None:
        """End the run as ``status`` (FINISHED / FAILED) once everything before is sent; warn,
        naming them, about the records that could not be sent in ``tracking.flush_timeout_s``."""
        self.outbox.put(f"end of run ({status})", lambda c: c.set_terminated(self.run_id, status))
        unsent = self.outbox.close(self.flush_timeout_s)
        lost = unsent + self.outbox.refused
        if lost:
            shown = ", ".join(lost[:12]) + (f" and {len(lost) - 12} more" if len(lost) > 12 else "")
            log.warning("MLflow run %s at %s: NOT recorded: %s. %s", self.run_id, self.uri, shown,
                        "The server is unreachable; they are still sent if it comes back before this process "
                        "exits." if unsent else "The server refused them.")  # fmt: skip


def _pyfunc_signature():
    """Input: a "text" column (queries) or a "video" column (mp4 paths); output: embeddings."""
    return ModelSignature(
        inputs=Schema(
            [ColSpec("string", "text", required=False), ColSpec("string", "video", required=False)]
        ),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]),
    )


@contextmanager
def _fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``mlflow.start_run``, ``mlflow.pyfunc.log_model``) pointed at ``uri``
    for the block, the process-wide setting (and ``MLFLOW_TRACKING_URI``, which
    ``mlflow.set_tracking_uri`` also writes) put back after. Logging a model has no client
    form, so the setting must change; other threads using the fluent API meanwhile would see
    ``uri`` too (this package does not use it anywhere else)."""
    if mlflow.get_tracking_uri() == uri:
        yield
        return
    before = os.environ.get("MLFLOW_TRACKING_URI")  # None: unset again afterwards
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def _ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """Experiment id; a new experiment on a sqlite store keeps artifacts beside the database
    (``<db folder>/mlruns``) rather than wherever the first run happened to start."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        location = (db.parent / "mlruns").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Created meanwhile by a concurrent run (Prefect task, DVC parallel stage).
        return client.get_experiment_by_name(name).experiment_id


@contextmanager
def open_tracker(
    cfg: Any, job: str, run_name: str | None = None, tags: dict[str, str] | None = None
) -> Iterator[Tracker]:
    """An MLflow run for one job (train, evaluate, ...), ended when the block exits; ``tags``
    are added to :func:`~.provenance.run_tags` (and to the model versions it registers).

    The run is created here (the server was checked before); everything after goes through
    the tracker's outbox. A run whose block raises is marked FAILED. With tracking disabled
    this yields a no-op.
    """
    if not tracking_enabled(cfg):
        yield Tracker()
        return
    uri = tracking_uri(cfg)
    client = MlflowClient(uri)
    experiment_id = _ensure_experiment(client, _tracking_section(cfg).experiment, uri)
    run = client.create_run(experiment_id, tags=resolve_tags({}), run_name=run_name)
    tracker = MlflowTracker(cfg, job, run.info.run_id, uri, tags)
    tracker.set_tags(tracker.tags)
    if hasattr(cfg, "flat"):
        tracker.log_params(cfg.flat())
    if hasattr(cfg, "to_dict"):
        config = cfg.to_dict()
        tracker.outbox.put("config.json", lambda c: c.log_dict(tracker.run_id, config, "config.json"))
    log.info("MLflow run %s (%s) in %s", run.info.run_id, job, uri)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        tracker.close(status)
