"""Symmetric InfoNCE and its distributed form."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from tempstop.losses import MAX_LOGIT_SCALE, gather_features, symmetric_infonce


def _features(n: int = 6, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    t = F.normalize(torch.randn(n, d, generator=gen), dim=-1)
    v = F.normalize(torch.randn(n, d, generator=gen), dim=-1)
    return t, v


def test_symmetric_infonce_matches_definition():
    t, v = _features()
    scale = torch.tensor(math.log(20.0))
    logits = 20.0 * t @ v.T
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(symmetric_infonce(t, v, scale), expected)


def test_logit_scale_is_clamped_at_100():
    t, v = _features()
    high = symmetric_infonce(t, v, torch.tensor(10.0))
    at_max = symmetric_infonce(t, v, torch.tensor(MAX_LOGIT_SCALE))
    torch.testing.assert_close(high, at_max)


def test_gather_is_identity_without_distributed():
    x = torch.randn(3, 4)
    assert gather_features(x) is x


def test_perfect_alignment_gives_low_loss():
    t, _ = _features()
    assert symmetric_infonce(t, t, torch.tensor(MAX_LOGIT_SCALE)) < 0.05


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    t, v = _features(8)
    t, v = t.clone().requires_grad_(), v.clone().requires_grad_()
    rows = slice(rank * 4, rank * 4 + 4)
    loss = symmetric_infonce(t[rows], v[rows], torch.tensor(math.log(10.0)))
    loss.backward()
    grads = torch.cat([t.grad, v.grad])
    torch.distributed.all_reduce(grads)  # what DDP does (sum, then / world)
    queue.put((rank, loss.item(), (grads / world).tolist()))  # plain data: the process ends next
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_distributed_gradient_equals_global_batch_gradient():
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    t, v = _features(8)
    t, v = t.clone().requires_grad_(), v.clone().requires_grad_()
    loss = symmetric_infonce(t, v, torch.tensor(math.log(10.0)))
    loss.backward()
    expected = torch.cat([t.grad, v.grad])
    for _, _, grads in results:
        torch.testing.assert_close(torch.tensor(grads), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(sum(r[1] for r in results) / 2), loss.detach())
