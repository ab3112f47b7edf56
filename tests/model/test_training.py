"""Gradients, frozen groups and the trainable region selection."""

from __future__ import annotations

import pytest
import torch
from model_helpers import random_video, tiny_config

from tempstop.config import StopConfig
from tempstop.model import create_unified_model
from tempstop.model.unified import is_text_backbone

CAPTIONS = ["a red circle moves left", "a blue square moves up", "a green triangle moves right"]

# Parameters that start at zero or whose output starts switched off: they alone can get a
# gradient at initialisation; everything upstream of them gets one from the second step on.
ZERO_INIT = ("lora_B", "clip_pos", ".fc2.", ".gate", "text_gates")


def _step(model, opt) -> dict:
    ids, mask = model.tokenize(CAPTIONS)
    vmask = torch.ones(3, 8, dtype=torch.bool)
    vmask[2, 6:] = False
    out = model.compute_training_loss(random_video(3, seed=1), vmask, ids, mask)
    opt.zero_grad(set_to_none=True)
    out["total_loss"].backward()
    grads = {n: p.grad.clone() if p.grad is not None else None for n, p in model.named_parameters()}
    opt.step()
    return grads


def _trainable(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("mode", ["joint", "tempme_only", "stop_only"])
def test_every_trainable_parameter_gets_a_gradient(mode):
    torch.manual_seed(0)
    stop = StopConfig(layers=1, eta=100.0, dropout=0.0, text_prompts=2)  # deep text prompts too
    model = create_unified_model(tiny_config(stop=stop)).train()
    model.set_training_mode(mode)
    trainable = _trainable(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = _step(model, opt)
    assert all(first[n] is not None for n in trainable)
    zero_init = [n for n in trainable if any(z in n for z in ZERO_INIT)]
    assert zero_init, "the mode trains TempMe or STOP"
    assert all(first[n].abs().sum() > 0 for n in zero_init), "zero-init layers must get a gradient at once"
    second = _step(model, opt)
    assert [n for n in trainable if second[n] is None or second[n].abs().sum() == 0] == []


@pytest.mark.parametrize(("mode", "frozen"), [("tempme_only", "stop."), ("stop_only", "tempme.")])
def test_frozen_groups_stay_bit_identical(mode, frozen):
    torch.manual_seed(0)
    model = create_unified_model(tiny_config(freeze_backbone=True)).train()
    model.set_training_mode(mode)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # like the trainer: every parameter in the optimiser, with weight decay
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        _step(model, opt)
    for name, p in model.named_parameters():
        if name.startswith((frozen, "clip.")):
            assert torch.equal(p, before[name]), name
        elif p.requires_grad and any(z in name for z in ZERO_INIT):
            assert not torch.equal(p, before[name]), name


def test_freeze_text_keeps_the_text_tower_and_trains_the_rest():
    torch.manual_seed(0)
    model = create_unified_model(tiny_config()).train()
    model.set_training_mode("joint", freeze_text=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        _step(model, opt)
    text = [n for n, _ in model.named_parameters() if is_text_backbone(n)]
    assert "clip.token_embedding.weight" in text and "clip.text_projection" in text
    assert not any(n.startswith("clip.visual.") or "logit_scale" in n for n in text)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not changed & set(text), "a frozen text parameter moved"
    assert "clip.visual.conv1.weight" in changed and "clip.logit_scale" in changed
    assert any(n.startswith("tempme.text_lora") and "lora_B" in n for n in changed), "text LoRA still trains"


def test_region_scorer_learns_through_the_selection():
    torch.manual_seed(0)
    model = create_unified_model(tiny_config(freeze_backbone=True)).train()
    model.set_training_mode("stop_only")
    scorer = model.stop.layers[0].scorer.weight
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _step(model, opt)  # the prompters' zero-init outputs become non-zero
    before = scorer.detach().clone()
    grads = _step(model, opt)
    assert grads["stop.layers.0.scorer.weight"].abs().sum() > 0
    assert not torch.equal(scorer, before)


def test_untrained_stop_and_lora_change_nothing():
    torch.manual_seed(0)
    unified = create_unified_model(tiny_config(stop=StopConfig(layers=1, text_prompts=2))).eval()
    tempme = create_unified_model(tiny_config("tempme")).eval()
    tempme.load_state_dict({k: v for k, v in unified.state_dict().items() if not k.startswith("stop.")})
    stop = create_unified_model(tiny_config("stop")).eval()
    meanp = create_unified_model(tiny_config("meanP")).eval()
    backbone = {k: v for k, v in unified.state_dict().items() if k.startswith("clip.")}
    meanp.load_state_dict(backbone)
    stop.load_state_dict({**stop.state_dict(), **backbone})
    video, mask = random_video(2), torch.ones(2, 8)
    ids, amask = unified.tokenize(CAPTIONS[:2])
    with torch.no_grad():
        # fresh STOP is the identity: unified == TempMe alone, STOP alone == meanP
        assert torch.equal(unified.encode_video(video, mask), tempme.encode_video(video, mask))
        assert torch.equal(stop.encode_video(video, mask), meanp.encode_video(video, mask))
        # LoRA B = 0: the text tower is CLIP's
        assert torch.equal(unified.encode_text(ids, amask), meanp.encode_text(ids, amask))
