"""Frame sampling (uniform in time), resizing and path rules of tempstop.data.video."""

from __future__ import annotations

import numpy as np
import pytest

from tempstop.data.extract import make_key
from tempstop.data.video import (
    clip_duration,
    frame_times,
    resize_center_crop,
    sample_indices,
    unsafe_path_reason,
)


def cfr(n: int, fps: float = 25.0) -> np.ndarray:
    return np.arange(n) / fps


@pytest.mark.parametrize("n,t", [(32, 8), (100, 12), (9, 8), (250, 1), (1000, 7)])
def test_constant_rate_matches_bin_centres(n, t):
    idx = sample_indices(cfr(n), t)
    expected = [int(np.floor((i + 0.5) * n / t)) for i in range(t)]
    assert idx == expected
    assert len(set(idx)) == t and idx == sorted(idx)


@pytest.mark.parametrize("n", [1, 3, 7, 8])
def test_short_clip_gives_every_frame_once(n):
    assert sample_indices(cfr(n), 8) == list(range(n))


def test_empty_clip_gives_nothing():
    assert sample_indices(np.array([]), 8) == []


def test_variable_rate_is_uniform_in_time():
    # 40 frames in the first second, then one frame per second for 6 s (e.g. a screen recording).
    starts = np.concatenate([np.arange(40) / 40.0, 1.0 + np.arange(6)])
    idx = sample_indices(starts, 7)
    picked = starts[idx]
    duration = clip_duration(starts)  # the last frame lasts as long as the one before: 1 s
    assert duration == pytest.approx(7.0)
    centres = (np.arange(7) + 0.5) * duration / 7
    # Each picked frame is the one on screen at the centre of its time bin.
    for t, c, i in zip(picked, centres, idx, strict=True):
        assert t <= c < (starts[i + 1] if i + 1 < len(starts) else duration)
    # Index-uniform sampling would spend most picks in the dense first second; time-uniform does not.
    assert np.sum(picked < 1.0) == 1


def test_segment_sampling_stays_inside_segment():
    starts = cfr(250, 25.0)  # 10 s
    idx = sample_indices(starts, 8, segment=(2.0, 4.0))
    assert len(idx) == 8 and all(50 <= i < 100 for i in idx)
    assert idx == sorted(idx) and len(set(idx)) == 8


def test_short_segment_gives_its_frames_only():
    starts = cfr(250, 25.0)
    assert sample_indices(starts, 8, segment=(1.0, 1.2)) == [25, 26, 27, 28, 29]


def test_segment_past_the_end_gives_last_frame():
    starts = cfr(50, 25.0)  # 2 s
    assert sample_indices(starts, 8, segment=(5.0, 9.0)) == [49]


def test_segment_clipped_to_clip_end():
    starts = cfr(50, 25.0)
    idx = sample_indices(starts, 4, segment=(1.0, 30.0))
    assert all(25 <= i < 50 for i in idx) and len(set(idx)) == 4


class _FakeReader:
    def __init__(self, stamps, fps=10.0):
        self.stamps, self.fps = stamps, fps

    def __len__(self):
        return len(self.stamps)

    def get_frame_timestamp(self, idx):
        return np.stack([self.stamps[idx], self.stamps[idx] + 0.1], axis=1)

    def get_avg_fps(self):
        return self.fps


def test_frame_times_uses_container_times():
    stamps = np.array([0.5, 0.6, 1.0, 3.0])
    starts, duration = frame_times(_FakeReader(stamps))
    np.testing.assert_allclose(starts, stamps - 0.5)
    assert duration == pytest.approx(2.6)  # end of the last frame (3.0 + 0.1) minus the first start


def test_frame_times_falls_back_to_fps_when_times_are_broken():
    stamps = np.array([0.0, 0.2, 0.1, np.nan])
    starts, duration = frame_times(_FakeReader(stamps, fps=4.0))
    np.testing.assert_allclose(starts, [0.0, 0.25, 0.5, 0.75])
    assert duration == pytest.approx(1.0)


def test_resize_center_crop_keeps_the_centre():
    frames = np.zeros((2, 90, 160, 3), np.uint8)
    frames[:, :, :35] = (255, 0, 0)  # left band, outside the centred 90x90 square
    frames[:, :, 125:] = (0, 0, 255)  # right band
    frames[:, :, 35:125] = (0, 200, 0)
    out = resize_center_crop(frames, 32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    inner = out[:, :, 1:-1].astype(int)  # filter taps may touch the bands at the very edge
    assert inner[..., 0].max() < 20 and inner[..., 2].max() < 20 and inner[..., 1].min() > 180


def test_resize_portrait_and_upscale():
    frames = np.random.default_rng(0).integers(0, 255, (3, 40, 20, 3), dtype=np.uint8)
    assert resize_center_crop(frames, 32).shape == (3, 32, 32, 3)


@pytest.mark.parametrize(
    "rel,bad",
    [("a.mp4", False), ("sub/a b.mp4", False), ("../x.mp4", True), ("a/../../x.mp4", True),
     ("/etc/passwd", True), ("C:/x.mp4", True), ("a\\b.mp4", True), ("", True), ("..a.mp4", False)],
)  # fmt: skip
def test_unsafe_paths(rel, bad):
    assert (unsafe_path_reason(rel) is not None) is bad


def test_keys_are_safe_and_distinct():
    assert make_key("video7") == "video7"
    odd = ["a b", "a_b", "a/b", "ä", "../x"]
    keys = [make_key(v) for v in odd]
    assert len(set(keys)) == len(keys)
    assert all(k.replace("-", "").replace("_", "").replace(".", "").isalnum() for k in keys)
