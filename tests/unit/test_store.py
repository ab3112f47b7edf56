"""The frame store: round trip, atomic writes, clear errors on corrupt input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import tempstop.data.store as store_module
from tempstop.data.store import (
    FrameStore,
    StoreError,
    array_relpath,
    read_index,
    remove_stale_temporaries,
    save_array,
    write_index,
)


def _store(tmp_path, frames=4, size=8, n=3):
    rng = np.random.default_rng(0)
    items, arrays = [], []
    for i in range(n):
        key = f"vid{i}"
        arr = np.zeros((frames, size, size, 3), np.uint8)
        valid = frames - i  # vid0 full, vid1 one padded frame, ...
        arr[:valid] = rng.integers(1, 255, (valid, size, size, 3), dtype=np.uint8)
        save_array(tmp_path / array_relpath(key), arr)
        arrays.append(arr)
        items.append({"key": key, "video_id": key, "file": array_relpath(key), "captions": [f"c {i}"],
                      "num_valid": valid, "segment": None})  # fmt: skip
    index = {"version": 1, "frames": frames, "size": size, "source": "x", "datatype": "demo",
             "items": items, "failed": [{"video_id": "bad", "file": "bad.mp4", "reason": "broken"}]}  # fmt: skip
    write_index(tmp_path, index)
    return index, arrays


def test_round_trip(tmp_path):
    index, arrays = _store(tmp_path)
    store = FrameStore(tmp_path)
    assert (len(store), store.frames, store.size, store.datatype) == (3, 4, 8, "demo")
    assert store.items == index["items"] and store.failed == index["failed"]
    for i, expected in enumerate(arrays):
        frames, mask = store.load(i)
        assert frames.dtype == np.uint8 and frames.shape == (4, 8, 8, 3)
        np.testing.assert_array_equal(frames, expected)
        assert mask.dtype == np.bool_ and mask.tolist() == [k < 4 - i for k in range(4)]
    mm, _ = FrameStore(tmp_path, mmap=True).load(1)
    np.testing.assert_array_equal(mm, arrays[1])


def test_writes_are_atomic_and_leave_no_temporaries(tmp_path, monkeypatch):
    arr = np.ones((2, 4, 4, 3), np.uint8)
    target = tmp_path / "arrays" / "a.npy"
    save_array(target, arr)
    assert sorted(os.listdir(target.parent)) == ["a.npy"]
    assert (target.stat().st_mode & 0o777) == 0o644  # readable by the training job's user

    def disk_full(fd, header, data):  # the header lands, then the disk fills up mid-array
        os.write(fd, header)
        os.write(fd, bytes(data)[:10])
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "_write_all", disk_full)
    with pytest.raises(OSError, match="disk full"):
        save_array(target, arr * 2)
    np.testing.assert_array_equal(np.load(target), arr)  # the old file is intact
    assert sorted(os.listdir(target.parent)) == ["a.npy"]  # and the temporary is gone


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / "arrays").mkdir()
    (tmp_path / "arrays" / ".a.npy.123.tmp").write_bytes(b"half")
    save_array(tmp_path / "arrays" / "b.npy", np.zeros((1, 2, 2, 3), np.uint8))
    assert remove_stale_temporaries(tmp_path) == 1
    assert os.listdir(tmp_path / "arrays") == ["b.npy"]


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (lambda p: p.write_text("{not json"), "not valid JSON"),
        (lambda p: p.write_text("[]"), "must be a JSON object"),
        (lambda p: _edit(p, version=2), "unsupported store version"),
        (lambda p: _edit(p, frames=0), "'frames' must be a positive integer"),
        (lambda p: _edit_item(p, num_valid=9), r"items\[0\]: 'num_valid'"),
        (lambda p: _edit_item(p, file="../../etc/passwd"), r"items\[0\]: 'file' must be"),
        (lambda p: _edit_item(p, key="a/b"), "not file-name safe"),
        (lambda p: _edit_item(p, captions="one"), "'captions' must be a list"),
        (lambda p: _edit(p, video_sha1={"vid0": 1}), "'video_sha1' must map"),
    ],
)
def test_corrupt_index_names_the_file(tmp_path, corrupt, message):
    _store(tmp_path)
    path = tmp_path / "index.json"
    corrupt(path)
    with pytest.raises(StoreError, match=message) as err:
        FrameStore(tmp_path)
    assert str(path) in str(err.value)


def test_duplicate_keys_rejected(tmp_path):
    index, _ = _store(tmp_path)
    index["items"][1] = dict(index["items"][0])
    with pytest.raises(StoreError, match="duplicate key 'vid0'"):
        write_index(tmp_path, index)


def test_missing_or_wrong_array_names_file_and_key(tmp_path):
    _store(tmp_path)
    store = FrameStore(tmp_path)
    (tmp_path / "arrays" / "vid1.npy").unlink()
    with pytest.raises(StoreError, match=r"vid1\.npy: array of item 'vid1' is missing"):
        store.load(1)
    save_array(tmp_path / "arrays" / "vid2.npy", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(StoreError, match="vid2.*expected uint8"):
        store.load(2)


def test_source_is_relative_to_the_store_in_the_index_and_absolute_when_read(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    store_dir = tmp_path / "frames" / "train"
    _store(store_dir)
    _edit(store_dir / "index.json", source="../../data/train")
    assert FrameStore(store_dir).source == str((tmp_path / "data" / "train").resolve())
    _edit(store_dir / "index.json", source="/elsewhere/train")  # stores of earlier versions
    assert FrameStore(store_dir).source == "/elsewhere/train"
    _edit(store_dir / "index.json", source=None)
    assert FrameStore(store_dir).source is None


def test_missing_index(tmp_path):
    with pytest.raises(StoreError, match="index not found"):
        read_index(tmp_path)


def _edit(path, **changes):
    index = json.loads(path.read_text())
    index.update(changes)
    path.write_text(json.dumps(index))


def _edit_item(path, **changes):
    index = json.loads(path.read_text())
    index["items"][0].update(changes)
    path.write_text(json.dumps(index))
