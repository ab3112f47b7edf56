"""Extraction cost against bare decoding of the same frames.

Bare decoding: for every video, ``decord.VideoReader(path, num_threads=1, width=, height=)``
and ``get_batch(indices).asnumpy()`` of exactly the frames extraction decodes (indices and
decode size computed beforehand with the same functions), in this process, nothing else: no
resize, no store, no workers. Extraction lets FFmpeg scale during decoding (short side =
``--size``), so bare decoding is measured at that same reduced size: the fair comparison.
Bare decoding at full size (what a naive pipeline pays before any resize) is shown too.
Extraction: :func:`tempstop.data.extract.extract_split` end to end into an empty store (header
read, timestamps, sampling, decode, crop, atomic ``.npy`` writes, worker start-up, journal,
index) with ``workers=0`` (in this process), ``1`` (one worker process: the same single
decoding process as bare) and ``2``. One decoder thread everywhere. Timings are the best of
``--repeat`` interleaved runs (the machine may be shared); medians are stored too.

    python benchmarks/bench_extract.py                    # ~200 demo-like clips + 4 HD clips
    python benchmarks/bench_extract.py --data data/demo/val --hd-clips 0

Writes a table to stdout and JSON to benchmarks/results/extract.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

for _k, _v in {"DO_NOT_TRACK": "1", "GX_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(_k, _v)

from tempstop.config import ExtractConfig  # noqa: E402
from tempstop.data.annotations import read_annotations  # noqa: E402
from tempstop.data.extract import extract_split  # noqa: E402
from tempstop.data.mp4 import write_video  # noqa: E402
from tempstop.data.video import decode_dims, frame_times, open_reader, sample_indices, video_size  # noqa: E402
from tempstop.utils import atomic_write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "extract.json"


# ---- inputs -----------------------------------------------------------------------------
def _moving_square(rng, t: int, h: int, w: int, side: int) -> np.ndarray:
    """Noisy grey background with a coloured square crossing it: uint8 [t, h, w, 3]."""
    grey = int(rng.integers(20, 60))
    frames = np.clip(grey + rng.normal(0, 4, (t, h, w, 3)), 0, 255).astype(np.uint8)
    colour = rng.integers(80, 255, 3)
    y = int(rng.integers(0, h - side))
    for i in range(t):
        x = int((w - side) * i / max(t - 1, 1))
        frames[i, y : y + side, x : x + side] = colour
    return frames


def make_split(split: Path, clips: int, hd: bool, seed: int = 0) -> Path:
    """Demo-like clips (96x96, 8 fps, 32 frames) or 1280x720 25 fps clips (4 s)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(clips):
        vid = f"{'hd' if hd else 'clip'}{i:04d}"
        if hd:
            write_video(split / "videos" / f"{vid}.mp4", _moving_square(rng, 100, 720, 1280, 160), 25)
        else:
            write_video(split / "videos" / f"{vid}.mp4", _moving_square(rng, 32, 96, 96, 20), 8)
        items.append({"video_id": vid, "captions": [f"a square crosses clip {i}"]})
    atomic_write_json(split / "annotations.json", items)
    return split


# ---- measurements -----------------------------------------------------------------------
Job = tuple[str, list[int], tuple[int, int]]


def plan(split: Path, frames: int, size: int) -> list[Job]:
    """What extraction will decode for every video: path, frame indices, decode size."""
    out = []
    for rec in read_annotations(split):
        path = str(split / "videos" / rec.video)
        starts, duration = frame_times(open_reader(path))
        dims = decode_dims(video_size(path), size) or (-1, -1)
        out.append((path, sorted(set(sample_indices(starts, frames, None, duration))), dims))
    return out


def bare_decode(jobs: list[Job], reduced: bool = True, threads: int = 1) -> float:
    """Seconds to open each video and decode its frames; nothing else."""
    import decord

    t0 = time.perf_counter()
    for path, idx, (width, height) in jobs:
        if not reduced:
            width = height = -1
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads, width=width, height=height)
        reader.get_batch(idx).asnumpy()
        del reader  # stop decord's read-ahead thread inside the timed region
    return time.perf_counter() - t0


