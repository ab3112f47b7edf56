"""What a training run leaves in ``checkpoint_dir`` (main process only).

::

    checkpoint_dir/
      config.json                 the whole configuration of the run
      checkpoint_epoch_{N}.pth    full state (model, optimiser, scheduler, scaler, RNG, sampler,
                                  history): every ``save_every`` epochs and at the end
      best_model.pth              weights + config + metrics of the best validation t2v R@1
      history.json                one row per epoch (docs/ARCHITECTURE.md)
      logs/                       TensorBoard (written by the TensorBoard callback of the CLI)

Every file is written atomically (a reader never sees half a file). Within an epoch
best_model.pth is written before the epoch checkpoint, so every checkpoint on disk has its
best model on disk: a run killed at any point and resumed from its latest checkpoint finds
best_model.pth holding the checkpoint's best epoch, or a later epoch of the killed run, which
the resumed run recomputes and writes again (:func:`restore_best`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from tempstop.inference import checkpoint as ckpt_io
from tempstop.utils import atomic_write_json, remove_stale_temporaries

log = logging.getLogger(__name__)

BEST = "best_model.pth"
#: What a full checkpoint holds beyond the weights-only part of best_model.pth.
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng", "sampler", "history")


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint_epoch_{epoch}.pth"


def prepare_out_dir(out_dir: Path, cfg, resume: dict | None, history: list[dict]) -> int | None:
    """The output folder before the first step: created, cleared of temporaries that a killed
    run left, the run's config written. On resume (``resume``: the checkpoint, ``history``: its
    rows) best_model.pth is made to match the checkpoint (:func:`restore_best`, whose epoch is
    returned; None without ``resume``) and history.json is rewritten as of the checkpoint (a run
    killed after the checkpoint and before history.json left it one epoch short)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(out_dir)
    if stale:
        log.info("removed %d temporary file(s) of interrupted writes in %s", len(stale), out_dir)
    cfg.to_json(out_dir / "config.json")
    if resume is None:
        return None
    held = restore_best(out_dir, resume)
    atomic_write_json(out_dir / "history.json", history)
    return held


def write_epoch(
    out_dir: Path, state: dict, full_state: dict | None, history: list[dict], improved: bool
) -> None:
    """Best model (``improved``), checkpoint (``full_state`` given) and history of one epoch,
    in that order (see the module docstring).

    ``state`` is the weights-only part (config, model, epoch, metrics ...); ``full_state``
    adds the optimiser, scheduler, scaler, RNG and sampler states for resuming.
    """
    if improved:
        ckpt_io.save_checkpoint(out_dir / BEST, state)
    if full_state is not None:
        ckpt_io.save_checkpoint(out_dir / checkpoint_name(state["epoch"]), {**state, **full_state})
    atomic_write_json(out_dir / "history.json", history)


def best_file_epoch(out_dir: Path) -> int:
    """The epoch whose weights ``out_dir/best_model.pth`` holds; 0 without a readable file."""
    path = out_dir / BEST
    if not path.is_file():
        return 0
    try:
        return int(ckpt_io.load_checkpoint(path).get("epoch", 0))
    except (ckpt_io.CheckpointError, TypeError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return 0


def restore_best(out_dir: Path, resume: dict) -> int:
    """Make best_model.pth match the checkpoint ``resume`` is continuing from; returns the
    epoch it holds afterwards (see :class:`~tempstop.training.state.LoopState`).

    When the checkpoint's own epoch was its best, the weights are in the checkpoint and the
    file is rewritten from it (a run killed after its checkpoint was written but before
    best_model.pth was). Otherwise the file already holds the best epoch or, when the killed
    run got further, a later best, which this run writes again when it reaches that epoch.
    """
    best, epoch = int(resume.get("best_epoch", 0)), int(resume["epoch"])
    held = best_file_epoch(out_dir)
    if best and best == epoch and held != best:
        weights = {k: v for k, v in resume.items() if k not in (*RESUME_KEYS, "format")}
        ckpt_io.save_checkpoint(out_dir / BEST, weights)
        log.info("restored %s (epoch %d) from the resume checkpoint", out_dir / BEST, best)
        return best
    if best and held > epoch:
        log.warning(
            "%s holds epoch %d, written by the interrupted run after the checkpoint resumed "
            "from (best: epoch %d); this run writes it again when it redoes that epoch",
            out_dir / BEST, held, best,
        )  # fmt: skip
    elif best and held != best:
        log.warning(
            "%s holds epoch %s, not the best epoch %d of the checkpoint resumed from (deleted or "
            "replaced?); unless a later epoch does better, the run ends with an error",
            out_dir / BEST, held or "(no file)", best,
        )  # fmt: skip
    return held


def summary_line(row: dict, num_epochs: int, improved: bool) -> str:
    """The one line printed per epoch."""
    return (
        f"epoch {row['epoch']}/{num_epochs} [{row['phase']}] "
        f"train {row['train_loss']:.4f} (tempme {row['tempme_loss']:.4f}, stop {row['stop_loss']:.4f}) "
        f"val {row['val_loss']:.4f} | t2v R@1 {row['val_t2v_R1']:.1f} R@5 {row['val_t2v_R5']:.1f} "
        f"R@10 {row['val_t2v_R10']:.1f} MdR {row['val_t2v_MdR']:.1f} | v2t R@1 {row['val_v2t_R1']:.1f} | "
        f"lr {row['lr_tempme']:.2e}/{row['lr_stop']:.2e}/{row['lr_backbone']:.2e} "
        f"grad {row['grad_norm']:.3f} | {row['epoch_seconds']:.1f}s" + ("  *best*" if improved else "")
    )


def run_summary(out_dir: Path, state) -> dict:
    """What ``train()`` returns: run length, best epoch and its validation metrics, files
    (``best_checkpoint`` None when no epoch had a finite validation R@1)."""
    best = next((r for r in state.history if r["epoch"] == state.best_epoch), {})
    last = out_dir / checkpoint_name(state.epoch)
    best_path = out_dir / BEST
    return {
        "epochs": state.epoch,
        "steps": state.step,
        "best_epoch": state.best_epoch,
        "best_metric": state.best_metric,
        **{f"best_{k}": v for k, v in best.items() if k.startswith("val_")},
        "best_checkpoint": str(best_path) if state.best_file_epoch and best_path.is_file() else None,
        "last_checkpoint": str(last) if last.is_file() else None,
    }
