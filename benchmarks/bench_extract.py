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
decoding process as bare) and ``2``; with workers, small clips go to them eight to a message
(extraction's default), and once more one per message, the cost that batching removes. One
decoder thread everywhere. Timings are the best of
``--repeat`` interleaved runs (the machine may be shared); medians are stored too. CPU time
counts this process, its children and the worker processes (children of multiprocessing's
fork server). As bare decoding runs with decord already imported, extraction runs with the
worker pool's fork server already started; the program's first run (paying that start-up,
~0.2 s) is reported separately.

    python benchmarks/bench_extract.py                    # 200 demo-like clips + 6 HD clips
    python benchmarks/bench_extract.py --data data/demo/val --hd-clips 0

Writes a table to stdout and JSON to benchmarks/results/extract.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from multiprocessing import forkserver
from pathlib import Path

import decord
import numpy as np

import tempstop.data.extract_jobs as jobs_module
from tempstop.config import ExtractConfig
from tempstop.data.annotations import read_annotations
from tempstop.data.extract import extract_split
from tempstop.data.mp4 import write_video
from tempstop.data.video import decode_dims, frame_times, open_reader, sample_indices, video_size
from tempstop.utils import atomic_write_json
from tempstop_pipelines.env import telemetry_off

RESULTS = Path(__file__).resolve().parent / "results" / "extract.json"
#: The timed extractions: key -> (worker processes, small videos per worker message; None:
#: extraction's default). "_single" rows send one video per message, as before batching.
EXTRACTIONS = {"w0": (0, None), "w1": (1, None), "w1_single": (1, 1), "w2": (2, None), "w2_single": (2, 1)}


# ---- inputs -----------------------------------------------------------------------------
def _moving_square(rng, t: int, h: int, w: int, side: int) -> np.ndarray:
    """A textured grey background with a coloured square crossing it: uint8 [t, h, w, 3].

    The texture is fixed and each frame gets a little fresh noise, so the encoder has real
    detail to code (a flat clip decodes unrealistically fast).
    """
    base = rng.integers(20, 60, (h, w, 3), dtype=np.uint8)
    frames = np.empty((t, h, w, 3), np.uint8)
    colour = rng.integers(80, 255, 3).astype(np.uint8)
    y = int(rng.integers(0, h - side))
    for i in range(t):
        frames[i] = base + rng.integers(0, 16, (h, w, 3), dtype=np.uint8)
        x = int((w - side) * i / max(t - 1, 1))
        frames[i, y : y + side, x : x + side] = colour
    return frames


def make_split(split: Path, clips: int, hd: bool, seed: int = 0) -> Path:
    """Demo-like clips (96x96, 8 fps, 32 frames) or 1280x720 25 fps clips (6 s).

    An existing split with as many clips is reused (``--inputs`` keeps them between runs).
    """
    ann = split / "annotations.json"
    if ann.is_file() and len(json.loads(ann.read_text())) == clips:
        return split
    rng = np.random.default_rng(seed)
    items = []
    for i in range(clips):
        vid = f"{'hd' if hd else 'clip'}{i:04d}"
        if hd:
            write_video(split / "videos" / f"{vid}.mp4", _moving_square(rng, 150, 720, 1280, 160), 25)
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


def _forkserver_cpu() -> float:
    """CPU seconds of the multiprocessing fork server and the workers it has reaped.

    Workers are the fork server's children, not ours, so RUSAGE_CHILDREN misses them; the
    server's /proc entry holds its own (utime, stime) and its children's (cutime, cstime).
    """
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, its children and the fork server's workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + _forkserver_cpu()
    return time.perf_counter(), cpu


def _since(start: tuple[float, float]) -> tuple[float, float]:
    now = _clock()
    return now[0] - start[0], now[1] - start[1]


def bare_decode(jobs: list[Job], reduced: bool = True, threads: int = 1) -> tuple[float, float]:
    """(wall, CPU) seconds to open each video and decode its frames; nothing else."""
    t0 = _clock()
    for path, idx, (width, height) in jobs:
        if not reduced:
            width = height = -1
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads, width=width, height=height)
        reader.get_batch(idx).asnumpy()
        del reader  # stop decord's read-ahead thread inside the timed region
    return _since(t0)


def extraction(
    split: Path, cfg: ExtractConfig, frames: int, workers: int, scratch: Path, batch: int | None = None
) -> tuple[float, float]:
    """(wall, CPU incl. worker processes) seconds for a complete extraction into an empty store;
    ``batch``: small videos per worker message (default: extraction's own, ``BATCH_VIDEOS``)."""
    default = jobs_module.BATCH_VIDEOS
    out = Path(tempfile.mkdtemp(dir=scratch))
    jobs_module.BATCH_VIDEOS = batch or default
    try:
        t0 = _clock()
        summary = extract_split(split, out, cfg, frames, progress=False, workers=workers)
        spent = _since(t0)
    finally:
        jobs_module.BATCH_VIDEOS = default
    if summary["failed"] or summary["done"] != summary["videos"]:
        raise RuntimeError(f"extraction incomplete: {summary}")
    return spent


