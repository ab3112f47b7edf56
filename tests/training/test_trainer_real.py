"""The trainer with the real model (tiny config) on the real tiny demo data.

- resume: 4 epochs straight == 2 epochs, stop, resume for 2 (bit-identical weights);
- DDP: 2 CPU processes (gloo, launched by torchrun) == 1 process on the same global batch;
- the user's guide's custom loss (a subclass overriding compute_training_loss) is what trains;
- raw split folders are extracted into the frame cache on first use (by the CLI).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tempstop.config import UnifiedModelConfig
from tempstop.inference.checkpoint import load_checkpoint
from tempstop.model import UnifiedTempMeSTOPModel, create_unified_model
from tempstop.training.rng import seed_everything
from tempstop.training.trainer import UnifiedModelTrainer

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tiny_stores(tiny_demo_root, tmp_path_factory):
    """Frame stores (4 frames of 64 px) of the tiny demo's splits: what the trainer reads."""
    from tempstop.config import ExtractConfig
    from tempstop.data.extract import extract_split

    root = tmp_path_factory.mktemp("stores")
    for split in ("train", "val", "test"):
        extract_split(tiny_demo_root / split, root / split, ExtractConfig(size=64, workers=1), 4, progress=False)
    return root


def tiny_config(stores: Path, cache: Path, out: Path, recipe: dict | None = None, **training) -> UnifiedModelConfig:
    """Tiny model, 4 frames of 64 px, no dropout, tracking off: seconds per epoch on CPU."""
    raw = {
        "data": {"datatype": "demo", "frames_cache": str(cache)},
        "extract": {"size": 64, "workers": 1},
        "demo_recipe": {"keep_quadruples": True, **(recipe or {})},
        "model": {
            "backbone": "tempstop-tiny",
            "frames": 4,
            "tempme": {"imgme_layers": [0, 1, 2], "clipme_layers": [3, 4], "clipme_k": [2, 2]},
            "stop": {"layers": 2, "dropout": 0.0},
        },
        "training": {
            "train_data_path": str(stores / "train"),
            "val_data_path": str(stores / "val"),
            "checkpoint_dir": str(out),
            "batch_size": 4,
            "eval_batch_size": 8,
            "num_epochs": 2,
            "save_every": 1,
            "tempme_lr": 1e-3,
            "stop_lr": 1e-3,
            "backbone_lr": 1e-4,
            **training,
        },
        "tracking": {"enabled": False},
    }
    return UnifiedModelConfig.from_dict(raw)


class _Stop(Exception):
    pass


class _StopAfter:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        if epoch == self.epoch:
            raise _Stop


def _same_weights(a: dict, b: dict, atol: float = 0.0) -> list[str]:
    """Names of the tensors that differ (by more than ``atol``), with the largest difference."""
    if atol == 0.0:
        return [k for k in a if not torch.equal(a[k], b[k])]
    return [
        f"{k} ({float((a[k] - b[k]).abs().max()):.2e})"
        for k in a
        if not torch.allclose(a[k], b[k], atol=atol, rtol=0)
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "recipe"),
    [
        ("joint", {}),
        ("sequential", {}),
        # batches composed from the model's own caption embeddings at every epoch start
        ("joint", {"hard_batches": 0.5, "hard_batch_source": "model", "keep_quadruples": True}),
    ],
)
def test_resume_gives_bit_identical_weights(tiny_stores, tmp_path, mode, recipe):
    cache = tmp_path / "cache"
    straight = UnifiedModelTrainer(
        tiny_config(tiny_stores, cache, tmp_path / "a", recipe, num_epochs=4, mode=mode), progress=False
    )
    straight.train()
    cfg_b = tiny_config(tiny_stores, cache, tmp_path / "b", recipe, num_epochs=4, mode=mode)
    with pytest.raises(_Stop):
        UnifiedModelTrainer(cfg_b, callbacks=[_StopAfter(2)], progress=False).train()
    resumed = UnifiedModelTrainer(cfg_b, resume=tmp_path / "b" / "checkpoint_epoch_2.pth", progress=False)
    resumed.train()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert _same_weights(a, b) == []
    ha = json.loads((tmp_path / "a" / "history.json").read_text())
    hb = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    assert [r["val_t2v_R1"] for r in ha] == [r["val_t2v_R1"] for r in hb]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Two epochs of one step each, small learning rates (see test_ddp_two_processes_match_one_process).
DDP_LRS = {"tempme_lr": 1e-4, "stop_lr": 1e-4, "backbone_lr": 1e-4, "num_epochs": 2, "save_every": 2}


@pytest.fixture(scope="module")
def single_process(tiny_stores, tmp_path_factory):
    """One process trained on the global batch (8): what every distributed launch must match."""
    tmp = tmp_path_factory.mktemp("single")
    cfg = tiny_config(tiny_stores, tmp / "cache", tmp / "single", batch_size=8, **DDP_LRS)
    trainer = UnifiedModelTrainer(cfg, device="cpu", progress=False)
    trainer.train()
    return trainer, cfg, tmp / "single"


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tiny_stores, single_process, tmp_path):
    """Two gloo processes under torchrun (batch 4 each) end where one process (batch 8) does.

    Two epochs of one step each. Adam turns float noise in near-zero gradients into lr-sized
    differences, so the learning rates are small and steps few; test_ddp_gradients.py
    compares the gradients themselves.
    """
    cache = tmp_path / "cache"
    single, single_cfg, single_out = single_process
    ddp_cfg = tiny_config(tiny_stores, cache, tmp_path / "ddp", batch_size=4, **DDP_LRS)
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(ddp_cfg.to_dict()))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(REPO / "train_unified_model.py"),
        "--config", str(config), "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoint_epoch_2.pth")
    mine = single.model.state_dict()
    assert ddp["step"] == single.state.step == 2
    assert _same_weights(mine, ddp["model"], atol=1e-5) == []
    # The weights moved well beyond the tolerance: the comparison is not between untouched models.
    seed_everything(single_cfg.training.seed)
    init = create_unified_model(single_cfg).state_dict()
    assert max(float((init[k] - v).abs().max()) for k, v in mine.items()) > 5e-5
    # Same losses and gradient norms (a wrong gradient scale would show here); only rank 0 wrote.
    h1 = json.loads((single_out / "history.json").read_text())
    h2 = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert len(h2) == 2
    for a, b in zip(h1, h2, strict=True):
        for key in ("train_loss", "grad_norm", "val_loss", "val_t2v_R1"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key


@pytest.mark.slow
def test_evaluate_index_search_on_a_raw_split(tiny_demo_root, tiny_stores, tmp_path, capsys):
    """A checkpoint of the real model evaluated, indexed and searched on a never-extracted split."""
    from tempstop_pipelines.cli import main as cli

    cfg = tiny_config(tiny_stores, tmp_path / "cache", tmp_path / "ck", num_epochs=1)
    UnifiedModelTrainer(cfg, progress=False).train()
    best = str(tmp_path / "ck" / "best_model.pth")
    report = tmp_path / "eval.json"
    cache = tmp_path / "eval-cache"
    args = ["--data", str(tiny_demo_root), "--split", "test", "--cache", str(cache), "--no-progress"]
    assert cli(["evaluate", "--checkpoint", best, *args, "--json", str(report), "--dsl", "--no-track"]) == 0
    result = json.loads(report.read_text())
    assert result["split"] == "test" and result["num_videos"] == 8 and result["num_queries"] == 8
    assert result["datatype"] == "demo" and "t2v_dsl" in result
    assert any(p.name.startswith("test-") for p in cache.iterdir())  # extracted into the cache
    assert cli(["index", "--checkpoint", best, *args, "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    query = "a red circle moves left, then a blue square moves up"
    assert cli(["search", "--index", str(tmp_path / "idx"), query, "--top-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    root = Path(json.loads((tmp_path / "idx" / "manifest.json").read_text())["root"])
    assert len(hits) == 3 and hits[0]["path"].endswith(".mp4") and (root / hits[0]["path"]).is_file()


class CustomLossModel(UnifiedTempMeSTOPModel):
    """The user's guide's custom-loss example: the base losses plus a term of its own, here on
    a parameter that only that term reaches."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.custom_weight = torch.nn.Parameter(torch.ones(()))  # group "backbone": it trains

    def compute_training_loss(self, video_tensor, video_mask, input_ids, attention_mask, token_type_ids=None):
        loss_dict = super().compute_training_loss(video_tensor, video_mask, input_ids, attention_mask, token_type_ids)
        loss_dict["custom_loss"] = 10.0 * self.custom_weight**2
        loss_dict["total_loss"] = loss_dict["total_loss"] + loss_dict["custom_loss"]
        return loss_dict


@pytest.mark.slow
def test_a_subclass_overriding_compute_training_loss_is_what_trains(tiny_stores, tmp_path, monkeypatch):
    import tempstop.model

    def create(cfg):
        return CustomLossModel(cfg.model, cfg.training.tempme_loss_weight, cfg.training.stop_loss_weight)

    monkeypatch.setattr(tempstop.model, "create_unified_model", create)
    cfg = tiny_config(tiny_stores, tmp_path / "cache", tmp_path / "ck", num_epochs=1, batch_size=8)
    trainer = UnifiedModelTrainer(cfg, progress=False)
    trainer.train()
    # Only the custom term reaches custom_weight (without a gradient, AdamW leaves a parameter
    # exactly as it is): it moved, so the trainer trained the subclass's loss ...
    assert float(trainer.model.custom_weight) < 1.0
    history = json.loads((tmp_path / "ck" / "history.json").read_text())
    # ... and that loss is what the history reports (the base losses are a few units at most).
    assert history[0]["train_loss"] > history[0]["tempme_loss"] + history[0]["stop_loss"] + 5.0


@pytest.mark.slow
def test_the_training_stage_launches_torchrun_with_one_run_file(tiny_stores, tmp_path, monkeypatch):
    """`tempstop train-phase --nproc 2`: two gloo processes started by torchrun, each reading the
    stage's one TrainingRun file; rank 0 writes the outputs and the stage's record."""
    from tempstop_pipelines.cli import main as cli

    cfg = tiny_config(tiny_stores, tmp_path / "cache", tmp_path / "unused", num_epochs=1, batch_size=4)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "out"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on two cores
    rc = cli(["train-phase", "tempme", "--frames", str(tiny_stores), "--out", str(out), "--nproc", "2",
              "--params", str(params), "--no-progress"])  # fmt: skip
    assert rc == 0
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1] and history[0]["step"] == 1  # 8 videos, 2 x 4 per step
    assert json.loads((out / "phase.json").read_text())["train_mode"] == "joint"
    assert load_checkpoint(out / "best_model.pth")["config"]["training"]["checkpoint_dir"] == str(out)


@pytest.mark.slow
def test_two_torchrun_nodes_match_one_process(tiny_stores, single_process, tmp_path):
    """Two "nodes" on this machine, each a separate ``torchrun --nnodes 2 --node-rank {0,1}
    --rdzv-backend c10d`` meeting at a rendezvous on 127.0.0.1 (gloo, one process each, batch 4
    each), end where one process (batch 8) does: the multi-machine launch of
    tempstop-train-node, with this machine as both hosts.
    """
    cache = tmp_path / "cache"
    single, _, single_out = single_process
    config = tmp_path / "nodes.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_stores, cache, tmp_path / "nodes", batch_size=4, **DDP_LRS).to_dict()))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    endpoint = f"127.0.0.1:{_free_port()}"
    # The command the tempstop-train-node flow (prefect.yaml's train-node-* deployments) runs.
    from tempstop_pipelines.flows.train_node import node_command

    extra = ("--device", "cpu", "--no-progress")
    nodes = [
        subprocess.Popen(node_command(str(config), 2, rank, endpoint, 1, "tempstop-test", extra), cwd=tmp_path,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for rank in (0, 1)
    ]
    try:
        logs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    both = load_checkpoint(tmp_path / "nodes" / "checkpoint_epoch_2.pth")
    mine = single.model.state_dict()
    assert both["step"] == single.state.step == 2
    assert _same_weights(mine, both["model"], atol=1e-5) == []
    history = json.loads((tmp_path / "nodes" / "history.json").read_text())
    reference = json.loads((single_out / "history.json").read_text())
    assert [r["train_loss"] for r in history] == pytest.approx([r["train_loss"] for r in reference], rel=1e-4)
