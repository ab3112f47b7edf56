"""``tempstop train-phase``: the two chained training stages of the pipeline.

DVC needs a static graph, while ``training.mode`` decides what is trained, so the pipeline
always has two training stages and each reads the mode (:func:`stage_plan`):

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
sequential run is epochs 9-16) through :func:`~..training.run_training`, in this process or,
with ``--nproc N``, under torchrun (one run file). Each output folder holds
``best_model.pth``, ``history.json`` (empty when the stage trained nothing) and
``phase.json`` saying what the stage did. Changing ``training.mode`` changes both stages'
params, so ``dvc exp run -S training.mode=joint`` retrains and re-evaluates.

With tracking on, a training stage is crash-safe (:mod:`..recovery`): it records each
checkpoint in its MLflow run, and a later attempt of the same training (a Prefect retry, the
next schedule, ``dvc repro`` again) ends the dead attempt's run as FAILED and resumes from it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from ..common import add_params_arg, add_tags_arg, load_params, run_tags

PHASES = ("tempme", "stop")


def register(sub) -> None:
    p = sub.add_parser(
        "train-phase",
        help="one of the pipeline's two chained training stages (reads training.mode)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("phase", choices=PHASES, help="tempme = stage train_tempme, stop = stage train_stop")
    p.add_argument("--frames", required=True, help="frame-store root written by `tempstop extract`")
    p.add_argument("--out", required=True, help="output folder (checkpoints, history.json, logs/)")
    p.add_argument("--init", default=None, help="stop phase: the tempme phase's output folder")
    p.add_argument(
        "--nproc",
        type=int,
        default=int(os.environ.get("TEMPSTOP_NPROC", "1")),
        help="GPUs to train on with torchrun/DDP (default: $TEMPSTOP_NPROC or 1); not a param, "
        "so changing it does not make DVC retrain",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_params_arg(p)
    add_tags_arg(p)
    p.set_defaults(func=main)


def stage_plan(phase: str, training) -> tuple[str, list]:
    """What a stage does for ``training`` (the training section): ``("train", phases)``,
    ``("initial", [])`` (write the untrained model) or ``("pass", [])`` (copy the model)."""
    from tempstop.training.state import plan_phases

    phases = plan_phases(training.mode, training.num_epochs, training.sequential_split)
    if phase == "tempme":
        return ("initial", []) if training.mode == "stop_only" else ("train", phases[:1])
    if training.mode in ("sequential", "stop_only"):
        rest = phases[1:] if training.mode == "sequential" else phases
        if rest:  # a one-epoch sequential run has no STOP phase
            return "train", rest
    return "pass", []


def _write_initial_model(cfg, out: Path) -> None:
    """The untrained model (seeded as the trainer seeds it) as ``best_model.pth``."""
    from tempstop.training.checkpoint import save_checkpoint
    from tempstop.training.setup import build_model
    from tempstop.utils import seed_everything

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
    source = init / "best_model.pth"
    if not source.is_file():
        raise SystemExit(f"tempstop train-phase: {source} not found (did the previous stage run?)")
    shutil.copy2(source, out / "best_model.pth")


def main(args: argparse.Namespace) -> int:
    from tempstop.utils import atomic_write_json

    from ..recovery import recoverable
    from ..training import TrainingRun, error_message, launch, training_errors

    cfg = load_params(args)
    t = cfg.training
    action, phases = stage_plan(args.phase, t)
    out, init = Path(args.out), Path(args.init) if args.init else None
    if args.phase == "stop" and init is None:
        raise SystemExit("tempstop train-phase stop: --init (the tempme phase's folder) is required")
    out.mkdir(parents=True, exist_ok=True)
    stage = f"train_{args.phase}"
    modes = "+".join(dict.fromkeys(p.mode for p in phases)) or None
    epochs = sum(p.end - p.start for p in phases)
    print(
        f"{stage}: training.mode={t.mode} -> {action}" + (f" {modes} for {epochs} epoch(s)" if modes else "")
    )
    source = str(init / "best_model.pth") if init is not None else None
    # What this stage did, for people and tests: trained (which epochs, from which weights), or copied.
    record = {"stage": stage, "mode": t.mode, "action": action, "train_mode": modes, "epochs": epochs,
              "phases": [p.to_dict() for p in phases],
              "init_from": source if action == "train" else None,
              "copied_from": source if action == "pass" else None}  # fmt: skip

    if action == "train":
        frames = Path(args.frames)
        stage_cfg = cfg.with_overrides(
            {"training.checkpoint_dir": str(out),
             "training.train_data_path": str(frames / cfg.data.train_split),
             "training.val_data_path": str(frames / cfg.data.val_split)},
            f"stage {stage}",
        )  # fmt: skip
        tags = {**run_tags(args), "stage": stage, "phase": args.phase}
        run = TrainingRun(
            stage_cfg, phases=phases, init_from=source, tags=tags, progress=not args.no_progress
        )
        # A retry of this very training whose earlier attempt died resumes from its newest checkpoint.
        try:
            with recoverable(run) as run:
                rc = launch(run, args.nproc, "tempstop train-phase")
        except training_errors() as exc:  # the tracking server, before any training
            print(f"tempstop train-phase: {error_message(exc)}", file=sys.stderr)
            return 2
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
