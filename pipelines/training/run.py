"""One typed path into training, for ``tempstop train``, the DVC stages and the Prefect flow.

    summary = run_training(cfg, init_from="outputs/tempme/best_model.pth", phases=[...],
                           tags={"stage": "train_stop"})

:func:`run_training` takes the validated config as an object and does, around the library's
trainer, what belongs at the edge: the tracking store is checked first, the MLflow run (with
the caller's tags) and TensorBoard are callbacks, and the best checkpoint is registered. Its
data are frame stores; ``tempstop train`` extracts raw split folders before
(:func:`tempstop_pipelines.stages.train.frame_stores`).

:func:`launch` runs it in this process, or on several GPUs under torchrun: then the whole
run (config, phases, weights to start from, tags) goes to the workers as one JSON file
(:class:`TrainingRun`), which each process reads and hands to :func:`run_training`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from tempstop.config import ConfigError, ProjectConfig
from tempstop.data.annotations import AnnotationError
from tempstop.data.extract import ExtractError
from tempstop.data.store import StoreError
from tempstop.inference.checkpoint import CheckpointError
from tempstop.training.distributed import cleanup, init_distributed
from tempstop.training.setup import TrainingError
from tempstop.training.state import Phase
from tempstop.training.trainer import UnifiedModelTrainer
from tempstop_pipelines.fleet.locks import LockTimeout
from tempstop_pipelines.tracking import runs as tracking  # tracking.X: tests replace X on the module
from tempstop_pipelines.tracking.callbacks import MlflowCallback, TensorBoardCallback

#: The errors whose one-line message is all a user needs. OSError: a file that cannot be read
#: or written (a full disk: tempstop.utils.WriteError).
TRAINING_ERRORS: tuple[type[Exception], ...] = (
    TrainingError, CheckpointError, StoreError, tracking.TrackingError, AnnotationError, ExtractError,
    ConfigError, LockTimeout, OSError,
)  # fmt: skip


@dataclass
class TrainingRun:
    """The arguments of :func:`run_training`, as one value (and one file for torchrun)."""

    config: ProjectConfig
    phases: list[Phase] | None = None
    init_from: str | None = None
    resume: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    progress: bool = True
    #: Record every full checkpoint in the MLflow run (what a retry resumes from:
    #: :mod:`tempstop_pipelines.fleet.recovery`).
    log_checkpoints: bool = False

    def to_json(self, path: str | Path) -> None:
        """Write the run as JSON (what each torchrun process reads with :meth:`from_json`)."""
        doc = {"config": self.config.to_dict(), "phases": None if self.phases is None else
               [p.to_dict() for p in self.phases], "init_from": self.init_from, "resume": self.resume,
               "tags": self.tags, "device": self.device, "progress": self.progress,
               "log_checkpoints": self.log_checkpoints}  # fmt: skip
        Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, path: str | Path) -> TrainingRun:
        """The run :meth:`to_json` wrote to ``path``."""
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        phases = doc.pop("phases")
        return cls(
            config=ProjectConfig.from_dict(doc.pop("config"), str(path)),
            phases=None if phases is None else [Phase(**p) for p in phases],
            **doc,
        )


def run_training(
    cfg: ProjectConfig,
    *,
    phases: list[Phase] | None = None,
    init_from: str | Path | None = None,
    resume: str | Path | None = None,
    tags: dict[str, str] | None = None,
    device: str | None = None,
    progress: bool = True,
    log_checkpoints: bool = False,
) -> dict | None:
    """Train as ``cfg`` says; returns the trainer's summary (plus ``registered_version``) on
    the main process and None on the others of a torchrun launch. ``log_checkpoints``: record
    each full checkpoint in the MLflow run (uploaded to a tracking server), for crash recovery.

    Raises one-line errors (:func:`training_errors`) for anything the user can fix: data,
    sizes, the resume file, the tracking store, non-finite losses.
    """
    info = init_distributed(device)
    try:
        if info.is_main:
            tracking.check_tracking(cfg)  # an unreachable tracking server is reported before any work
        trainer = UnifiedModelTrainer(
            cfg, resume=resume, init_from=init_from, device=device, progress=progress, phases=phases
        )
        if not info.is_main:
            trainer.train()
            return None
        return _train_tracked(trainer, cfg, dict(tags or {}), log_checkpoints)
    finally:
        cleanup()


def _train_tracked(trainer, cfg: ProjectConfig, tags: dict[str, str], log_checkpoints: bool = False) -> dict:
    """Train on the main process with the MLflow and TensorBoard callbacks; register the best."""
    t = cfg.training
    tags.setdefault("train_mode", "+".join(dict.fromkeys(p.mode for p in trainer.phases)))
    run_name = "-".join(filter(None, (tags.get("stage"), t.mode, f"seed{t.seed}")))
    out = Path(t.checkpoint_dir)
    with ExitStack() as stack:
        tracker = stack.enter_context(tracking.open_tracker(cfg, job="train", run_name=run_name, tags=tags))
        board = TensorBoardCallback(out / "logs")
        stack.callback(board.close)  # also when training fails
        trainer.callbacks += [MlflowCallback(tracker, out if log_checkpoints else None), board]
        summary = trainer.train()
        if (out / "history.json").is_file():
            tracker.log_artifact(out / "history.json")
        if summary["best_checkpoint"] is not None:
            best = {k.removeprefix("best_"): v for k, v in summary.items() if k.startswith("best_val_")}
            summary["registered_version"] = tracker.register_checkpoint(summary["best_checkpoint"], best)
    return summary


def launch(run: TrainingRun, nproc: int = 1, prog: str = "tempstop train") -> int:
    """Run ``run`` here (``nproc <= 1``) or on ``nproc`` GPUs of this machine with torchrun
    (DDP); returns the exit status (2 with one line on stderr, after ``prog``, for the
    user's errors)."""
    if nproc <= 1:
        try:
            run_training_from(run)
        except training_errors() as exc:
            print(f"{prog}: {error_message(exc)}", file=sys.stderr)
            return 2
        return 0
    with tempfile.TemporaryDirectory(prefix="tempstop-launch-") as tmp:
        spec = Path(tmp) / "run.json"
        run.to_json(spec)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={nproc}", "-m", f"{__package__}.launch", str(spec)]  # fmt: skip
        print("launching:", " ".join(command), flush=True)
        return subprocess.call(command)


def run_training_from(run: TrainingRun) -> dict | None:
    """:func:`run_training` with the arguments of ``run``."""
    return run_training(
        run.config, phases=run.phases, init_from=run.init_from, resume=run.resume, tags=run.tags,
        device=run.device, progress=run.progress, log_checkpoints=run.log_checkpoints,
    )  # fmt: skip


def training_errors() -> tuple[type[Exception], ...]:
    """The exceptions whose one-line message is all a user needs (:data:`TRAINING_ERRORS`)."""
    return TRAINING_ERRORS


def error_message(exc: BaseException) -> str:
    """What to print for ``exc``. An error raised in a DataLoader worker comes back with the
    worker's traceback in its message; its last line is the error itself."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text
