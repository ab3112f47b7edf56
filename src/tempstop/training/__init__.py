"""Training: the loop (:class:`UnifiedModelTrainer`), optimisers and schedules, the
quadruple-keeping sampler, datasets over frame stores, checkpoints and DDP helpers.

``from tempstop.training import UnifiedModelTrainer`` works; the import is lazy so that the
light submodules (sampler, optim) do not pull in the whole trainer.
"""

__all__ = ["UnifiedModelTrainer"]


def __getattr__(name: str):
    if name == "UnifiedModelTrainer":
        from tempstop.training.trainer import UnifiedModelTrainer

        return UnifiedModelTrainer
    raise AttributeError(f"module 'tempstop.training' has no attribute {name!r}")
