"""Which caption attributes does a trained model tell apart? (demo benchmark)

    python benchmarks/attribute_probe.py CHECKPOINT [--frames data/frames/demo/val] [--json FILE]

For every pair of clips of a split whose event sequences differ in exactly one attribute
(colour, shape or motion of the first or second event), the mean cosine similarity of their
video embeddings and of their caption embeddings. 1.0 means the model cannot tell the two
apart; a value near that of a random pair means it separates them fully. Rows with two
differences (both shapes, ...) are printed too.

The demo's store keeps each clip's generated ``events`` ([colour, shape, motion] per event)
in its source ``annotations.json``; the script needs them, so it works on demo splits only.
This is how docs/results.md ("What made the demo work") found that shape was never learned.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

from tempstop.data.store import FrameStore
from tempstop.inference.checkpoint import model_from_checkpoint
from tempstop.inference.embed import embed_texts, embed_videos

ATTRS = ("colour", "shape", "motion")


def differences(a: list, b: list) -> tuple[str, ...]:
    """Names like ``shape2`` of the attributes in which event sequences ``a`` and ``b`` differ."""
    return tuple(f"{name}{e + 1}" for e in range(2) for k, name in enumerate(ATTRS) if a[e][k] != b[e][k])


def probe(checkpoint: str, frames: str) -> dict:
    """``{difference: {"pairs", "video_cos", "text_cos"}}`` over the split's clip pairs."""
    model, _, _ = model_from_checkpoint(checkpoint)
    store = FrameStore(frames)
    source = Path(store.source) / "annotations.json"
    events = {a["video_id"]: a.get("events") for a in json.loads(source.read_text(encoding="utf-8"))}
    ev = [events.get(it["video_id"]) for it in store.items]
    if any(e is None for e in ev):
        raise SystemExit(f"{source}: no 'events' per clip; this probe needs a generated demo split")
    cpu = torch.device("cpu")
    v = embed_videos(model, store, cpu, 64)  # [N, D], unit rows
    t = embed_texts(model, [it["captions"][0] for it in store.items], cpu, 64)  # [N, D]
    sv, st = (v @ v.T).tolist(), (t @ t.T).tolist()
    sums: dict = defaultdict(lambda: [0, 0.0, 0.0])
    for i, j in itertools.combinations(range(len(ev)), 2):
        d = differences(ev[i], ev[j])
        key = " + ".join(d) if 1 <= len(d) <= 2 else ("random pair" if d else "same events")
        row = sums[key]
        row[0] += 1
        row[1] += sv[i][j]
        row[2] += st[i][j]
    return {
        k: {"pairs": n, "video_cos": round(a / n, 4), "text_cos": round(b / n, 4)}
        for k, (n, a, b) in sorted(sums.items())
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--frames", default="data/frames/demo/val", help="a demo frame-store split")
    p.add_argument("--json", help="also write the table here")
    args = p.parse_args(argv)
    table = probe(args.checkpoint, args.frames)
    print(f"{'clips differ in':28s} {'pairs':>6s} {'video cos':>10s} {'text cos':>9s}")
    for k, r in table.items():
        print(f"{k:28s} {r['pairs']:6d} {r['video_cos']:10.3f} {r['text_cos']:9.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
