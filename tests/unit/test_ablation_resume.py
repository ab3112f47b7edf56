"""benchmarks/ablation.py resumes from its committed JSON: a run finished in another checkout
(its work folder gone) is not trained again, enters the table, and a deliberate pause is taken
out of its wall time."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ablation.py"


def _ablation():
    spec = importlib.util.spec_from_file_location("ablation_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
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


def test_recorded_runs_are_done_and_aggregate_without_history(tmp_path):
    ab = _ablation()
    out = tmp_path / "ablation.json"
    runs = [_run("joint", 0, 90.0), _run("joint", 1, 80.0, val_t2v_R1_curve=[10.0, 50.0, 80.0])]
    out.write_text(json.dumps({"runs": runs}))
    recorded = ab.recorded_runs(out)
    assert set(recorded) == {("joint", 0), ("joint", 1)}
    row = ab.aggregate(list(recorded.values()))["joint"]
    assert row["seeds"] == [0, 1] and row["epochs"] == 3
    assert row["test_t2v_R1"]["mean"] == 85.0 and row["test_t2v_R1"]["n"] == 2
    assert "| joint | 2 | 85.0 ± 7.1 |" in ab.markdown({"joint": row})
    assert ab.recorded_runs(tmp_path / "missing.json") == {}
    ab.plot(list(recorded.values()), tmp_path)  # curves from the run that kept one
    assert (tmp_path / "ablation_curves.png").stat().st_size > 0


def test_a_recorded_pause_leaves_the_wall_time(tmp_path):
    ab = _ablation()
    work = tmp_path / "work"
    (work / "meanP_seed1").mkdir(parents=True)
    run = _run("meanP", 1, 20.0)
    (work / "meanP_seed1" / "result.json").write_text(json.dumps(run))
    results = [dict(run)]
    ab.record_pause(work, results, "meanP", 1, 300.0)
    assert ab.wall_seconds(results[0]) == 300.0
    assert json.loads((work / "meanP_seed1" / "result.json").read_text())["paused_seconds"] == 300.0
    assert ab.aggregate(results)["meanP"]["train_minutes"]["mean"] == 5.0
