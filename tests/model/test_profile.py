"""Cost profile: the `tempstop profile` stage and the library functions behind it."""

from __future__ import annotations

import json

import pytest
import torch
from model_helpers import tiny_config

from tempstop.model import create_unified_model
from tempstop.model.profile import trainable_parameters, visual_gflops
from tempstop_pipelines.cli import main


def test_profile_stage_prints_json(capsys):
    rc = main(
        [
            "profile",
            "--model",
            "tempstop-tiny",
            "--frames",
            "8",
            "--variant",
            "unified",
            "--json",
            "--iters",
            "1",
            "--batch",
            "2",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gflops_per_video"] > 0 and "multiply-adds" in out["gflops_convention"]
    assert len(out["tokens_per_layer"]) == 6
    assert out["trainable_parameters"]["stop"] > 0 and out["trainable_parameters"]["tempme"] > 0
    assert out["inference_videos_per_s"] > 0 and out["train_videos_per_s"] > 0


def test_profile_stage_text_output(capsys):
    assert (
        main(["profile", "--model", "tempstop-tiny", "--frames", "8", "--variant", "meanP", "--no-speed"])
        == 0
    )
    text = capsys.readouterr().out
    assert "visual GFLOPs per video" in text and "layer  5" in text


def test_merging_cuts_flops_and_stop_costs_little():
    torch.manual_seed(0)
    cost = {v: visual_gflops(create_unified_model(tiny_config(v)), 8) for v in ("meanP", "tempme", "unified")}
    assert cost["tempme"] < 0.7 * cost["meanP"]
    assert cost["unified"] < 1.05 * cost["tempme"]


@pytest.mark.parametrize("frozen", [True, False])
def test_trainable_parameters_per_group(frozen):
    model = create_unified_model(tiny_config(freeze_backbone=frozen))
    params = trainable_parameters(model)
    assert (params["backbone"] == 0) == frozen
    assert params["total"] == sum(params[g] for g in ("tempme", "stop", "backbone"))
