"""The split a stage reads, however it is given: a dataset root with a split name, a split
folder, or a frame store (``tempstop evaluate`` and ``tempstop index --data``). Not a command."""

from __future__ import annotations

from pathlib import Path

from tempstop.config import ProjectConfig
from tempstop.data.annotations import AnnotationError
from tempstop.data.extract import ExtractError
from tempstop.data.frame_cache import ensure_store
from tempstop.data.store import FrameStore, StoreError, is_store
from tempstop.inference import CheckpointError, model_input
from tempstop_pipelines.options import report_failures

#: What stops an evaluation or an indexing of a split with one line naming the file or key.
DATA_ERRORS = (CheckpointError, StoreError, AnnotationError, ExtractError, FileNotFoundError)


def resolve_data(data: str | Path, split: str) -> tuple[Path, str]:
    """``(path of a store or split folder, split name)`` for a root / split folder / store."""
    data = Path(data)
    if is_store(data) or (data / "annotations.json").is_file():
        return data, data.name
    candidate = data / split
    if is_store(candidate) or (candidate / "annotations.json").is_file():
        return candidate, split
    if not data.exists():
        raise FileNotFoundError(f"{data}: no such folder")
    raise FileNotFoundError(f"{data}: not a frame store, a split folder, or a dataset root with a '{split}' split")


def open_split(params: ProjectConfig, trained: ProjectConfig, model, data: str, split: str | None,
               cache: str | None, datatype: str | None, progress: bool) -> tuple[FrameStore, str]:  # fmt: skip
    """The frame store of ``data`` for ``model`` and the split's name. A raw split is extracted
    into the frame cache first (``trained``: the checkpoint's config says how; ``params``: the
    annotation checks and the cache); a store whose frames do not fit the model is refused."""
    path, split_name = resolve_data(data, split or params.evaluate.split)
    store_path, extracted = ensure_store(
        path, cache or params.data.frames_cache, trained.extract, trained.model.frames,
        datatype=datatype or trained.data.datatype, checks=params.validate_, progress=progress,
    )  # fmt: skip
    if extracted:
        report_failures(path, extracted["failures"])
    store = FrameStore(store_path)
    store.check_arrays()
    frames, size = model_input(model)
    if size is not None and store.size != size:
        raise StoreError(f"{store.path}: {store.size} px frames, but the model takes {size} px")
    if frames is not None and store.frames != frames:
        raise StoreError(f"{store.path}: {store.frames} frames per video, but the model takes {frames}")
    return store, split_name
