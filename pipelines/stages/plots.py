"""Pictures and DVC plot data from an evaluation and training histories.

Writes into ``--out``:
  recall_at_k.csv       k, t2v, v2t             (DVC plot: recall at K on the evaluated split)
  training_curves.csv   epoch, phase, losses, validation metrics, learning rates per epoch
  recall_at_k.png, training_curves.png          (matplotlib; DVC's HTML plots need a CDN)
  retrieval_gallery.png  top-5 videos of a few queries as film strips (a placeholder saying
                         why when the evaluation JSON has no ``gallery`` or its frame store
                         is unreadable; see :mod:`.gallery`)

Several ``--history`` files (e.g. the TempMe then the STOP phase of a sequential run) are
concatenated in order on one epoch axis; a stage that trained nothing writes an empty history.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from tempstop.config import ProjectConfig
from tempstop.utils import atomic_write
from tempstop_pipelines.stages.figures import plt, save_figure
from tempstop_pipelines.stages.gallery import draw_gallery

LOSSES = ("train_loss", "val_loss", "tempme_loss", "stop_loss")
RECALLS = ("val_t2v_R1", "val_t2v_R5", "val_t2v_R10", "val_v2t_R1")


@dataclass(frozen=True)
class Plots:
    """``tempstop plots``: the evaluation JSON, the training histories in order, the folder."""

    eval_json: str
    out: str
    histories: tuple[str, ...] = ()


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop plots``."""
    p.add_argument("--eval", dest="eval_json", required=True, help="evaluation JSON (tempstop evaluate --json)")
    p.add_argument("--history", dest="histories", action="append", default=[],
                   help="history.json of a training stage; repeat for chained stages, in order")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(job=Plots, run=run)


# ---- data ---------------------------------------------------------------------------------
def recall_rows(evaluation: dict[str, Any]) -> list[dict[str, float]]:
    """``[{k, t2v, v2t}]`` from ``recall_curve``; falls back to R1/R5/R10 when it is absent."""
    curve = evaluation.get("recall_curve") or {}
    t2v, v2t = list(curve.get("t2v") or []), list(curve.get("v2t") or [])
    if t2v or v2t:
        n = max(len(t2v), len(v2t))
        return [{"k": k + 1, "t2v": _at(t2v, k), "v2t": _at(v2t, k)} for k in range(n)]
    rows = []
    for k in (1, 5, 10):
        rows.append(
            {
                "k": k,
                "t2v": (evaluation.get("t2v") or {}).get(f"R{k}", float("nan")),
                "v2t": (evaluation.get("v2t") or {}).get(f"R{k}", float("nan")),
            }
        )
    return rows


def _at(values: list, i: int) -> float:
    return float(values[i]) if i < len(values) else float("nan")


def history_rows(histories: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Concatenate per-stage histories; ``epoch`` counts on across stages (1-based)."""
    rows: list[dict[str, Any]] = []
    for stage, history in enumerate(histories):
        for entry in history:
            row = {"epoch": len(rows) + 1, "phase": entry.get("phase", f"stage{stage + 1}")}
            for key, value in entry.items():
                if key in ("epoch", "phase"):
                    continue
                if isinstance(value, int | float) and not isinstance(value, bool):
                    row[key] = float(value)
            row["phase_epoch"] = entry.get("epoch", "")
            rows.append(row)
    return rows


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; a file that does not parse is a ValueError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """A history.json (a list of per-epoch dicts); a missing file is an error, empty is fine."""
    data = read_json(path)
    if isinstance(data, dict):  # tolerate {"history": [...]}
        data = data.get("history", [])
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of epochs")
    return data


def write_csv(path: Path, rows: list[dict[str, Any]], first: tuple[str, ...] = ()) -> None:
    """CSV with a stable column order (``first``, then the others sorted); blanks for NaN."""
    columns = list(first)
    for row in rows:
        columns += [k for k in row if k not in columns and k not in first]
    columns = list(first) + sorted(c for c in columns if c not in first)

    def cell(value: Any) -> Any:
        return "" if isinstance(value, float) and math.isnan(value) else value

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({c: cell(row.get(c, "")) for c in columns})

    atomic_write(path, write)


# ---- pictures -----------------------------------------------------------------------------
def plot_recall(rows: list[dict[str, float]], evaluation: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ks = [r["k"] for r in rows]
    for key, label in (("t2v", "text -> video"), ("v2t", "video -> text")):
        values = [r[key] for r in rows]
        if any(not math.isnan(v) for v in values):
            ax.plot(ks, values, marker="o", markersize=3, label=label)
    ax.set_xlabel("K")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("recall at K (%)")
    split = evaluation.get("split", "?")
    n = evaluation.get("num_videos", "?")
    r1 = (evaluation.get("t2v") or {}).get("R1")
    title = f"Recall at K, {split} split ({n} videos)"
    if r1 is not None:
        title += f": t2v R@1 {r1:.1f}"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    if not rows:
        for ax in (left, right):
            ax.text(0.5, 0.5, "no training history", ha="center", va="center", transform=ax.transAxes)
    epochs = [r["epoch"] for r in rows]
    for ax, keys, ylabel in ((left, LOSSES, "loss"), (right, RECALLS, "validation recall (%)")):
        for key in keys:
            values = [r.get(key, float("nan")) for r in rows]
            if any(not math.isnan(v) for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, label=key)
        # Mark where one phase (or chained stage) hands over to the next.
        for prev, cur in zip(rows, rows[1:], strict=False):
            if prev["phase"] != cur["phase"]:
                ax.axvline(cur["epoch"] - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    phases = " -> ".join(dict.fromkeys(r["phase"] for r in rows)) or "none"
    fig.suptitle(f"Training curves (phases: {phases})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


# ---- entry point --------------------------------------------------------------------------
def make_plots(eval_json: str | Path, histories: list[str | Path], out: str | Path) -> dict[str, str]:
    """Write every plot file; returns ``{name: path}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    evaluation = read_json(eval_json)
    recall = recall_rows(evaluation)
    curves = history_rows([read_history(h) for h in histories])
    files = {
        "recall_csv": out / "recall_at_k.csv",
        "curves_csv": out / "training_curves.csv",
        "recall_png": out / "recall_at_k.png",
        "curves_png": out / "training_curves.png",
    }
    write_csv(files["recall_csv"], recall, first=("k", "t2v", "v2t"))
    write_csv(files["curves_csv"], curves, first=("epoch", "phase"))
    plot_recall(recall, evaluation, files["recall_png"])
    plot_curves(curves, files["curves_png"])
    files["gallery_png"] = out / "retrieval_gallery.png"
    draw_gallery(evaluation, files["gallery_png"])  # a placeholder when there is nothing to show
    return {k: str(v) for k, v in files.items()}


def run(cfg: ProjectConfig, job: Plots, tags: dict[str, str] | None = None) -> int:
    """Write the plots; exit 2 with a one-line message naming the file that cannot be read."""
    try:
        files = make_plots(job.eval_json, list(job.histories), job.out)
    except (OSError, ValueError) as exc:  # a missing file, or JSON that does not parse
        print(f"tempstop plots: {exc}", file=sys.stderr)
        return 2
    for path in files.values():
        print(path)
    return 0
