"""The training loop's plan and state: :class:`Phase`, :func:`plan_phases`, :class:`LoopState`.

Light on purpose (no torch): the pipeline plans its two training stages with the same
:func:`plan_phases` the trainer runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs ``[start, end)`` trained in one model training mode."""

    mode: str
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "start": self.start, "end": self.end}


def check_phases(phases: Iterable[Phase], num_epochs: int, modes: Iterable[str]) -> list[Phase]:
    """``phases`` as a list if they are ascending stretches within ``[0, num_epochs]`` in
    ``modes``; else :class:`ValueError`."""
    phases, modes = list(phases), tuple(modes)
    end = 0
    for p in phases:
        if p.mode not in modes or not end <= p.start < p.end <= num_epochs:
            raise ValueError(
                f"phases {[q.to_dict() for q in phases]}: each needs a mode of {', '.join(modes)} "
                f"and ascending epochs within training.num_epochs={num_epochs}"
            )
        end = p.end
    if not phases:
        raise ValueError("no phase to train")
    return phases


def plan_phases(mode: str, num_epochs: int, split: float) -> list[Phase]:
    """``sequential`` -> TempMe for ``round(split * epochs)`` epochs, then STOP; else one phase."""
    if mode != "sequential":
        return [Phase(mode, 0, num_epochs)]
    first = min(max(round(num_epochs * split), 1), num_epochs - 1) if num_epochs > 1 else 1
    phases = [Phase("tempme_only", 0, first)]
    if first < num_epochs:
        phases.append(Phase("stop_only", first, num_epochs))
    return phases


@dataclass
class LoopState:
    """Where a run stands; what a checkpoint restores (with the optimiser, schedule, RNG and
    sampler states) and what callbacks see at the start."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimiser steps taken, skipped ones included (the schedule's position)
    bad_in_row: int = 0  # non-finite losses in a row
    best_metric: float = -math.inf  # best validation t2v R@1 so far
    best_epoch: int = 0  # its epoch (0: none yet)
    # The epoch whose weights best_model.pth holds (0: no file). Equal to best_epoch, except
    # right after resuming from a run that died after writing a later best.
    best_file_epoch: int = 0
    history: list[dict] = field(default_factory=list)  # one row per epoch

    def to_checkpoint(self) -> dict[str, Any]:
        """The fields a checkpoint keeps (``history`` only in full checkpoints)."""
        return {"epoch": self.epoch, "step": self.step, "best_metric": self.best_metric,
                "best_epoch": self.best_epoch}  # fmt: skip

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> LoopState:
        """The state a full checkpoint was written in (history rows up to its epoch)."""
        epoch = int(ckpt["epoch"])
        return cls(
            epoch=epoch,
            step=int(ckpt["step"]),
            best_metric=float(ckpt.get("best_metric", -math.inf)),
            best_epoch=int(ckpt.get("best_epoch", 0)),
            history=[row for row in ckpt.get("history", []) if row["epoch"] <= epoch],
        )
