"""One of the pipeline's two chained training stages (dvc.yaml's train_tempme and train_stop).

DVC needs a static graph, while ``training.mode`` decides what is trained, so the pipeline
always has two training stages and each reads the mode (:func:`stage_plan`): a phase of the
trainer's plan is trained by the TempMe stage when its mode trains TempMe's parameters
(:data:`tempstop.config.MODE_GROUPS`), by the STOP stage otherwise:

============  ==========================================  ==========================================
mode          train_tempme (phase ``tempme``)             train_stop (phase ``stop``)
============  ==========================================  ==========================================
sequential    tempme_only, first ``sequential_split``     stop_only for the remaining epochs,
              of the epochs                               weights initialised from train_tempme
joint         joint, all epochs                           pass-through (copies the model)
tempme_only   tempme_only, all epochs                     pass-through
stop_only     writes the initial (untrained) model        stop_only, all epochs, from that model
============  ==========================================  ==========================================

The epochs come from the trainer's own :func:`~tempstop.training.state.plan_phases`, and a
stage trains exactly its phases (epoch numbers run on: the STOP phase of a 16-epoch
sequential run is epochs 9-16) through :func:`tempstop_pipelines.training.run.run_training`, in this process or,
with ``--nproc N``, under torchrun (one run file). Each output folder holds
``best_model.pth``, ``history.json`` (empty when the stage trained nothing) and
``phase.json`` saying what the stage did. Changing ``training.mode`` changes both stages'
params, so ``dvc exp run -S training.mode=joint`` retrains and re-evaluates.

With tracking on, a training stage is crash-safe (:mod:`tempstop_pipelines.fleet.recovery`): it records each
checkpoint in its MLflow run, and a later attempt of the same training (a Prefect retry, the
next schedule, ``dvc repro`` again) ends the dead attempt's run as FAILED and resumes from it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tempstop.config import MODE_GROUPS, ProjectConfig, TrainingConfig
from tempstop.inference.checkpoint import save_checkpoint
from tempstop.training.rng import seed_everything
from tempstop.training.setup import build_model
from tempstop.training.state import Phase, plan_phases
from tempstop.utils import atomic_write_json
from tempstop_pipelines.fleet.recovery import recoverable
from tempstop_pipelines.options import ProgressJob, add_params_arg, add_tags_arg
from tempstop_pipelines.training.run import TrainingRun, error_message, launch, training_errors

PHASES = ("tempme", "stop")


@dataclass(frozen=True)
class TrainPhase(ProgressJob):
    """``tempstop train-phase``: which stage, the frame stores, its folder, the TempMe stage's
    folder (STOP stage) and the GPUs (None: ``$TEMPSTOP_NPROC`` or 1)."""

    phase: str
    frames: str
    out: str
    init: str | None = None
    nproc: int | None = None


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop train-phase``."""
    p.add_argument("phase", choices=PHASES, help="tempme = stage train_tempme, stop = stage train_stop")
    p.add_argument("--frames", required=True, help="frame-store root written by `tempstop extract`")
    p.add_argument("--out", required=True, help="output folder (checkpoints, history.json, logs/)")
    p.add_argument("--init", default=None, help="stop phase: the tempme phase's output folder")
    p.add_argument("--nproc", type=int, default=None,
                   help="GPUs to train on with torchrun/DDP (default: $TEMPSTOP_NPROC or 1); not a param, "
                   "so changing it does not make DVC retrain")  # fmt: skip
    ProgressJob.add_arguments(p)
    add_params_arg(p)
    add_tags_arg(p)
    p.set_defaults(job=TrainPhase, run=run)


def stage_plan(phase: str, training: TrainingConfig) -> tuple[str, list[Phase]]:
    """What a stage does for ``training`` (the training section): ``("train", phases)``,
    ``("initial", [])`` (the TempMe stage of a run with nothing for it: write the untrained
    model) or ``("pass", [])`` (the STOP stage with nothing to train: copy the model)."""
    phases = plan_phases(training.mode, training.num_epochs, training.sequential_split)
    mine = [p for p in phases if ("tempme" in MODE_GROUPS[p.mode]) == (phase == "tempme")]
    if mine:
        return "train", mine
    return ("initial", []) if phase == "tempme" else ("pass", [])


