"""The installed packages: a project-specific top-level name, every subpackage listed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_installed_under_a_project_name():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = setup["package-dir"]
    assert dirs == {"tempstop": "src/tempstop", "tempstop_pipelines": "pipelines"}
    found = set()
    for name, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    data = set(setup["package-data"])  # folders of data files (the search page, model configs)
    assert set(setup["packages"]) == found | data
    assert "pipelines" not in setup["packages"]  # a generic name that collides with other projects


def test_the_library_needs_no_pipeline_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for name in ("mlflow", "dvc", "prefect", "tensorboard", "matplotlib", "fastapi"):
        assert name not in core, name
        assert any(d.startswith(name) for d in project["optional-dependencies"]["pipeline"]), name
    assert project["scripts"]["tempstop"] == "tempstop_pipelines.cli:main"


@pytest.mark.slow
def test_the_wheel_ships_the_data_files_without_setuptools_warnings(tmp_path):
    # Built from a copy (setuptools writes build/ and *.egg-info into the source tree) with this
    # environment's setuptools (no build isolation): nothing is downloaded.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in ("src", "pipelines"):
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "BuildBackendWarning" not in build.stderr + build.stdout
    (wheel,) = tmp_path.glob("tempstop-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "tempstop_pipelines/serve/static/index.html" in names
    assert "tempstop/model_configs/tempstop-tiny.json" in names
