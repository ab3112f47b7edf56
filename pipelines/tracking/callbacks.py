"""Training callbacks of the CLI (:mod:`tempstop.training.callbacks`): MLflow and TensorBoard.

The trainer tells its callbacks about steps and epochs; these write what they hear where
people look at it. Both run on the main process only (the trainer calls them there).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from tempstop.training.outputs import BEST, checkpoint_name


class MlflowCallback:
    """Sends each epoch's history row to the tracker (x axis: epoch); with ``checkpoint_dir``,
    also each full checkpoint the epoch wrote
    (:meth:`~tempstop_pipelines.tracking.runs.MlflowTracker.log_checkpoint`: what a retry of a
    crashed run resumes from, :mod:`tempstop_pipelines.fleet.recovery`)."""

    def __init__(self, tracker, checkpoint_dir: str | Path | None = None) -> None:
        self.tracker = tracker
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._since = time.time()
        self._best_changed = False

    def on_train_begin(self, state) -> None:
        self._since = time.time()

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self.tracker.log_metrics(
            {k: v for k, v in metrics.items() if k not in ("epoch", "phase")}, step=epoch
        )
        if self.checkpoint_dir is not None:
            self._log_checkpoint(epoch)
        self._since = time.time()

    def _log_checkpoint(self, epoch: int) -> None:
        """The epoch's checkpoint, with best_model.pth when it changed since the last one.
        Only files written during this epoch count, not what an earlier run left there."""
        def fresh(path: Path) -> bool:
            return path.is_file() and path.stat().st_mtime >= self._since - 1

        best, path = self.checkpoint_dir / BEST, self.checkpoint_dir / checkpoint_name(epoch)
        self._best_changed |= fresh(best)
        if fresh(path):
            self.tracker.log_checkpoint(path, epoch, best if self._best_changed else None)
            self._best_changed = False


class TensorBoardCallback:
    """TensorBoard event files in ``log_dir`` (``<checkpoint_dir>/logs``): ``train/loss`` and
    ``train/grad_norm`` per optimiser step; per epoch, the history row under ``val/``, ``lr/``
    and ``epoch/`` (x axis: optimiser steps). On resume, events after the resumed step are
    dropped, so a curve never doubles back."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer = None

    def on_train_begin(self, state) -> None:
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=state.step or None)

    def on_step_end(self, step: int, metrics: dict) -> None:
        for key, name in (("train_loss", "train/loss"), ("grad_norm", "train/grad_norm")):
            value = metrics.get(key)
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(name, value, step)

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        step = metrics["step"]
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step") and math.isfinite(value):
                group = "lr" if key.startswith("lr_") else "val" if key.startswith("val_") else "epoch"
                self.writer.add_scalar(f"{group}/{key}", value, step)
        self.writer.flush()

    def on_train_end(self, summary: dict) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the event files (again: nothing)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
