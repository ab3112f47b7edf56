"""What benchmarks/ablation.py compares and how it reports it: the variants, the mean and std
over seeds, the table of docs/results.md, the two plots and the aggregate JSON.

Runs come from a fresh ``result.json`` or from the committed aggregate JSON, whose older runs
lack some fields (``history``, ``val_t2v_R1_curve``, ``test_reversed``, ``commit``): every
function here takes both.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from matplotlib.figure import Figure

from tempstop.config import MODE_GROUPS, TRAINING_MODES
from tempstop.utils import atomic_write_text
from tempstop_pipelines.stages.figures import save_figure

#: Ablation variant -> (training mode, model variant): meanP (CLIP4Clip's mean pooling,
#: trained jointly), then the unified model in every training mode, those that train one
#: module group first (sequential trains both groups, as joint does, one after the other).
VARIANTS: dict[str, tuple[str, str]] = {
    "meanP": ("joint", "meanP"),
    **{mode: (mode, "unified")
       for mode in sorted(TRAINING_MODES, key=lambda m: len(MODE_GROUPS.get(m, MODE_GROUPS["joint"])) > 1)},
}  # fmt: skip
REPORTED = ("R1", "R5", "MnR")


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


def in_quadruple_r1(errors: dict) -> float:
    """Of the queries whose top-1 video is in their own quadruple, the % that got the exact
    clip: the temporal part of R@1 alone (an order-blind model sits at 25 %)."""
    inside = errors["correct"] + errors["same_quadruple"]
    return 100.0 * errors["correct"] / inside if inside else float("nan")


def commit_of(run: dict) -> tuple[str | None, bool]:
    """``(sha, dirty)`` of the code a run came from. The JSON holds two formats: a bare sha or
    None (runs before the ablation used git_commit), and git_commit's ``sha``, ``sha-dirty``
    (uncommitted changes) or ``unknown`` (no checkout)."""
    commit = run.get("commit")
    if not commit or commit == "unknown":
        return None, False
    return commit.removesuffix("-dirty"), commit.endswith("-dirty")


def provenance(results: list[dict]) -> str:
    """One line: the commits the runs' code came from."""
    commits = [commit_of(r) for r in results]
    shas = sorted({sha[:10] for sha, _ in commits if sha})
    dirty, unknown = sum(d for _, d in commits), sum(sha is None for sha, _ in commits)
    return (f"code: {len(shas)} commit(s) {' '.join(shas)}; {dirty} run(s) with uncommitted changes, "
            f"{unknown} without a recorded commit")  # fmt: skip


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
    fig, fig2 = Figure(figsize=(6.5, 4.2), dpi=120), Figure(figsize=(6.5, 4.2), dpi=120)  # no pyplot: files only
    ax, ax2 = fig.subplots(), fig2.subplots()
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
        save_figure(f, out_dir / name)


def write_outputs(results: list[dict], out: Path, doc: dict) -> None:
    """``out`` (``doc`` plus the summary and every run but its history), the table beside it
    (``.md``) and the two plots."""
    summary = aggregate(results)
    slim = [{k: v for k, v in r.items() if k != "history"} for r in results]
    atomic_write_text(out, json.dumps({**doc, "summary": summary, "runs": slim}, indent=1))
    atomic_write_text(out.with_suffix(".md"), markdown(summary))
    plot(results, out.parent)


def recorded_runs(out: Path) -> dict[tuple[str, int], dict]:
    """The runs already in the aggregate JSON, by (variant, seed): the work directory may be
    gone (another machine or checkout) while the committed JSON still holds every finished run."""
    if not out.is_file():
        return {}
    runs = json.loads(out.read_text(encoding="utf-8")).get("runs", [])
    return {(r["variant"], r["seed"]): r for r in runs}
