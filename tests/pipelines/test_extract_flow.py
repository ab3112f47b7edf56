"""The ``tempstop-extract`` flow on its default path (shard tasks on local threads, no Ray):
the same store as ``tempstop extract``, and a second run finds every shard done and extracts
nothing. The Ray path is in test_ray_index.py."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PARAMS = {"extract": {"size": 32, "workers": 1, "shard_size": 3, "timeout_s": 60}, "model": {"frames": 4}}


def test_local_extract_flow_equals_the_cli_and_resumes(harness, helpers, tiny_demo_root, tmp_path):
    from tempstop_pipelines import cli
    from tempstop_pipelines.flows.extract import run

    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(PARAMS))
    local = tmp_path / "cli"
    assert cli.main(["extract", "--data", str(tiny_demo_root), "--out", str(local), "--params", str(params),
                     "--no-progress"]) == 0  # fmt: skip

    flow_out = tmp_path / "flow"
    summaries = run(None, data=str(tiny_demo_root), out=str(flow_out), params=str(params))
    assert sorted(summaries) == ["test", "train", "val"]
    for split, s in summaries.items():
        assert (s["videos"], s["done"], s["failed"], s["shards"]) == (8, 8, 0, 3), split
        assert helpers.store_contents(flow_out / split) == helpers.store_contents(local / split)

    again = run(None, data=str(tiny_demo_root), out=str(flow_out), params=str(params), split="train")
    s = again["train"]
    assert (s["done"], s["skipped"], s["shards"], s["items"]) == (0, 8, 0, 8)
    assert helpers.store_contents(flow_out / "train") == helpers.store_contents(local / "train")
    assert not list(flow_out.rglob("*.tmp"))
