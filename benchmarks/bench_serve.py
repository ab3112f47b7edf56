"""Load on the search service: 8 concurrent clients, 2000 queries, latency and throughput.

    python benchmarks/bench_serve.py [--clients 8] [--queries 2000] [--out benchmarks/results/serve.json]

What runs: the demo test split (300 clips, generated here) indexed with the `make demo` model
of tests/fixtures/demo_model, served by `tempstop serve` in its own process on a free loopback
port; the clients are threads of this process, each with one keep-alive HTTP connection,
sending `POST /search` (top 10) back to back. Two passes:
- **distinct**: 2000 different captions of the demo grammar, so every query is encoded by the
  text tower (concurrent ones in one batch);
- **repeated**: the same 2000 again, answered from the query-embedding cache.
Latency is measured by the client (request sent to response read); queries/s is queries over
the pass's wall time. The service runs with torch's default threads; load average before and
after is recorded (the machine may be shared).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tempstop.config import DemoConfig
from tempstop.data.demo import COLOURS, MOTIONS, SHAPES, caption, generate_demo
from tempstop_pipelines.serve.client import wait_until_healthy

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "demo_model" / "best_model.pth"


def demo_queries(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct captions in the demo grammar (two events, three templates)."""
    events = list(itertools.product(COLOURS, SHAPES, MOTIONS))
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        a, b = rng.sample(events, 2)
        out.add(caption((a, b), rng.randrange(3)))
    return sorted(out)


def build_index(work: Path) -> Path:
    generate_demo(work / "demo", DemoConfig(train_quadruples=1), progress=False)
    out = work / "index"
    subprocess.run([sys.executable, "-m", "tempstop_pipelines.cli", "index", "--checkpoint", str(MODEL), "--videos",
                    str(work / "demo" / "test" / "videos"), "--out", str(out), "--no-progress"],
                   check=True, cwd=ROOT)  # fmt: skip
    return out


def run_pass(url: str, queries: list[str], clients: int) -> dict:
    latencies: list[float] = []
    errors = []
    lock = threading.Lock()
    todo = iter(queries)

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while True:
                with lock:
                    query = next(todo, None)
                if query is None:
                    return
                start = time.perf_counter()
                r = c.post("/search", json={"query": query, "top_k": 10})
                took = time.perf_counter() - start
                with lock:
                    latencies.append(took)
                    if r.status_code != 200:
                        errors.append(r.status_code)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "queries": len(latencies),
        "errors": len(errors),
        "wall_s": round(wall, 2),
        "queries_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        index = build_index(Path(tmp))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "tempstop_pipelines.cli", "serve", "--index", str(index), "--port",
                                   str(port), "--watch", "0"], cwd=ROOT)  # fmt: skip
        try:
            if not wait_until_healthy(url, timeout_s=120):
                raise SystemExit(f"bench_serve: the service on {url} did not start")
            queries = demo_queries(args.queries)
            distinct = run_pass(url, queries, args.clients)
            repeated = run_pass(url, queries, args.clients)
            metrics = httpx.get(f"{url}/metrics").text
        finally:
            server.terminate()
            server.wait(timeout=30)
    batches = next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("tempstop_text_batches ")), None)
    result = {
        "command": f"python benchmarks/bench_serve.py --clients {args.clients} --queries {args.queries}",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "collection": "demo test split, 300 clips; model tests/fixtures/demo_model (tempstop-tiny, make demo)",
        "clients": args.clients,
        "distinct": distinct,
        "repeated_cache_hits": repeated,
        "text_batches_for_distinct_queries": batches,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
