"""The validation of an epoch: the model's training loss and retrieval metrics on the val split."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from tempstop.data.transforms import frames_to_tensor
from tempstop.evaluation import evaluate_store
from tempstop.inference.embed import autocast, collate
from tempstop.training.dataset import ClipCaptionDataset
from tempstop.training.distributed import DistInfo, all_reduce_sum
from tempstop.training.sampler import GroupedBatchSampler

METRIC_KEYS = ("R1", "R5", "R10", "MdR", "MnR")


@torch.no_grad()
def validation_metrics(
    model, store, device: torch.device, datatype: str, tcfg, info: DistInfo, amp_dtype: torch.dtype | None
) -> dict:
    """The validation row of an epoch: ``val_loss`` (the model's training loss over batches of
    ``training.batch_size``) and ``val_{t2v,v2t}_{R1,R5,R10,MdR,MnR}``. Leaves the model in
    eval mode."""
    model.eval()
    sampler = GroupedBatchSampler(
        None, [1] * len(store), tcfg.batch_size, shuffle=False, drop_last=info.distributed,
        num_replicas=info.world_size, rank=info.rank,
    )  # fmt: skip
    loader = DataLoader(ClipCaptionDataset(store), batch_sampler=sampler, collate_fn=collate)
    sums = torch.zeros(2, dtype=torch.float64)
    for batch in loader:
        video = frames_to_tensor(batch["frames"].to(device))
        ids, attn = model.tokenize(batch["captions"])
        with autocast(device, amp_dtype):
            out = model.compute_training_loss(
                video, batch["mask"].to(device), ids.to(device), attn.to(device)
            )
        sums += torch.tensor([float(out["total_loss"]), 1.0], dtype=torch.float64)
    sums = all_reduce_sum(sums.to(device)).cpu()
    metrics = evaluate_store(
        model, store, device, datatype, tcfg.eval_batch_size, shards=info, amp_dtype=amp_dtype,
        num_workers=tcfg.num_workers,
    )  # fmt: skip
    row = {"val_loss": sums[0].item() / sums[1].item() if sums[1] > 0 else float("nan")}
    for direction in ("t2v", "v2t"):
        row.update({f"val_{direction}_{k}": metrics[direction][k] for k in METRIC_KEYS})
    return row
