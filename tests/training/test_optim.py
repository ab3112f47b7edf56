"""Optimisers and schedules: BertAdam's update rule, parameter groups, schedule shapes."""

from __future__ import annotations

import math

import pytest
import torch
from training_helpers import FakeModel

from tempstop.config import TrainingConfig
from tempstop.training.optim import (
    BertAdam,
    bert_schedule,
    build_optimizer,
    build_param_groups,
    build_scheduler,
    group_lrs,
    lr_factor,
    wants_decay,
)


def test_bertadam_matches_its_formula():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    ref = p.detach().clone()
    m, v = torch.zeros(5), torch.zeros(5)
    opt = BertAdam([p], lr=0.1, b1=0.9, b2=0.999, e=1e-6, weight_decay=0.01)
    for _ in range(3):
        g = torch.randn(5)
        p.grad = g.clone()
        opt.step()
        # No bias correction; decay added to the update, both scaled by lr.
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        ref = ref - 0.1 * (m / (v.sqrt() + 1e-6) + 0.01 * ref)
    assert torch.allclose(p.detach(), ref, atol=1e-6)


def test_bertadam_skips_params_without_grad_and_round_trips_state():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = BertAdam([a, b], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2))  # frozen stays bit-identical
    opt2 = BertAdam([a, b], lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state[a]["step"] == 1


def test_param_groups_split_lr_and_decay():
    model = FakeModel()
    cfg = TrainingConfig(tempme_lr=1e-3, stop_lr=1e-4, backbone_lr=1e-5, weight_decay=0.2)
    groups = {g["name"]: g for g in build_param_groups(model, cfg)}
    assert (groups["tempme"]["lr"], groups["stop"]["lr"], groups["backbone"]["lr"]) == (1e-3, 1e-4, 1e-5)
    assert groups["tempme"]["weight_decay"] == 0.2
    assert all(g["weight_decay"] == 0.0 for n, g in groups.items() if n.endswith("_no_decay"))
    no_decay = {id(p) for n, g in groups.items() if n.endswith("_no_decay") for p in g["params"]}
    assert id(model.frame_proj.bias) in no_decay and id(model.frame_proj.weight) not in no_decay
    # The temperature: its own group, no decay, backbone_lr unless demo_recipe.logit_scale_lr is set.
    assert groups["logit_scale"]["params"] == [model.logit_scale]
    assert groups["logit_scale"]["weight_decay"] == 0.0 and groups["logit_scale"]["lr"] == 1e-5
    assert {g["name"]: g for g in build_param_groups(model, cfg, 0.01)}["logit_scale"]["lr"] == 0.01
    assert not wants_decay("visual.positional_embedding", torch.zeros(4, 4))
    assert group_lrs(build_optimizer(model, cfg)) == {
        "lr_tempme": 1e-3,
        "lr_stop": 1e-4,
        "lr_backbone": 1e-5,
        "lr_logit_scale": 1e-5,
    }


def test_uncovered_parameter_is_an_error():
    model = FakeModel()
    model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="every parameter needs a group"):
        build_param_groups(model, TrainingConfig())


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_then_schedule(schedule):
    f = [lr_factor(s, 10, 100, schedule) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[:10] == sorted(f[:10])
    if schedule == "constant":
        assert all(x == 1.0 for x in f[10:])
    else:
        assert f[10:] == sorted(f[10:], reverse=True) and f[-1] < 0.05
    if schedule == "cosine":
        assert f[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_bert_schedule_semantics():
    # warmup 10 % of 100 steps, then cosine of the *overall* progress (pytorch-pretrained-bert).
    assert bert_schedule(5, 10, 100, "cosine") == pytest.approx(0.5)
    assert bert_schedule(50, 10, 100, "cosine") == pytest.approx(0.5)
    assert bert_schedule(50, 10, 100, "linear") == pytest.approx(0.5)
    assert bert_schedule(50, 10, 100, "constant") == 1.0


def test_scheduler_uses_epochs_and_bert_variant():
    model = FakeModel()
    cfg = TrainingConfig(warmup_epochs=1, scheduler="linear", optimizer="BertAdam")
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, BertAdam)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10, epochs=4)
    lrs = []
    for _ in range(40):
        lrs.append(group_lrs(opt)["lr_tempme"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0  # bert warmup starts at 0
    assert max(lrs) == pytest.approx(cfg.tempme_lr * 0.9, rel=0.05)  # linear 1 - x at the end of warmup
