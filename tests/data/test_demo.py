"""The demo benchmark generator (docs/design.md §6): layout, structure, splits, pixels."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from tempstop.config import DemoConfig
from tempstop.data.annotations import read_annotations
from tempstop.data.demo import (
    COLOURS,
    REVERSE,
    SPLITS,
    all_units,
    assign_units,
    generate_demo,
    num_frames,
    object_layout,
    plan_split,
    quadruple_events,
)

CAPTION = re.compile(
    r"^(?:a (?P<a1>.+), then a (?P<a2>.+)|first a (?P<b1>.+) and then a (?P<b2>.+)"
    r"|after a (?P<c1>.+), a (?P<c2>.+))$"
)
EVENT = re.compile(r"^(\w+) (\w+) moves (left|right|up|down)$")


def meaning(text: str) -> tuple[str, ...]:
    """Parse a caption of the grammar back into (c1, s1, m1, c2, s2, m2)."""
    m = CAPTION.match(text)
    assert m, f"caption outside the grammar: {text!r}"
    first, second = (g for g in m.groups() if g is not None)
    return EVENT.match(first).groups() + EVENT.match(second).groups()


def items_of(root, split):
    return json.loads((root / split / "annotations.json").read_text())


def decode(path):
    import decord

    vr = decord.VideoReader(str(path))
    return vr, vr.get_batch(list(range(len(vr)))).asnumpy()


# ---- layout and format ---------------------------------------------------------------
def test_layout_and_native_format(tiny_demo_root):
    marker = json.loads((tiny_demo_root / "dataset.json").read_text())
    assert marker["datatype"] == "demo" and marker["splits"] == {s: 8 for s in SPLITS}
    assert (tiny_demo_root / "README.txt").is_file()
    for split in SPLITS:
        records = read_annotations(tiny_demo_root / split)  # the native reader accepts it
        assert len(records) == 8
        files = sorted(p.name for p in (tiny_demo_root / split / "videos").iterdir())
        assert files == sorted(r.video for r in records)
        assert all(r.video_id.startswith(f"{split}_") for r in records)


def test_videos_decode_as_specified(tiny_demo_root):
    for split in SPLITS:
        item = items_of(tiny_demo_root, split)[0]
        vr, frames = decode(tiny_demo_root / split / "videos" / item["video"])
        assert frames.shape == (32, 96, 96, 3)
        assert vr.get_avg_fps() == pytest.approx(8.0)
        background = np.median(frames[:, :8, :8].astype(float))  # corner: never under a path
        assert 20 - 8 <= background <= 60 + 8


def test_captions_per_split_follow_the_grammar(tiny_demo_root):
    for split in SPLITS:
        for item in items_of(tiny_demo_root, split):
            caps = item["captions"]
            assert len(caps) == (3 if split == "train" else 1)
            assert len(set(caps)) == len(caps), "training paraphrases must differ"
            for cap in caps:
                assert meaning(cap) == tuple(item["events"][0] + item["events"][1])


# ---- quadruples and splits -----------------------------------------------------------
def test_quadruple_structure(tiny_demo_root):
    for split in SPLITS:
        quads = {}
        for item in items_of(tiny_demo_root, split):
            quads.setdefault(item["quadruple"], {})[item["variant"]] = item["events"]
        assert len(quads) == 2
        for q in quads.values():
            assert sorted(q) == [0, 1, 2, 3]
            (a, b), (a_r, b_r), (b2, a2), (b2_r, a2_r) = (q[k] for k in range(4))
            assert a[:2] != b[:2], "A and B differ in colour or shape"
            for e in (a_r, a2, a2_r):
                assert e[:2] == a[:2]
            for e in (b_r, b2, b2_r):
                assert e[:2] == b[:2]
            assert (a_r[2], b_r[2]) == (REVERSE[a[2]], REVERSE[b[2]])  # reversed motions
            assert (a2[2], b2[2]) == (a[2], b[2])  # swapped order, same motions
            assert (a2_r[2], b2_r[2]) == (REVERSE[a[2]], REVERSE[b[2]])


def test_no_meaning_shared_between_splits(tiny_demo_root):
    seen = {}
    for split in SPLITS:
        meanings = {meaning(c) for it in items_of(tiny_demo_root, split) for c in it["captions"]}
        for other, theirs in seen.items():
            assert not meanings & theirs, f"{split} and {other} share a caption meaning"
        seen[split] = meanings


@pytest.mark.parametrize("num", [4, 8, 16])
def test_quadruple_frames_form_one_bag_under_uniform_sampling(num):
    """What makes meanP stop at ~25 %: sampled frames of the 4 clips are the same multiset."""
    cfg = DemoConfig(train_quadruples=3, val_quadruples=1, test_quadruples=1)
    t = num_frames(cfg)
    picked = [int((k + 0.5) * t / num) for k in range(num)]  # frame shown at each bin centre
    items = plan_split(cfg, "train", assign_units(cfg)["train"])
    for q in range(3):
        bags = []
        for item in items[4 * q : 4 * q + 4]:
            layout = object_layout(item, cfg)
            bags.append(
                sorted(
                    (s, rgb, round(x, 6), round(y, 6), r) for s, rgb, x, y, r in (layout[i] for i in picked)
                )
            )
        assert all(bag == bags[0] for bag in bags), f"quadruple {q}: frame bags differ"
        assert object_layout(items[4 * q], cfg) != object_layout(items[4 * q + 1], cfg)  # order differs


def test_units_partition_all_meanings():
    units = all_units()
    assert len(units) == 153 * 8  # unordered object pairs x motion pairs up to reversal
    meanings = [tuple(e1 + e2) for u in units for e1, e2 in quadruple_events(u)]
    assert len(meanings) == len(set(meanings)) == 18 * 17 * 16


def test_default_sizes_split_disjointly():
    cfg = DemoConfig()
    units = assign_units(cfg)
    sets = {}
    for split in SPLITS:
        items = plan_split(cfg, split, units[split])  # planning only: no rendering
        assert len(items) == 4 * getattr(cfg, f"{split}_quadruples")
        sets[split] = {tuple(it["events"][0] + it["events"][1]) for it in items}
        assert len(sets[split]) == len(items), f"meaning repeated inside {split}"
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    # val/test do not depend on the training size
    smaller = assign_units(cfg.model_copy(update={"train_quadruples": 10}))
    assert smaller["val"] == units["val"] and smaller["test"] == units["test"]


def test_oversized_training_repeats_only_its_own_units():
    cfg = DemoConfig(train_quadruples=1300, val_quadruples=75, test_quadruples=75)
    units = assign_units(cfg)
    assert len(units["train"]) == 1300
    assert not set(units["train"]) & (set(units["val"]) | set(units["test"]))


def test_impossible_params_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="demo.train_captions"):
        generate_demo(tmp_path / "out", DemoConfig(train_captions=4, train_quadruples=1), progress=False)
    assert not (tmp_path / "out").exists()  # checked before anything is written
    with pytest.raises(ValueError, match="demo.val_quadruples"):
        assign_units(DemoConfig(val_quadruples=700, test_quadruples=600))


# ---- pixels --------------------------------------------------------------------------
def _object_track(frames):
    """Per frame: centroid (x, y), mean colour, fill ratio of the bounding box (or None)."""
    background = np.median(frames.reshape(-1, 3), axis=0)
    out = []
    for frame in frames.astype(float):
        mask = np.abs(frame - background).sum(-1) > 80
        if mask.sum() < 20:
            out.append(None)
            continue
        ys, xs = np.nonzero(mask)
        box = (np.ptp(xs) + 1) * (np.ptp(ys) + 1)
        out.append(((xs.mean(), ys.mean()), frame[mask].mean(0), mask.sum() / box))
    return out


def _nearest_colour(rgb):
    return min(COLOURS, key=lambda c: np.sum((np.array(COLOURS[c]) - rgb) ** 2))


@pytest.mark.parametrize("split", SPLITS)
def test_pixels_show_the_two_events_in_order(tiny_demo_root, split):
    fill = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
    axis = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}
    for item in items_of(tiny_demo_root, split):
        _, frames = decode(tiny_demo_root / split / "videos" / item["video"])
        track = _object_track(frames)
        assert all(t is not None for t in track), f"{item['video_id']}: a frame shows no object"
        for (colour, shape, motion), half in zip(item["events"], (track[1:15], track[17:31]), strict=True):
            i, sign = axis[motion]
            start, end = half[0][0], half[-1][0]
            assert sign * (end[i] - start[i]) > 30, f"{item['video_id']}: not moving {motion}"
            assert abs(end[1 - i] - start[1 - i]) < 3, f"{item['video_id']}: drifts off its axis"
            assert _nearest_colour(np.mean([t[1] for t in half], 0)) == colour
            ratio = np.mean([t[2] for t in half])
            assert min(fill, key=lambda s: abs(fill[s] - ratio)) == shape, (item["video_id"], ratio)


# ---- determinism and reruns ----------------------------------------------------------
SMALL = {"train_quadruples": 1, "val_quadruples": 1, "test_quadruples": 1, "workers": 1}


def test_same_seed_same_dataset_any_worker_count(tmp_path):
    one = generate_demo(tmp_path / "a", DemoConfig(**SMALL, seed=3), progress=False)
    generate_demo(tmp_path / "b", DemoConfig(**{**SMALL, "workers": 2}, seed=3), progress=False)
    generate_demo(tmp_path / "c", DemoConfig(**SMALL, seed=4), progress=False)
    assert one["written"] == 12
    for split in SPLITS:
        a, b, c = (items_of(tmp_path / d, split) for d in "abc")
        assert a == b and a != c
        for item in a:
            fa = decode(tmp_path / "a" / split / "videos" / item["video"])[1]
            fb = decode(tmp_path / "b" / split / "videos" / item["video"])[1]
            assert np.array_equal(fa, fb)


def test_rerun_skips_repairs_and_regenerates(tmp_path, tiny_demo_root, tiny_demo_config):
    root = tmp_path / "demo"
    shutil.copytree(tiny_demo_root, root)
    cfg = tiny_demo_config
    assert generate_demo(root, cfg, progress=False)["written"] == 0
    victim = root / "val" / "videos" / "val_0001_2.mp4"
    victim.unlink()
    before = (root / "test" / "videos" / "test_0000_0.mp4").stat().st_mtime_ns
    assert generate_demo(root, cfg, progress=False)["written"] == 1
    assert victim.is_file()
    assert (root / "test" / "videos" / "test_0000_0.mp4").stat().st_mtime_ns == before
    # Other params: everything is rewritten and clips no longer planned disappear.
    summary = generate_demo(root, cfg.model_copy(update={"val_quadruples": 1}), progress=False)
    assert summary["written"] == 20
    assert len(list((root / "val" / "videos").iterdir())) == 4
    assert json.loads((root / "dataset.json").read_text())["params"]["val_quadruples"] == 1


def test_refuses_to_overwrite_another_dataset(tmp_path):
    split = tmp_path / "ds" / "train"
    (split / "videos").mkdir(parents=True)
    original = json.dumps([{"video_id": "v1", "captions": ["a caption"]}])
    (split / "annotations.json").write_text(original)
    with pytest.raises(ValueError, match="not made by the demo generator"):
        generate_demo(tmp_path / "ds", DemoConfig(**SMALL), progress=False)
    assert (split / "annotations.json").read_text() == original


def test_cli_demo_data(tmp_path, capsys):
    from tempstop_pipelines.cli import main

    out = tmp_path / "cli_demo"
    sets = [f"demo.{k}={v}" for k, v in SMALL.items()]
    rc = main(["demo-data", "--out", str(out), "--no-progress", *sum((["--set", s] for s in sets), [])])
    assert rc == 0
    assert "train: 4 clips" in capsys.readouterr().out
    assert len(items_of(out, "test")) == 4