def _write_initial_model(cfg: ProjectConfig, out: Path) -> None:
    """The untrained model (seeded as the trainer seeds it) as ``best_model.pth``."""
    seed_everything(cfg.training.seed)
    model = build_model(cfg)
    save_checkpoint(
        out / "best_model.pth",
        {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": 0, "step": 0, "phase": "initial",
         "best_metric": float("-inf"), "metrics": {}},
    )  # fmt: skip


def _pass_through(init: Path, out: Path) -> None:
    """Copy the previous stage's model. Not a hard link: DVC moves outputs into its cache and
    makes them read-only, which would reach the other stage's file through the shared inode."""
    shutil.copy2(init / "best_model.pth", out / "best_model.pth")


def run(cfg: ProjectConfig, job: TrainPhase, tags: dict[str, str] | None = None) -> int:
    """Train this stage's phases, or write the initial model, or copy the TempMe stage's;
    then ``phase.json``. Exit 2 with one line for what the user can fix."""
    t = cfg.training
    action, phases = stage_plan(job.phase, t)
    out, init = Path(job.out), Path(job.init) if job.init else None
    source = init / "best_model.pth" if init is not None else None
    if job.phase == "stop" and source is None:
        print("tempstop train-phase stop: --init (the tempme phase's folder) is required", file=sys.stderr)
        return 2
    if source is not None and not source.is_file():
        print(f"tempstop train-phase: {source} not found (did the previous stage run?)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    stage = f"train_{job.phase}"
    modes = "+".join(dict.fromkeys(p.mode for p in phases)) or None
    epochs = sum(p.end - p.start for p in phases)
    print(f"{stage}: training.mode={t.mode} -> {action}" + (f" {modes} for {epochs} epoch(s)" if modes else ""))
    # What this stage did, for people and tests: trained (which epochs, from which weights), or copied.
    record = {"stage": stage, "mode": t.mode, "action": action, "train_mode": modes, "epochs": epochs,
              "phases": [p.to_dict() for p in phases],
              "init_from": str(source) if action == "train" and source else None,
              "copied_from": str(source) if action == "pass" else None}  # fmt: skip
    if action == "train":
        rc = _train(cfg, job, phases, source, {**(tags or {}), "stage": stage, "phase": job.phase})
        if rc:
            return rc
    else:
        try:
            if action == "initial":
                _write_initial_model(cfg, out)
            else:
                _pass_through(init, out)
        except training_errors() as exc:
            print(f"tempstop train-phase: {exc}", file=sys.stderr)
            return 2
        atomic_write_json(out / "history.json", [])  # this stage trained nothing
    atomic_write_json(out / "phase.json", record)
    return 0


def _train(cfg: ProjectConfig, job: TrainPhase, phases: list[Phase], source: Path | None, tags: dict) -> int:
    """Train ``phases`` into ``job.out`` from the frame stores (in this process or under torchrun)."""
    frames = Path(job.frames)
    stage_cfg = cfg.with_overrides(
        {"training.checkpoint_dir": job.out,
         "training.train_data_path": str(frames / cfg.data.train_split),
         "training.val_data_path": str(frames / cfg.data.val_split)},
        f"stage train_{job.phase}",
    )  # fmt: skip
    run = TrainingRun(stage_cfg, phases=phases, init_from=str(source) if source else None, tags=tags,
                      progress=job.progress)  # fmt: skip
    nproc = job.nproc or int(os.environ.get("TEMPSTOP_NPROC", "1"))
    # A retry of this very training whose earlier attempt died resumes from its newest checkpoint.
    try:
        with recoverable(run) as ready:
            return launch(ready, nproc, "tempstop train-phase")
    except training_errors() as exc:  # the tracking server, before any training
        print(f"tempstop train-phase: {error_message(exc)}", file=sys.stderr)
        return 2
