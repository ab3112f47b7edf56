"""Writing H.264 mp4 files (demo data, test fixtures) with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tempstop.utils import atomic_write


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    crf: int = 23,
    pts_seconds: list[float] | None = None,
) -> None:
    """Encode uint8 RGB frames ``[T, H, W, 3]`` as an H.264 mp4 (yuv420p), atomically.

    ``pts_seconds`` gives explicit presentation times (for variable-frame-rate clips);
    by default frame ``i`` is shown at ``i / fps``. H and W must be even (yuv420p).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {w}x{h}")

    def write(tmp: Path) -> None:
        # The format is named explicitly: the temporary name does not end in .mp4.
        with av.open(str(tmp), mode="w", format="mp4") as container:
            rate = Fraction(fps).limit_denominator(1000)
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "veryfast", **_x264_cpu_cap()}
            if pts_seconds is not None:
                stream.codec_context.time_base = Fraction(1, 1000)
            for i in range(t):
                frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
                if pts_seconds is not None:
                    frame.pts = int(round(pts_seconds[i] * 1000))
                    frame.time_base = Fraction(1, 1000)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    atomic_write(path, write)


def _x264_cpu_cap() -> dict[str, str]:
    """Keep x264 off its AVX-512 kernels, which make small clips non-deterministic.

    On AVX-512 CPUs the same frames encoded twice could give different bytes *and* different
    decoded pixels (up to ~50 grey levels in a block), depending on what the process had
    encoded before: a kernel reads memory it never wrote (seen with 96x96 clips; mbtree=0 or
    asm=0 also cure it). Capping at AVX2 costs nothing measurable. The cap is set only where
    the CPU has AVX-512, because x264's ``asm`` option overrides detection: naming AVX2 on a
    CPU without it would crash with an illegal instruction.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            has_avx512 = "avx512" in f.read()
    except OSError:  # not Linux: leave x264's own detection alone
        return {}
    return {"x264-params": "asm=AVX2"} if has_avx512 else {}

