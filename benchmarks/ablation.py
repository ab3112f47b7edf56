"""Quality ablation on the demo benchmark: meanP, tempme_only, stop_only, joint and sequential,
several seeds each, trained and evaluated exactly as the pipeline does it.

    python benchmarks/ablation.py [--seeds 0 1 2] [--variants meanP joint ...] [--workers 2]
        [--threads 1] [--epochs N] [--work outputs/ablation] [--out benchmarks/results/ablation.json]
    python benchmarks/ablation.py ... --report [--paused VARIANT SEED SECONDS]   # rewrite outputs only

Each run is the pipeline's training (``run_training``, what ``tempstop train`` calls) of
params.yaml's config with only mode, seed, model variant, epochs and paths changed (tracking
off), then ``evaluate_store`` of its best checkpoint (chosen on val) on val and test. Every
run trains in a process of its own, started with its whole config (a ``ProjectConfig``).
Runs go seed by seed, ``--workers`` at a time with ``--threads`` torch threads each (on a
2-core machine two 1-thread runs finish sooner than one 2-thread run after the other). A
finished run is kept (``WORK/<variant>_seed<N>/result.json``) and skipped when the script runs
again, so it can be stopped and resumed. After every run the aggregate is rewritten
(benchmarks/ablation_report.py):

  benchmarks/results/ablation.json           every run, and mean/std per variant
  benchmarks/results/ablation.md             the table of docs/results.md
  benchmarks/results/ablation_recall.png     test t2v recall at K per variant (mean over seeds)
  benchmarks/results/ablation_curves.png     validation t2v R@1 per epoch per variant

Each run is also evaluated on the test split with every clip's frames time-reversed (the
same captions): a model that reads time must drop there, an order-blind one (meanP) must not.

Besides R@K, each run reports where its wrong top-1 answers land on the test split: in the
query's own quadruple (the same two objects, other order or directions: a *temporal* error)
or in another quadruple (an *appearance* error). That split is what says what temporal
modelling buys on this benchmark.

The demo data is generated and extracted with params.yaml's settings into outputs/ablation/
first when missing (a copy of its own, so a `dvc repro` can run meanwhile).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ablation_report import VARIANTS, aggregate, markdown, provenance, recorded_runs, write_outputs

from tempstop.config import ProjectConfig, load_config
from tempstop.data.demo import SPLITS, generate_demo
from tempstop.data.extract import extract_split
from tempstop.data.store import FrameStore
from tempstop.evaluation import build_queries, evaluate_store
from tempstop.inference.checkpoint import model_from_checkpoint
from tempstop.training.dataset import group_ids
from tempstop_pipelines.env import configure_logging, telemetry_off
from tempstop_pipelines.tracking.provenance import git_commit
from tempstop_pipelines.training.run import run_training

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
#: Each run starts in a fresh interpreter (its own torch threads) and receives its Job, pickled.
SPAWN = multiprocessing.get_context("spawn")
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Job:
    """One (variant, seed) run: the whole config it trains with, the frame stores it is
    evaluated on and the torch threads of its process. Pickled into the run's process."""

    variant: str
    seed: int
    config: ProjectConfig
    frames: Path
    threads: int = 1

    @property
    def out(self) -> Path:
        return Path(self.config.training.checkpoint_dir)


def plan_jobs(todo: list[tuple[str, int]], args: argparse.Namespace) -> list[Job]:
    """The runs of ``todo``, each with its config; the demo data made first where missing."""
    base = load_config(args.params)
    ensure_data(base, Path(args.data), Path(args.frames))
    return [Job(v, s, job_config(base, v, s, args), Path(args.frames), args.threads) for v, s in todo]


def job_config(base: ProjectConfig, variant: str, seed: int, args: argparse.Namespace) -> ProjectConfig:
    """``base`` (the params file) with this run's mode, seed, model variant, epochs and paths."""
    mode, model_variant = VARIANTS[variant]
    frames = Path(args.frames)
    over = {"training.mode": mode, "training.seed": seed, "model.variant": model_variant,
            "training.checkpoint_dir": str(Path(args.work) / f"{variant}_seed{seed}"),
            "training.train_data_path": str(frames / "train"), "training.val_data_path": str(frames / "val"),
            "tracking.enabled": False}  # fmt: skip
    if args.epochs:
        over["training.num_epochs"] = args.epochs
    return base.with_overrides(over, f"ablation {variant} seed {seed}")


