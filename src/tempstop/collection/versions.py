"""A versioned index root: one collection index per model, and ``CURRENT`` naming the live one.

::

    ROOT/CURRENT          "v7\\n": the version a service serves
    ROOT/v7/              the collection embedded by model version 7 (or sha-<12 hex> for a file)
    ROOT/v6/              the previous one, kept for rollback (older ones are removed)

:func:`reindex` embeds the collection with a new model into its own folder, then replaces
``CURRENT`` atomically (write a temporary file, rename it over): a running service sees either
the old or the new version, never a half-built one, and swaps when it notices the change.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from tempstop.collection import manifest as mf
from tempstop.collection.build import IndexSettings, index_videos

log = logging.getLogger(__name__)
_TAG = re.compile(r"^(v\d+|sha-[0-9a-f]{12})$")


def version_tag(model_info: dict) -> str:
    """``v<N>`` for a registered model version, ``sha-<12 hex>`` for a checkpoint file."""
    registry = model_info.get("registry") or {}
    return f"v{registry['version']}" if registry.get("version") else f"sha-{model_info['sha256'][:12]}"


def current_version(root: str | Path) -> str | None:
    """The version ``ROOT/CURRENT`` names (None without one)."""
    pointer = Path(root) / mf.CURRENT
    return pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None


def set_current(root: str | Path, tag: str) -> None:
    """Point ``ROOT/CURRENT`` at ``tag`` atomically."""
    root = Path(root)
    if not mf.is_collection(root / tag):
        raise mf.CollectionError(f"{root / tag}: not a collection index; CURRENT left as it was")
    tmp = root / f".{mf.CURRENT}.{os.getpid()}.tmp"
    tmp.write_text(tag + "\n", encoding="utf-8")
    os.replace(tmp, root / mf.CURRENT)


def reindex(
    root: str | Path, model, model_info: dict, settings: IndexSettings, videos: str | Path | None = None,
    device="cpu", progress: bool = True,
) -> dict:  # fmt: skip
    """Embed the collection with ``model`` into ``ROOT/<version tag>`` and make it current.

    ``videos`` is the folder to index; by default the one the current version covers. A
    version folder that already holds this model's index is updated incrementally. Of the
    other versions, the ``index.keep_versions - 1`` newest stay (rollback), older ones are
    removed.
    """
    root = Path(root)
    live = current_version(root)
    if videos is None:
        if live is None:
            raise mf.CollectionError(f"{root}: no {mf.CURRENT} yet: name the videos folder to index (--videos)")
        videos = mf.read_manifest(root / live)["root"]
    tag = version_tag(model_info)
    summary = index_videos(model, videos, root / tag, settings, model_info, device, progress)
    set_current(root, tag)
    summary.update(version=tag, previous=live, removed_versions=_prune(root, tag, live, settings.index.keep_versions))
    log.info("%s: CURRENT -> %s (was %s)", root, tag, live)
    return summary


def _prune(root: Path, tag: str, previous: str | None, keep: int) -> list[str]:
    """Remove version folders beyond the ``keep`` newest (the live one and the one before it
    first), oldest by modification time first."""
    versions = [p for p in root.iterdir() if p.is_dir() and _TAG.match(p.name) and p.name != tag]
    versions.sort(key=lambda p: (p.name != previous, -p.stat().st_mtime))
    removed = []
    for folder in versions[max(keep - 1, 0) :]:
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed
