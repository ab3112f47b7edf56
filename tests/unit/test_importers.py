"""Official-format importers: tiny fake MSR-VTT / DiDeMo / ActivityNet / VATEX trees."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from tempstop.data.annotations import find_splits, read_annotations
from tempstop.data.importers import DatasetImportError, import_dataset


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_csv(path, header, rows):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def touch_videos(root, names):
    """Empty stand-ins: the importer never decodes, it only links by name."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x00fake video " + name.encode())


def snapshot(root):
    """Path -> (size, mtime, md5) of every file, to prove sources are untouched."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            st = os.stat(p)
            out[p] = (st.st_size, st.st_mtime_ns, hashlib.md5(Path(p).read_bytes()).hexdigest())
    return out


def by_id(split_dir):
    return {r.video_id: r for r in read_annotations(split_dir)}


def check_links(split_dir, sources):
    """Every video is a symlink into the sources (nothing copied) that resolves."""
    for rec in read_annotations(split_dir):
        link = split_dir / "videos" / rec.video
        assert link.is_symlink(), link
        assert link.resolve().is_file()
        assert sources.resolve() in link.resolve().parents


# ---- MSR-VTT -------------------------------------------------------------------------
@pytest.fixture
def msrvtt(tmp_path):
    src = tmp_path / "src"
    ann, vids = src / "ann", src / "videos"
    sentences = {"video0": 3, "video1": 2, "video2": 1, "video3": 2, "video4": 1, "video9": 1}
    write_json(
        ann / "MSRVTT_data.json",
        {
            "videos": [{"video_id": v} for v in sentences],
            "sentences": [
                {"video_id": v, "caption": f"{v} caption {k} ", "sen_id": i}
                for i, (v, n) in enumerate(sentences.items())
                for k in range(n)
            ],
        },
    )
    write_csv(ann / "MSRVTT_train.9k.csv", ["video_id"], [["video0"], ["video1"], ["video3"]])
    write_csv(
        ann / "MSRVTT_JSFUSION_test.csv",
        ["key", "vid_key", "video_id", "sentence"],
        [["ret0", "msr7579", "video4", "a test sentence"], ["ret1", "msr7580", "video2", "another one"]],
    )
    touch_videos(vids, ["all/video0.mp4", "all/video1.mkv", "video2.webm", "video4.avi", "notes.txt"])
    return src


def test_msrvtt_import(msrvtt, tmp_path, caplog):
    before = snapshot(msrvtt)
    out = tmp_path / "native"
    with caplog.at_level(logging.WARNING):
        result = import_dataset("msrvtt", msrvtt / "ann", msrvtt / "videos", out, progress=False)
    assert find_splits(out) == ["test", "train"]
    train, test = by_id(out / "train"), by_id(out / "test")
    assert sorted(train) == ["video0", "video1"]
    assert train["video0"].captions == [f"video0 caption {k}" for k in range(3)]  # all, stripped
    assert train["video1"].video == "video1.mkv"
    assert {v: r.captions for v, r in test.items()} == {
        "video4": ["a test sentence"],
        "video2": ["another one"],
    }
    assert result["splits"]["train"] == {
        "videos": 2,
        "captions": 5,
        "missing": 1,
        "missing_examples": ["video3"],
    }
    assert "video3" in caplog.text and "not found" in caplog.text
    for split in ("train", "test"):
        check_links(out / split, msrvtt / "videos")
    marker = json.loads((out / "dataset.json").read_text())
    assert marker["datatype"] == "msrvtt" and marker["source"]["videos"] == str(msrvtt / "videos")
    assert snapshot(msrvtt) == before


def test_reimport_updates_links(msrvtt, tmp_path):
    out = tmp_path / "native"
    import_dataset("msrvtt", msrvtt / "ann", msrvtt / "videos", out, progress=False)
    (msrvtt / "videos" / "all" / "video1.mkv").unlink()  # a source disappears
    result = import_dataset("msrvtt", msrvtt / "ann", msrvtt / "videos", out, progress=False)
    assert result["splits"]["train"]["missing"] == 2
    assert sorted(p.name for p in (out / "train" / "videos").iterdir()) == ["video0.mp4"]


def test_msrvtt_malformed_inputs_name_file_and_entry(msrvtt, tmp_path):
    ann = msrvtt / "ann"
    write_csv(ann / "MSRVTT_JSFUSION_test.csv", ["key", "video"], [["ret0", "video4"]])
    with pytest.raises(DatasetImportError, match=r"MSRVTT_JSFUSION_test\.csv: missing column"):
        import_dataset("msrvtt", ann, msrvtt / "videos", tmp_path / "o", progress=False)
    write_json(ann / "MSRVTT_data.json", {"sentences": [{"video_id": "video0", "caption": 7}]})
    with pytest.raises(DatasetImportError, match=r"MSRVTT_data\.json: sentences\[0\]: 'caption'"):
        import_dataset("msrvtt", ann, msrvtt / "videos", tmp_path / "o", progress=False)
    (ann / "MSRVTT_data.json").unlink()
    with pytest.raises(DatasetImportError, match=r"MSRVTT_data\.json: annotation file not found"):
        import_dataset("msrvtt", ann, msrvtt / "videos", tmp_path / "o", progress=False)


def test_no_video_found_at_all_is_an_error(msrvtt, tmp_path):
    empty = tmp_path / "empty_videos"
    empty.mkdir()
    with pytest.raises(DatasetImportError, match="none of the annotated videos"):
        import_dataset("msrvtt", msrvtt / "ann", empty, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_out_inside_the_sources_is_refused(msrvtt):
    with pytest.raises(DatasetImportError, match="source folder"):
        import_dataset("msrvtt", msrvtt / "ann", msrvtt / "videos", msrvtt / "videos" / "native")


# ---- DiDeMo --------------------------------------------------------------------------
def test_didemo_import(tmp_path):
    ann, vids, out = tmp_path / "ann", tmp_path / "videos", tmp_path / "native"
    moments = [
        {"video": "a@N00_1_x.mov", "times": [[0, 0], [0, 0], [1, 1], [0, 0]], "description": "dog runs", "annotation_id": 1},
        {"video": "b_2.mp4", "times": [[4, 5], [4, 5]], "description": "car stops", "annotation_id": 2},
        {"video": "a@N00_1_x.mov", "times": [[2, 3], [2, 3], [3, 3]], "description": "dog sits", "annotation_id": 3},
    ]  # fmt: skip
    write_json(ann / "train_data.json", moments)
    write_json(
        ann / "val_data.json", [{"video": "c_3", "times": [[1, 2]], "description": "x", "annotation_id": 9}]
    )
    touch_videos(vids, ["a@N00_1_x.mp4", "b_2.mp4"])  # converted files: .mov became .mp4
    before = snapshot(tmp_path)
    result = import_dataset("didemo", ann, vids, out, progress=False)
    assert find_splits(out) == ["train", "val"]  # no test_data.json: no test split
    train = by_id(out / "train")
    a = train["a@N00_1_x"]
    assert a.captions == ["dog runs", "dog sits"]
    assert a.timestamps == [[0.0, 5.0], [10.0, 20.0]]  # consensus segments, in seconds
    assert train["b_2"].timestamps == [[20.0, 30.0]]
    assert result["splits"]["val"]["missing"] == 1 and read_annotations(out / "val") == []
    check_links(out / "train", vids)
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(str(out))} == before

    write_json(
        ann / "train_data.json",
        [{"video": "b_2.mp4", "times": [[3, 1]], "description": "x", "annotation_id": 42}],
    )
    with pytest.raises(DatasetImportError, match=r"train_data\.json: entry 0 \(annotation_id=42\): 'times'"):
        import_dataset("didemo", ann, vids, out, progress=False)


# ---- ActivityNet Captions ------------------------------------------------------------
def test_activitynet_import(tmp_path):
    ann, vids, out = tmp_path / "ann", tmp_path / "videos", tmp_path / "native"
    write_json(
        ann / "train.json",
        {
            "v_abc": {
                "duration": 100.0,
                "timestamps": [[0, 10.5], [20, 120.0]],
                "sentences": [" A man walks.", "He sits. "],
            }
        },
    )
    val = {"v_def": {"duration": 30.0, "timestamps": [[1, 2]], "sentences": ["x"]}}
    val["v_ghi"] = val["v_def"]
    write_json(ann / "val_1.json", val)
    touch_videos(vids, ["abc.mp4", "v_def.webm"])  # with and without the "v_" prefix
    result = import_dataset("activitynet", ann, vids, out, progress=False)
    assert find_splits(out) == ["train", "val"]
    abc = by_id(out / "train")["v_abc"]
    assert abc.captions == ["A man walks.", "He sits."]
    assert abc.timestamps == [[0.0, 10.5], [20.0, 100.0]]  # clamped to the duration
    assert abc.extra["duration"] == 100.0 and abc.video == "v_abc.mp4"
    assert result["splits"]["val"] == {
        "videos": 1,
        "captions": 1,
        "missing": 1,
        "missing_examples": ["v_ghi"],
    }
    check_links(out / "val", vids)

    write_json(
        ann / "train.json", {"v_abc": {"duration": 9.0, "timestamps": [[0, 1]], "sentences": ["a", "b"]}}
    )
    with pytest.raises(DatasetImportError, match=r"train\.json: video 'v_abc': 'timestamps'"):
        import_dataset("activitynet", ann, vids, out, progress=False)


# ---- VATEX ---------------------------------------------------------------------------
def test_vatex_import(tmp_path):
    ann, vids, out = tmp_path / "ann", tmp_path / "videos", tmp_path / "native"
    caps = [f"caption {i}" for i in range(10)]
    write_json(
        ann / "vatex_training_v1.0.json",
        [
            {"videoID": "abc_000010_000020", "enCap": caps, "chCap": ["..."]},
            {"videoID": "x_y_000005_000015", "enCap": caps},
        ],
    )
    write_json(ann / "vatex_validation_v1.0.json", [{"videoID": "val_000001_000011", "enCap": caps[:3]}])
    touch_videos(vids, ["abc_000010_000020.mp4", "x_y.mkv", "val_000001_000011.mp4"])
    result = import_dataset("vatex", ann, vids, out, progress=False)
    assert find_splits(out) == ["train", "val"]
    train = by_id(out / "train")
    assert train["abc_000010_000020"].captions == caps
    assert train["x_y_000005_000015"].video == "x_y_000005_000015.mkv"  # found by YouTube id
    assert result["splits"]["val"]["captions"] == 3 and result["splits"]["train"]["missing"] == 0
    check_links(out / "train", vids)

    write_json(ann / "vatex_validation_v1.0.json", [{"videoID": "v1", "enCap": "not a list"}])
    with pytest.raises(DatasetImportError, match=r"vatex_validation_v1\.0\.json: entry 0 \(v1\): 'enCap'"):
        import_dataset("vatex", ann, vids, out, progress=False)


def test_missing_annotation_files_are_listed(tmp_path):
    (tmp_path / "ann").mkdir()
    (tmp_path / "videos").mkdir()
    with pytest.raises(DatasetImportError, match=r"train\.json"):
        import_dataset("activitynet", tmp_path / "ann", tmp_path / "videos", tmp_path / "o")
    with pytest.raises(DatasetImportError, match="unknown datatype"):
        import_dataset("kinetics", tmp_path / "ann", tmp_path / "videos", tmp_path / "o")


def test_cli_import_dataset(msrvtt, tmp_path, capsys):
    from tempstop_pipelines.cli import main

    out = tmp_path / "cli_out"
    argv = ["import-dataset", "--datatype", "msrvtt", "--annotations", str(msrvtt / "ann")]
    rc = main([*argv, "--videos", str(msrvtt / "videos"), "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "train: 2 videos, 5 captions" in printed and "1 missing videos skipped, e.g. video3" in printed
    assert main([*argv[:-1], str(tmp_path / "nope"), "--videos", str(msrvtt / "videos"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tempstop import-dataset: ") and err.endswith("annotations folder not found")


def test_msrvtt_val_carved_from_train(msrvtt, tmp_path):
    out = tmp_path / "native"
    import_dataset("msrvtt", msrvtt / "ann", msrvtt / "videos", out, progress=False, val_from_train=1)
    assert find_splits(out) == ["test", "train", "val"]
    train, val = by_id(out / "train"), by_id(out / "val")
    assert len(train) == 1 and len(val) == 1 and not set(train) & set(val)
    assert set(train) | set(val) == {"video0", "video1"}
    with pytest.raises(DatasetImportError, match="only 3 training videos"):
        import_dataset(
            "msrvtt", msrvtt / "ann", msrvtt / "videos", tmp_path / "o2", progress=False, val_from_train=3
        )
