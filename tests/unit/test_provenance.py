"""The code's commit as MLflow runs record it (``git_commit`` tag)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

provenance = pytest.importorskip("tempstop_pipelines.tracking.provenance")

ROOT = Path(__file__).resolve().parents[2]


def test_a_checkout_in_the_working_directory_names_the_commit(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "a.txt").write_text("a")
    subprocess.run([*git, "add", "a.txt"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "a"], cwd=tmp_path, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    ).stdout.strip()
    assert provenance.git_commit(tmp_path) == head
    (tmp_path / "a.txt").write_text("b")
    assert provenance.git_commit(tmp_path) == f"{head}-dirty"


def test_outside_a_checkout_the_commit_is_that_of_the_running_code(tmp_path):
    # make smoke runs the flow in a scratch folder; its runs still say which code ran.
    if not Path(provenance.__file__).resolve().is_relative_to(ROOT):
        pytest.skip("tempstop_pipelines is not installed from this checkout (editable)")
    code = provenance.git_commit(ROOT)
    if code == "unknown":
        pytest.skip("this checkout is not a git repository")
    assert provenance.git_commit(tmp_path) == code
