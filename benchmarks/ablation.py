"""Quality ablation on the demo benchmark: meanP, tempme_only, stop_only, joint and sequential,
several seeds each, trained and evaluated exactly as the pipeline does it.

    python benchmarks/ablation.py [--seeds 0 1 2] [--variants meanP joint ...] [--workers 2]
        [--threads 1] [--epochs N] [--work outputs/ablation] [--out benchmarks/results/ablation.json]
    python benchmarks/ablation.py ... --report [--paused VARIANT SEED SECONDS]   # rewrite outputs only

Each run is ``tempstop train`` with params.yaml (only mode, seed, variant and paths changed;
MLflow off), then ``evaluate_store`` of its best checkpoint (chosen on val) on val and test.
Runs go seed by seed, ``--workers`` at a time with ``--threads`` torch threads each (on a
2-core machine two 1-thread runs finish sooner than one 2-thread run after the other). A
finished run is kept (``WORK/<variant>_seed<N>/result.json``) and skipped when the script runs
again, so it can be stopped and resumed. After every run the aggregate is rewritten:

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
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `pipelines` when run as a script from a source checkout

#: variant name -> (training mode, model variant)
VARIANTS = {
    "meanP": ("joint", "meanP"),
    "tempme_only": ("tempme_only", "unified"),
    "stop_only": ("stop_only", "unified"),
    "joint": ("joint", "unified"),
    "sequential": ("sequential", "unified"),
}
REPORTED = ("R1", "R5", "MnR")
_LOCK = threading.Lock()


# ---- one run (child process) --------------------------------------------------------------
def run_one(variant: str, seed: int, work: Path, frames: Path, epochs: int | None, params: str) -> dict:
    """Train and evaluate one (variant, seed); returns and writes ``result.json``."""
    import torch

    from tempstop.data.store import FrameStore
    from tempstop.training.checkpoint import load_model
    from tempstop.training.evaluation import evaluate_store
    from tempstop_pipelines.cli import main as cli

    mode, model_variant = VARIANTS[variant]
    out = work / f"{variant}_seed{seed}"
    argv = ["train", "--params", params, "--mode", mode, "--seed", str(seed), "--no-progress",
            "--checkpoint-dir", str(out),
            "--set", f"model.variant={model_variant}", "--set", "tracking.enabled=false",
            "--set", f"training.train_data_path={frames / 'train'}",
            "--set", f"training.val_data_path={frames / 'val'}"]  # fmt: skip
    if epochs:
        argv += ["--epochs", str(epochs)]
    commit = _commit()  # the code this run imports now, not what is checked out when it ends
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if cli(argv) != 0:
        raise RuntimeError(f"training {variant} seed {seed} failed (see its log)")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    model, _, _ = load_model(out / "best_model.pth", torch.device("cpu"))
    result = {
        "variant": variant,
        "seed": seed,
        "train_seconds": round(wall, 1),
        "train_cpu_seconds": round(cpu, 1),
    }
    for split in ("val", "test"):
        store = FrameStore(frames / split)
        metrics = evaluate_store(model, store, torch.device("cpu"), "demo", return_similarity=True)
        sim = metrics.pop("similarity")
        result[split] = {k: metrics[k] for k in ("t2v", "v2t", "recall_curve")}
        result[split]["errors"] = error_split(sim, store)
    # The time-reversal check: a model that reads time must drop on backward clips, meanP not.
    metrics = evaluate_store(model, TimeReversed(FrameStore(frames / "test")), torch.device("cpu"), "demo")
    result["test_reversed"] = {k: metrics[k] for k in ("t2v", "v2t")}
    result["history"] = json.loads((out / "history.json").read_text(encoding="utf-8"))
    # What the aggregate JSON keeps of the history, so a later sitting can resume from it alone.
    result["epochs"] = len(result["history"])
    result["val_t2v_R1_curve"] = [h["val_t2v_R1"] for h in result["history"]]
    result["commit"] = commit
    (out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def _commit() -> str | None:
    """The checkout's git commit, kept with each run as its provenance."""
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True,
                                       stderr=subprocess.DEVNULL).strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def wall_seconds(run: dict) -> float:
    """Training wall time less any time the run was stopped (SIGSTOP) on purpose, e.g. to
    measure a benchmark on a quiet machine; ``paused_seconds`` is recorded with ``--paused``."""
    return run["train_seconds"] - run.get("paused_seconds", 0.0)


def _curve(run: dict) -> list[float] | None:
    """Validation t2v R@1 per epoch of one run (from a fresh run's history or the JSON)."""
    if "val_t2v_R1_curve" in run:
        return run["val_t2v_R1_curve"]
    if "history" in run:
        return [h["val_t2v_R1"] for h in run["history"]]
    return None


class TimeReversed:
    """A frame store whose clips play backwards: each clip's valid frames in reverse order
    (padding stays where the mask says), captions unchanged."""

    def __init__(self, store) -> None:
        self.store, self.items, self.path = store, store.items, store.path

    def __len__(self) -> int:
        return len(self.store)

    def load(self, index: int):
        import numpy as np

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
    from tempstop.training.dataset import build_queries, group_ids

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


