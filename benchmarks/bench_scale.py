"""Extraction and indexing throughput, locally and through Ray at equal cores; a projection.

For each core count k (``--cores``), a one-node Ray cluster with k CPUs is started
(``ray.cluster_utils.Cluster``) and, ``--repeat`` times round-robin so that load from other
processes hits every path alike:

- extraction, local: :func:`tempstop.data.extract.extract_split` with k worker processes (what
  ``tempstop extract`` runs), shards of ``--shard-size``;
- extraction, Ray: the ``tempstop-extract`` flow on the cluster (prefect-ray's RayTaskRunner),
  one task per shard, one decoding process per task, so k shards at once;
- indexing, local: ``tempstop index --videos`` with k decoding processes and k torch threads;
- indexing, Ray: the ``tempstop-index`` flow on the cluster (decode and embed tasks per shard).

Every run starts from an empty output folder. A second run of each flow on its finished output
(nothing left to do) measures the fixed cost of a flow run (plan, task runner, index write).
The Prefect API is a temporary local server (``prefect_test_harness``); the driver is connected
to Ray once (a real run also pays ``ray.init``, about a second). The clips are the 96x96 demo-like
clips of ``bench_extract.py``; indexing takes the first ``--index-clips`` of them (embedding on
the CPU is the slow part) in shards of ``--index-shard-size`` (default: a quarter of
``--shard-size``); the model is the tiny one (4 frames).

    python benchmarks/bench_scale.py --clips 400 --index-clips 60 --shard-size 100 --repeat 2
    # at the flows' default shard size (1000 videos), as a real collection runs:
    python benchmarks/bench_scale.py --clips 8000 --index-clips 2000 --shard-size 1000 \
        --index-shard-size 1000 --repeat 2

Writes a table to stdout and JSON to benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_extract import make_split

from tempstop.config import ProjectConfig, UnifiedModelConfig
from tempstop.data.extract import extract_split
from tempstop.inference.checkpoint import save_checkpoint
from tempstop.model import create_unified_model
from tempstop.utils import atomic_write_json
from tempstop_pipelines import cli
from tempstop_pipelines.env import telemetry_off

# Prefect (the flows, the test server) and Ray are imported where used: Ray is an optional
# extra, and Prefect reads its settings when imported, so only after main() has set them.

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
FRAMES, SIZE = 8, 64
PATHS = ("extract_local", "extract_ray", "index_local", "index_ray")


def _checkpoint(path: Path) -> Path:
    """The tiny model (4 frames), random weights: indexing cost, not quality."""
    cfg = UnifiedModelConfig().with_overrides({"model.frames": 4})
    torch.manual_seed(0)
    state = {"config": cfg.to_dict(), "model": create_unified_model(cfg).state_dict(), "epoch": 0, "step": 0,
             "phase": "bench", "metrics": {}}  # fmt: skip
    return save_checkpoint(path, state)


def _params(path: Path, shard_size: int) -> Path:
    path.write_text(json.dumps({"extract": {"size": SIZE, "workers": 1, "shard_size": shard_size, "timeout_s": 600},
                                "model": {"frames": FRAMES}}))  # fmt: skip
    return path


class Runner:
    """The four paths at k cores; each call returns wall seconds into a fresh folder."""

    def __init__(self, split: Path, videos: Path, params: Path, ckpt: Path, scratch: Path, address: str, k: int,
                 index_shard: int):  # fmt: skip
        self.split, self.videos, self.params, self.ckpt, self.scratch = split, videos, params, ckpt, scratch
        self.address, self.k, self.index_shard = address, k, index_shard

    def fresh(self, name: str) -> Path:
        out = self.scratch / name
        shutil.rmtree(out, ignore_errors=True)
        return out

    def extract_local(self, out: Path) -> dict:
        cfg = ProjectConfig.from_file(self.params)
        return extract_split(self.split, out / self.split.name, cfg.extract, cfg.model.frames, progress=False,
                             workers=self.k, datatype=cfg.data.datatype, checks=cfg.validate_)  # fmt: skip

    def extract_ray(self, out: Path) -> dict:
        from tempstop_pipelines.flows.extract import run  # Prefect: see the imports

        summaries = run(self.address, data=str(self.split.parent), out=str(out), params=str(self.params),
                        split=self.split.name, workers=1)  # fmt: skip
        return summaries[self.split.name]

    def index_local(self, out: Path) -> dict:
        torch.set_num_threads(self.k)
        args = ["index", "--checkpoint", str(self.ckpt), "--videos", str(self.videos), "--out", str(out),
                "--shard-size", str(self.index_shard), "--workers", str(self.k), "--batch-size", "32", "--no-progress",
                "--device", "cpu"]  # fmt: skip
        if cli.main(args) != 0:
            raise RuntimeError("tempstop index failed")
        return json.loads((out / "manifest.json").read_text())

    def index_ray(self, out: Path) -> dict:
        from tempstop_pipelines.flows.index import run  # Prefect: see the imports

        return run(self.address, videos=str(self.videos), out=str(out), checkpoint=str(self.ckpt),
                   shard_size=self.index_shard, batch_size=32, workers=1)  # fmt: skip

    def timed(self, path: str, out: Path | None = None) -> float:
        out = out or self.fresh(path)
        t0 = time.perf_counter()
        getattr(self, path)(out)
        return time.perf_counter() - t0


def bench_cores(k: int, split: Path, videos: Path, params: Path, ckpt: Path, scratch: Path,
                args: argparse.Namespace) -> dict:  # fmt: skip
    """Round-robin repeats of the four paths on a k-CPU Ray cluster and k local processes."""
    import ray  # the optional `ray` extra
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": k, "include_dashboard": False})
    ray.init(address=cluster.address)
    try:
        runner = Runner(split, videos, params, ckpt, scratch, cluster.address, k, _index_shard(args))
        paths = [p for p in PATHS if args.index_clips or not p.startswith("index")]
        for path in paths:  # warm-up: Ray workers, fork servers, page cache, Prefect's first flow run
            runner.timed(path)
        runs: dict[str, list[float]] = {p: [] for p in paths}
        load = []
        for _ in range(args.repeat):
            for path in paths:
                load.append(os.getloadavg()[0])
                runs[path].append(runner.timed(path))
        fixed = {p: runner.timed(p, scratch / p) for p in paths if p.endswith("ray")}  # nothing left to do
    finally:
        ray.shutdown()
        cluster.shutdown()
    return _summary(k, runs, fixed, load, args)


def _index_shard(args: argparse.Namespace) -> int:
    return args.index_shard_size or max(1, args.shard_size // 4)


def _summary(k: int, runs: dict, fixed: dict, load: list[float], args: argparse.Namespace) -> dict:
    best = {p: min(v) for p, v in runs.items()}
    rate = {p: (args.clips if p.startswith("extract") else args.index_clips) / s for p, s in best.items()}
    return {
        "cores": k,
        "seconds_best": {p: round(v, 3) for p, v in best.items()},
        "seconds_median": {p: round(statistics.median(v), 3) for p, v in runs.items()},
        "seconds_all": {p: [round(x, 3) for x in v] for p, v in runs.items()},
        "videos_per_s": {p: round(v, 1) for p, v in rate.items()},
        "videos_per_s_per_core": {p: round(v / k, 1) for p, v in rate.items()},
        "ray_over_local": {t: round(best[f"{t}_ray"] / best[f"{t}_local"], 3) for t in _tasks(runs)},
        "ray_over_local_median": {
            t: round(statistics.median(r / lo for r, lo in zip(runs[f"{t}_ray"], runs[f"{t}_local"], strict=True)), 3)
            for t in _tasks(runs)
        },
        "flow_fixed_seconds": {p: round(v, 3) for p, v in fixed.items()},
        # The same ratio with a flow run's fixed cost (measured just above: mostly Prefect's own
        # end-of-run work, paid once per flow run whatever its size) taken out of the Ray time.
        "ray_over_local_less_fixed": {
            t: round((best[f"{t}_ray"] - fixed[f"{t}_ray"]) / best[f"{t}_local"], 3) for t in _tasks(runs)
        },
        "load_average_1m": {"min": round(min(load), 2), "max": round(max(load), 2)},
    }


def _tasks(runs: dict) -> list[str]:
    return [t for t in ("extract", "index") if f"{t}_ray" in runs]


def projection(results: list[dict], machines: tuple[int, ...], cores_per_machine: int) -> list[dict]:
    """Hours for 10^6 videos on N machines of ``cores_per_machine`` cores, from the best
    per-core Ray rates measured here (linear scaling assumed; see the caveats in docs/scaling.md)."""
    per_core = {t: max(r["videos_per_s_per_core"][f"{t}_ray"] for r in results) for t in _tasks(results[0]["seconds_best"])}
    return [
        {"machines": n, "cores": n * cores_per_machine,
         **{f"{t}_hours": round(1e6 / (per_core[t] * n * cores_per_machine) / 3600, 2) for t in per_core}}
        for n in machines
    ]  # fmt: skip


def table(results: list[dict], proj: list[dict], clips: int, index_clips: int) -> str:
    lines = [f"extraction: {clips} clips (96x96, 32 frames) -> {FRAMES} frames of {SIZE} px; "
             f"indexing: the first {index_clips} clips, tiny model, 4 frames"]
    lines.append(f"{'cores':>5} {'path':<14} {'best s':>8} {'median s':>9} {'videos/s':>9} {'/core':>7} {'Ray/local':>10}")
    for r in results:
        for p in r["seconds_best"]:
            task = p.split("_")[0]
            ratio = f"{r['ray_over_local'][task]:.2f}x" if p.endswith("ray") else ""
            lines.append(f"{r['cores']:>5} {p:<14} {r['seconds_best'][p]:8.2f} {r['seconds_median'][p]:9.2f} "
                         f"{r['videos_per_s'][p]:9.1f} {r['videos_per_s_per_core'][p]:7.1f} {ratio:>10}")  # fmt: skip
        lines.append(f"      fixed cost of a flow run with nothing to do: {r['flow_fixed_seconds']} s; "
                     f"Ray/local without it: {r['ray_over_local_less_fixed']}; "
                     f"load average {r['load_average_1m']}")  # fmt: skip
    lines.append("10^6 videos (projection, per-core Ray rate x cores):")
    lines += [f"  {p['machines']:>4} machines ({p['cores']} cores): "
              + ", ".join(f"{k.removesuffix('_hours')} {v} h" for k, v in p.items() if k.endswith("_hours"))
              for p in proj]  # fmt: skip
    return "\n".join(lines)


def _machine() -> dict:
    model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((ln.split(":", 1)[1].strip() for ln in model.splitlines() if ln.startswith("Model name")), "?")
    return {"nproc": os.cpu_count(), "cpu": name, "platform": platform.platform(), "python": platform.python_version(),
            "cpu_affinity": sorted(os.sched_getaffinity(0))}  # e.g. [0] under `taskset -c 0`: 1-core runs  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=400)
    p.add_argument("--index-clips", type=int, default=60, help="the first N clips are indexed (CPU embedding is slow)")
    p.add_argument("--shard-size", type=int, default=100, help="videos per extraction shard; indexing: a quarter")
    p.add_argument("--index-shard-size", type=int, default=None, help="videos per index shard (default: a quarter of --shard-size)")
    p.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--machine-cores", type=int, default=16, help="cores per machine in the projection")
    p.add_argument("--inputs", help="folder keeping the generated clips between runs (default: temporary)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    telemetry_off()  # Ray's usage statistics included
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the flows' task logs would drown the table
    from prefect.testing.utilities import prefect_test_harness  # Prefect: see the imports

    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        tmp = Path(tmp)
        split = make_split(Path(args.inputs or tmp) / f"demo{args.clips}", args.clips, hd=False)
        params, ckpt = _params(tmp / "params.json", args.shard_size), _checkpoint(tmp / "model.pth")
        videos = tmp / "index_videos"
        videos.mkdir()
        for f in sorted((split / "videos").glob("*.mp4"))[: args.index_clips]:  # 0: no indexing
            shutil.copy2(f, videos / f.name)
        with prefect_test_harness(server_startup_timeout=300):
            results = [bench_cores(k, split, videos, params, ckpt, tmp, args) for k in args.cores]
    proj = projection(results, (1, 10, 100), args.machine_cores)
    print(table(results, proj, args.clips, args.index_clips))
    payload = {
        "command": "python benchmarks/bench_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": _machine(),
        "method": "best of round-robin repeats after one warm-up of each path; local = extract_split / tempstop "
        "index with k processes (k torch threads); ray = the tempstop-extract / tempstop-index Prefect flows on a "
        "k-CPU Ray cluster (one process per task), driver already connected; fresh output folder each run",
        "clips": {"extract": args.clips, "index": args.index_clips},
        "shard_size": {"extract": args.shard_size, "index": _index_shard(args)},
        "results": results,
        "projection_1e6_videos": {"cores_per_machine": args.machine_cores, "rows": proj,
                                  "assumes": "linear scaling at the best per-core Ray rate measured here, 96x96 clips"},  # fmt: skip
    }
    atomic_write_json(args.out, payload)
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
