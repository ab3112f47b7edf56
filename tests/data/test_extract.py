"""Frame extraction on real H.264 input: HD, short and variable-frame-rate clips, resume, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from media import frame_id, indexed_frames, make_clip, make_split, write_annotations

from tempstop.config import ExtractConfig
from tempstop.data.annotations import VideoRecord
from tempstop.data.frame_cache import ensure_store
from tempstop.data.extract import (
    ExtractError,
    extract_shard,
    extract_split,
    plan_jobs,
    plan_split,
)
from tempstop.data.mp4 import write_video
from tempstop.data.store import FrameStore
from tempstop.data.video import decode_dims, video_size
from tempstop_pipelines.cli import main as cli


def _extract(split, out, frames=8, **cfg):
    cfg = ExtractConfig(**{"size": 32, "workers": 1, **cfg})
    return extract_split(split, out, cfg, frames, progress=False)


def test_hd_clip_sampled_resized_and_centre_cropped(tmp_path):
    split = tmp_path / "train"
    frames = indexed_frames(30, 720, 1280)  # 1.2 s at 25 fps
    frames[:, :, :280] = (255, 0, 0)  # bands outside the centred 720x720 square
    frames[:, :, 1000:] = (0, 0, 255)
    write_video(split / "videos" / "hd.mp4", frames, 25, crf=12)
    write_annotations(split, [{"video_id": "hd", "captions": ["a wide clip"]}])
    summary = _extract(split, tmp_path / "store")
    assert (summary["done"], summary["failed"], summary["items"]) == (1, 0, 1)
    store = FrameStore(tmp_path / "store")
    arr, mask = store.load(0)
    assert arr.shape == (8, 32, 32, 3) and arr.dtype == np.uint8 and mask.all()
    assert [frame_id(f) for f in arr] == [int((i + 0.5) * 30 / 8) for i in range(8)]
    inner = arr[:, :, 1:-1].astype(int)
    assert np.abs(inner[..., 0] - inner[..., 2]).max() < 12  # grey only: the bands were cropped away


def test_clip_shorter_than_frame_count_is_zero_padded(tmp_path):
    split = tmp_path / "train"
    make_clip(split / "videos" / "short.mp4", n=5)
    write_annotations(split, [{"video_id": "short", "captions": ["five frames"]}])
    _extract(split, tmp_path / "store")
    store = FrameStore(tmp_path / "store")
    assert store.items[0]["num_valid"] == 5
    arr, mask = store.load(0)
    assert mask.tolist() == [True] * 5 + [False] * 3
    assert [frame_id(f) for f in arr[:5]] == [0, 1, 2, 3, 4]
    assert not arr[5:].any()


def test_variable_frame_rate_sampled_uniformly_in_time(tmp_path):
    split = tmp_path / "train"
    # 10 frames in the first half second, then one frame every 0.5 s up to 5.5 s.
    pts = [0.05 * i for i in range(10)] + [1.0 + 0.5 * i for i in range(10)]
    make_clip(split / "videos" / "vfr.mp4", n=20, fps=10, pts=pts)
    write_annotations(split, [{"video_id": "vfr", "captions": ["uneven"]}])
    _extract(split, tmp_path / "store", frames=6)
    arr, _ = FrameStore(tmp_path / "store").load(0)
    ids = [frame_id(f) for f in arr]
    assert ids == sorted(ids) and len(set(ids)) == 6
    # By index, half of the 6 picks would come from the dense first half second; by time, one.
    assert sum(i < 10 for i in ids) == 1
    times = np.array([pts[i] for i in ids])
    assert np.all(np.diff(times) > 0.4)  # spread over the clip's duration


def test_per_segment_items(tmp_path):
    split = tmp_path / "train"
    make_clip(split / "videos" / "seg.mp4", n=16, fps=8)  # 2 s
    write_annotations(
        split, [{"video_id": "seg", "captions": ["first", "second"], "timestamps": [[0, 1], [1, 2]]}]
    )
    _extract(split, tmp_path / "store", frames=4, per_segment=True)
    store = FrameStore(tmp_path / "store")
    assert [it["key"] for it in store.items] == ["seg__0", "seg__1"]
    assert [it["captions"] for it in store.items] == [["first"], ["second"]]
    assert store.items[1]["segment"] == [1.0, 2.0]
    first, second = ([frame_id(f) for f in store.load(i)[0]] for i in range(2))
    assert all(i < 8 for i in first) and all(8 <= i < 16 for i in second)


def test_resume_skips_done_and_redoes_deleted(tmp_path):
    split = tmp_path / "train"
    items = make_split(split, count=3, n=12)
    (split / "videos" / "bad.mp4").write_text("not a video")
    write_annotations(
        split,
        items + [{"video_id": "bad", "captions": ["broken"]}, {"video_id": "gone", "captions": ["missing"]}],
    )
    out = tmp_path / "store"
    first = _extract(split, out)
    assert (first["done"], first["skipped"], first["failed"], first["items"]) == (3, 0, 2, 3)
    failed = {f["video_id"]: f["reason"] for f in FrameStore(out).failed}
    assert set(failed) == {"bad", "gone"}
    assert {f["video_id"]: f["reason"] for f in first["failures"]} == failed  # named, not only counted
    assert "cannot open video" in failed["bad"] and "file not found" in failed["gone"]
    assert sorted(p.name for p in out.iterdir()) == ["arrays", "index.json"]  # no journal once finished
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "arrays").iterdir()}

    second = _extract(split, out)
    assert (second["done"], second["skipped"], second["items"]) == (0, 3, 3)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "arrays").iterdir()} == mtimes

    (out / "arrays" / "v1.npy").unlink()
    third = _extract(split, out)
    assert (third["done"], third["skipped"], third["items"]) == (1, 2, 3)
    store = FrameStore(out)
    assert [it["key"] for it in store.items] == ["v0", "v1", "v2"]  # annotation order
    for i in range(3):
        assert store.load(i)[1].all()
    assert not [p for p in out.rglob("*.tmp")]  # no temporaries left behind


def test_changed_video_is_redone_and_settings_clash_refused(tmp_path):
    split = tmp_path / "train"
    make_split(split, count=2)
    out = tmp_path / "store"
    _extract(split, out)
    make_clip(split / "videos" / "v0.mp4", n=10)  # re-encoded source: its sha1 is not the index's
    again = _extract(split, out)
    assert (again["done"], again["skipped"]) == (1, 1)
    assert FrameStore(out).items[0]["num_valid"] == 8 and FrameStore(out).load(0)[1].all()
    # Interrupted before its index (journals only), then v1 changes: its journal line no longer matches.
    (out / "index.json").unlink()
    for shard in plan_split(split, out, ExtractConfig(size=32), 8, shard_size=1).shards:
        extract_shard(shard, workers=0)
    assert len(list((out / "journal").iterdir())) == 2
    make_clip(split / "videos" / "v1.mp4", n=9)
    resumed = _extract(split, out)
    assert (resumed["done"], resumed["skipped"], resumed["items"]) == (1, 1, 2)
    with pytest.raises(ExtractError, match="size"):
        _extract(split, out, size=16)


def test_ensure_store_extracts_once_into_cache(tmp_path):
    split = tmp_path / "val"
    make_split(split, count=2)
    cfg = ExtractConfig(size=16, workers=1)
    store, summary = ensure_store(split, tmp_path / "cache", cfg, 4, progress=False)
    assert store.parent == tmp_path / "cache" and store.name.startswith("val-")
    assert len(FrameStore(store)) == 2 and summary["done"] == 2
    index_mtime = (store / "index.json").stat().st_mtime_ns
    assert ensure_store(split, tmp_path / "cache", cfg, 4) == (store, None)
    assert (store / "index.json").stat().st_mtime_ns == index_mtime  # reused, not rebuilt
    assert ensure_store(store, tmp_path / "elsewhere", cfg, 4) == (store, None)  # a store as is
    other, _ = ensure_store(split, tmp_path / "cache", cfg, 2, progress=False)
    assert other != store and FrameStore(other).frames == 2
    with pytest.raises(ExtractError, match="neither a frame store"):
        ensure_store(tmp_path / "nothing", tmp_path / "cache", cfg, 4)


def test_extract_stage_cli(tmp_path, capsys):
    root = tmp_path / "data"
    make_split(root / "train", count=2)
    make_split(root / "test", count=1)
    out = tmp_path / "frames"
    params = tmp_path / "params.yaml"  # not the repository's params.yaml
    params.write_text("extract: {size: 16, workers: 1}\nmodel: {frames: 4}\n")
    rc = cli(["extract", "--data", str(root), "--out", str(out), "--no-progress", "--params", str(params),
              "--set", "extract.size=16", "--summary", str(tmp_path / "s.json")])  # fmt: skip
    assert rc == 0
    assert "videos/s" in capsys.readouterr().out
    assert (len(FrameStore(out / "train")), len(FrameStore(out / "test"))) == (2, 1)
    assert FrameStore(out / "train").frames == 4
    assert set(json.loads((tmp_path / "s.json").read_text())) == {"train", "test"}


def test_plan_rejects_duplicates_and_key_collisions():
    records = [
        VideoRecord("a", ["x", "y"], timestamps=[[0, 1], [1, 2]]),
        VideoRecord("a__0", ["z"]),  # would overwrite segment 0 of "a"
        VideoRecord("a", ["again"]),
        VideoRecord("b c", ["odd id"]),
    ]
    jobs, rejects = plan_jobs(records, per_segment=True)
    assert [j["video_id"] for j in jobs] == ["a", "b c"]
    assert [r["reason"] for r in rejects] == [
        "store key 'a__0' is taken by another video",
        "duplicate video_id",
    ]
    assert jobs[1]["items"][0]["key"].startswith("b_c-")


def _remux(src, dst, fmt):
    """Copy an mp4's H.264 stream into another container without re-encoding."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)


