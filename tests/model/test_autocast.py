"""Mixed precision without a GPU: the model under ``torch.autocast("cpu", torch.bfloat16)``
(the dtype paths CUDA AMP takes: half-precision matmuls beside float32 norms and merges)."""

from __future__ import annotations

import pytest
import torch
from model_helpers import perturb, random_video, tiny_config

from tempstop.model import create_unified_model


@pytest.mark.parametrize("variant", ["unified", "tempme", "stop", "meanP"])
def test_bf16_autocast_forward_backward(variant):
    torch.manual_seed(0)
    model = create_unified_model(tiny_config(variant))
    perturb(model)
    ids, mask = model.tokenize(["a red circle moves left", "a blue square moves up", "a green one"])
    video, vmask = random_video(3), torch.ones(3, 8, dtype=torch.bool)
    vmask[2, 5:] = False  # a padded video: size-0 tokens, masked attention
    with torch.no_grad():
        reference = model(video, vmask, ids, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.compute_training_loss(video, vmask, ids, mask)
        emb = model(video, vmask, ids, mask)
    assert all(torch.isfinite(v) for v in out.values())
    out["total_loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(g.dtype == torch.float32 for g in grads)  # parameters and their gradients stay float32
    for key in ("text", "video"):  # bf16 keeps about 3 significant digits
        cosine = (emb[key].float() * reference[key]).sum(-1)
        assert cosine.min() > 0.99, (key, cosine)


def test_bf16_autocast_inference_in_eval_mode():
    torch.manual_seed(0)
    model = create_unified_model(tiny_config()).eval()
    perturb(model)
    video = random_video(2)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        emb = model.encode_video(video, torch.ones(2, 8))
    assert torch.isfinite(emb).all()
    torch.testing.assert_close(emb.float().norm(dim=-1), torch.ones(2), atol=1e-2, rtol=0)
