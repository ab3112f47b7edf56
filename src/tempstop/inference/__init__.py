"""Inference: open a trained model (a checkpoint file or a registry version) and embed videos
and texts with it.

Below both training and collection search: the trainer writes checkpoints in the format of
:mod:`.checkpoint` and embeds its validation split with :mod:`.embed`; indexing, search and
serving open models with :func:`open_model`. Nothing here imports :mod:`tempstop.training`.

    from tempstop.inference import open_model, embed_texts
    loaded = open_model("models:/tempstop-unified@champion")     # or a checkpoint file
    vectors = embed_texts(loaded.model, ["a dog catches a frisbee"], "cpu")   # [1, D]
"""

from tempstop.inference.checkpoint import CheckpointError, model_from_checkpoint
from tempstop.inference.embed import embed_texts, embed_videos, model_input
from tempstop.inference.sources import LoadedModel, load_model, model_identity, open_model, pick_device

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "embed_texts",
    "embed_videos",
    "load_model",
    "model_from_checkpoint",
    "model_identity",
    "model_input",
    "open_model",
    "pick_device",
]