def test_video_size_from_container_headers(tmp_path):
    mp4 = make_clip(tmp_path / "a.mp4", n=4, height=48, width=80)
    assert video_size(mp4) == (80, 48)
    _remux(mp4, tmp_path / "a.mkv", "matroska")
    assert video_size(tmp_path / "a.mkv") == (80, 48)  # through PyAV
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x00\x00\x08junk" * 10)
    assert video_size(tmp_path / "junk.mp4") is None


def test_width_decord_garbles_falls_back_to_full_size_decoding(tmp_path):
    # 96x144 -> short side 48: decord 0.6.0 returns a broken layout at width 48, so the
    # frames must come from the full-size decode + Pillow path, and still be right.
    split = tmp_path / "train"
    make_clip(split / "videos" / "tall.mp4", n=8, height=144, width=96)
    write_annotations(split, [{"video_id": "tall", "captions": ["portrait"]}])
    assert decode_dims(video_size(split / "videos" / "tall.mp4"), 48) == (48, 72)
    _extract(split, tmp_path / "store", frames=4, size=48)
    arr, mask = FrameStore(tmp_path / "store").load(0)
    assert arr.shape == (4, 48, 48, 3) and mask.all()
    assert [frame_id(f) for f in arr] == [1, 3, 5, 7]


