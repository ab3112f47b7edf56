"""Indexing a folder of videos (tempstop.collection): no annotations needed, incremental,
resumable, failures listed, every path kept inside the collection; searching it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from media import make_clip, truncate

from tempstop.collection import CollectionError, CollectionSearch, Filters, IndexSettings, index_videos
from tempstop.collection import shards as shards_mod
from tempstop.collection.manifest import live_embeddings, read_manifest
from tempstop.collection.scan import inside, scan_videos
from tempstop.config import IndexConfig, ModelConfig
from tempstop.model import create_unified_model

SETTINGS = IndexSettings(frames=4, size=64, index=IndexConfig(shard_size=2, batch_size=2, workers=1, timeout_s=60))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_unified_model(ModelConfig(frames=4)).eval()


INFO = {"source": "random-tiny", "sha256": "a" * 64, "registry": None}


def _collection(root: Path) -> Path:
    """5 clips of different content (one nested, one wide, one long), a text file, a hidden clip,
    a corrupt clip."""
    make_clip(root / "a.mp4", n=8)
    make_clip(root / "b.mkv", n=10)  # the file name decides what is scanned, decord reads the content
    make_clip(root / "sub" / "c.mp4", n=24, fps=4)  # 6 s
    make_clip(root / "sub" / "deeper" / "d.MOV", n=12, height=72, width=128)
    make_clip(root / "e.webm", n=16)
    (root / "notes.txt").write_text("not a video")
    make_clip(root / ".hidden.mp4", n=8)
    make_clip(root / "broken.mp4", n=8)
    truncate(root / "broken.mp4", 0.3)
    return root


def test_scan_finds_videos_recursively_and_stays_inside(tmp_path):
    root = _collection(tmp_path / "videos")
    outside = tmp_path / "outside.mp4"
    make_clip(outside, n=4)
    (root / "link.mp4").symlink_to(outside)  # leads out of the collection: skipped
    (root / "inner.mp4").symlink_to(root / "a.mp4")  # stays inside: indexed
    paths = [v.path for v in scan_videos(root)]
    assert paths == ["a.mp4", "b.mkv", "broken.mp4", "e.webm", "inner.mp4", "sub/c.mp4", "sub/deeper/d.MOV"]
    assert inside(root, "a.mp4") == (root / "a.mp4").resolve()
    for bad in ("../outside.mp4", "/etc/passwd", "link.mp4", "sub/../../outside.mp4", "", "a\\b.mp4", "nope.mp4"):
        assert inside(root, bad) is None, bad


def test_index_search_and_incremental_rerun(tmp_path, model):
    root = _collection(tmp_path / "videos")
    out = tmp_path / "index"
    first = index_videos(model, root, out, SETTINGS, INFO, progress=False)
    assert (first["found"], first["embedded"], first["videos"]) == (6, 5, 5)
    assert [f["path"] for f in first["failed"]] == ["broken.mp4"] and first["failed"][0]["reason"]
    manifest = read_manifest(out)
    by_path = {v["path"]: v for v in manifest["videos"]}
    assert set(by_path) == {"a.mp4", "b.mkv", "e.webm", "sub/c.mp4", "sub/deeper/d.MOV"}
    c, d = by_path["sub/c.mp4"], by_path["sub/deeper/d.MOV"]
    assert c["duration"] == pytest.approx(6.0, abs=0.01) and c["fps"] == pytest.approx(4.0)
    assert (d["width"], d["height"]) == (128, 72) and len(d["hash"]) == 32
    for v in manifest["videos"]:
        assert (out / v["thumbnail"]).read_bytes()[:2] == b"\xff\xd8"  # a JPEG
    stored = live_embeddings(out, manifest)
    torch.testing.assert_close(np.linalg.norm(stored, axis=1), np.ones(5, np.float32), atol=2e-3, rtol=0)

    engine = CollectionSearch(out, model, INFO)
    hits = engine.search_vectors(stored, top_k=3)  # each video's own vector scores 1 (grey clips may tie)
    for video, row in zip(manifest["videos"], hits, strict=True):
        assert row[0]["score"] == pytest.approx(1.0, abs=2e-3)
        assert video["path"] in [h["path"] for h in row if h["score"] >= row[0]["score"] - 1e-4]
    long_only = engine.search_vectors(stored[:1], 5, Filters(min_duration=5.0))[0]
    assert [h["path"] for h in long_only] == ["sub/c.mp4"]
    assert engine.search(["a grey square"], top_k=2)[0][0]["rank"] == 1

    again = index_videos(model, root, out, SETTINGS, INFO, progress=False)
    assert (again["reused"], again["embedded"], again["removed"]) == (5, 0, 0)
    assert np.array_equal(live_embeddings(out, read_manifest(out)), stored)

    os.utime(root / "a.mp4", ns=(1, 1))  # changed (its stamp)
    (root / "e.webm").unlink()
    make_clip(root / "f.m4v", n=6)
    third = index_videos(model, root, out, SETTINGS, INFO, progress=False)
    assert (third["reused"], third["embedded"], third["removed"]) == (3, 2, 1)
    paths = [v["path"] for v in read_manifest(out)["videos"]]
    assert paths == ["a.mp4", "b.mkv", "f.m4v", "sub/c.mp4", "sub/deeper/d.MOV"]
    assert not any("e.webm" in p for p in paths)


def test_an_interrupted_run_keeps_its_finished_shards(tmp_path, model, monkeypatch):
    root = _collection(tmp_path / "videos")
    out = tmp_path / "index"
    real_embed, calls = shards_mod._embed, []

    def dies_on_third_batch(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill during the third batch
        return real_embed(*args)

    monkeypatch.setattr(shards_mod, "_embed", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        index_videos(model, root, out, SETTINGS, INFO, progress=False)
    partial = read_manifest(out)
    # shards of two in path order: [a, b] [broken, e] [sub/c, sub/deeper/d]; the third died
    assert [v["path"] for v in partial["videos"]] == ["a.mp4", "b.mkv", "e.webm"] and partial["vector_index"] is None
    with pytest.raises(CollectionError, match="incomplete"):
        CollectionSearch(out, model, INFO)
    monkeypatch.setattr(shards_mod, "_embed", real_embed)
    resumed = index_videos(model, root, out, SETTINGS, INFO, progress=False)
    assert (resumed["reused"], resumed["embedded"], resumed["videos"]) == (3, 2, 5)
    assert not (out / "work").exists()  # every shard's work folder merged and removed


def test_another_model_is_refused_and_a_new_model_reindexes(tmp_path, model):
    root = tmp_path / "videos"
    make_clip(root / "a.mp4", n=8)
    out = tmp_path / "index"
    index_videos(model, root, out, SETTINGS, INFO, progress=False)
    other = {**INFO, "source": "other.pth", "sha256": "b" * 64}
    with pytest.raises(CollectionError, match="built with random-tiny"):
        CollectionSearch(out, model, other)
    rebuilt = index_videos(model, root, out, SETTINGS, other, progress=False)
    assert (rebuilt["reused"], rebuilt["embedded"]) == (0, 1)


def test_a_hanging_decoder_is_listed_and_skipped(tmp_path, model, monkeypatch):
    root = tmp_path / "videos"
    make_clip(root / "ok.mp4", n=8)
    shutil.copy(root / "ok.mp4", root / "slow.mp4")
    monkeypatch.setattr(shards_mod, "decode_for_index", _hangs_on_slow)
    summary = index_videos(model, root, tmp_path / "index", IndexSettings(4, 64, IndexConfig(workers=1, timeout_s=3)), INFO,
                           progress=False)  # fmt: skip
    assert summary["videos"] == 1 and summary["failed"][0]["path"] == "slow.mp4"
    assert "timed out" in summary["failed"][0]["reason"] or "timeout" in summary["failed"][0]["reason"].lower()
    assert json.loads((tmp_path / "index" / "manifest.json").read_text())["failed"][0]["path"] == "slow.mp4"


def _hangs_on_slow(job):
    import time

    from tempstop.collection.decode import decode_for_index

    if job["path"].endswith("slow.mp4"):
        time.sleep(60)
    return decode_for_index(job)


def test_an_empty_folder_is_an_empty_index(tmp_path, model):
    (tmp_path / "videos").mkdir()
    summary = index_videos(model, tmp_path / "videos", tmp_path / "index", SETTINGS, INFO, progress=False)
    assert summary["videos"] == 0 and summary["vector_index"] is None
    engine = CollectionSearch(tmp_path / "index", model, INFO)
    assert len(engine) == 0 and engine.search(["anything"], top_k=3) == [[]]


def test_a_shard_decoded_before_a_crash_is_not_decoded_again(tmp_path, model, monkeypatch):
    root = tmp_path / "videos"
    for i, n in enumerate((6, 8, 10)):
        make_clip(root / f"v{i}.mp4", n=n)
    out = tmp_path / "index"
    settings = IndexSettings(frames=4, size=64, index=IndexConfig(shard_size=10, workers=1))

    def crash(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards_mod, "embed_shard", crash)
    with pytest.raises(KeyboardInterrupt):
        index_videos(model, root, out, settings, INFO, progress=False)
    decoded = list((out / "work").glob("*/decoded.json"))
    assert len(decoded) == 1 and (decoded[0].parent / "frames.npy").is_file()
    monkeypatch.undo()
    monkeypatch.setattr(shards_mod, "decode_for_index", _must_not_run)  # resuming must not decode again
    summary = index_videos(model, root, out, settings, INFO, progress=False)
    assert summary["videos"] == 3 and not summary["failed"]  # a decode would have failed every video


def _must_not_run(job):
    raise AssertionError("decoded again")
