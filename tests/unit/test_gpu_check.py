"""benchmarks/gpu_check.py (make gpu-check) runs where there is no GPU: it says so and exits 0,
and its --dry-run runs every step on the CPU (tiny backbone, gloo), so the script cannot rot
between GPU sessions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU here")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "no CUDA device" in run.stdout and not out.exists()


@pytest.mark.slow
def test_dry_run_measures_every_step(tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    for dtype in ("bf16", "fp16"):
        assert (
            result["amp_training"][dtype]["losses_finite"]
            and result["amp_training"][dtype]["train_videos_per_s"] > 0
        )
    assert result["amp_training"]["fp16"]["grad_scale"] is not None  # the GradScaler ran
    row = result["inference"]["tempstop-tiny"]
    assert row["unified"]["output_tokens"] < row["meanP"]["output_tokens"]
    assert result["ddp"]["same_keys"] and result["ddp"]["max_grad_difference"] < 1e-6
    assert all(v["ok"] and v["token_counts_match"] for v in result["parity"].values())