def bench_split(name: str, split: Path, args: argparse.Namespace, scratch: Path) -> dict:
    cfg = ExtractConfig(size=args.size, timeout_s=600)
    jobs = plan(split, args.frames, args.size)
    bare_decode(jobs)  # warm the page cache and decord's libraries before anything is timed
    # Likewise start the worker pool's fork server once (numpy, decord imported); a cold
    # start is what one `tempstop extract` run pays on top, reported on its own.
    cold = extraction(split, cfg, args.frames, 1, scratch)
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in ("bare", "bare_full", *EXTRACTIONS)}
    for _ in range(args.repeat):  # interleaved, so that load from other processes hits all alike
        runs["bare"].append(bare_decode(jobs))
        runs["bare_full"].append(bare_decode(jobs, reduced=False))
        for key, (w, batch) in EXTRACTIONS.items():
            runs[key].append(extraction(split, cfg, args.frames, w, scratch, batch))
    n = len(jobs)
    best = {k: min(wall for wall, _ in v) for k, v in runs.items()}
    cpu = {k: min(c for _, c in v) for k, v in runs.items()}
    return {
        "split": name,
        "videos": n,
        "frames": args.frames,
        "size": args.size,
        "frames_decoded": sum(len(i) for _, i, _ in jobs),
        "decode_size": sorted({f"{w}x{h}" if w > 0 else "full" for _, _, (w, h) in jobs}),
        "seconds_best": {k: round(v, 4) for k, v in best.items()},
        "seconds_median": {k: round(statistics.median(w for w, _ in v), 4) for k, v in runs.items()},
        "cpu_seconds_best": {k: round(v, 4) for k, v in cpu.items()},
        "cpu_ratio_to_bare": {k: round(cpu[k] / cpu["bare"], 3) for k in ("bare_full", *EXTRACTIONS)},
        # Ratio within each repeat (runs minutes apart see different load), then the median.
        "cpu_ratio_to_bare_median": {
            k: round(
                statistics.median(c / b for (_, c), (_, b) in zip(runs[k], runs["bare"], strict=True)), 3
            )
            for k in ("bare_full", *EXTRACTIONS)
        },
        "first_run_1_worker": {"wall_s": round(cold[0], 4), "cpu_s": round(cold[1], 4)},
        "videos_per_s": {k: round(n / v, 1) for k, v in best.items()},
        "ratio_to_bare": {k: round(best[k] / best["bare"], 3) for k in ("bare_full", *EXTRACTIONS)},
        "ratio_to_bare_full": {k: round(best[k] / best["bare_full"], 3) for k in EXTRACTIONS},
    }


def table(results: list[dict]) -> str:
    rows = [
        ("bare decode, same size", "bare"),
        ("bare decode, full size", "bare_full"),
        ("extract, in-process", "w0"),
        ("extract, 1 worker", "w1"),
        ("  same, 1 video a message", "w1_single"),
        ("extract, 2 workers", "w2"),
        ("  same, 1 video a message", "w2_single"),
    ]
    lines = []
    for r in results:
        size = ", ".join(r["decode_size"])
        lines.append(
            f"\n{r['split']}: {r['videos']} videos, {r['frames']} frames -> {r['size']} px (decoded at {size})"
        )
        head = f"{'wall s':>8} {'videos/s':>9} {'x bare':>7} {'x full':>7} {'CPU s':>8} {'CPU x bare':>10} {'(median)':>9}"
        lines.append(f"  {'':26} {head}")
        for label, key in rows:
            sec, cpu = r["seconds_best"][key], r["cpu_seconds_best"][key]
            ratio, full = sec / r["seconds_best"]["bare"], sec / r["seconds_best"]["bare_full"]
            cpu_ratio = cpu / r["cpu_seconds_best"]["bare"]
            med = r["cpu_ratio_to_bare_median"].get(key, 1.0)
            lines.append(
                f"  {label:26} {sec:8.3f} {r['videos_per_s'][key]:9.1f} {ratio:7.2f} {full:7.2f} "
                f"{cpu:8.3f} {cpu_ratio:10.2f} {med:9.2f}"
            )
        cold = r["first_run_1_worker"]
        lines.append(
            f"  first extraction of the program, 1 worker (incl. fork server start-up): {cold['wall_s']:.3f} s wall"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="an existing split folder to use instead of generated demo-like clips")
    p.add_argument("--clips", type=int, default=200, help="generated demo-like clips (96x96, 32 frames)")
    p.add_argument("--hd-clips", type=int, default=6, help="generated 1280x720 25 fps 6 s clips (0: none)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--inputs", help="folder to keep generated clips in between runs (default: a temporary one)"
    )
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    telemetry_off()
    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        tmp = Path(tmp)
        inputs = Path(args.inputs) if args.inputs else tmp
        splits = []
        t0 = time.perf_counter()
        if args.data:
            splits.append((Path(args.data).name, Path(args.data)))
        else:
            splits.append(("demo-like 96x96", make_split(inputs / f"demo{args.clips}", args.clips, hd=False)))
        if args.hd_clips:
            splits.append(
                ("1280x720 25 fps", make_split(inputs / f"hd{args.hd_clips}", args.hd_clips, hd=True))
            )
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
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # other jobs on a shared machine
        },
        "method": "best of interleaved repeats (wall and CPU time, CPU including worker processes); bare = VideoReader(num_threads=1, width/height = the "
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
