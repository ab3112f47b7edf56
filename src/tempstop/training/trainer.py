"""The training loop: :class:`UnifiedModelTrainer`.

Read it top to bottom: ``train()`` sets everything up (and checks it: data, sizes, batch
size, resume file) before the first step, then runs one or two *phases* (``sequential`` =
TempMe phase, then STOP phase from its result), each a loop of epochs; an epoch is a loop of
optimiser steps followed by validation, history, TensorBoard and checkpoints.

Library code: no CLI, no tracking. ``train()`` returns a summary dict; callbacks
(``on_epoch_end(epoch, metrics)``, ``on_train_end(summary)``) let the caller log elsewhere.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tempstop.config import UnifiedModelConfig
from tempstop.data.transforms import frames_to_tensor
from tempstop.training import checkpoint as ckpt_io
from tempstop.training import outputs
from tempstop.training.dataset import ClipCaptionDataset, collate, group_ids
from tempstop.training.distributed import DistInfo, all_reduce_sum, any_true, init_distributed
from tempstop.training.evaluation import autocast, evaluate_store
from tempstop.training.hard_batches import model_group_vectors
from tempstop.training.optim import build_optimizer, build_scheduler, group_lrs
from tempstop.training.sampler import GroupedBatchSampler
from tempstop.training.setup import (
    LossForward,
    TrainingError,
    check_stores,
    ddp_grad_scale,
    open_store,
    preflight,
    resolve_amp,
    wrap_ddp,
)
from tempstop.utils import seed_everything

log = logging.getLogger(__name__)

METRIC_KEYS = ("R1", "R5", "R10", "MdR", "MnR")


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs ``[start, end)`` trained in one model training mode."""

    mode: str
    start: int
    end: int


def plan_phases(mode: str, num_epochs: int, split: float) -> list[Phase]:
    """``sequential`` -> TempMe for ``round(split * epochs)`` epochs, then STOP; else one phase."""
    if mode != "sequential":
        return [Phase(mode, 0, num_epochs)]
    first = min(max(round(num_epochs * split), 1), num_epochs - 1) if num_epochs > 1 else 1
    phases = [Phase("tempme_only", 0, first)]
    if first < num_epochs:
        phases.append(Phase("stop_only", first, num_epochs))
    return phases


