"""Experiment tracking at the edges (MLflow). STUB: the orchestration work implements it.

Interface used by the train / evaluate stages:

    check_tracking(cfg)                       # raise early if the tracking server is unreachable
    with open_tracker(cfg, job="train", run_name=...) as tracker:
        tracker.log_params(cfg.flat()); tracker.set_tags({...})
        tracker.log_metrics({"train_loss": ...}, step=epoch)
        tracker.log_artifact(path)
        version = tracker.register_checkpoint(path, metrics)   # best model -> registry
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any


class Tracker:
    """No-op tracker (replaced by the MLflow implementation)."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str) -> None: ...
    def register_checkpoint(self, path: str, metrics: dict[str, float]) -> str | None:
        return None


def check_tracking(cfg) -> None:
    """Raise RuntimeError naming the URI when the tracking store cannot be reached."""


@contextmanager
def open_tracker(cfg, job: str, run_name: str | None = None):
    yield Tracker()
