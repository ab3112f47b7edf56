"""The training loop: :class:`UnifiedModelTrainer`.

Read it top to bottom: ``train()`` sets everything up (and checks it: data, sizes, batch
size, resume file) before the first step, then runs one or two *phases* (``sequential`` =
TempMe phase, then STOP phase from its result), each a loop of epochs; an epoch is a loop of
optimiser steps followed by validation, history and checkpoints. Where the run stands is one
:class:`~tempstop.training.state.LoopState`.

Library code: no CLI, no tracking. ``train()`` returns a summary dict; callbacks
(:mod:`tempstop.training.callbacks`) let the caller log elsewhere (MLflow, TensorBoard).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tempstop.config import MODEL_MODES, ProjectConfig
from tempstop.data.transforms import frames_to_tensor
from tempstop.evaluation import evaluate_store
from tempstop.inference import checkpoint as ckpt_io
from tempstop.inference.embed import autocast
from tempstop.training import outputs
from tempstop.training.callbacks import notify
from tempstop.training.distributed import DistInfo, all_reduce_sum, any_true, init_distributed
from tempstop.training.hard_batches import model_group_vectors
from tempstop.training.optim import build_optimizer, build_scheduler, group_lrs
from tempstop.training.rng import capture_rng, restore_rng, seed_everything
from tempstop.training.sampler import GroupedBatchSampler
from tempstop.training.setup import (
    StepRunner,
    TrainingError,
    TrainingStep,
    build_model,
    check_same_model,
    check_stores,
    init_weights,
    make_loader,
    make_sampler,
    open_store,
    preflight,
    resolve_amp,
)
from tempstop.training.state import LoopState, Phase, check_phases, plan_phases
from tempstop.training.validation import validation_metrics

log = logging.getLogger(__name__)

__all__ = ["Phase", "UnifiedModelTrainer", "plan_phases"]


class UnifiedModelTrainer:
    """Trains a :class:`UnifiedTempMeSTOPModel` as ``config.training`` describes.

    Args:
        config: the whole configuration (``model``, ``training``, ``demo_recipe`` and
            ``data.datatype`` are used); the data paths must be frame stores.
        callbacks: see :mod:`tempstop.training.callbacks`; called on the main process only.
        resume: a ``checkpoint_epoch_N.pth`` to continue from (full state).
        init_from: a checkpoint whose *weights* initialise the model (chained stages).
        device: ``"cpu"`` / ``"cuda"``; default CUDA when available.
        progress: tqdm bars (main process only).
        phases: the stretches of epochs to train (default :func:`plan_phases` of the
            training section); the pipeline's stages each train a part of a sequential run.
    """

    def __init__(
        self,
        config: ProjectConfig,
        callbacks=(),
        resume: str | Path | None = None,
        init_from: str | Path | None = None,
        device: str | None = None,
        progress: bool = True,
        phases: list[Phase] | None = None,
    ) -> None:
        self.cfg = config
        self.tcfg = config.training
        self.callbacks = list(callbacks)
        self.resume_path = Path(resume) if resume else None
        self.init_from = Path(init_from) if init_from else None
        self.progress = progress
        t = self.tcfg
        if phases is None:
            phases = plan_phases(t.mode, t.num_epochs, t.sequential_split)
        try:
            self.phases = check_phases(phases, t.num_epochs, MODEL_MODES)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        self.info: DistInfo = init_distributed(device)
        self.device = self.info.device
        self.out_dir = Path(t.checkpoint_dir)
        self.state = LoopState()
        # Set up by train() (_setup), before the first step:
        self.model = None
        self.train_store = self.val_store = None
        self.sampler: GroupedBatchSampler | None = None
        self.loader: DataLoader | None = None
        self.steps_per_epoch = 0
        self.amp_dtype: torch.dtype | None = None
        self.scaler: torch.amp.GradScaler | None = None
        # Per phase (_run_phase):
        self.optimizer = self.scheduler = None
        self.runner: StepRunner | None = None
        self._resume: dict | None = None  # the resume checkpoint until its first phase starts

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        """Everything that can fail, before the first step: stores, model, resume file, sizes."""
        t, info = self.tcfg, self.info
        resume = self._read_resume()
        seed_everything(t.seed)
        self.model = build_model(self.cfg).to(self.device)
        if info.distributed:  # same init everywhere (DDP also broadcasts), different dropout per rank
            seed_everything(t.seed + info.rank)
        self.train_store = open_store("training.train_data_path", self.cfg.train_data())
        self.val_store = open_store("training.val_data_path", self.cfg.val_data())
        check_stores(self.model, self.train_store, self.val_store, t, info)
        if self.init_from is not None:
            init_weights(self.model, self.init_from)
        self.sampler = make_sampler(self.train_store, t, self.cfg.demo_recipe, info)
        self.steps_per_epoch = len(self.sampler) // t.gradient_accumulation_steps
        if self.steps_per_epoch < 1:
            raise TrainingError(
                f"training.gradient_accumulation_steps={t.gradient_accumulation_steps} exceeds the "
                f"{len(self.sampler)} batches of an epoch"
            )
        self.loader = make_loader(self.train_store, self.sampler, t, self.device)
        self.amp_dtype, use_scaler = resolve_amp(t.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        if resume is not None:
            self._load_resume(resume)
        preflight(self.model, self.val_store, self.device, self.amp_dtype)
        if info.is_main:
            self._prepare_out_dir(resume)

    def _read_resume(self) -> dict | None:
        if self.resume_path is None:
            return None
        resume = ckpt_io.load_checkpoint(self.resume_path)
        if "optimizer" not in resume:
            raise TrainingError(
                f"{self.resume_path}: holds weights only (no optimiser state); use --init-from"
            )
        check_same_model(resume, self.cfg, str(self.resume_path))
        return resume

    def _load_resume(self, ckpt: dict) -> None:
        ckpt_io.load_model_weights(self.model, ckpt["model"], str(self.resume_path))
        self.state = LoopState.from_checkpoint(ckpt)
        self.sampler.load_state_dict(ckpt["sampler"])
        self._resume = ckpt
        log.info(
            "resuming from %s after epoch %d (step %d)", self.resume_path, self.state.epoch, self.state.step
        )
        if self.state.epoch >= self.phases[-1].end:
            log.warning(
                "%s is already at epoch %d of %d: nothing to train",
                self.resume_path, self.state.epoch, self.phases[-1].end,
            )  # fmt: skip

    def _prepare_out_dir(self, resume: dict | None) -> None:
        held = outputs.prepare_out_dir(self.out_dir, self.cfg, resume, self.state.history)
        if held is not None:
            self.state.best_file_epoch = held

    # ------------------------------------------------------------------ training
    def train(self) -> dict:
        """Train the planned phases (``training.num_epochs`` epochs); returns a summary."""
        t0 = time.perf_counter()
        self._setup()
        self._notify("on_train_begin", self.state)
        for phase in self.phases:
            if phase.end > self.state.epoch:
                self._run_phase(phase)
        s = self.state
        if self.info.is_main and s.best_epoch and s.best_file_epoch != s.best_epoch:
            raise TrainingError(
                f"{self.out_dir / outputs.BEST} holds epoch {s.best_file_epoch or '(none)'}, but the best "
                f"validation epoch is {s.best_epoch}, whose weights were lost with the interrupted run"
            )
        summary = outputs.run_summary(self.out_dir, s)
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        self._notify("on_train_end", summary)
        return summary

    def _notify(self, hook: str, *args) -> None:
        if self.info.is_main:
            notify(self.callbacks, hook, *args)

    def _run_phase(self, phase: Phase) -> None:
        t = self.tcfg
        self.model.set_training_mode(phase.mode, freeze_text=self.cfg.demo_recipe.freeze_text)
        self.model.zero_grad(set_to_none=True)
        self.optimizer = build_optimizer(self.model, t, self.cfg.demo_recipe.logit_scale_lr)
        self.scheduler = build_scheduler(self.optimizer, t, self.steps_per_epoch, phase.end - phase.start)
        resume = self._resume
        if resume is not None and resume.get("phase") == phase.mode and resume["epoch"] < phase.end:
            # Mid-phase resume: continue this phase's optimiser and schedule. At a phase
            # boundary the next phase starts fresh, as it would have without the stop.
            self.optimizer.load_state_dict(resume["optimizer"])
            self.scheduler.load_state_dict(resume["scheduler"])
            self.scaler.load_state_dict(resume["scaler"])
        if resume is not None:
            restore_rng(resume["rng"])
            self._resume = None
        self.runner = StepRunner(TrainingStep(self.model), self.info)
        for epoch in range(max(phase.start, self.state.epoch), phase.end):
            self._run_epoch(epoch, phase)

    def _run_epoch(self, epoch: int, phase: Phase) -> None:
        t0 = time.perf_counter()
        train = self._train_epoch(epoch, phase)
        val = self.validate()
        s = self.state
        s.epoch = epoch + 1
        row = {"epoch": s.epoch, "step": s.step, "phase": phase.mode, **train, **val}
        row.update(group_lrs(self.optimizer))
        s.history.append(row)  # what checkpoints and history.json keep: no wall-clock values
        improved = val["val_t2v_R1"] > s.best_metric
        if improved:
            s.best_metric, s.best_epoch = val["val_t2v_R1"], s.epoch
        if self.info.is_main:
            self._save(phase, row, improved)
            timed = {**row, "epoch_seconds": round(time.perf_counter() - t0, 3)}  # the log, MLflow, TensorBoard
            log.info(outputs.summary_line(timed, self.tcfg.num_epochs, improved))
            self._notify("on_epoch_end", s.epoch, timed)

    def _train_epoch(self, epoch: int, phase: Phase) -> dict:
        """One pass over the training data; returns mean losses and gradient norm."""
        t, accum = self.tcfg, self.tcfg.gradient_accumulation_steps
        self.model.train()
        self._prepare_batches(epoch)
        sums = torch.zeros(4, dtype=torch.float64)  # total, tempme, stop, number of good batches
        norms: list[float] = []
        bar = tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{t.num_epochs} [{phase.mode}]",
            disable=not (self.progress and self.info.is_main),
            leave=False,
        )
        window_bad = False
        for i, batch in enumerate(self.loader):
            if i >= self.steps_per_epoch * accum:
                break  # the tail that does not fill an accumulation window
            last_micro = (i + 1) % accum == 0
            losses = self._forward_backward(batch, sync=last_micro)
            if losses is None:
                window_bad = True
                self._bad_step(epoch, batch)
            else:
                sums += torch.tensor(
                    [losses["total"], losses["tempme"], losses["stop"], 1.0], dtype=torch.float64
                )
            if not last_micro:
                continue
            norm = self._optimizer_step(skip=window_bad)
            window_bad = False
            if norm is not None:
                norms.append(norm)
            step_metrics = {"train_loss": losses["total"] if losses else math.nan, "grad_norm": norm}
            self._notify("on_step_end", self.state.step, step_metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{losses['total']:.4f}" if losses else "nan")
        bar.close()
        sums = all_reduce_sum(sums.to(self.device)).cpu()
        n = max(sums[3].item(), 1.0)
        return {
            "train_loss": sums[0].item() / n,
            "tempme_loss": sums[1].item() / n,
            "stop_loss": sums[2].item() / n,
            "grad_norm": sum(norms) / len(norms) if norms else float("nan"),
        }

    def _prepare_batches(self, epoch: int) -> None:
        """The sampler's order for ``epoch`` (with hard batches from the model's own text
        embeddings when the demo recipe asks for them)."""
        r = self.cfg.demo_recipe
        if r.hard_batches > 0 and r.hard_batch_source == "model":
            # From the weights at the epoch start: a resumed run computes the same vectors.
            captions = [it["captions"][0] for it in self.train_store.items]
            kw = {"batch_size": self.tcfg.eval_batch_size, "shards": self.info, "amp_dtype": self.amp_dtype}
            vecs = model_group_vectors(self.model, captions, self.sampler.groups, self.device, **kw)
            self.sampler.set_group_vectors(vecs)
        self.sampler.set_epoch(epoch)

    def _forward_backward(self, batch: dict, sync: bool) -> dict | None:
        """Loss and backward of one micro-batch; ``None`` (no backward) if any rank's loss is not finite."""
        video = frames_to_tensor(batch["frames"].to(self.device, non_blocking=True))  # [B, T, 3, S, S]
        mask = batch["mask"].to(self.device)  # [B, T]
        ids, attn = self.model.tokenize(batch["captions"])  # [B, L]
        with self.runner.sync_context(sync):
            with autocast(self.device, self.amp_dtype):
                out = self.runner(video, mask, ids.to(self.device), attn.to(self.device))
            # Every rank must agree to skip, or DDP's gradient all-reduce would wait forever.
            if any_true(not bool(torch.isfinite(out["total_loss"].detach())), self.device):
                return None
            self.scaler.scale(out["total_loss"] / self.tcfg.gradient_accumulation_steps).backward()
        return {k: float(out[f"{k}_loss"].detach()) for k in ("total", "tempme", "stop")}

    def _optimizer_step(self, skip: bool) -> float | None:
        """Clip, step, schedule; returns the gradient norm before clipping (None if skipped)."""
        norm = None
        if not skip:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.grad is not None]
            max_norm = self.tcfg.max_grad_norm if self.tcfg.max_grad_norm > 0 else float("inf")
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
            if not math.isfinite(norm) and not self.scaler.is_enabled():
                skip = True  # a finite loss with non-finite gradients is just as bad
            else:
                self.scaler.step(self.optimizer)  # skips by itself on fp16 overflow
                self.scaler.update()
                self.state.bad_in_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        # The schedule follows the position in the run, skipped steps included (torch warns
        # about a scheduler step without an optimiser step: intended here).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*", category=UserWarning)
            self.scheduler.step()
        self.state.step += 1
        return None if skip else norm

    def _bad_step(self, epoch: int, batch: dict) -> None:
        self.state.bad_in_row += 1
        ids = [self.train_store.items[i]["video_id"] for i in batch["index"].tolist()]
        where = (
            f"epoch {epoch + 1}, step {self.state.step + 1}, videos {ids[:8]}{' ...' if len(ids) > 8 else ''}"
        )
        if self.state.bad_in_row >= self.tcfg.max_bad_steps:
            raise TrainingError(
                f"{self.state.bad_in_row} non-finite losses in a row (training.max_bad_steps="
                f"{self.tcfg.max_bad_steps}); last at {where}. Lower the learning rates or check the data."
            )
        log.warning("non-finite loss, step skipped: %s", where)

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict:
        """Validation loss and t2v / v2t retrieval metrics on the val split (``val_*`` keys)."""
        metrics = validation_metrics(
            self.model,
            self.val_store,
            self.device,
            self.cfg.data.datatype,
            self.tcfg,
            self.info,
            self.amp_dtype,
        )
        self.model.train()
        return metrics

    def evaluate(self, data, dsl: bool = False) -> dict:
        """Retrieval metrics on ``data``: a FrameStore, a store path, or a DataLoader over one."""
        if self.model is None:
            raise TrainingError("evaluate() needs a model: call train() first (or use tempstop evaluate)")
        store = data
        if isinstance(data, (str, Path)):
            store = open_store("data", data)
        elif isinstance(data, DataLoader):
            store = data.dataset.store
        return evaluate_store(
            self.model,
            store,
            self.device,
            self.cfg.data.datatype,
            self.tcfg.eval_batch_size,
            dsl=dsl,
            shards=self.info,
            amp_dtype=self.amp_dtype,
            num_workers=self.tcfg.num_workers,
        )

    # ------------------------------------------------------------------ outputs
    def _save(self, phase: Phase, row: dict, improved: bool) -> None:
        s = self.state
        weights = {"config": self.cfg.to_dict(), "model": self.model.state_dict(), "phase": phase.mode,
                   "metrics": row, **s.to_checkpoint()}  # fmt: skip
        full = None
        if s.epoch % self.tcfg.save_every == 0 or s.epoch == self.phases[-1].end:
            full = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": capture_rng(),
                "sampler": self.sampler.state_dict(),
                "history": s.history,
            }
        outputs.write_epoch(self.out_dir, weights, full, s.history, improved)
        if improved:
            s.best_file_epoch = s.epoch
