"""DDP gradient scaling, exactly: 2 gloo processes on half a batch each == 1 process on the batch.

The model's InfoNCE gathers features across ranks and DDP averages gradients; the trainer's
``TrainingStep`` (``compute_training_loss`` as the module DDP wraps, no gradient factor) must
give the single-process gradient of the global batch, for every parameter (``logit_scale``
included). Compared before any optimiser
touches them, since Adam hides a wrong gradient scale.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tempstop.config import UnifiedModelConfig

CFG = {
    "model": {
        "backbone": "tempstop-tiny",
        "tempme": {"imgme_layers": [0, 1, 2], "clipme_layers": [3, 4], "clipme_k": [2, 2]},
        "stop": {"layers": 2, "dropout": 0.0},
    },
    "training": {"tempme_loss_weight": 1.0, "stop_loss_weight": 0.5},
}
CAPTIONS = [
    "a red circle moves left, then a blue square moves up",
    "a blue square moves up, then a red circle moves left",
    "first a green triangle moves right and then a white circle moves down",
    "after a white circle moves down, a green triangle moves right",
]


def _model():
    from tempstop.model import create_unified_model
    from tempstop.training.rng import seed_everything

    seed_everything(0)
    model = create_unified_model(UnifiedModelConfig.from_dict(CFG))
    with torch.no_grad():  # STOP's output layers start at zero; give them a gradient path
        for name, p in model.named_parameters():
            if name.startswith("stop.") and not p.any():
                p.normal_(0, 0.02)
    return model


def _batch(model):
    g = torch.Generator().manual_seed(1)
    video = torch.randn(4, 4, 3, 64, 64, generator=g)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[3, 3] = False  # a padded frame
    ids, attn = model.tokenize(CAPTIONS)
    return video, mask, ids, attn


def _worker(rank: int, world: int, port: int, out: str) -> None:
    from tempstop.training.distributed import cleanup, init_distributed
    from tempstop.training.setup import StepRunner, TrainingStep

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    model = _model()
    runner = StepRunner(TrainingStep(model), info)
    assert runner.ddp is not None  # really DistributedDataParallel
    per = 4 // world
    part = [x[rank * per : (rank + 1) * per] for x in _batch(model)]
    runner(*part)["total_loss"].backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, out)
    cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_gradients_equal_single_process_gradients(tmp_path: Path):
    model = _model()
    out = model.compute_training_loss(*_batch(model))
    out["total_loss"].backward()
    single = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    path = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(path)), nprocs=2, join=True)
    ddp = torch.load(path, weights_only=True)

    assert ddp.keys() == single.keys()
    assert "clip.logit_scale" in single and any(k.startswith("stop.") for k in single)
    assert any(k.startswith("tempme.") for k in single)
    for name, g in single.items():
        scale = float(g.abs().max()) + 1e-12
        err = float((ddp[name] - g).abs().max())
        assert err <= 1e-4 * scale + 1e-9, f"{name}: max error {err:.3e} (gradient scale {scale:.3e})"
