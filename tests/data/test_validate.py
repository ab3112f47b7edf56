"""`tempstop validate` on a split with planted defects: each is reported against its video."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from media import make_clip, sleepy_probe, truncate, write_annotations

from tempstop_pipelines.cli import main as cli
from tempstop.config import ValidateConfig
from tempstop.data.validate import validate_split

GOOD = ["v0", "v1", "v2"]


def _items():
    """Three good items, then one per defect (video_id -> what must be reported)."""
    items = [{"video_id": v, "captions": [f"a clip called {v}", "second caption"]} for v in GOOD]
    items += [
        {"video_id": "truncated", "captions": ["cut in half"]},
        {"video_id": "zerobyte", "captions": ["empty file"]},
        {"video_id": "textfile", "captions": ["not a video"]},
        {"video_id": "missing", "captions": ["no file at all"]},
        {"video_id": "blank", "video": "v0.mp4", "captions": ["   "]},
        {"video_id": "v1", "video": "v1.mp4", "captions": ["the same id again"]},
        {"video_id": "numcap", "video": "v2.mp4", "captions": [42]},
        {"video_id": "escape", "video": "../outside.mp4", "captions": ["leaves the split"]},
        {
            "video_id": "wordy",
            "video": "v2.mp4",
            "captions": ["ok", "one two three four five six seven eight"],
        },
    ]
    return items


# video_id -> (check, substring of the reason)
EXPECTED = {
    "truncated": ("probe", "cannot open video"),
    "zerobyte": ("probe", "empty file"),
    "textfile": ("probe", "cannot open video"),
    "missing": ("file_exists", "video file not found"),
    "blank": ("caption_blank", "caption 0 is empty or blank"),
    "v1": ("video_id_unique", "duplicate video_id (first used by item 1)"),
    "numcap": ("caption_type", "caption 0 is not a string (got int)"),
    "escape": ("video_path", "path leaves the split folder"),
    "wordy": ("caption_words", "caption 1 has 8 words (allowed 1..6)"),
}


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def defect_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("defects")
    videos = root / "train" / "videos"
    for vid in GOOD:
        make_clip(videos / f"{vid}.mp4", n=8)
    make_clip(videos / "truncated.mp4", n=24)
    truncate(videos / "truncated.mp4", 0.5)
    (videos / "zerobyte.mp4").write_bytes(b"")
    (videos / "textfile.mp4").write_text("this is not an mp4 file\n")
    (root / "train" / "outside.mp4").write_bytes((videos / "v0.mp4").read_bytes())
    write_annotations(root / "train", _items())
    (root / "params.yaml").write_text("validate: {max_caption_words: 6, workers: 2, timeout_s: 60}\n")
    return root


@pytest.fixture(scope="module")
def report(defect_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports") / "validate.json"
    before = _tree_digest(defect_root)
    rc = cli(["validate", "--data", str(defect_root), "--report", str(out), "--no-progress",
              "--params", str(defect_root / "params.yaml")])  # fmt: skip
    assert _tree_digest(defect_root) == before  # source data only read
    return rc, json.loads(out.read_text())


def test_exit_status_is_nonzero(report):
    rc, rep = report
    assert rc == 1 and rep["ok"] is False
    assert rep["splits"]["train"]["items"] == len(_items())


@pytest.mark.parametrize("video_id", sorted(EXPECTED))
def test_each_defect_is_named(report, video_id):
    _, rep = report
    check, reason = EXPECTED[video_id]
    hits = [p for p in rep["problems"] if p["video_id"] == video_id and p["check"] == check]
    assert hits, f"no {check} problem for {video_id}: {rep['problems']}"
    assert reason in hits[0]["reason"] and hits[0]["severity"] == "error"
    assert hits[0]["split"] == "train" and hits[0]["file"]


def test_no_false_alarms(report):
    _, rep = report
    flagged = {(p["video_id"], p["row"]) for p in rep["problems"]}
    assert not any(row in (0, 1, 2) for _, row in flagged), rep["problems"]  # the good items
    assert len(rep["problems"]) == len(EXPECTED)  # one problem per defect, no double reports


def test_problem_files_point_where_to_look(report, defect_root):
    _, rep = report
    by_id = {p["video_id"]: p for p in rep["problems"]}
    assert by_id["truncated"]["file"].endswith("videos/truncated.mp4")
    assert by_id["blank"]["file"].endswith("annotations.json")


def test_drop_invalid_writes_clean_file_and_keeps_source(defect_root, tmp_path):
    source = defect_root / "train" / "annotations.json"
    before = source.read_bytes()
    rc = cli(["validate", "--data", str(defect_root), "--report", str(tmp_path / "r.json"), "--drop-invalid",
              "--no-progress", "--params", str(defect_root / "params.yaml")])  # fmt: skip
    assert rc == 0
    assert source.read_bytes() == before
    clean = json.loads((tmp_path / "train.annotations.clean.json").read_text())
    assert [c["video_id"] for c in clean] == ["v0", "v1", "v2", "wordy"]
    assert clean[3]["captions"] == ["ok"]  # only the over-long caption was removed
    assert clean[0] == _items()[0]  # kept items are unchanged


@pytest.mark.parametrize(
    "content,reason",
    [('[{"video_id": "a", ', "malformed JSON"), ('{"video_id": "a"}', "top level must be a JSON list"),
     ("[]", "holds no items")],
)  # fmt: skip
def test_whole_file_problem_names_the_file(tmp_path, content, reason):
    split = tmp_path / "data" / "val"
    (split / "videos").mkdir(parents=True)
    (split / "annotations.json").write_text(content)
    out = tmp_path / "r.json"
    params = tmp_path / "params.yaml"  # not the repository's params.yaml
    params.write_text("validate: {workers: 1}\n")
    args = [
        "validate",
        "--data",
        str(tmp_path / "data"),
        "--report",
        str(out),
        "--no-progress",
        "--params",
        str(params),
    ]
    assert cli(args) == 1
    (problem,) = json.loads(out.read_text())["problems"]
    assert problem["video_id"] is None and problem["file"] == str(split / "annotations.json")
    assert reason in problem["reason"] and problem["split"] == "val"
    # Nothing valid remains: --drop-invalid fails too.
    assert cli([*args, "--drop-invalid"]) == 1


def test_hanging_probe_times_out(tmp_path):
    split = tmp_path / "train"
    for vid in ("a", "b"):
        make_clip(split / "videos" / f"{vid}.mp4", n=4)
    write_annotations(split, [{"video_id": v, "captions": ["a caption"]} for v in ("a", "b")])
    result = validate_split(
        split, ValidateConfig(timeout_s=0.5, workers=2), probe_fn=sleepy_probe, progress=False
    )
    assert not result.ok
    assert sorted(p["video_id"] for p in result.problems) == ["a", "b"]
    assert all("probe timed out after 0.5 s" in p["reason"] for p in result.problems)
    assert result.timings["probe_s"] < 30


def test_clean_split_passes_and_reports_timings(tmp_path):
    split = tmp_path / "test"
    make_clip(split / "videos" / "a.mp4", n=6, fps=25)
    write_annotations(split, [{"video_id": "a", "captions": ["fine"], "timestamps": [[0.0, 9.0]]}])
    result = validate_split(split, ValidateConfig(workers=1), progress=False)
    assert (
        result.ok
        and result.problems == []
        and result.clean_items() == json.loads((split / "annotations.json").read_text())
    )
    assert {"gx_validate_s", "probe_s"} <= set(result.timings)


def test_segment_after_end_is_a_warning(tmp_path):
    split = tmp_path / "test"
    make_clip(split / "videos" / "a.mp4", n=8, fps=8)  # 1 s
    write_annotations(split, [{"video_id": "a", "captions": ["x", "y"], "timestamps": [[0, 1], [5, 6]]}])
    result = validate_split(split, ValidateConfig(workers=1), progress=False)
    assert result.ok
    (warning,) = result.warnings
    assert warning["caption_index"] == 1 and "starts after the video ends" in warning["reason"]


def test_frame_rate_and_size_limits(tmp_path):
    split = tmp_path / "test"
    make_clip(split / "videos" / "a.mp4", n=4, height=32, width=40, fps=8)
    write_annotations(split, [{"video_id": "a", "captions": ["x"]}])
    result = validate_split(split, ValidateConfig(workers=1, min_fps=10, min_side=36), progress=False)
    assert sorted(p["check"] for p in result.problems) == ["fps", "short_side"]
    assert any("frame size 40x32" in p["reason"] for p in result.problems)


def test_split_folder_instead_of_root_is_explained(defect_root, capsys):
    params = str(defect_root / "params.yaml")
    assert cli(["validate", "--data", str(defect_root / "train"), "--no-progress", "--params", params]) == 2
    assert "pass its parent" in capsys.readouterr().err


def test_copy_of_defects_is_independent(defect_root, tmp_path):
    # The module fixture is shared; a test that edits data works on a copy.
    copy = tmp_path / "copy"
    shutil.copytree(defect_root, copy)
    write_annotations(copy / "train", [{"video_id": "v0", "captions": ["only the good one"]}])
    assert validate_split(copy / "train", ValidateConfig(workers=1), progress=False).ok
