"""A frame store is a DVC output: two extractions of the same split must write the same bytes
(same DVC directory hash), wherever the checkout lies, whenever the videos were copied there
(other mtimes), in whatever process and however the work was cut into shards or resumed.
Otherwise every machine that re-extracts sees "changed" frames and retrains."""

from __future__ import annotations

import shutil
from pathlib import Path

from media import make_split, write_annotations

from tempstop.config import ExtractConfig
from tempstop.data.extract import extract_shard, extract_split, plan_split
from tempstop.data.store import FrameStore


def _files(store: Path) -> dict[str, bytes]:
    """Every file of a store (relative POSIX path -> bytes), as DVC sees the directory."""
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def _dvc_hash(store: Path, odb: Path) -> str | None:
    """DVC 3's hash of the directory (``<md5>.dir``, size, files), or ``None`` without dvc-data."""
    try:
        from dvc_data.hashfile.build import build
        from dvc_data.hashfile.db import HashFileDB
        from dvc_objects.fs.local import LocalFileSystem
    except ImportError:
        return None
    fs = LocalFileSystem()
    _, meta, obj = build(HashFileDB(fs, str(odb)), str(store), fs, "md5", dry_run=True)
    return f"{obj.hash_info.value} {meta.size} bytes {meta.nfiles} files"


def test_two_extractions_of_a_split_hash_the_same(tmp_path):
    # Two checkouts of one project, at different depths; the copy's videos have new mtimes.
    one, two = tmp_path / "one", tmp_path / "elsewhere" / "two"
    items = make_split(one / "data" / "train", count=5, n=6)
    (one / "data" / "train" / "videos" / "bad.mp4").write_text("not a video")
    extra = [{"video_id": "bad", "captions": ["broken"]}, {"video_id": "gone", "captions": ["missing"]}]
    write_annotations(one / "data" / "train", items[:2] + extra[:1] + items[2:] + extra[1:])
    shutil.copytree(one / "data", two / "data", copy_function=shutil.copy)

    # One straight run in worker processes...
    a = extract_split(one / "data" / "train", one / "frames" / "train", ExtractConfig(size=16, workers=1, shard_size=2),
                      4, progress=False)  # fmt: skip
    # ... and one interrupted after its last shard, resumed in this process with other shards.
    plan = plan_split(
        two / "data" / "train", two / "frames" / "train", ExtractConfig(size=16), 4, shard_size=2
    )
    extract_shard(plan.shards[-1], workers=0)
    b = extract_split(two / "data" / "train", two / "frames" / "train", ExtractConfig(size=16), 4, progress=False,
                      workers=0, shard_size=3)  # fmt: skip
    assert (a["done"], a["failed"], a["items"]) == (5, 2, 5)
    assert (b["done"] + b["skipped"], b["failed"], b["items"]) == (5, 2, 5) and b["skipped"] > 0

    files_a, files_b = _files(one / "frames" / "train"), _files(two / "frames" / "train")
    assert sorted(files_a) == sorted(files_b)
    assert [name for name in files_a if files_a[name] != files_b[name]] == []
    assert _dvc_hash(one / "frames" / "train", tmp_path / "odb") == _dvc_hash(
        two / "frames" / "train", tmp_path / "odb"
    )

    assert str(tmp_path) not in (two / "frames" / "train" / "index.json").read_text()  # no absolute path
    # The store still leads its readers to its own split (annotations.json, videos/).
    assert FrameStore(two / "frames" / "train").source == str((two / "data" / "train").resolve())
