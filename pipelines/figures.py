"""Matplotlib for files: the pyplot module (Agg backend) and an atomic PNG save."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only; never a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` atomically (format from the suffix) and close it."""
    from tempstop.utils import atomic_write

    # savefig picks the format from the suffix, so the temp file must keep ".png".
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".")))
    pyplot().close(fig)
