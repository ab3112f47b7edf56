"""The ``tempstop-train-node`` Prefect flow: one machine's part of a multi-machine training run.

Each machine runs one node of ``torchrun --nnodes N --node-rank R --rdzv-backend c10d
--rdzv-endpoint HOST:PORT`` over ``train_unified_model.py --config CONFIG`` (DDP, NCCL on GPUs,
gloo on CPUs); the nodes meet at the rendezvous on the first machine and train as one run of
``N x nproc_per_node`` processes. The deployments ``train-node-0`` / ``train-node-1`` of
prefect.yaml start one node each: their job variables set ``TEMPSTOP_NNODES``,
``TEMPSTOP_NODE_RANK`` and ``TEMPSTOP_RDZV_ENDPOINT`` and each is served by the worker of one
machine (work queues ``node-0``, ``node-1``); run both with the same ``run_id`` and config.

    python -m tempstop_pipelines.flows.train_node --config run.yaml --nnodes 2 --node-rank 0 \\
        --rdzv-endpoint head:29400 --nproc-per-node 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger

FLOW_NAME = "tempstop-train-node"
ROOT = Path(__file__).resolve().parents[2]


def node_command(
    config: str, nnodes: int, node_rank: int, rdzv_endpoint: str, nproc_per_node: int = 1,
    run_id: str = "tempstop-train", extra: tuple[str, ...] = (),
) -> list[str]:  # fmt: skip
    """The torchrun command of one node (``extra``: more ``train_unified_model.py`` options)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node-rank", str(node_rank),
            "--nproc-per-node", str(nproc_per_node), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint,
            "--rdzv-id", run_id, str(ROOT / "train_unified_model.py"), "--config", str(config), *extra]  # fmt: skip


@flow(name=FLOW_NAME, log_prints=True)
def train_node(
    config: str, run_id: str = "tempstop-train", nproc_per_node: int = 1, nnodes: int | None = None,
    node_rank: int | None = None, rdzv_endpoint: str | None = None, workdir: str | None = None,
) -> int:  # fmt: skip
    """Run this machine's node; ``nnodes``, ``node_rank`` and ``rdzv_endpoint`` default to
    ``$TEMPSTOP_NNODES``, ``$TEMPSTOP_NODE_RANK`` and ``$TEMPSTOP_RDZV_ENDPOINT`` (the
    deployment's job variables). Raises when the node fails."""
    env = os.environ
    nnodes = nnodes if nnodes is not None else int(env.get("TEMPSTOP_NNODES", "1"))
    node_rank = node_rank if node_rank is not None else int(env.get("TEMPSTOP_NODE_RANK", "0"))
    rdzv_endpoint = rdzv_endpoint or env.get("TEMPSTOP_RDZV_ENDPOINT", "127.0.0.1:29400")
    command = node_command(config, nnodes, node_rank, rdzv_endpoint, nproc_per_node, run_id)
    get_run_logger().info("node %d of %d: %s", node_rank, nnodes, " ".join(command))
    rc = subprocess.call(command, cwd=workdir)
    if rc != 0:
        raise RuntimeError(f"node {node_rank}: torchrun exited with status {rc}")
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tempstop_pipelines.flows.train_node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", required=True, help="training config (JSON or YAML), the same on every node")
    parser.add_argument("--run-id", default="tempstop-train", help="rendezvous id, the same on every node")
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("--nnodes", type=int, default=None)
    parser.add_argument("--node-rank", type=int, default=None)
    parser.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT on the first node")
    args = parser.parse_args(argv)
    train_node(args.config, args.run_id, args.nproc_per_node, args.nnodes, args.node_rank, args.rdzv_endpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
