"""The ``tempstop-index`` flow on a real Ray cluster of two nodes on this machine (head plus a
second node, ray.cluster_utils.Cluster) through prefect-ray: the same index as the local path
(same videos, rows and ids, embeddings within 1e-6), and a node lost mid-run still ends with a
complete, correct index (its shard tasks are retried elsewhere)."""

from __future__ import annotations

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
from media import make_clip  # noqa: E402


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """12 clips and a tiny model checkpoint (4 frames)."""
    from tempstop.config import UnifiedModelConfig
    from tempstop.model import create_unified_model
    from tempstop.training.checkpoint import save_checkpoint

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
