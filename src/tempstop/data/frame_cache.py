"""A raw split folder given where a frame store is expected (``tempstop train``, ``evaluate``,
``index --data``): extracted once into the frame cache (``data.frames_cache``) and reused while
its annotations are unchanged."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from tempstop.config import ExtractConfig, ValidateConfig
from tempstop.data.annotations import split_paths
from tempstop.data.extract import ExtractError, extract_split
from tempstop.data.extract_jobs import file_sha1
from tempstop.data.store import INDEX_FILE, StoreError, is_store, read_index

log = logging.getLogger(__name__)


def ensure_store(
    path: str | Path,
    cache_root: str | Path,
    cfg: ExtractConfig,
    frames: int,
    *,
    datatype: str | None = None,
    checks: ValidateConfig | None = None,
    progress: bool = True,
) -> tuple[Path, dict | None]:
    """A frame store for ``path``: the path itself if it is a store, else an extraction of it.

    A raw split folder (holding annotations.json) is extracted into
    ``cache_root/<split>-<hash of its absolute path, frames, size, per_segment>/``; an existing
    cache is reused while the split's annotations are unchanged, and completed otherwise.
    ``checks`` as in :func:`extract_split`. Returns the store and the extraction summary
    (``None`` when nothing was extracted).
    """
    path = Path(path)
    if is_store(path):
        return path, None
    ann_path, _ = split_paths(path)
    if not ann_path.is_file():
        raise ExtractError(
            f"{path}: neither a frame store ({INDEX_FILE}) nor a split folder (annotations.json)"
        )
    key = f"{path.resolve()}|{frames}|{cfg.size}|{cfg.per_segment}"
    cache = Path(cache_root) / f"{path.name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    if is_store(cache):
        try:
            if read_index(cache).get("annotations_sha1") == file_sha1(ann_path):
                return cache, None
        except StoreError as exc:
            log.warning("rebuilding frame cache: %s", exc)
    log.info("extracting %s into the frame cache %s", path, cache)
    summary = extract_split(path, cache, cfg, frames, progress, datatype=datatype, checks=checks)
    return cache, summary
