"""TempMe-STOP: TempMe token merging and STOP prompting on open_clip for text-to-video retrieval.

The library holds the model, losses, metrics, data, training, inference and collection search.
It parses no command lines, logs to no tracking server and has no side effects at import.

    import tempstop
    model = tempstop.load_model("models:/tempstop-unified@champion")   # or a checkpoint file
"""

__version__ = "0.1.0"
__all__ = ["load_model"]


def load_model(source, device: str = "cpu", tracking_uri: str | None = None):
    """The model of a checkpoint file or ``models:/`` URI, in eval mode (see
    :mod:`tempstop.inference.sources`). Imported when called: ``import tempstop`` stays light."""
    from tempstop.inference.sources import load_model as _load

    return _load(source, device, tracking_uri)
