"""The retrieval gallery: query selection and top-5 of the evaluation JSON, and its picture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tempstop.data.store import array_relpath, save_array, write_index
from tempstop.evaluation import gallery_entries
from tempstop_pipelines.stages.gallery import film_strip
from tempstop_pipelines.stages.plots import make_plots


def _items(n: int) -> list[dict]:
    return [{"video_id": f"v{i}"} for i in range(n)]


def test_gallery_entries_top5_scores_targets_and_spread():
    sim = torch.rand(10, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1  # [Q, V]
    sim[0] = torch.tensor([0.1, 0.9, 0.3, 0.5, 0.7, -0.2])
    sim[5] = 0.25  # all tied: ties keep the video order
    texts = [f"query {q}" for q in range(10)]
    query_video = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4, 5, 5])
    entries = gallery_entries(sim, texts, query_video, _items(6), n=4)

    assert [e["query"] for e in entries] == ["query 0", "query 2", "query 5", "query 8"]  # round(j*10/4)
    first = entries[0]
    assert first["target"] == [0] and first["target_ids"] == ["v0"]
    assert [h["index"] for h in first["top"]] == [1, 4, 3, 2, 0]
    assert [h["video_id"] for h in first["top"]] == ["v1", "v4", "v3", "v2", "v0"]
    assert [h["score"] for h in first["top"]] == [0.9, 0.7, 0.5, 0.3, 0.1]
    assert [h["index"] for h in entries[2]["top"]] == [0, 1, 2, 3, 4]
    for entry, q in zip(entries, (0, 2, 5, 8), strict=True):
        expected = torch.argsort(sim[q], descending=True, stable=True)[:5].tolist()
        assert [h["index"] for h in entry["top"]] == expected
        assert all(h["score"] == round(float(sim[q, h["index"]]), 4) for h in entry["top"])
        assert entry["target"] == [int(query_video[q])]
    json.dumps(entries)  # plain JSON types only

    # More queries asked than there are: each query once; fewer videos than top_k: all of them.
    assert len(gallery_entries(sim, texts, query_video, _items(6), n=50)) == 10
    assert len(gallery_entries(sim[:, :3], texts, query_video % 3, _items(3), n=2)[0]["top"]) == 3
    assert gallery_entries(sim, texts, query_video, _items(6), n=0) == []


def test_film_strip_spreads_over_the_valid_frames():
    frames = np.arange(8, dtype=np.uint8)[:, None, None, None] * np.ones((1, 10, 10, 3), np.uint8)
    strip = film_strip(frames, np.arange(8) < 5)  # 5 valid frames: picks 0, 1, 3, 4
    assert strip.dtype == np.uint8 and strip.shape[0] == 10 and strip.shape[2] == 3
    starts = [i * (10 + 1) for i in range(4)]  # 10 px frames, 1 px gaps
    assert [int(strip[0, s, 0]) for s in starts] == [0, 1, 3, 4]
    assert film_strip(frames, np.zeros(8, bool)).max() <= 24  # no valid frame: black (and gaps)


def _tiny_store(path: Path, n: int = 6, frames: int = 6, size: int = 16) -> None:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        key = f"vid{i}"
        arr = np.zeros((frames, size, size, 3), np.uint8)
        valid = frames - i % 3
        arr[:valid] = rng.integers(0, 255, (valid, size, size, 3), dtype=np.uint8)
        save_array(path / array_relpath(key), arr)
        items.append({"key": key, "video_id": key, "file": array_relpath(key), "captions": [f"caption {i}"],
                      "num_valid": valid, "segment": None})  # fmt: skip
    write_index(path, {"version": 1, "frames": frames, "size": size, "items": items, "failed": []})


def _evaluation(store: Path, n_videos: int = 6) -> dict:
    sim = torch.rand(12, n_videos, generator=torch.Generator().manual_seed(1))  # [Q, V]
    texts = [
        f"a fairly long caption number {q} that describes what happens in the clip " * 2 for q in range(12)
    ]
    query_video = torch.arange(12) % n_videos
    items = [{"video_id": f"vid{i}"} for i in range(n_videos)]
    return {
        "split": "test",
        "num_videos": n_videos,
        "store": str(store),
        "t2v": {"R1": 50.0},
        "recall_curve": {"t2v": [50.0, 100.0], "v2t": [50.0, 100.0]},
        "gallery": gallery_entries(sim, texts, query_video, items, n=6),
    }


def test_make_plots_draws_the_gallery_from_the_frame_store(tmp_path):
    from PIL import Image

    _tiny_store(tmp_path / "store")
    evaluation = _evaluation(tmp_path / "store")
    assert any(e["target"][0] not in [h["index"] for h in e["top"]] for e in evaluation["gallery"])
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    files = make_plots(tmp_path / "eval.json", [], tmp_path / "out")
    path = Path(files["gallery_png"])
    assert path == tmp_path / "out" / "retrieval_gallery.png"
    assert path.read_bytes()[:4] == b"\x89PNG"
    with Image.open(path) as image:
        width, height = image.size
    assert 1400 <= width <= 1700 and height > width / 2  # ~14 in wide, 6 rows


@pytest.mark.parametrize("broken", ["missing", "other_store"])
def test_make_plots_writes_a_placeholder_when_the_store_is_unusable(tmp_path, capsys, broken):
    if broken == "other_store":  # the store was re-extracted: its items are not the evaluated ones
        _tiny_store(tmp_path / "store", n=2)
    evaluation = _evaluation(tmp_path / "store")
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    files = make_plots(tmp_path / "eval.json", [], tmp_path / "out")
    _assert_placeholder(files["gallery_png"])  # DVC declares the file: it must exist
    assert Path(files["recall_png"]).stat().st_size > 0 and Path(files["curves_png"]).stat().st_size > 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and str(tmp_path / "store") in err[0]


def test_make_plots_without_a_gallery_writes_a_placeholder(tmp_path):
    evaluation = {"split": "test", "t2v": {"R1": 1.0}, "store": str(tmp_path / "nowhere"), "gallery": []}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    _assert_placeholder(make_plots(tmp_path / "eval.json", [], tmp_path / "out")["gallery_png"])


def _assert_placeholder(path) -> None:
    """A small picture (a line of text), not a gallery."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    assert width <= 700 and height <= 150


@pytest.mark.parametrize("content", [None, "{not json"])
def test_plots_command_names_an_unreadable_evaluation_file(tmp_path, capsys, content):
    from tempstop_pipelines.cli import main

    path = tmp_path / "eval.json"
    if content is not None:
        path.write_text(content)
    assert main(["plots", "--eval", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tempstop plots:") and str(path) in err[0]