class UnifiedModelTrainer:
    """Trains a :class:`UnifiedTempMeSTOPModel` as ``config.training`` describes.

    Args:
        config: the whole configuration (model, extract and training sections are used).
        callbacks: objects with optional ``on_epoch_end(epoch, metrics)`` / ``on_train_end(summary)``;
            called on the main process only.
        resume: a ``checkpoint_epoch_N.pth`` to continue from (full state).
        init_from: a checkpoint whose *weights* initialise the model (chained stages).
        device: ``"cpu"`` / ``"cuda"``; default CUDA when available.
        progress: tqdm bars (main process only).
    """

    def __init__(
        self,
        config: UnifiedModelConfig,
        callbacks=(),
        resume: str | Path | None = None,
        init_from: str | Path | None = None,
        device: str | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = config
        self.tcfg = config.training
        self.callbacks = list(callbacks)
        self.resume_path = Path(resume) if resume else None
        self.init_from = Path(init_from) if init_from else None
        self.progress = progress
        self.info: DistInfo = init_distributed(device)
        self.device = self.info.device
        self.out_dir = Path(self.tcfg.checkpoint_dir)
        self.model = None

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        """Everything that can fail, before the first step: stores, model, resume file, sizes."""
        from tempstop.model import create_unified_model

        t, info = self.tcfg, self.info
        resume = ckpt_io.load_checkpoint(self.resume_path) if self.resume_path else None
        if resume is not None:
            if "optimizer" not in resume:
                raise TrainingError(
                    f"{self.resume_path}: holds weights only (no optimiser state); use --init-from"
                )
            ckpt_io.check_same_model(resume, self.cfg, str(self.resume_path))
        seed_everything(t.seed)
        self.model = create_unified_model(self.cfg).to(self.device)
        if info.distributed:  # same init everywhere (DDP also broadcasts), different dropout per rank
            seed_everything(t.seed + info.rank)
        self.train_store = open_store("training.train_data_path", t.train_data_path, self.cfg, info)
        self.val_store = open_store("training.val_data_path", t.val_data_path, self.cfg, info)
        check_stores(self.model, self.train_store, self.val_store, t, info)
        if self.init_from is not None:
            init = ckpt_io.load_checkpoint(self.init_from)
            ckpt_io.load_model_weights(self.model, init["model"], str(self.init_from))
            log.info("initialised weights from %s", self.init_from)

        groups = group_ids(self.train_store) if t.keep_quadruples else None
        if t.keep_quadruples and groups is None:
            log.warning("training.keep_quadruples: the training data has no quadruple ids; shuffling videos")
        self.sampler = GroupedBatchSampler(
            groups,
            [len(it["captions"]) for it in self.train_store.items],
            t.batch_size,
            seed=t.seed,
            num_replicas=info.world_size,
            rank=info.rank,
            texts=[" ".join(it["captions"]) for it in self.train_store.items]
            if t.hard_batches > 0 and t.hard_batch_source == "words"
            else None,
            hard_fraction=t.hard_batches,
        )
        self.steps_per_epoch = len(self.sampler) // t.gradient_accumulation_steps
        if self.steps_per_epoch < 1:
            raise TrainingError(
                f"training.gradient_accumulation_steps={t.gradient_accumulation_steps} exceeds the "
                f"{len(self.sampler)} batches of an epoch"
            )
        self.loader = DataLoader(
            ClipCaptionDataset(self.train_store),
            batch_sampler=self.sampler,
            collate_fn=collate,
            num_workers=t.num_workers,
            pin_memory=self.device.type == "cuda",
            # Its own generator: worker seeds come from it, not from the global torch RNG.
            generator=torch.Generator().manual_seed(t.seed),
        )
        self.amp_dtype, use_scaler = resolve_amp(t.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.phases = plan_phases(t.mode, t.num_epochs, t.sequential_split)
        self.epoch, self.step, self.bad_in_row = 0, 0, 0
        self.best_metric, self.best_epoch, self.history = -math.inf, 0, []
        self._resume_state = resume
        if resume is not None:
            self._load_resume(resume)
        preflight(self.model, self.val_store, self.device, self.amp_dtype)
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.to_json(self.out_dir / "config.json")

    def _load_resume(self, ckpt: dict) -> None:
        ckpt_io.load_model_weights(self.model, ckpt["model"], str(self.resume_path))
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.best_metric = float(ckpt.get("best_metric", -math.inf))
        self.best_epoch = int(ckpt.get("best_epoch", 0))
        self.history = [row for row in ckpt.get("history", []) if row["epoch"] <= self.epoch]
        self.sampler.load_state_dict(ckpt["sampler"])
        log.info("resuming from %s after epoch %d (step %d)", self.resume_path, self.epoch, self.step)
        if self.epoch >= self.tcfg.num_epochs:
            log.warning(
                "%s is already at epoch %d of %d: nothing to train",
                self.resume_path,
                self.epoch,
                self.tcfg.num_epochs,
            )

    # ------------------------------------------------------------------ training
    def train(self) -> dict:
        """Train for ``training.num_epochs`` epochs; returns a summary of the run."""
        t0 = time.perf_counter()
        self._setup()
        writer = outputs.tensorboard(self.out_dir, self.step) if self.info.is_main else None
        try:
            for phase in self.phases:
                if phase.end > self.epoch:
                    self._run_phase(phase, writer)
        finally:
            if writer is not None:
                writer.close()
        summary = outputs.run_summary(
            self.out_dir, self.history, self.epoch, self.step, self.best_epoch, self.best_metric
        )
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        if self.info.is_main:
            for cb in self.callbacks:
                if hasattr(cb, "on_train_end"):
                    cb.on_train_end(summary)
        return summary

    def _run_phase(self, phase: Phase, writer) -> None:
        t = self.tcfg
        self.model.set_training_mode(phase.mode)
        self.model.zero_grad(set_to_none=True)
        self.optimizer = build_optimizer(self.model, t)
        self.scheduler = build_scheduler(self.optimizer, t, self.steps_per_epoch, phase.end - phase.start)
        state = self._resume_state
        if state is not None and state.get("phase") == phase.mode and state["epoch"] < phase.end:
            # Mid-phase resume: continue this phase's optimiser and schedule. At a phase
            # boundary the next phase starts fresh, as it would have without the stop.
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        if state is not None:
            ckpt_io.restore_rng(state["rng"])
            self._resume_state = None
        self.ddp = wrap_ddp(LossForward(self.model, ddp_grad_scale(self.info.world_size)), self.info)
        for epoch in range(max(phase.start, self.epoch), phase.end):
            self._run_epoch(epoch, phase, writer)

    def _run_epoch(self, epoch: int, phase: Phase, writer) -> None:
        t0 = time.perf_counter()
        train = self._train_epoch(epoch, phase, writer)
        val = self.validate()
        self.epoch = epoch + 1
        row = {"epoch": self.epoch, "step": self.step, "phase": phase.mode, **train, **val}
        row.update(group_lrs(self.optimizer))
        row["epoch_seconds"] = round(time.perf_counter() - t0, 3)
        self.history.append(row)
        improved = val["val_t2v_R1"] > self.best_metric
        if improved:
            self.best_metric, self.best_epoch = val["val_t2v_R1"], self.epoch
        if self.info.is_main:
            self._save(phase, row, improved)
            outputs.log_epoch(writer, row, self.step)
            log.info(outputs.summary_line(row, self.tcfg.num_epochs, improved))
            for cb in self.callbacks:
                if hasattr(cb, "on_epoch_end"):
                    cb.on_epoch_end(self.epoch, row)

    def _train_epoch(self, epoch: int, phase: Phase, writer) -> dict:
        """One pass over the training data; returns mean losses and gradient norm."""
        t, accum = self.tcfg, self.tcfg.gradient_accumulation_steps
        self.model.train()
        if t.hard_batches > 0 and t.hard_batch_source == "model":
            # From the weights at the epoch start: a resumed run computes the same vectors.
            captions = [it["captions"][0] for it in self.train_store.items]
            kw = {"batch_size": t.eval_batch_size, "info": self.info, "amp_dtype": self.amp_dtype}
            vecs = model_group_vectors(self.model, captions, self.sampler.groups, self.device, **kw)
            self.sampler.set_group_vectors(vecs)
        self.sampler.set_epoch(epoch)
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
                if writer is not None:
                    writer.add_scalar("train/grad_norm", norm, self.step)
            if writer is not None and losses is not None:
                writer.add_scalar("train/loss", losses["total"], self.step)
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

    def _forward_backward(self, batch: dict, sync: bool) -> dict | None:
        """Loss and backward of one micro-batch; ``None`` (no backward) if any rank's loss is not finite."""
        video = frames_to_tensor(batch["frames"].to(self.device, non_blocking=True))  # [B, T, 3, S, S]
        mask = batch["mask"].to(self.device)  # [B, T]
        ids, attn = self.model.tokenize(batch["captions"])  # [B, L]
        with self.ddp.sync_context(sync):
            with autocast(self.device, self.amp_dtype):
                out = self.ddp(video, mask, ids.to(self.device), attn.to(self.device))
            # Every rank must agree to skip, or DDP's gradient all-reduce would wait forever.
            if any_true(not bool(torch.isfinite(out["total_loss"].detach())), self.device):
                return None
            # loss_for_backward carries the DDP factor; accumulation divides here.
            self.scaler.scale(out["loss_for_backward"] / self.tcfg.gradient_accumulation_steps).backward()
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
                self.bad_in_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        # The schedule follows the position in the run, skipped steps included (torch warns
        # about a scheduler step without an optimiser step: intended here).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*", category=UserWarning)
            self.scheduler.step()
        self.step += 1
        return None if skip else norm

    def _bad_step(self, epoch: int, batch: dict) -> None:
        self.bad_in_row += 1
        ids = [self.train_store.items[i]["video_id"] for i in batch["index"].tolist()]
        where = f"epoch {epoch + 1}, step {self.step + 1}, videos {ids[:8]}{' ...' if len(ids) > 8 else ''}"
        if self.bad_in_row >= self.tcfg.max_bad_steps:
            raise TrainingError(
                f"{self.bad_in_row} non-finite losses in a row (training.max_bad_steps="
                f"{self.tcfg.max_bad_steps}); last at {where}. Lower the learning rates or check the data."
            )
        log.warning("non-finite loss, step skipped: %s", where)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict:
        """Validation loss and t2v / v2t retrieval metrics on the val split (``val_*`` keys)."""
        t = self.tcfg
        self.model.eval()
        sampler = GroupedBatchSampler(
            None,
            [1] * len(self.val_store),
            t.batch_size,
            shuffle=False,
            drop_last=self.info.distributed,
            num_replicas=self.info.world_size,
            rank=self.info.rank,
        )
        loader = DataLoader(ClipCaptionDataset(self.val_store), batch_sampler=sampler, collate_fn=collate)
        sums = torch.zeros(2, dtype=torch.float64)
        for batch in loader:
            video = frames_to_tensor(batch["frames"].to(self.device))
            ids, attn = self.model.tokenize(batch["captions"])
            with autocast(self.device, self.amp_dtype):
                out = self.model.compute_training_loss(
                    video, batch["mask"].to(self.device), ids.to(self.device), attn.to(self.device)
                )
            sums += torch.tensor([float(out["total_loss"]), 1.0], dtype=torch.float64)
        sums = all_reduce_sum(sums.to(self.device)).cpu()
        metrics = self.evaluate(self.val_store)
        self.model.train()
        row = {"val_loss": sums[0].item() / sums[1].item() if sums[1] > 0 else float("nan")}
        for direction in ("t2v", "v2t"):
            row.update({f"val_{direction}_{k}": metrics[direction][k] for k in METRIC_KEYS})
        return row

    def evaluate(self, data, dsl: bool = False) -> dict:
        """Retrieval metrics on ``data``: a FrameStore, a store / split path, or a DataLoader over one."""
        if self.model is None:
            raise TrainingError("evaluate() needs a model: call train() first (or use tempstop evaluate)")
        store = data
        if isinstance(data, (str, Path)):
            store = open_store("data", data, self.cfg, self.info)
        elif isinstance(data, DataLoader):
            store = data.dataset.store
        return evaluate_store(
            self.model,
            store,
            self.device,
            self.tcfg.datatype,
            self.tcfg.eval_batch_size,
            dsl=dsl,
            info=self.info,
            amp_dtype=self.amp_dtype,
            num_workers=self.tcfg.num_workers,
        )

    # ------------------------------------------------------------------ outputs
    def _save(self, phase: Phase, row: dict, improved: bool) -> None:
        state = {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "phase": phase.mode,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "metrics": row,
        }
        full = None
        if self.epoch % self.tcfg.save_every == 0 or self.epoch == self.tcfg.num_epochs:
            full = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": ckpt_io.capture_rng(),
                "sampler": self.sampler.state_dict(),
                "history": self.history,
            }
        outputs.write_epoch(self.out_dir, state, full, self.history, improved)
