"""Optimisers and learning-rate schedules.

- One learning rate per module group (``tempme``, ``stop``, ``backbone``), each split into a
  decayed and a non-decayed half: biases, norms and positional / class embeddings get no
  weight decay (decaying them only pulls them towards zero for no gain). CLIP's temperature
  ``logit_scale`` is a group of its own (no decay, ``demo_recipe.logit_scale_lr``).
- AdamW (torch) or :class:`BertAdam`.
- Schedules: linear warmup, then cosine, linear or constant. With BertAdam the schedule
  follows pytorch-pretrained-bert's ``warmup_*`` functions instead (see :func:`bert_schedule`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

GROUP_NAMES = ("tempme", "stop", "backbone")

# Parameter names (substrings) that never get weight decay, whatever their shape.
NO_DECAY_NAMES = ("logit_scale", "positional_embedding", "pos_embed", "pos_emb", "class_embedding")


def wants_decay(name: str, param: torch.Tensor) -> bool:
    """Weight decay for matrices and convolutions only, not biases/norms/scales/embeddings."""
    if param.ndim < 2:
        return False
    return not any(key in name for key in NO_DECAY_NAMES)


class BertAdam(torch.optim.Optimizer):
    """Adam as in pytorch-pretrained-bert (used by CLIP4Clip and its descendants).

    Differences from :class:`torch.optim.AdamW`:

    - no bias correction of the moments (early steps are therefore smaller than AdamW's:
      the warmup the original always paired it with hides that);
    - weight decay is decoupled and added to the *update*, i.e.
      ``p -= lr * (m / (sqrt(v) + eps) + weight_decay * p)`` (AdamW multiplies the decay by
      lr too, but applies it before the Adam step);
    - the learning-rate schedule lived inside the original optimiser (``warmup``,
      ``t_total``, ``schedule``); here the trainer attaches it as a ``LambdaLR`` built from
      :func:`bert_schedule`, which computes the same ``lr * schedule(step / t_total)``,
      so optimiser and scheduler state resume the same way as for AdamW;
    - ``max_grad_norm`` (per parameter group clipping of the original) is off by default,
      since the trainer clips the global norm; set it > 0 to get the original behaviour.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        b1: float = 0.9,
        b2: float = 0.999,
        e: float = 1e-6,
        weight_decay: float = 0.01,
        max_grad_norm: float = -1.0,
    ) -> None:
        if lr < 0:
            raise ValueError(f"BertAdam: invalid learning rate {lr}")
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"BertAdam: invalid betas ({b1}, {b2})")
        if e < 0:
            raise ValueError(f"BertAdam: invalid epsilon {e}")
        defaults = {
            "lr": lr,
            "b1": b1,
            "b2": b2,
            "e": e,
            "weight_decay": weight_decay,
            "max_grad_norm": max_grad_norm,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["max_grad_norm"] > 0 and params:
                nn.utils.clip_grad_norm_(params, group["max_grad_norm"])
            for p in params:
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("BertAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["next_m"] = torch.zeros_like(p)
                    state["next_v"] = torch.zeros_like(p)
                m, v = state["next_m"], state["next_v"]
                m.mul_(group["b1"]).add_(grad, alpha=1 - group["b1"])
                v.mul_(group["b2"]).addcmul_(grad, grad, value=1 - group["b2"])
                update = m / (v.sqrt() + group["e"])
                if group["weight_decay"] > 0.0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
                state["step"] += 1
        return loss


def build_param_groups(model: nn.Module, cfg, logit_scale_lr: float | None = None) -> list[dict]:
    """Optimiser parameter groups: (module group x decay) with the group's learning rate.

    ``model.param_groups()`` assigns every parameter to one of tempme / stop / backbone.
    All parameters go into the optimiser, frozen or not: a frozen parameter has no gradient
    and optimisers skip it (its value stays bit-identical), and the optimiser's layout stays
    the same in every training mode, which keeps checkpoints interchangeable. ``cfg`` is the
    training section; ``logit_scale_lr`` (None: ``backbone_lr``) the temperature's.
    """
    groups = model.param_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {"tempme": cfg.tempme_lr, "stop": cfg.stop_lr, "backbone": cfg.backbone_lr}
    out = []
    # The temperature gets its own group (and learning rate, demo_recipe.logit_scale_lr).
    scale = [p for p in groups.get("backbone", []) if names.get(id(p), "").endswith("logit_scale")]
    if scale:
        lr = cfg.backbone_lr if logit_scale_lr is None else logit_scale_lr
        out.append({"params": scale, "lr": lr, "weight_decay": 0.0, "name": "logit_scale"})
    for group in GROUP_NAMES:
        params = [p for p in groups.get(group, []) if not any(p is q for q in scale)]
        decay = [p for p in params if wants_decay(names.get(id(p), ""), p)]
        no_decay = [p for p in params if not wants_decay(names.get(id(p), ""), p)]
        for suffix, plist, wd in (("", decay, cfg.weight_decay), ("_no_decay", no_decay, 0.0)):
            if plist:
                out.append({"params": plist, "lr": lrs[group], "weight_decay": wd, "name": group + suffix})
    seen = sum(len(g["params"]) for g in out)
    total = sum(1 for _ in model.parameters())
    if seen != total:
        raise ValueError(
            f"model.param_groups() covers {seen} of {total} parameters; every parameter needs a group"
        )
    return out


def build_optimizer(model: nn.Module, cfg, logit_scale_lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW or BertAdam over :func:`build_param_groups` (``cfg`` is the training section).

    AdamW uses CLIP's betas (0.9, 0.98) and eps 1e-6, as CLIP4Clip-style fine-tuning does.
    """
    groups = build_param_groups(model, cfg, logit_scale_lr)
    if cfg.optimizer == "BertAdam":
        return BertAdam(groups, lr=cfg.tempme_lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(
        groups, lr=cfg.tempme_lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=cfg.weight_decay
    )


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Linear warmup from ~0 to 1 over ``warmup_steps``, then ``cosine`` (to 0 at the end),
    ``linear`` (to 0) or ``constant``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    raise ValueError(f"unknown schedule {schedule!r} (cosine, linear, constant)")


def bert_schedule(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """pytorch-pretrained-bert's ``warmup_{cosine,linear,constant}(x, warmup)``.

    ``x = step / total_steps`` is the progress over the *whole* run, warmup included, and
    ``warmup`` a fraction of it. During warmup the factor is ``x / warmup``; afterwards
    cosine is ``0.5 * (1 + cos(pi * x))`` (so it restarts a little below 1 after warmup: the
    original's quirk, kept on purpose), linear is ``1 - x``, constant is 1.
    """
    x = step / max(total_steps, 1)
    warmup = warmup_steps / max(total_steps, 1)
    if warmup > 0 and x < warmup:
        return x / warmup
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * x))
    if schedule == "linear":
        return max(1.0 - x, 0.0)
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r} (cosine, linear, constant)")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int, epochs: int):
    """Per-optimiser-step ``LambdaLR`` over ``epochs`` epochs with ``cfg.warmup_epochs`` warmup."""
    total = max(steps_per_epoch * epochs, 1)
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total)
    fn = bert_schedule if isinstance(optimizer, BertAdam) else lr_factor
    schedule = cfg.scheduler
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: fn(step, warmup, total, schedule))


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current learning rate of each group (``lr_tempme``, ``lr_stop``, ``lr_backbone``,
    ``lr_logit_scale``).

    A group the model does not have (e.g. ``stop`` in the meanP baseline) reports 0.0, so
    history rows always carry the same keys.
    """
    out = {f"lr_{name}": 0.0 for name in (*GROUP_NAMES, "logit_scale")}
    for group in optimizer.param_groups:
        name = group.get("name", "group").removesuffix("_no_decay")
        out[f"lr_{name}"] = float(group["lr"])
    return out
