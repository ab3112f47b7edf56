"""Training: the loop (:class:`UnifiedModelTrainer`), optimisers and schedules, the
quadruple-keeping sampler, the dataset over frame stores, crash-safe outputs, RNG states and
DDP helpers. Checkpoints are written in the format of :mod:`tempstop.inference.checkpoint`.

``from tempstop.training import UnifiedModelTrainer`` works; the import is lazy so that the
light submodules (state, sampler, optim) do not pull in the whole trainer.
"""

__all__ = ["UnifiedModelTrainer"]


def __getattr__(name: str):
    if name == "UnifiedModelTrainer":
        from tempstop.training.trainer import UnifiedModelTrainer

        return UnifiedModelTrainer
    raise AttributeError(f"module 'tempstop.training' has no attribute {name!r}")