# ---- one run (child process) --------------------------------------------------------------
def run_job(job: Job) -> None:
    """The whole work of a run's process: its output goes to ``train.log``."""
    with (job.out / "train.log").open("w") as log:
        os.dup2(log.fileno(), sys.stdout.fileno())
        os.dup2(log.fileno(), sys.stderr.fileno())
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(job.threads)  # and its children
    torch.set_num_threads(job.threads)
    configure_logging()  # what `tempstop train` logs
    run_one(job)


def run_one(job: Job) -> dict:
    """Train and evaluate one (variant, seed); returns and writes ``result.json``."""
    commit = git_commit(ROOT)  # the code this run imports now, not what is checked out when it ends
    wall0, cpu0 = time.perf_counter(), time.process_time()
    summary = run_training(job.config, progress=False)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if summary["best_checkpoint"] is None:
        raise RuntimeError(f"{job.variant} seed {job.seed}: no epoch had a finite validation R@1")
    model, _, _ = model_from_checkpoint(summary["best_checkpoint"], CPU)
    result = {
        "variant": job.variant,
        "seed": job.seed,
        "train_seconds": round(wall, 1),
        "train_cpu_seconds": round(cpu, 1),
    }
    for split in ("val", "test"):
        store = FrameStore(job.frames / split)
        metrics = evaluate_store(model, store, CPU, "demo", return_similarity=True)
        sim = metrics.pop("similarity")
        result[split] = {k: metrics[k] for k in ("t2v", "v2t", "recall_curve")}
        result[split]["errors"] = error_split(sim, store)
    # The time-reversal check: a model that reads time must drop on backward clips, meanP not.
    metrics = evaluate_store(model, TimeReversed(FrameStore(job.frames / "test")), CPU, "demo")
    result["test_reversed"] = {k: metrics[k] for k in ("t2v", "v2t")}
    result["history"] = json.loads((job.out / "history.json").read_text(encoding="utf-8"))
    # What the aggregate JSON keeps of the history, so a later sitting can resume from it alone.
    result["epochs"] = len(result["history"])
    result["val_t2v_R1_curve"] = [h["val_t2v_R1"] for h in result["history"]]
    result["commit"] = commit
    (job.out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


class TimeReversed:
    """A frame store whose clips play backwards: each clip's valid frames in reverse order
    (padding stays where the mask says), captions unchanged."""

    def __init__(self, store) -> None:
        self.store, self.items, self.path = store, store.items, store.path

    def __len__(self) -> int:
        return len(self.store)

    def load(self, index: int):
        frames, mask = self.store.load(index)  # [T, S, S, 3], [T]
        valid = np.flatnonzero(np.asarray(mask, dtype=bool))
        frames = np.array(frames)  # a copy: the store's array may be a read-only memory map
        frames[valid] = frames[valid[::-1]]
        return frames, mask


def error_split(sim, store) -> dict:
    """Top-1 text-to-video answers: correct, wrong within the query's quadruple (temporal
    error), wrong in another quadruple (appearance error); in % of queries.

    ``sim`` ``[Q, V]``, queries in :func:`build_queries` order (every caption of every video).
    """
    groups = group_ids(store)
    _, owner = build_queries(store.items, paragraph=False)  # [Q] video of each query
    top = sim.argmax(dim=1)  # [Q]
    counts = {"correct": 0, "same_quadruple": 0, "other_quadruple": 0}
    for q, v in enumerate(top.tolist()):
        true = int(owner[q])
        if v == true:
            counts["correct"] += 1
        elif groups is not None and groups[v] == groups[true]:
            counts["same_quadruple"] += 1
        else:
            counts["other_quadruple"] += 1
    n = max(1, len(top))
    return {k: round(100.0 * c / n, 2) for k, c in counts.items()}


# ---- orchestration ------------------------------------------------------------------------
def ensure_data(cfg: ProjectConfig, data: Path, frames: Path) -> None:
    """Generate the demo (``cfg.demo``) and extract its frames (``cfg.extract``,
    ``model.frames``) as the pipeline's stages do, where missing."""
    if not (data / "test" / "annotations.json").is_file():
        print(f"generating the demo into {data}", flush=True)
        try:
            generate_demo(data, cfg.demo, progress=False)
        except ValueError as exc:  # impossible sizes: the message names the param
            raise SystemExit(f"demo generation failed: {exc}") from None
    for split in SPLITS:
        if not (frames / split / "index.json").is_file():
            print(f"extracting {split} frames into {frames / split}", flush=True)
            s = extract_split(data / split, frames / split, cfg.extract, cfg.model.frames, progress=False,
                              datatype=cfg.data.datatype, checks=cfg.validate_)  # fmt: skip
            if not s["items"]:
                raise SystemExit(f"frame extraction of {data / split} failed: {s['failures'][:3]}")


def record_pause(work: Path, results: list[dict], variant: str, seed: int, seconds: float) -> None:
    """Write ``paused_seconds`` into a finished run (its ``result.json`` and ``results``)."""
    run = next((r for r in results if (r["variant"], r["seed"]) == (variant, seed)), None)
    if run is None:
        raise SystemExit(f"--paused {variant} {seed}: no finished run")
    run["paused_seconds"] = seconds
    done = work / f"{variant}_seed{seed}" / "result.json"
    if done.is_file():
        data = json.loads(done.read_text(encoding="utf-8"))
        data["paused_seconds"] = seconds
        done.write_text(json.dumps(data, indent=1), encoding="utf-8")


def finished_runs(args: argparse.Namespace) -> tuple[list[dict], list[tuple[str, int]]]:
    """The runs done (in WORK, or in the aggregate JSON of an earlier sitting) and those to run,
    seed-major: a stopped ablation still has whole seeds."""
    results, todo = [], []
    recorded = recorded_runs(Path(args.out))
    for seed in args.seeds:
        for variant in args.variants:
            done = Path(args.work) / f"{variant}_seed{seed}" / "result.json"
            if done.is_file():
                results.append(json.loads(done.read_text(encoding="utf-8")))
            elif (variant, seed) in recorded:  # finished in an earlier sitting, work dir gone
                results.append(recorded[variant, seed])
            else:
                todo.append((variant, seed))
    return results, todo


def launch(job: Job) -> dict | None:
    """Run ``job`` in a fresh process (:func:`run_job`); its result, or None when it failed."""
    job.out.mkdir(parents=True, exist_ok=True)
    with _LOCK:
        print(f"start {job.variant} seed {job.seed} (log: {job.out / 'train.log'})", flush=True)
    process = SPAWN.Process(target=run_job, args=(job,), name=f"ablation-{job.variant}-seed{job.seed}")
    process.start()
    process.join()
    if process.exitcode != 0:
        print(f"FAILED {job.variant} seed {job.seed} (exit {process.exitcode}); see {job.out / 'train.log'}",
              flush=True)  # fmt: skip
        return None
    return json.loads((job.out / "result.json").read_text(encoding="utf-8"))


def run_all(jobs: list[Job], workers: int, results: list[dict], report) -> int:
    """Run ``jobs``, ``workers`` at a time; each result joins ``results`` and ``report()``
    rewrites the outputs. Returns the number of runs that failed."""
    failed = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in as_completed([pool.submit(launch, job) for job in jobs]):
            result = future.result()
            if result is None:
                failed += 1
                continue
            with _LOCK:
                results.append(result)
                report()
                print(f"done {result['variant']} seed {result['seed']}: test t2v R@1 "
                      f"{result['test']['t2v']['R1']:.1f} in {result['train_seconds'] / 60:.1f} min", flush=True)  # fmt: skip
    return failed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--epochs", type=int, default=None, help="default: training.num_epochs")
    p.add_argument("--params", default=str(ROOT / "params.yaml"))
    # Its own copy of the demo, so `dvc repro` may rewrite data/ while the ablation runs.
    p.add_argument("--data", default=str(ROOT / "outputs" / "ablation" / "demo"))
    p.add_argument("--frames", default=str(ROOT / "outputs" / "ablation" / "frames"))
    p.add_argument("--work", default=str(ROOT / "outputs" / "ablation"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ablation.json"))
    p.add_argument("--report", action="store_true", help="only rewrite the JSON, table and plots from the runs done")
    p.add_argument("--paused", nargs=3, action="append", default=[], metavar=("VARIANT", "SEED", "SECONDS"),
                   help="record that a finished run was stopped this long (its wall time excludes it)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    telemetry_off()  # for this process and the runs' processes
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "workers": args.workers, "threads_per_run": args.threads}  # fmt: skip
    doc = {"command": "python benchmarks/ablation.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": machine, "params": args.params}  # fmt: skip
    results, todo = finished_runs(args)
    for variant, seed, seconds in args.paused:
        record_pause(Path(args.work), results, variant, int(seed), float(seconds))
    print(f"{len(results)} runs already done, {len(todo)} to run", flush=True)
    failed = 0
    if not args.report:
        jobs = plan_jobs(todo, args)
        failed = run_all(jobs, args.workers, results, lambda: write_outputs(results, Path(args.out), doc))
    if results:
        write_outputs(results, Path(args.out), doc)
        print(markdown(aggregate(results)))
        print(provenance(results))
    return 1 if failed else 0

if __name__ == "__main__":
    raise SystemExit(main())
