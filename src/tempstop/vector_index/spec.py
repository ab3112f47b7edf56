"""Which vector index to build: :class:`IndexSpec`, the choice by size, the override syntax.

Pure logic (no faiss here): a config or a command line can be checked without loading faiss.

Kinds (:data:`KINDS`):
    ``flat``      exact: ``IndexFlatIP`` in an ``IndexIDMap``; every query scans every vector.
    ``ivf-sq8``   ``IndexIVFScalarQuantizer``, 8 bits per dimension (4x smaller than float32),
                  coarse centroids from spherical k-means, ids kept in the inverted lists.
                  Scores are the quantised inner products (error ~1e-3).
    ``ivf-flat``  the same with float32 codes (exact scores in the probed lists, 4x the memory).

:func:`choose_index_spec`: ``flat`` below :data:`EXACT_MAX_N` vectors, ``ivf-sq8`` from there on;
``nlist`` = the power of two nearest 4 sqrt(n) (>= 39 training vectors per list), ``nprobe`` =
max(32, nlist / 64), k-means (10 iterations) on 40 vectors per list; then the build raises nprobe
if recall@10 on indexed vectors falls short of :data:`TARGET_RECALL` (the calibration in
:mod:`tempstop.vector_index.faiss_index`).
Why, measured on this 2-core AMD EPYC (``benchmarks/bench_index.py``: clustered synthetic unit
vectors, D=512, one search thread; the machine was shared): at 10^6, IVF4096-SQ8 builds in 4-6.5
min, takes 0.5 GB and with nprobe 64 reaches recall@10 0.981 (0.945 for text-like queries far from
every vector) at a single-query p50 of 2.8-3.9 ms; nprobe 32 would save ~1 ms but give 0.918 on
text-like queries. HNSW (M=32, efConstruction=64, efSearch=128), tried at 10^5: about the same
build time, faster queries (0.5 ms, recall 0.986), but recall 0.70 on text-like queries (IVF:
0.91) and ~4x the memory (float32 vectors + graph): not offered. IVF-flat: 4x the memory of SQ8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

EXACT_MAX_N = 50_000  # below this many vectors: exact search (flat)
MAX_K = 1024  # results per query (GPU faiss allows up to 2048)
KINDS = ("flat", "ivf-sq8", "ivf-flat")
IVF_PARAMS = ("nlist", "nprobe", "train_size", "niter", "calibrate")
TARGET_RECALL = 0.95  # what nprobe calibration aims for (recall@10 against exact search)
_MIN_PER_LIST = 39  # faiss' minimum training points per centroid


@dataclass(frozen=True)
class IndexSpec:
    """What to build: ``kind`` (one of :data:`KINDS`), its integer ``params``, and why (``reason``).

    Round-trips through JSON: ``IndexSpec.from_dict(json.loads(json.dumps(spec.to_dict())))``.
    """

    kind: str
    params: dict[str, int] = field(default_factory=dict)
    reason: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown vector index kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        for key, value in self.params.items():
            if key not in (IVF_PARAMS if self.kind.startswith("ivf") else ()):
                allowed = ", ".join(IVF_PARAMS) if self.kind.startswith("ivf") else "none"
                raise ValueError(f"{self.kind}: unknown parameter {key!r} (allowed: {allowed})")
            low = 0 if key == "calibrate" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{self.kind}: {key} must be an integer >= {low}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": dict(self.params), "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexSpec:
        return cls(str(data["kind"]), {str(k): v for k, v in (data.get("params") or {}).items()},
                   str(data.get("reason", "")))  # fmt: skip


def auto_params(kind: str, n: int) -> dict[str, int]:
    """Default parameters of ``kind`` for ``n`` vectors (see the module docstring)."""
    if kind.startswith("ivf"):
        nlist = max(1, min(2 ** round(math.log2(max(4 * math.sqrt(n), 1))), n // _MIN_PER_LIST))
        return {"nlist": nlist, "nprobe": min(nlist, max(32, nlist // 64)),
                "train_size": max(1, min(n, 40 * nlist)), "niter": 10, "calibrate": 256}  # fmt: skip
    return {}


def parse_index_spec(text: str) -> tuple[str, dict[str, int]]:
    """``"ivf-sq8"`` or ``"ivf-sq8:nlist=1024,nprobe=32"`` -> ``(kind, params)``, checked as
    :class:`IndexSpec` checks them; a bad kind, key or value raises a one-line ``ValueError``.

    ``"auto"`` is not a kind: :func:`choose_index_spec` takes it (and None) to mean "by size".
    """
    kind, _, rest = str(text).strip().lower().partition(":")
    kind = kind.strip()
    params: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not value.strip().isdigit():
            raise ValueError(f"vector index override {text!r}: expected key=integer, got {item!r}")
        params[key.strip()] = int(value)
    IndexSpec(kind, params)  # validates kind and parameter names
    return kind, params


def _override_parts(override: str | dict | IndexSpec) -> tuple[str, dict[str, int]]:
    """``(kind, params)`` of an override given as text, a spec dict or an :class:`IndexSpec`."""
    if isinstance(override, IndexSpec):
        return override.kind, dict(override.params)
    if isinstance(override, dict):
        spec = IndexSpec.from_dict(override)
        return spec.kind, dict(spec.params)
    return parse_index_spec(override)


def choose_index_spec(n: int, dim: int, override: str | dict | IndexSpec | None = None) -> IndexSpec:
    """The index for ``n`` vectors of dimension ``dim``: ``flat`` below :data:`EXACT_MAX_N`,
    ``ivf-sq8`` from there on, or ``override`` (``"auto"``/None: by size) with its missing
    parameters filled in for ``n``. An IVF override on an empty collection gives ``flat``
    (there is nothing to train on)."""
    if n < 0 or dim < 1:
        raise ValueError(f"need n >= 0 and dim >= 1, got n={n}, dim={dim}")
    if override is not None and str(override).strip().lower() not in ("", "auto"):
        kind, params = _override_parts(override)
        if kind.startswith("ivf") and n == 0:
            return IndexSpec("flat", {}, f"override {kind}: no vectors to train on, exact search")
        if "nprobe" in params:  # given: keep it
            params.setdefault("calibrate", 0)
        return IndexSpec(kind, {**auto_params(kind, n), **params}, f"override {override}")
    if n < EXACT_MAX_N:
        return IndexSpec("flat", {}, f"n={n} < {EXACT_MAX_N}: exact search")
    return IndexSpec("ivf-sq8", auto_params("ivf-sq8", n), f"n={n} >= {EXACT_MAX_N}: approximate search")
