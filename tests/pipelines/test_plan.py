"""dvc.yaml and the Prefect flow make the same typed stage calls; train-phase planning; torchrun launch; plots."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from tempstop.config import ProjectConfig, TrainingConfig
from tempstop.training.state import Phase
from tempstop_pipelines.cli import parse_job
from tempstop_pipelines.flows.plan import SMOKE_OVERRIDES, Paths, PlanError, dvc_set_args, pipeline_steps
from tempstop_pipelines.stages.plots import history_rows, make_plots, recall_rows
from tempstop_pipelines.stages.train_phase import stage_plan

ROOT = Path(__file__).resolve().parents[2]


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
        out[name] = [shlex.split(c) for c in cmds]
    return out


def test_flow_runs_exactly_the_dvc_commands():
    # Each dvc.yaml command, parsed by the CLI's own parser, is the typed call the flow makes.
    dvc = _dvc_commands()
    training = TrainingConfig(mode="sequential")
    steps = {s.name: s for s in pipeline_steps(Paths.from_dvc_yaml(ROOT / "dvc.yaml"), training, pass_through=True)}
    expected = {name: [name] for name in ("demo_data", "validate", "extract_frames", "train_tempme", "train_stop", "index")}
    expected["evaluate"] = ["evaluate", "plots"]
    assert set(dvc) == set(expected)
    for stage, names in expected.items():
        calls = [parse_job(argv[1:]) for argv in dvc[stage]]
        assert [argv[0] for argv in dvc[stage]] == ["tempstop"] * len(names), stage
        assert calls == [(steps[n].run, steps[n].job) for n in names], stage


def test_the_comparison_would_see_a_drift():
    # A dvc.yaml command with one more option than the flow's call is a different job.
    step = next(s for s in pipeline_steps(Paths.from_dvc_yaml(ROOT / "dvc.yaml"), TrainingConfig()) if s.name == "index")
    argv = ["index", "--checkpoint", step.job.checkpoint, "--data", step.job.data, "--out", step.job.out]
    assert parse_job(argv) == (step.run, step.job)
    run, job = parse_job([*argv, "--workers", "1"])
    assert run is step.run and job != step.job and job.workers == 1


def test_joint_flow_skips_the_pass_through_stage():
    paths = Paths.from_dvc_yaml(ROOT / "dvc.yaml")
    steps = pipeline_steps(paths, TrainingConfig(mode="joint"))
    names = [s.name for s in steps]
    assert "train_stop" not in names
    assert names[-3:] == ["plots", "index", "promote"]
    evaluate = next(s for s in steps if s.name == "evaluate")
    assert evaluate.job.checkpoint == f"{paths.tempme}/best_model.pth"
    assert next(s for s in steps if s.name == "index").job.checkpoint == evaluate.job.checkpoint
    assert next(s for s in steps if s.name == "extract_frames").retries > 0
    # A one-epoch sequential run has no STOP phase: nothing for train_stop to train.
    assert "train_stop" not in [s.name for s in pipeline_steps(paths, TrainingConfig(mode="sequential", num_epochs=1))]


def test_paths_come_from_dvc_yaml_only(tmp_path):
    (tmp_path / "dvc.yaml").write_text("vars:\n  - paths:\n      data: d\n")
    with pytest.raises(PlanError, match="vars.paths has no frames"):
        Paths.from_dvc_yaml(tmp_path / "dvc.yaml")
    with pytest.raises(PlanError, match="cannot read"):
        Paths.from_dvc_yaml(tmp_path / "missing.yaml")


def test_smoke_overrides_are_valid_params():
    cfg = ProjectConfig.from_yaml(ROOT / "params.yaml").with_overrides(SMOKE_OVERRIDES)
    assert cfg.training.num_epochs == 1
    assert dvc_set_args({"training.mode": "joint", "demo.seconds": 2.0}) == [
        "-S", "training.mode=joint", "-S", "demo.seconds=2.0"]  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "epochs", "tempme", "stop"),
    [
        ("sequential", 10, ("train", [("tempme_only", 0, 5)]), ("train", [("stop_only", 5, 10)])),
        ("sequential", 1, ("train", [("tempme_only", 0, 1)]), ("pass", [])),
        ("joint", 4, ("train", [("joint", 0, 4)]), ("pass", [])),
        ("tempme_only", 4, ("train", [("tempme_only", 0, 4)]), ("pass", [])),
        ("stop_only", 4, ("initial", []), ("train", [("stop_only", 0, 4)])),
    ],
)
def test_train_phase_plan(mode, epochs, tempme, stop):
    training = TrainingConfig(mode=mode, num_epochs=epochs, sequential_split=0.5)
    for stage, (action, phases) in (("tempme", tempme), ("stop", stop)):
        assert stage_plan(stage, training) == (action, [Phase(*p) for p in phases]), stage


def test_several_gpus_launch_torchrun_with_one_run_file(monkeypatch, tmp_path):
    import sys

    from tempstop_pipelines.training import run as training

    seen = []

    def call(cmd):  # what torchrun would start: every process reads the one file
        seen.append((cmd, training.TrainingRun.from_json(cmd[-1])))
        return 0

    monkeypatch.setattr(training.subprocess, "call", call)
    cfg = ProjectConfig().with_overrides(
        {"training.mode": "sequential", "training.checkpoint_dir": str(tmp_path)}
    )
    run = training.TrainingRun(cfg, phases=[Phase("stop_only", 8, 16)], init_from="a/best_model.pth",
                               tags={"stage": "train_stop"}, progress=False)  # fmt: skip
    assert training.launch(run, nproc=4) == 0
    ((cmd, passed),) = seen
    assert cmd[:6] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
        "-m",
    ]
    assert cmd[6:-1] == ["tempstop_pipelines.training.launch"]
    assert passed == run  # config, phases, weights to start from and tags: all in the file
    assert not Path(cmd[-1]).exists()  # a temporary


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
