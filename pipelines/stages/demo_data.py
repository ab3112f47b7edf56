"""Generate the two-event moving-shapes benchmark (docs/design.md §6) into OUT/{train,val,test}/.

Params: the `demo` section (e.g. --set demo.train_quadruples=10). Rerunning with the same
params skips clips that are already up to date.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from tempstop.config import ProjectConfig
from tempstop.data.demo import generate_demo
from tempstop_pipelines.options import ProgressJob, add_params_arg


@dataclass(frozen=True)
class DemoData(ProgressJob):
    """``tempstop demo-data``: the dataset root to write."""

    out: str


def register(p: argparse.ArgumentParser) -> None:
    """The options of ``tempstop demo-data``."""
    p.add_argument("--out", required=True, help="dataset root to write (e.g. data/demo)")
    ProgressJob.add_arguments(p)
    add_params_arg(p)
    p.set_defaults(job=DemoData, run=run)


def run(cfg: ProjectConfig, job: DemoData, tags: dict[str, str] | None = None) -> int:
    """Generate the dataset and print a one-line summary per split."""
    try:
        summary = generate_demo(job.out, cfg.demo, progress=job.progress)
    except ValueError as exc:  # impossible sizes: the message names the param
        print(f"tempstop demo-data: {exc}", file=sys.stderr)
        return 2
    for split, clips in summary["splits"].items():
        print(f"{split:>5}: {clips} clips ({clips // 4} quadruples) in {job.out}/{split}")
    print(f"wrote {summary['written']} clips, {summary['skipped']} already up to date, {summary['seconds']:.1f} s")
    return 0
