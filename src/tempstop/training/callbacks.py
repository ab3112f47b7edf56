"""What the trainer tells its callbacks (tracking and TensorBoard live in the pipeline layer).

A callback is any object with some of these methods; the trainer calls them on the main
process only, in this order::

    on_train_begin(state: LoopState)          # before the first step (state.step > 0 on resume)
    on_step_end(step: int, metrics: dict)     # after each optimiser step: train_loss, grad_norm
    on_epoch_end(epoch: int, metrics: dict)   # the epoch's history row (docs/ARCHITECTURE.md)
    on_train_end(summary: dict)               # what train() returns

``on_train_end`` is not called when training fails; a callback that holds resources (a
file writer) should also offer ``close()`` for its owner to call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def notify(callbacks: Iterable[Any], hook: str, *args: Any) -> None:
    """Call ``hook(*args)`` on every callback that has it."""
    for cb in callbacks:
        method = getattr(cb, hook, None)
        if method is not None:
            method(*args)
