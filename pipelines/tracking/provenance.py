"""Where a run's inputs came from, as MLflow tags: the code (git commit), the data (a hash
of the annotations and video sizes, DVC's hash from dvc.lock), the job and whoever started it.

    tags = run_tags(cfg, job="train", extra={"stage": "train_tempme", "pipeline_run": "..."})
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


def git_commit(cwd: str | Path = ".") -> str:
    """``HEAD`` of the working tree, with ``-dirty`` when tracked files are modified.

    Where ``cwd`` is not in a git checkout (``make smoke``'s scratch folder), the checkout this
    code runs from (an editable install) is the code's commit; ``unknown`` when neither is one.
    """
    return _head(Path(cwd)) or _head(Path(__file__).resolve().parent) or "unknown"


def _head(cwd: Path) -> str | None:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def data_version(cfg: Any) -> dict[str, str]:
    """Cheap, honest identifiers of the data a run saw.

    ``data_version`` hashes every split's annotations.json and the names and sizes of its
    videos (no video bytes are read). ``dvc_data_hash`` is DVC's own hash of the data folder
    when dvc.lock records it.
    """
    data = getattr(cfg, "data", None)
    if data is None:
        return {}
    root = Path(data.root)
    digest = hashlib.sha256()
    seen = False
    for split in (data.train_split, data.val_split, data.test_split):
        ann = root / split / "annotations.json"
        if ann.is_file():
            seen = True
            digest.update(split.encode() + b"\0" + ann.read_bytes())
            videos = root / split / "videos"
            if videos.is_dir():
                for f in sorted(videos.iterdir()):
                    digest.update(f"{f.name}:{f.stat().st_size}\n".encode())
    tags = {"data_root": str(root)}
    if seen:
        tags["data_version"] = digest.hexdigest()[:16]
    try:
        tags.update(locked_hashes({"dvc_data_hash": str(root)}))
    except Exception as exc:  # a malformed lock file must not stop training
        log.debug("could not read dvc.lock: %s", exc)
    return tags


def locked_hashes(paths: dict[str, str], lock: str | Path = "dvc.lock") -> dict[str, str]:
    """DVC's hash of each output path in ``paths`` ({tag: path}) as dvc.lock records it
    (none without a dvc.lock)."""
    lock = Path(lock)
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {}) if lock.is_file() else {}
    found = {}
    for tag, path in paths.items():
        for stage in stages.values():
            for out in stage.get("outs", []) or []:
                if Path(out.get("path", "")) == Path(path) and out.get("md5"):
                    found[tag] = out["md5"]
    return found


def run_tags(cfg: Any, job: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The tags every run carries, plus ``extra`` (the DVC stage and phase, the Prefect
    pipeline run: given by whoever starts the job)."""
    tags = {"job": job, "git_commit": git_commit()}
    training = getattr(cfg, "training", None)
    if training is not None:
        tags["mode"] = str(training.mode)
    model = getattr(cfg, "model", None)
    if model is not None:
        tags["variant"] = str(model.variant)
        tags["backbone"] = str(model.backbone)
    tags.update(data_version(cfg))
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags
