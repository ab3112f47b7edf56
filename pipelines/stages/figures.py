"""Matplotlib for files: pyplot on the Agg backend (never a display) and an atomic PNG save."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from tempstop.utils import atomic_write

# The pictures are files: a display backend would need a screen (or open windows in a test).
plt.switch_backend("Agg")


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` atomically (format from the suffix) and close it."""
    # savefig picks the format from the suffix, so the temp file must keep ".png".
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".")))
    plt.close(fig)
