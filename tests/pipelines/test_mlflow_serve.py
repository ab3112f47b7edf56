"""`make serve-mlflow`: MLflow's own model server over the registry's champion answers
/invocations with text embeddings, started by the Make target from a copy of the project
(the venv's bin is put on PATH by the target, not by the user)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

pytestmark = [pytest.mark.slow, pytest.mark.integration]
VENV = Path(sys.executable).parent.parent


def test_make_serve_mlflow_answers_invocations_with_text_embeddings(tmp_path, helpers, monkeypatch):
    from tempstop.config import UnifiedModelConfig
    from tempstop.inference.checkpoint import save_checkpoint
    from tempstop.model import create_unified_model
    from tempstop_pipelines.stages.promote import promote
    from tempstop_pipelines.tracking.runs import open_tracker

    project = helpers.copy_project(tmp_path / "project")
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = UnifiedModelConfig().with_overrides({"model.frames": 4})
    torch.manual_seed(0)
    model = create_unified_model(cfg).eval()
    ckpt = save_checkpoint(tmp_path / "best_model.pth", {"config": cfg.to_dict(), "model": model.state_dict(),
                                                          "epoch": 1, "step": 1, "phase": "test", "metrics": {}})  # fmt: skip
    with open_tracker(cfg, job="train", run_name="serve-test") as tracker:
        version = tracker.register_checkpoint(ckpt, {"val_t2v_R1": 12.0})
    assert promote(cfg, version=version)["champion"] == version

    port = helpers.free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": "/usr/bin:/bin"}  # the venv is not on PATH
    make = ["make", "-C", str(project), f"VENV={VENV}", "-o", f"{VENV}/.installed", "serve-mlflow",
            f"MLFLOW_SERVE_PORT={port}"]  # fmt: skip
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(make, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(1)
        texts = ["a red circle moves left, then a blue square moves up", "a green triangle moves down"]
        reply = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                              json={"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}})  # fmt: skip
        assert reply.ok, reply.text
        got = np.asarray(reply.json()["predictions"], dtype=np.float32)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    ids, mask = model.tokenize(texts)
    with torch.no_grad():
        expected = model.encode_text(ids, mask).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
