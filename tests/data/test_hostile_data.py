"""Hostile and broken input to the data commands: one line naming the file or item, a non-zero
exit, no traceback, nothing written half. Raw splits get the annotation checks of validate."""

from __future__ import annotations

import json

import pytest
from media import make_split, write_annotations

from tempstop.config import ExtractConfig, ValidateConfig
from tempstop.data.annotations import AnnotationError, read_raw
from tempstop.data.extract import ExtractError, extract_split
from tempstop.data.validate import check_annotations
from tempstop_pipelines.cli import main as cli

NESTED = "[" * 100_000 + "]" * 100_000  # json.loads gives up with a RecursionError


def error_lines(err: str, command: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith(f"tempstop {command}")]


def test_deeply_nested_annotations_are_one_problem(tmp_path):
    (tmp_path / "annotations.json").write_text(NESTED)
    with pytest.raises(AnnotationError, match=r"annotations.json: nested too deeply"):
        read_raw(tmp_path / "annotations.json")
    (problem,) = check_annotations(tmp_path, ValidateConfig())
    assert problem["check"] == "annotations_file" and "nested too deeply" in problem["reason"]


def test_validate_and_extract_name_a_nested_file(tmp_path, capsys):
    split = tmp_path / "data" / "train"
    make_split(split, count=1)
    (split / "annotations.json").write_text(NESTED)
    assert (
        cli(
            [
                "validate",
                "--data",
                str(tmp_path / "data"),
                "--report",
                str(tmp_path / "r.json"),
                "--no-progress",
            ]
        )
        == 1
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert "nested too deeply" in report["problems"][0]["reason"]
    capsys.readouterr()
    assert (
        cli(["extract", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "f"), "--no-progress"]) == 2
    )
    (line,) = error_lines(capsys.readouterr().err, "extract")
    assert str(split / "annotations.json") in line and "nested too deeply" in line
    assert not (tmp_path / "f" / "train" / "index.json").exists()


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"video_id": "v0", "captions": ["word " * 200_000]}, "caption 0 has 200000 words"),  # 1 MB
        ({"video_id": "v0", "captions": ["a clip"] * 100_000}, "100000 captions (allowed at most 1000)"),
        ({"video_id": "v0", "captions": "not a list"}, "'captions' must be a list of strings"),
        ({"video_id": "v0", "video": "../../etc/passwd", "captions": ["x"]}, "path leaves the split folder"),
    ],
)
def test_extract_refuses_what_validate_flags_naming_it(tmp_path, item, reason):
    split = tmp_path / "train"
    make_split(split, count=2)
    write_annotations(split, [item, {"video_id": "v1", "captions": ["fine"]}])
    with pytest.raises(ExtractError, match="1 annotation error") as err:
        extract_split(split, tmp_path / "store", ExtractConfig(size=16, workers=1), 2, progress=False,
                      checks=ValidateConfig())  # fmt: skip
    assert f"item 0 (video_id v0): {reason}"[:60] in str(err.value).replace("\n", " ")
    assert not (tmp_path / "store" / "index.json").exists()


def test_extract_names_every_video_that_failed(tmp_path, capsys):
    root = tmp_path / "data"
    items = make_split(root / "train", count=2)
    (root / "train" / "videos" / "broken.mp4").write_text("not a video")
    write_annotations(root / "train", [*items, {"video_id": "broken", "captions": ["x"]},
                                       {"video_id": "gone", "captions": ["y"]}])  # fmt: skip
    params = tmp_path / "params.yaml"
    params.write_text("extract: {size: 16, workers: 1}\nmodel: {frames: 2}\n")
    assert (
        cli(
            [
                "extract",
                "--data",
                str(root),
                "--out",
                str(tmp_path / "f"),
                "--no-progress",
                "--params",
                str(params),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "2 video(s) failed" in out
    (broken,) = [line for line in out.splitlines() if "failed: broken (broken.mp4): " in line]
    assert "cannot open video" in broken and "failed: gone (gone.mp4): " in out


def test_extraction_removes_temporaries_of_a_killed_run(tmp_path):
    split = tmp_path / "train"
    make_split(split, count=1)
    store = tmp_path / "store"
    (store / "arrays").mkdir(parents=True)
    (store / ".index.json.a1b2c3.tmp").write_text("{")  # what SIGKILL leaves of atomic writes
    (store / "arrays" / ".v0.npy.4242.tmp").write_bytes(b"\0" * 100)
    extract_split(split, store, ExtractConfig(size=16, workers=1), 2, progress=False)
    assert not list(store.rglob("*.tmp"))