def extraction(split: Path, cfg: ExtractConfig, workers: int, scratch: Path) -> float:
    """Seconds for a complete extraction into an empty store."""
    out = Path(tempfile.mkdtemp(dir=scratch))
    t0 = time.perf_counter()
    summary = extract_split(split, out, cfg, progress=False, workers=workers)
    seconds = time.perf_counter() - t0
    if summary["failed"] or summary["done"] != summary["videos"]:
        raise RuntimeError(f"extraction incomplete: {summary}")
    return seconds


def bench_split(name: str, split: Path, args: argparse.Namespace, scratch: Path) -> dict:
    cfg = ExtractConfig(frames=args.frames, size=args.size, timeout_s=600)
    jobs = plan(split, args.frames, args.size)
    bare_decode(jobs)  # warm the page cache and decord's libraries before anything is timed
    runs: dict[str, list[float]] = {k: [] for k in ("bare", "bare_full", "w0", "w1", "w2")}
    for _ in range(args.repeat):  # interleaved, so that load from other processes hits all alike
        runs["bare"].append(bare_decode(jobs))
        runs["bare_full"].append(bare_decode(jobs, reduced=False))
        for w in (0, 1, 2):
            runs[f"w{w}"].append(extraction(split, cfg, w, scratch))
    n = len(jobs)
    best = {k: min(v) for k, v in runs.items()}
    return {
        "split": name,
        "videos": n,
        "frames": args.frames,
        "size": args.size,
        "frames_decoded": sum(len(i) for _, i, _ in jobs),
        "decode_size": sorted({f"{w}x{h}" if w > 0 else "full" for _, _, (w, h) in jobs}),
        "seconds_best": {k: round(v, 4) for k, v in best.items()},
        "seconds_median": {k: round(statistics.median(v), 4) for k, v in runs.items()},
        "videos_per_s": {k: round(n / v, 1) for k, v in best.items()},
        "ratio_to_bare": {k: round(best[k] / best["bare"], 3) for k in ("bare_full", "w0", "w1", "w2")},
        "ratio_to_bare_full": {k: round(best[k] / best["bare_full"], 3) for k in ("w0", "w1", "w2")},
    }


def table(results: list[dict]) -> str:
    rows = [
        ("bare decode, same size", "bare"),
        ("bare decode, full size", "bare_full"),
        ("extract, in-process", "w0"),
        ("extract, 1 worker", "w1"),
        ("extract, 2 workers", "w2"),
    ]
    lines = []
    for r in results:
        size = ", ".join(r["decode_size"])
        lines.append(
            f"\n{r['split']}: {r['videos']} videos, {r['frames']} frames -> {r['size']} px (decoded at {size})"
        )
        lines.append(f"  {'':26} {'seconds':>8} {'videos/s':>9} {'x bare':>7} {'x full':>7}")
        for label, key in rows:
            sec = r["seconds_best"][key]
            ratio, full = sec / r["seconds_best"]["bare"], sec / r["seconds_best"]["bare_full"]
            lines.append(f"  {label:26} {sec:8.3f} {r['videos_per_s'][key]:9.1f} {ratio:7.2f} {full:7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="an existing split folder to use instead of generated demo-like clips")
    p.add_argument("--clips", type=int, default=200, help="generated demo-like clips (96x96, 32 frames)")
    p.add_argument("--hd-clips", type=int, default=4, help="generated 1280x720 25 fps clips (0: none)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        tmp = Path(tmp)
        splits = []
        t0 = time.perf_counter()
        if args.data:
            splits.append((Path(args.data).name, Path(args.data)))
        else:
            splits.append(("demo-like 96x96", make_split(tmp / "demo", args.clips, hd=False)))
        if args.hd_clips:
            splits.append(("1280x720 25 fps", make_split(tmp / "hd", args.hd_clips, hd=True)))
        print(f"inputs ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        results = [bench_split(name, split, args, tmp) for name, split in splits]

    print(table(results))
    payload = {
        "command": "python benchmarks/bench_extract.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "method": "best of interleaved repeats; bare = VideoReader(num_threads=1, width/height = the "
        "extraction's decode size) + get_batch of the same indices, single process; bare_full = same at "
        "full size; extraction = extract_split end to end into an empty store",
        "repeat": args.repeat,
        "results": results,
    }
    atomic_write_json(args.out, payload)
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
