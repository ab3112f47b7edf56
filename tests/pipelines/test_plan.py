"""dvc.yaml and the Prefect flow run the same commands; train-phase planning; plots."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from pipelines.flows.plan import SMOKE_OVERRIDES, Paths, override_args, pipeline_steps
from pipelines.stages.plots import history_rows, make_plots, recall_rows
from pipelines.stages.train_phase import plan
from tempstop.config import UnifiedModelConfig

ROOT = Path(__file__).resolve().parents[2]
TRAIN_PHASE_MODULE = "python -m pipelines.stages.train_phase"


def _dvc_commands() -> dict[str, list[str]]:
    """dvc.yaml's commands as DVC renders them (vars interpolated), without a lock file."""
    from dvc.parsing import DataResolver
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
        stages = DataResolver(repo, repo.root_dir, doc).resolve()["stages"]
    out = {}
    for name, stage in stages.items():
        cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
        out[name] = [shlex.split(c.replace(TRAIN_PHASE_MODULE, "tempstop train-phase")) for c in cmds]
    return out


def test_flow_runs_exactly_the_dvc_commands():
    dvc = _dvc_commands()
    steps = {
        s.name: s.argv
        for s in pipeline_steps(Paths.from_dvc_yaml(ROOT / "dvc.yaml"), "sequential", pass_through=True)
    }
    for name in ("demo_data", "validate", "extract_frames", "train_tempme", "train_stop"):
        assert dvc[name] == [["tempstop", *steps[name]]], name
    assert dvc["evaluate"] == [["tempstop", *steps["evaluate"]], ["tempstop", *steps["plots"]]]
    assert set(dvc) == {"demo_data", "validate", "extract_frames", "train_tempme", "train_stop", "evaluate"}


def test_dvc_stage_params_exist_and_tracking_is_not_a_dependency():
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in doc["stages"].items():
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                assert part in node, f"{name}: params.yaml has no {key}"
                node = node[part]
            assert not key.startswith("tracking"), name
    assert doc["stages"]["demo_data"]["params"] == ["demo"]
    assert doc["stages"]["extract_frames"]["params"] == ["extract"]


def test_joint_flow_skips_the_pass_through_stage():
    steps = pipeline_steps(Paths(), "joint", extra=["--set", "training.mode=joint"])
    names = [s.name for s in steps]
    assert "train_stop" not in names
    evaluate = next(s for s in steps if s.name == "evaluate")
    assert "outputs/tempme/best_model.pth" in evaluate.argv
    assert evaluate.argv[-2:] == ["--set", "training.mode=joint"]
    plots = next(s for s in steps if s.name == "plots")
    assert "--set" not in plots.argv  # plots reads no params
    assert next(s for s in steps if s.name == "extract_frames").retries > 0


def test_smoke_overrides_are_valid_params():
    cfg = UnifiedModelConfig.from_yaml(ROOT / "params.yaml").with_overrides(SMOKE_OVERRIDES)
    assert cfg.training.num_epochs == 1
    args = override_args("p.yaml", {"training.mode": "joint", "demo.seconds": 2.0})
    assert args == ["--params", "p.yaml", "--set", "training.mode=joint", "--set", "demo.seconds=2.0"]


@pytest.mark.parametrize(
    ("mode", "epochs", "tempme", "stop"),
    [
        ("sequential", 10, ("train", "tempme_only", 5), ("train", "stop_only", 5)),
        ("sequential", 1, ("train", "tempme_only", 1), ("pass", None, 0)),
        ("joint", 4, ("train", "joint", 4), ("pass", None, 0)),
        ("tempme_only", 4, ("train", "tempme_only", 4), ("pass", None, 0)),
        ("stop_only", 4, ("initial", None, 0), ("train", "stop_only", 4)),
    ],
)
def test_train_phase_plan(mode, epochs, tempme, stop):
    assert plan("tempme", mode, epochs, 0.5) == tempme
    assert plan("stop", mode, epochs, 0.5) == stop


def test_plots_write_pictures_and_dvc_data(tmp_path):
    evaluation = {
        "split": "test",
        "num_videos": 8,
        "t2v": {"R1": 25.0, "R5": 75.0, "R10": 100.0},
        "v2t": {"R1": 12.5},
        "recall_curve": {"t2v": [25.0, 50.0, 100.0], "v2t": [12.5, 50.0, 100.0]},
    }
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    first = [{"epoch": 1, "phase": "tempme_only", "train_loss": 2.0, "val_loss": 2.1, "val_t2v_R1": 10.0}]
    second = [{"epoch": 1, "phase": "stop_only", "train_loss": 1.5, "val_loss": 1.9, "val_t2v_R1": 20.0}]
    (tmp_path / "h1.json").write_text(json.dumps(first))
    (tmp_path / "h2.json").write_text(json.dumps(second))
    (tmp_path / "empty.json").write_text("[]")
    files = make_plots(
        tmp_path / "eval.json",
        [tmp_path / "h1.json", tmp_path / "h2.json", tmp_path / "empty.json"],
        tmp_path / "out",
    )
    for path in files.values():
        assert Path(path).stat().st_size > 0
    assert Path(files["recall_png"]).read_bytes()[:4] == b"\x89PNG"
    lines = Path(files["curves_csv"]).read_text().splitlines()
    assert lines[0].startswith("epoch,phase,")
    assert [line.split(",")[:2] for line in lines[1:]] == [["1", "tempme_only"], ["2", "stop_only"]]
    assert Path(files["recall_csv"]).read_text().splitlines()[:2] == ["k,t2v,v2t", "1,25.0,12.5"]


def test_recall_rows_fall_back_to_r_at_k_and_history_counts_on():
    rows = recall_rows(
        {"t2v": {"R1": 1.0, "R5": 5.0, "R10": 10.0}, "v2t": {"R1": 2.0, "R5": 6.0, "R10": 11.0}}
    )
    assert [r["k"] for r in rows] == [1, 5, 10]
    assert [r["epoch"] for r in history_rows([[{"epoch": 1}], [], [{"epoch": 1}, {"epoch": 2}]])] == [1, 2, 3]


def test_train_stages_read_every_training_key_except_the_paths_they_set():
    from tempstop.config import TrainingConfig

    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    set_by_stage = {"checkpoint_dir", "train_data_path", "val_data_path", "frames_cache"}
    for name in ("train_tempme", "train_stop"):
        listed = {
            p.removeprefix("training.") for p in doc["stages"][name]["params"] if p.startswith("training.")
        }
        assert listed == set(TrainingConfig.model_fields) - set_by_stage, name
        assert "model" in doc["stages"][name]["params"]


def test_several_gpus_relaunch_training_under_torchrun(monkeypatch):
    import sys

    from pipelines.stages import train_phase

    calls = []
    monkeypatch.setattr(train_phase.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert train_phase._run_train(["train", "--mode", "joint"], nproc=4) == 0
    assert calls == [
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
         "-m", "pipelines.cli", "train", "--mode", "joint"]
    ]  # fmt: skip
