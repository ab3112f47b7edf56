"""``tempstop train-phase``: the two chained training stages of the pipeline.

DVC needs a static graph, while ``training.mode`` decides what is trained, so the pipeline
always has two training stages and each reads the mode:

============  ==========================================  ==========================================
mode          train_tempme (phase ``tempme``)             train_stop (phase ``stop``)
============  ==========================================  ==========================================
sequential    tempme_only, first ``sequential_split``     stop_only for the remaining epochs,
              of the epochs                               weights initialised from train_tempme
joint         joint, all epochs                           pass-through (copies the model)
tempme_only   tempme_only, all epochs                     pass-through
stop_only     writes the initial (untrained) model        stop_only, all epochs, from that model
============  ==========================================  ==========================================

Both phases call ``tempstop train`` in-process (same code as a manual run: tracking, history,
TensorBoard, registry); the epoch split is the trainer's own (``plan_phases``). Each output
folder holds ``best_model.pth``, ``history.json`` (empty when the stage trained nothing) and
``phase.json`` saying what the stage did. Changing ``training.mode`` changes both stages'
params, so ``dvc exp run -S training.mode=joint`` retrains and re-evaluates.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipelines.common import add_params_arg

log = logging.getLogger(__name__)
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
    add_params_arg(p)
    p.set_defaults(func=main)


def plan(phase: str, mode: str, num_epochs: int, split: float) -> tuple[str, str | None, int]:
    """What a phase does: ``(action, train mode, epochs)`` with action train / initial / pass."""
    from tempstop.training.trainer import plan_phases

    if phase == "tempme":
        if mode == "sequential":
            first = plan_phases(mode, num_epochs, split)[0]
            return "train", first.mode, first.end - first.start
        if mode == "stop_only":
            return "initial", None, 0
        return "train", mode, num_epochs
    if mode == "sequential":
        phases = plan_phases(mode, num_epochs, split)
        if len(phases) < 2:  # one epoch in all: the TempMe phase had it
            return "pass", None, 0
        return "train", phases[1].mode, phases[1].end - phases[1].start
    if mode == "stop_only":
        return "train", "stop_only", num_epochs
    return "pass", None, 0


def _train_argv(args, mode: str, epochs: int, init_from: Path | None, cfg) -> list[str]:
    """``tempstop train`` arguments: the user's params plus this stage's paths and epochs."""
    frames = Path(args.frames)
    argv = ["train", "--mode", mode, "--epochs", str(epochs), "--checkpoint-dir", args.out]
    if args.params:
        argv += ["--params", args.params]
    for item in args.overrides:
        argv += ["--set", item]
    argv += [
        "--set", f"training.train_data_path={frames / cfg.data.train_split}",
        "--set", f"training.val_data_path={frames / cfg.data.val_split}",
    ]  # fmt: skip
    if init_from is not None:
        argv += ["--init-from", str(init_from)]
    return argv


def _run_train(argv: list[str], nproc: int) -> int:
    """``tempstop train`` in this process, or under torchrun on ``nproc`` GPUs (DDP)."""
    if nproc <= 1:
        from pipelines import cli

        return cli.main(argv)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "pipelines.cli", *argv]  # fmt: skip
    print("launching:", " ".join(command), flush=True)
    return subprocess.call(command)


def _write_initial_model(cfg, out: Path) -> None:
    """The untrained model (seeded as the trainer seeds it) as ``best_model.pth``."""
    from tempstop.model import create_unified_model
    from tempstop.training.checkpoint import save_checkpoint
    from tempstop.utils import seed_everything

    seed_everything(cfg.training.seed)
    model = create_unified_model(cfg)
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
    from pipelines.common import load_params
    from pipelines.tracking import TrackingError, check_tracking
    from tempstop.utils import atomic_write_json

    cfg = load_params(args)
    t = cfg.training
    action, mode, epochs = plan(args.phase, t.mode, t.num_epochs, t.sequential_split)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    init = Path(args.init) if args.init else None
    if args.phase == "stop" and init is None:
        raise SystemExit("tempstop train-phase stop: --init (the tempme phase's folder) is required")
    stage = f"train_{args.phase}"
    print(f"{stage}: training.mode={t.mode} -> {action}" + (f" {mode} for {epochs} epoch(s)" if mode else ""))
    source = str(init / "best_model.pth") if init is not None else None
    # What this stage did, for people and tests: trained (from which weights), or copied.
    record = {"stage": stage, "mode": t.mode, "action": action, "train_mode": mode, "epochs": epochs,
              "init_from": source if action == "train" else None,
              "copied_from": source if action == "pass" else None}  # fmt: skip

    if action == "train":
        try:
            check_tracking(cfg)  # before any work: an unreachable server is reported now
        except TrackingError as exc:
            print(f"tempstop train-phase: {exc}", file=sys.stderr)
            return 2
        init_from = init / "best_model.pth" if init is not None else None
        # Tags for the MLflow run (pipelines/tracking.py); restored so a long-lived process
        # (a Prefect flow) does not carry them into later stages.
        saved = {k: os.environ.get(k) for k in ("TEMPSTOP_STAGE", "TEMPSTOP_PHASE")}
        os.environ.update(TEMPSTOP_STAGE=stage, TEMPSTOP_PHASE=args.phase)
        try:
            rc = _run_train(_train_argv(args, mode, epochs, init_from, cfg), args.nproc)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if rc:
            return rc
    else:
        if action == "initial":
            _write_initial_model(cfg, out)
        else:
            _pass_through(init, out)
        atomic_write_json(out / "history.json", [])  # this stage trained nothing
    atomic_write_json(out / "phase.json", record)
    return 0


if __name__ == "__main__":
    # ``python -m pipelines.stages.train_phase ...`` works whether or not the CLI lists this module.
    from pipelines.flows.plan import run_stage

    sys.exit(run_stage(["train-phase", *sys.argv[1:]]))
