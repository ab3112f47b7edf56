"""The index follows the registry, end to end: a service serves the collection embedded by the
champion; `tempstop promote` moves champion to a better version and emits
`tempstop.champion.moved`; the `reindex-on-promotion` deployment's trigger starts the re-index
flow on a real process worker; the collection is embedded with the new version and CURRENT is
switched; the running service swaps to it while queries keep succeeding."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from servers import querying, serving

from tempstop_pipelines.serve.app import create_app
from tempstop_pipelines.serve.engine import EngineHolder, load_engine

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BIN = Path(sys.executable).parent
POOL = "gpu-pool"


def _register(project: Path, seed: int, score: float) -> str:
    """A random tiny model (4 frames) registered as a new version with validation R@1 ``score``."""
    from tempstop.config import UnifiedModelConfig
    from tempstop.inference.checkpoint import save_checkpoint
    from tempstop.model import create_unified_model
    from tempstop_pipelines.tracking.runs import open_tracker

    cfg = UnifiedModelConfig().with_overrides({"model.frames": 4})
    torch.manual_seed(seed)
    model = create_unified_model(cfg)
    path = save_checkpoint(project / f"model{seed}.pth", {"config": cfg.to_dict(), "model": model.state_dict(),
                                                          "epoch": 1, "step": 1, "phase": "test", "metrics": {}})  # fmt: skip
    with open_tracker(cfg, job="train", run_name=f"seed{seed}") as tracker:
        return tracker.register_checkpoint(path, {"val_t2v_R1": score})


def test_promotion_reindexes_and_the_service_swaps(tmp_path, helpers, prefect_tools, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
    from media import make_clip

    from tempstop.config import UnifiedModelConfig
    from tempstop_pipelines import cli
    from tempstop_pipelines.stages.promote import promote

    pt = prefect_tools
    project = helpers.copy_project(tmp_path / "project")
    monkeypatch.chdir(project)
    tracking = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    for i, n in enumerate((8, 12, 16)):
        make_clip(project / "videos" / f"clip{i}.mp4", n=n)
    first, second = _register(project, 1, 10.0), _register(project, 2, 20.0)
    assert promote(UnifiedModelConfig(), version=first)["champion"] == first
    index = project / "outputs" / "serving"  # the reindex-on-promotion deployment's root
    assert cli.main(["reindex", "--index", str(index), "--videos", str(project / "videos"), "--checkpoint",
                     "models:/tempstop-unified@champion", "--no-progress"]) == 0  # fmt: skip
    assert (index / "CURRENT").read_text().strip() == f"v{first}"

    app = create_app(EngineHolder(index, load_engine(index)), watch_interval_s=0.3)
    env = {**pt.env(tmp_path, project, helpers.free_port()), "MLFLOW_TRACKING_URI": tracking}
    prefect = worker = None
    with serving(app) as url:
        assert httpx.get(f"{url}/health").json()["model"]["version"] == first
        try:
            prefect = pt.start_server(env, tmp_path / "server.log")
            pt.cli(["work-pool", "create", POOL, "--type", "process"], env, project)
            pt.cli(["--no-prompt", "deploy", "--name", "reindex-on-promotion"], env, project)
            worker = pt.start_process([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
                                      env, tmp_path / "worker.log")  # fmt: skip
            statuses = _promote_while_querying(url, second, env, project, worker, pt, tmp_path)
        finally:
            for proc in (worker, prefect):
                pt.stop_process(proc)
    assert (index / "CURRENT").read_text().strip() == f"v{second}"
    assert (index / f"v{second}" / "manifest.json").is_file()
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    runs = [line for line in pt.tail(tmp_path / "worker.log", 20000).splitlines() if "tempstop-reindex" in line]
    assert runs, "the worker never ran the re-index flow"


def _promote_while_querying(url: str, second: str, env: dict, project: Path, worker, pt, tmp_path: Path) -> list[int]:
    """Promote ``second`` while two clients query; wait for the service to answer with it."""
    with querying(url, "a grey clip", clients=2) as statuses:
        promoted = subprocess.run([str(BIN / "tempstop"), "promote", "--version", second], env=env, cwd=project,
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert "promoted to champion" in promoted.stdout and "tempstop.champion.moved sent" in promoted.stdout
        deadline = time.monotonic() + 300
        while httpx.get(f"{url}/health").json()["model"]["version"] != second:
            assert worker.poll() is None, pt.tail(tmp_path / "worker.log")
            assert time.monotonic() < deadline, (
                f"not swapped; worker:\n{pt.tail(tmp_path / 'worker.log')}\nserver:\n{pt.tail(tmp_path / 'server.log')}"
            )
            time.sleep(1)
        time.sleep(0.5)
    return statuses
