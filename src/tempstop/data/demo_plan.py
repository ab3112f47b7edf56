"""The demo benchmark's plan (docs/design.md §6): objects, captions, splits and each clip's
render parameters, before any pixel is drawn (:mod:`tempstop.data.demo_render` draws them).

Meanings and splits. A caption's meaning is the ordered event tuple (c1, s1, m1, c2, s2, m2).
With 18 objects (6 colours x 3 shapes) there are 18 * 17 * 16 = 4896 meanings, and each
quadruple covers exactly four of them. Grouping meanings into quadruple "units" (an unordered
object pair and a motion pair up to reversing both motions) partitions them into
153 * 8 = 1224 units. Splits receive disjoint sets of units, so no meaning is in two splits
(and none repeats inside val or test). Units are shuffled by seed; val and test are drawn
first, so changing the training size leaves them unchanged.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np

from tempstop.config import DemoConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (230, 220, 40),
    "purple": (165, 55, 205),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down")
REVERSE = {"left": "right", "right": "left", "up": "down", "down": "up"}
TEMPLATES = (
    "a {c1} {s1} moves {m1}, then a {c2} {s2} moves {m2}",
    "first a {c1} {s1} moves {m1} and then a {c2} {s2} moves {m2}",
    "after a {c1} {s1} moves {m1}, a {c2} {s2} moves {m2}",
)
# Geometry at the reference size of 96 px; scaled linearly for other sizes.
_REF_SIZE = 96
PATH = (22.0, 74.0)  # a move runs between these coordinates (px)
_RADIUS = (8.0, 14.0)
_BACKGROUND = (20, 60)
_COLOUR_JITTER = 12

Object = tuple[str, str]  # (colour, shape)
Event = tuple[str, str, str]  # (colour, shape, motion)
Unit = tuple[Object, Object, str, str]  # (A, B, m1, m2): one quadruple's meanings


def all_objects() -> list[Object]:
    """The 18 objects, in a fixed order."""
    return [(c, s) for c in COLOURS for s in SHAPES]


def all_units() -> list[Unit]:
    """Every quadruple unit once: unordered object pair x motion pair up to double reversal.

    The canonical form has A before B in :func:`all_objects` order and m1 in {left, up}
    (the other representative is (rev m1, rev m2)).
    """
    objects = all_objects()
    motion_pairs = [(m1, m2) for m1 in ("left", "up") for m2 in MOTIONS]
    return [(a, b, m1, m2) for a, b in itertools.combinations(objects, 2) for m1, m2 in motion_pairs]


def quadruple_events(unit: Unit) -> list[tuple[Event, Event]]:
    """The four clips' event pairs of a unit, in the order of the module docstring."""
    a, b, m1, m2 = unit
    r1, r2 = REVERSE[m1], REVERSE[m2]
    return [
        ((*a, m1), (*b, m2)),
        ((*a, r1), (*b, r2)),
        ((*b, m2), (*a, m1)),
        ((*b, r2), (*a, r1)),
    ]


def caption(events: tuple[Event, Event], template: int) -> str:
    """Render one caption from the grammar."""
    (c1, s1, m1), (c2, s2, m2) = events
    return TEMPLATES[template].format(c1=c1, s1=s1, m1=m1, c2=c2, s2=s2, m2=m2)


def assign_units(cfg: DemoConfig) -> dict[str, list[Unit]]:
    """Disjoint units per split, deterministic by ``cfg.seed``.

    Val and test take theirs first; training takes the rest and, when it asks for more
    quadruples than remain, cycles through its own units (new renders, same meanings), so
    splits never share a meaning whatever the sizes.
    """
    units = all_units()
    order = np.random.default_rng([cfg.seed, 0x5B17]).permutation(len(units))
    shuffled = [units[i] for i in order]
    held_out = cfg.val_quadruples + cfg.test_quadruples
    if held_out >= len(units):
        raise ValueError(
            f"demo.val_quadruples + demo.test_quadruples = {held_out}, but only {len(units)} "
            "distinct quadruples exist and training needs at least one"
        )
    val = shuffled[: cfg.val_quadruples]
    test = shuffled[cfg.val_quadruples : held_out]
    pool = shuffled[held_out:]
    if cfg.train_quadruples > len(pool):
        log.warning(
            "demo.train_quadruples=%d exceeds the %d distinct quadruples left for training: "
            "meanings repeat (with new renders) inside train",
            cfg.train_quadruples,
            len(pool),
        )
    train = [pool[i % len(pool)] for i in range(cfg.train_quadruples)]
    return {"train": train, "val": val, "test": test}


def scale(cfg: DemoConfig) -> float:
    """Pixels of ``cfg.size`` per pixel of the 96 px reference geometry."""
    return cfg.size / _REF_SIZE


def num_frames(cfg: DemoConfig) -> int:
    """Frames per clip (32 at the defaults: 8 fps x 4 s)."""
    return max(2, int(round(cfg.fps * cfg.seconds)))


def _plan_quadruple(cfg: DemoConfig, split: str, q: int, unit: Unit, width: int) -> list[dict]:
    """Annotation items (with their render parameters) for the four clips of a quadruple."""
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), q])
    a, b, m1, m2 = unit
    # Which object plays "A" and which direction comes first is random; the set of
    # meanings of the unit stays the same.
    if rng.random() < 0.5:
        a, b, m1, m2 = b, a, m2, m1
    if rng.random() < 0.5:
        m1, m2 = REVERSE[m1], REVERSE[m2]
    s = scale(cfg)
    background = int(rng.integers(_BACKGROUND[0], _BACKGROUND[1] + 1))
    # Per object: fixed across the quadruple so the four clips hold the same frames.
    looks = {}
    for obj in (a, b):
        rgb = np.clip(
            np.array(COLOURS[obj[0]]) + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3), 0, 255
        )
        looks[obj] = {
            "radius": round(float(rng.uniform(*_RADIUS)) * s, 2),
            "offset": round(float(rng.uniform(*PATH)) * s, 2),
            "rgb": [int(v) for v in rgb],
        }
    n_caps = cfg.train_captions if split == "train" else 1
    items = []
    for k, events in enumerate(quadruple_events((a, b, m1, m2))):
        templates = rng.permutation(len(TEMPLATES))[:n_caps]
        video_id = f"{split}_{q:0{width}d}_{k}"
        items.append(
            {
                "video_id": video_id,
                "video": f"{video_id}.mp4",
                "captions": [caption(events, int(t)) for t in templates],
                "quadruple": q,
                "variant": k,
                "events": [list(e) for e in events],
                "render": {
                    "background": background,
                    "noise_seed": int(rng.integers(0, 2**31 - 1)),
                    "objects": [looks[e[:2]] for e in events],
                },
            }
        )
    return items


def plan_split(cfg: DemoConfig, split: str, units: list[Unit]) -> list[dict]:
    """All annotation items of a split, in quadruple order."""
    if cfg.train_captions > len(TEMPLATES):
        raise ValueError(
            f"demo.train_captions={cfg.train_captions}: the grammar has only {len(TEMPLATES)} "
            "caption templates, so at most that many distinct paraphrases exist"
        )
    width = max(4, len(str(len(units) - 1)))
    return [item for q, unit in enumerate(units) for item in _plan_quadruple(cfg, split, q, unit, width)]