def test_mkv_input_is_extracted(tmp_path):
    split = tmp_path / "train"
    make_clip(tmp_path / "src.mp4", n=12, height=64, width=96)
    (split / "videos").mkdir(parents=True)
    _remux(tmp_path / "src.mp4", split / "videos" / "m.mkv", "matroska")
    write_annotations(split, [{"video_id": "m", "video": "m.mkv", "captions": ["matroska"]}])
    summary = _extract(split, tmp_path / "store", frames=4)
    assert summary["done"] == 1
    assert [frame_id(f) for f in FrameStore(tmp_path / "store").load(0)[0]] == [1, 4, 7, 10]


def test_small_videos_are_batched_large_ones_go_alone():
    from tempstop.data.extract_jobs import BATCH_BYTES, BATCH_VIDEOS, SMALL_VIDEO_BYTES, batch_jobs

    def job(name, size):
        return {"video_id": name, "stamp": [size, 0]}

    small, big = 20_000, SMALL_VIDEO_BYTES + 1
    jobs = [job(f"s{i}", small) for i in range(BATCH_VIDEOS + 3)] + [job("big", big), job("t0", small)]
    batches = batch_jobs(jobs)
    assert [[j["video_id"] for j in b] for b in batches] == [
        [f"s{i}" for i in range(BATCH_VIDEOS)], [f"s{i}" for i in range(BATCH_VIDEOS, BATCH_VIDEOS + 3)],
        ["big"], ["t0"],
    ]  # fmt: skip
    # A batch also stops at BATCH_BYTES of files; order is kept throughout.
    heavy = [job(f"h{i}", SMALL_VIDEO_BYTES) for i in range(BATCH_VIDEOS)]
    assert all(sum(j["stamp"][0] for j in b) <= BATCH_BYTES for b in batch_jobs(heavy))
    assert [j["video_id"] for b in batch_jobs(heavy) for j in b] == [j["video_id"] for j in heavy]
    assert batch_jobs([]) == []


def test_batched_extraction_equals_one_video_per_message(tmp_path, monkeypatch):
    import tempstop.data.extract_jobs as ej

    make_split(tmp_path / "data" / "train", count=5)
    batched = _extract(tmp_path / "data" / "train", tmp_path / "a")
    monkeypatch.setattr(ej, "BATCH_VIDEOS", 1)  # read in the parent, where batches are cut
    single = _extract(tmp_path / "data" / "train", tmp_path / "b")
    assert batched["done"] == single["done"] == 5
    a, b = FrameStore(tmp_path / "a"), FrameStore(tmp_path / "b")
    assert [it["key"] for it in a.items] == [it["key"] for it in b.items]
    for i in range(len(a)):
        fa, ma = a.load(i)
        fb, mb = b.load(i)
        assert np.array_equal(fa, fb) and np.array_equal(ma, mb)