def in_quadruple_r1(errors: dict) -> float:
    """Of the queries whose top-1 video is in their own quadruple, the % that got the exact
    clip: the temporal part of R@1 alone (an order-blind model sits at 25 %)."""
    inside = errors["correct"] + errors["same_quadruple"]
    return 100.0 * errors["correct"] / inside if inside else float("nan")


# ---- aggregation --------------------------------------------------------------------------
def _mean_std(values: list[float]) -> dict:
    return {
        "mean": round(statistics.fmean(values), 2),
        "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def aggregate(results: list[dict]) -> dict:
    """Mean and std over seeds, per variant, of every reported figure."""
    summary = {}
    for variant in VARIANTS:
        runs = [r for r in results if r["variant"] == variant]
        if not runs:
            continue
        row = {"seeds": sorted(r["seed"] for r in runs)}
        for split in ("val", "test"):
            for direction in ("t2v", "v2t"):
                for k in REPORTED:
                    row[f"{split}_{direction}_{k}"] = _mean_std([r[split][direction][k] for r in runs])
            for kind in ("same_quadruple", "other_quadruple"):
                row[f"{split}_err_{kind}"] = _mean_std([r[split]["errors"][kind] for r in runs])
            row[f"{split}_in_quadruple_R1"] = _mean_std([in_quadruple_r1(r[split]["errors"]) for r in runs])
        if all("test_reversed" in r for r in runs):
            for direction in ("t2v", "v2t"):
                row[f"test_reversed_{direction}_R1"] = _mean_std([r["test_reversed"][direction]["R1"] for r in runs])
        row["train_minutes"] = _mean_std([wall_seconds(r) / 60 for r in runs])
        row["train_cpu_minutes"] = _mean_std([r["train_cpu_seconds"] / 60 for r in runs])
        row["epochs"] = runs[0]["epochs"] if "epochs" in runs[0] else len(runs[0]["history"])
        summary[variant] = row
    return summary


def markdown(summary: dict) -> str:
    """The table of docs/results.md: mean ± std over seeds."""

    def cell(stat: dict, digits: int = 1) -> str:
        if stat.get("n", 2) < 2:  # one seed: no spread to show
            return f"{stat['mean']:.{digits}f}"
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"

    head = (
        "| variant | seeds | test t2v R@1 | R@5 | MnR | test v2t R@1 | R@5 | MnR | val t2v R@1 | val v2t R@1 "
        "| test top-1 in own quadruple: exact clip (%) | test errors: same quadruple / other (%) "
        "| time-reversed test t2v R@1 | training CPU min (wall) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for variant, s in summary.items():
        rows.append(
            f"| {variant} | {len(s['seeds'])} | {cell(s['test_t2v_R1'])} | {cell(s['test_t2v_R5'])} "
            f"| {cell(s['test_t2v_MnR'], 2)} | {cell(s['test_v2t_R1'])} | {cell(s['test_v2t_R5'])} "
            f"| {cell(s['test_v2t_MnR'], 2)} | {cell(s['val_t2v_R1'])} | {cell(s['val_v2t_R1'])} "
            f"| {cell(s['test_in_quadruple_R1'])} "
            f"| {s['test_err_same_quadruple']['mean']:.1f} / {s['test_err_other_quadruple']['mean']:.1f} "
            f"| {cell(s['test_reversed_t2v_R1']) if 'test_reversed_t2v_R1' in s else 'n/a'} "
            f"| {s['train_cpu_minutes']['mean']:.1f} ({s['train_minutes']['mean']:.1f}) |"
        )
    return head + "\n".join(rows) + "\n"


def plot(results: list[dict], out_dir: Path) -> None:
    """Recall-at-K (test, t2v) and validation R@1 per epoch, mean over seeds, per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    fig2, ax2 = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for variant in VARIANTS:
        runs = [r for r in results if r["variant"] == variant]
        if not runs:
            continue
        curves = [r["test"]["recall_curve"]["t2v"][:10] for r in runs]
        ks = range(1, min(map(len, curves)) + 1)
        ax.plot(ks, [statistics.fmean(c[k - 1] for c in curves) for k in ks], marker="o", ms=3,
                label=f"{variant} ({_seeds(len(runs))})")  # fmt: skip
        curves = [c for c in map(_curve, runs) if c]  # runs resumed from an older JSON have none
        if curves:
            epochs = min(map(len, curves))
            r1 = [statistics.fmean(c[e] for c in curves) for e in range(epochs)]
            ax2.plot(range(1, epochs + 1), r1, marker="o", ms=3, label=f"{variant} ({_seeds(len(curves))})")
    ax.axhline(25, color="grey", ls=":", lw=1)
    ax.text(10, 26, "order-blind ceiling at R@1 (~25 %)", ha="right", fontsize=7, color="grey")
    for a, xlabel, ylabel, title in (
        (ax, "K", "test t2v recall at K (%)", "Recall at K on the demo test split"),
        (ax2, "epoch", "validation t2v R@1 (%)", "Validation R@1 during training"),
    ):
        a.set_xlabel(xlabel)
        a.set_ylabel(ylabel)
        a.set_title(title, fontsize=10)
        a.grid(alpha=0.3)
        if a.get_lines():
            a.legend(fontsize=8)
        else:  # e.g. only runs resumed from a JSON written before curves were kept
            a.text(0.5, 0.5, "no per-epoch history recorded", ha="center", transform=a.transAxes)
    for f, name in ((fig, "ablation_recall.png"), (fig2, "ablation_curves.png")):
        f.tight_layout()
        tmp = out_dir / f".{name}.tmp.png"
        f.savefig(tmp)
        os.replace(tmp, out_dir / name)
        plt.close(f)


def write_outputs(results: list[dict], args, machine: dict) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = aggregate(results)
    slim = [{k: v for k, v in r.items() if k != "history"} for r in results]
    command = "python benchmarks/ablation.py " + " ".join(sys.argv[1:])
    doc = {"command": command, "machine": machine,
           "params": args.params, "summary": summary, "runs": slim}  # fmt: skip
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    os.replace(tmp, out)
    out.with_suffix(".md").write_text(markdown(summary), encoding="utf-8")
    plot(results, out.parent)


# ---- orchestration ------------------------------------------------------------------------
def ensure_data(params: str, data: Path, frames: Path) -> None:
    """Generate and extract the demo with the pipeline's own commands when missing."""
    from tempstop_pipelines.cli import main as cli

    if not (data / "test" / "annotations.json").is_file():
        print(f"generating the demo into {data}", flush=True)
        if cli(["demo-data", "--params", params, "--out", str(data), "--no-progress"]) != 0:
            raise SystemExit("demo generation failed")
    if not all((frames / s / "index.json").is_file() for s in ("train", "val", "test")):
        print(f"extracting frames into {frames}", flush=True)
        if (
            cli(["extract", "--params", params, "--data", str(data), "--out", str(frames), "--no-progress"])
            != 0
        ):
            raise SystemExit("frame extraction failed")


def recorded_runs(out: Path) -> dict[tuple[str, int], dict]:
    """The runs already in the aggregate JSON, by (variant, seed): the work directory may be
    gone (another machine or checkout) while the committed JSON still holds every finished run."""
    if not out.is_file():
        return {}
    runs = json.loads(out.read_text(encoding="utf-8")).get("runs", [])
    return {(r["variant"], r["seed"]): r for r in runs}


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


def launch(variant: str, seed: int, args) -> dict | None:
    """Run one job in a child process (its own torch threads); returns its result."""
    out = Path(args.work) / f"{variant}_seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--job", variant, str(seed), "--work", args.work,
           "--frames", args.frames, "--params", args.params]  # fmt: skip
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    with _LOCK:
        print(f"start {variant} seed {seed} (log: {out / 'train.log'})", flush=True)
    with (out / "train.log").open("w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        print(f"FAILED {variant} seed {seed} (exit {code}); see {out / 'train.log'}", flush=True)
        return None
    return json.loads((out / "result.json").read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
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
    p.add_argument("--job", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.job:
        run_one(args.job[0], int(args.job[1]), Path(args.work), Path(args.frames), args.epochs, args.params)
        return 0

    ensure_data(args.params, Path(args.data), Path(args.frames))
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "workers": args.workers, "threads_per_run": args.threads}  # fmt: skip
    results, todo = [], []
    recorded = recorded_runs(Path(args.out))
    for seed in args.seeds:  # seed-major: a stopped run still has whole seeds
        for variant in args.variants:
            done = Path(args.work) / f"{variant}_seed{seed}" / "result.json"
            if done.is_file():
                results.append(json.loads(done.read_text(encoding="utf-8")))
            elif (variant, seed) in recorded:  # finished in an earlier sitting, work dir gone
                results.append(recorded[variant, seed])
            else:
                todo.append((variant, seed))
    for variant, seed, seconds in args.paused:
        record_pause(Path(args.work), results, variant, int(seed), float(seconds))
    print(f"{len(results)} runs already done, {len(todo)} to run", flush=True)
    if args.report:
        if results:
            write_outputs(results, args, machine)
            print(markdown(aggregate(results)))
        return 0
    failed = 0
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(launch, variant, seed, args): (variant, seed) for variant, seed in todo}
        for future in as_completed(futures):
            (variant, seed), result = futures[future], future.result()
            if result is None:
                failed += 1
                continue
            with _LOCK:
                results.append(result)
                write_outputs(results, args, machine)
                t = result["test"]["t2v"]
                print(f"done {variant} seed {seed}: test t2v R@1 {t['R1']:.1f} in "
                      f"{result['train_seconds'] / 60:.1f} min", flush=True)  # fmt: skip
    if results:
        write_outputs(results, args, machine)
        print(markdown(aggregate(results)))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
