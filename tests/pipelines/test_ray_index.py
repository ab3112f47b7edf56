"""The ``tempstop-extract`` and ``tempstop-index`` flows on a real Ray cluster of two nodes on
this machine (head plus a second node, ray.cluster_utils.Cluster) through prefect-ray.

Extraction: the demo splits extracted through Ray equal the local extraction (same items,
byte-identical frames), and a Ray worker killed while it extracts a shard still ends with a
complete, identical store (the shard is retried and skips what its journal holds).
Indexing: the same index as the local path (same videos, rows and ids, embeddings within
1e-6), and a node lost mid-run still ends with a complete, correct index.
The extraction test runs first: the indexing test removes the second node.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'tempstop[ray]')")
pytest.importorskip("prefect_ray")
sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from media import make_clip, make_split  # noqa: E402


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """12 clips and a tiny model checkpoint (4 frames)."""
    from tempstop.config import UnifiedModelConfig
    from tempstop.inference.checkpoint import save_checkpoint
    from tempstop.model import create_unified_model

    base = tmp_path_factory.mktemp("ray")
    for i in range(12):
        make_clip(base / "videos" / f"part{i % 3}" / f"clip{i:02d}.mp4", n=4 + 2 * i, fps=8)
    cfg = UnifiedModelConfig().with_overrides({"model.frames": 4})
    torch.manual_seed(0)
    ckpt = save_checkpoint(base / "model.pth", {"config": cfg.to_dict(), "model": create_unified_model(cfg).state_dict(),
                                                "epoch": 0, "step": 0, "phase": "test", "metrics": {}})  # fmt: skip
    return base, ckpt


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, second
    ray.shutdown()
    cluster.shutdown()


PARAMS = {"extract": {"size": 32, "workers": 1, "shard_size": 3, "timeout_s": 60}, "model": {"frames": 4}}


def _kill_a_shard_mid_run(out: Path, stop: threading.Event) -> dict:
    """Find a shard being extracted (its journal, named after it, holds fewer videos than
    the shard) and SIGKILL the Ray worker writing it (the pid in the journal's first line)."""
    while not stop.is_set():
        for journal in sorted(out.glob("*/journal/*.jsonl")):
            lines = journal.read_text().splitlines()
            if not lines or len(lines) - 1 >= PARAMS["extract"]["shard_size"]:
                continue
            pid = json.loads(lines[0])["pid"]
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            return {"pid": pid, "journal": journal, "videos_done": len(lines) - 1}
        time.sleep(0.005)
    return {}


def test_ray_extraction_equals_the_local_one_and_survives_a_killed_worker(
    harness, helpers, tiny_demo_root, cluster, tmp_path
):
    from tempstop_pipelines import cli
    from tempstop_pipelines.flows.extract import run

    contents = helpers.store_contents
    head, second = cluster
    assert len(head.worker_nodes) == 1, "the second node is gone (the extraction test runs first)"
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(PARAMS))
    big = tmp_path / "big"  # 640x360 clips: a shard takes long enough to be caught mid-run
    make_split(big / "train", count=12, n=30, height=360, width=640)
    for data in (tiny_demo_root, big):
        assert cli.main(["extract", "--data", str(data), "--out", str(tmp_path / "local" / data.name),
                         "--params", str(params), "--no-progress"]) == 0  # fmt: skip

    through_ray = tmp_path / "ray"
    summaries = run(head.address, data=str(tiny_demo_root), out=str(through_ray), params=str(params))
    assert sorted(summaries) == ["test", "train", "val"]
    for split, s in summaries.items():
        assert (s["videos"], s["done"], s["failed"], s["shards"]) == (8, 8, 0, 3), split
        assert contents(through_ray / split) == contents(tmp_path / "local" / tiny_demo_root.name / split)

    killed_out, result, stop = tmp_path / "killed", {}, threading.Event()
    thread = threading.Thread(target=lambda: result.update(run(head.address, data=str(big), out=str(killed_out),
                                                               params=str(params))))  # fmt: skip
    thread.start()
    killed = _kill_a_shard_mid_run(killed_out, stop)
    thread.join(timeout=600)
    stop.set()
    assert killed, "no shard was caught mid-run"
    assert killed["videos_done"] < PARAMS["extract"]["shard_size"]
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)  # that Ray worker is gone
    s = result["train"]
    assert (s["videos"], s["done"], s["failed"], s["items"]) == (12, 12, 0, 12)
    assert contents(killed_out / "train") == contents(tmp_path / "local" / "big" / "train")
    # The killed shard was finished by another attempt; a finished store keeps no journal
    # (it would record run-specific values in a DVC output).
    assert not killed["journal"].exists()
    assert not list(killed_out.rglob("*.tmp"))


def _vectors(out: Path) -> tuple[list[str], np.ndarray]:
    from tempstop.collection.manifest import live_embeddings, read_manifest

    manifest = read_manifest(out)
    return [v["id"] for v in manifest["videos"]], live_embeddings(out, manifest)


def test_ray_index_equals_the_local_one_and_survives_a_lost_node(harness, collection, cluster, tmp_path):
    from tempstop_pipelines import cli
    from tempstop_pipelines.flows.index import run

    base, ckpt = collection
    local = tmp_path / "local"
    assert cli.main(["index", "--checkpoint", str(ckpt), "--videos", str(base / "videos"), "--out", str(local),
                     "--shard-size", "3", "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    ids, vectors = _vectors(local)
    assert len(ids) == 12

    head, second = cluster
    through_ray = tmp_path / "ray"
    summary = run(head.address, videos=str(base / "videos"), out=str(through_ray), checkpoint=str(ckpt), shard_size=3)
    assert summary["videos"] == 12 and not summary["failed"]
    ray_ids, ray_vectors = _vectors(through_ray)
    assert ray_ids == ids
    np.testing.assert_allclose(ray_vectors, vectors, atol=1e-6, rtol=0)

    # A node goes away while shards run: its tasks fail and are retried on the head node.
    lost = tmp_path / "lost"
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run(head.address, videos=str(base / "videos"),
                                                               out=str(lost), checkpoint=str(ckpt), shard_size=2)))  # fmt: skip
    thread.start()
    deadline = time.monotonic() + 120
    while not list((lost / "work").glob("*/decoded.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    head.remove_node(second)
    assert len(list((lost / "work").glob("*/part.json"))) < 6, "every shard was done before the node went away"
    thread.join(timeout=600)
    assert result.get("videos") == 12 and not result["failed"]
    lost_ids, lost_vectors = _vectors(lost)
    assert lost_ids == ids
    np.testing.assert_allclose(lost_vectors, vectors, atol=1e-6, rtol=0)
