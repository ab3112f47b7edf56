"""benchmarks/ablation.py resumes from its committed JSON: a run finished in another checkout
(its work folder gone) is not trained again, enters the table, and a deliberate pause is taken
out of its wall time. Its runs get their whole config as an object; the report reads both
formats of a run's commit."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def ab(monkeypatch):
    """benchmarks/ablation.py as a module (its sibling ablation_report.py importable)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("ablation_script", BENCHMARKS / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def _run(variant: str, seed: int, r1: float, **extra) -> dict:
    split = {
        "t2v": {"R1": r1, "R5": 90.0, "MnR": 1.5},
        "v2t": {"R1": r1 - 1, "R5": 89.0, "MnR": 1.6},
        "recall_curve": {"t2v": [r1] + [90.0 + k for k in range(9)]},
        "errors": {"correct": r1, "same_quadruple": 100 - r1 - 5, "other_quadruple": 5.0},
    }
    return {"variant": variant, "seed": seed, "train_seconds": 600.0, "train_cpu_seconds": 590.0,
            "val": split, "test": split, "test_reversed": {"t2v": {"R1": 1.0}, "v2t": {"R1": 2.0}},
            "epochs": 3, **extra}  # fmt: skip


def test_recorded_runs_are_done_and_aggregate_without_history(ab, tmp_path):
    report = importlib.import_module("ablation_report")
    out = tmp_path / "ablation.json"
    runs = [_run("joint", 0, 90.0), _run("joint", 1, 80.0, val_t2v_R1_curve=[10.0, 50.0, 80.0])]
    out.write_text(json.dumps({"runs": runs}))
    recorded = report.recorded_runs(out)
    assert set(recorded) == {("joint", 0), ("joint", 1)}
    row = report.aggregate(list(recorded.values()))["joint"]
    assert row["seeds"] == [0, 1] and row["epochs"] == 3
    assert row["test_t2v_R1"]["mean"] == 85.0 and row["test_t2v_R1"]["n"] == 2
    assert "| joint | 2 | 85.0 ± 7.1 |" in report.markdown({"joint": row})
    assert report.recorded_runs(tmp_path / "missing.json") == {}
    report.plot(list(recorded.values()), tmp_path)  # curves from the run that kept one
    assert (tmp_path / "ablation_curves.png").stat().st_size > 0

    # A later sitting finds the recorded runs done, without their work folders.
    args = argparse.Namespace(out=str(out), work=str(tmp_path / "work"), seeds=[0, 1, 2], variants=["joint"])
    results, todo = ab.finished_runs(args)
    assert [r["seed"] for r in results] == [0, 1] and todo == [("joint", 2)]


def test_a_recorded_pause_leaves_the_wall_time(ab, tmp_path):
    report = importlib.import_module("ablation_report")
    work = tmp_path / "work"
    (work / "meanP_seed1").mkdir(parents=True)
    run = _run("meanP", 1, 20.0)
    (work / "meanP_seed1" / "result.json").write_text(json.dumps(run))
    results = [dict(run)]
    ab.record_pause(work, results, "meanP", 1, 300.0)
    assert report.wall_seconds(results[0]) == 300.0
    assert json.loads((work / "meanP_seed1" / "result.json").read_text())["paused_seconds"] == 300.0
    assert report.aggregate(results)["meanP"]["train_minutes"]["mean"] == 5.0


def test_a_run_gets_its_whole_config(ab, tmp_path):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"training": {"num_epochs": 7}}))
    args = argparse.Namespace(params=str(params), work=str(tmp_path / "work"), frames=str(tmp_path / "frames"),
                              epochs=None, threads=1)  # fmt: skip
    cfg = ab.job_config(ab.load_config(params), "meanP", 3, args)
    assert (cfg.training.mode, cfg.model.variant, cfg.training.seed) == ("joint", "meanP", 3)
    assert cfg.training.num_epochs == 7 and not cfg.tracking.enabled
    assert cfg.training.train_data_path == str(tmp_path / "frames" / "train")
    job = ab.Job("meanP", 3, cfg, tmp_path / "frames")
    assert job.out == tmp_path / "work" / "meanP_seed3"
    args.epochs = 2
    assert ab.job_config(ab.load_config(params), "sequential", 0, args).training.num_epochs == 2


def test_the_report_reads_both_commit_formats(ab):
    report = importlib.import_module("ablation_report")
    sha = "9125788788a0797b1b3e5fd5c51a0992f5c91ed4"
    runs = [{"commit": None}, {}, {"commit": sha}, {"commit": f"{sha}-dirty"}, {"commit": "unknown"}]
    assert [report.commit_of(r) for r in runs] == [
        (None, False), (None, False), (sha, False), (sha, True), (None, False)
    ]
    assert report.provenance(runs) == (
        "code: 1 commit(s) 9125788788; 1 run(s) with uncommitted changes, 3 without a recorded commit"
    )
