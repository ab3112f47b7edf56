"""The faiss side of :mod:`tempstop.vector_index`: build, save, load, describe and search.

Memory-mapped loading (:func:`load_index`, faiss >= 1.11 ``IO_FLAG_MMAP_IFC``): the vectors of
``flat`` and the inverted lists (codes and ids) of ``ivf-*`` stay in the file's page cache
(shared between processes, nothing copied; the IVF centroids too); only ``flat``'s id map (8 bytes
per vector) is read into memory. A memory-mapped index is read-only (:func:`add_vectors` refuses
it: faiss would abort the process).

GPU: when ``faiss.get_num_gpus() > 0`` (a faiss-gpu build), k-means trains on the GPU and
unfiltered searches run on a GPU copy; any failure falls back to the CPU silently (logged at
debug level). Filtered searches run on the CPU index.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from tempstop.utils import atomic_write
from tempstop.vector_index.spec import MAX_K, TARGET_RECALL, IndexSpec, choose_index_spec

log = logging.getLogger(__name__)

_BATCH = 65_536  # rows per add / finiteness check


@dataclass(eq=False)
class VectorIndex:
    """A faiss index (``index``, always on the CPU) with what was built or loaded (``spec``)."""

    index: Any
    spec: IndexSpec
    mmap: bool = False
    path: str | None = None
    use_gpu: bool = False
    _gpu: Any = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)


# ---- validation ---------------------------------------------------------------------------
def _check_vectors(x: Any, dim: int | None, what: str) -> np.ndarray:
    """A C-contiguous float32 ``[N, D]`` array with finite values (and ``D == dim``)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{what} must be a 2-D array [N, D] with D >= 1, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what} have dimension {x.shape[1]}, the index has {dim}")
    for start in range(0, len(x), _BATCH):
        bad = ~np.isfinite(x[start : start + _BATCH]).all(axis=1)
        if bad.any():
            raise ValueError(f"{what}: row {start + int(np.argmax(bad))} is not finite (NaN or inf)")
    return x


def _check_ids(ids: Any, n: int) -> np.ndarray:
    """int64 ``[n]``, unique, >= 0 (``None``: ``0..n-1``)."""
    if ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(ids)
    if ids.shape != (n,) or (n and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"ids must be {n} integers (one per vector), got shape {ids.shape}, {ids.dtype}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if n and ids.min() < 0:
        raise ValueError(f"ids must be >= 0 (-1 means 'no hit'), got {int(ids.min())}")
    if len(np.unique(ids)) != n:
        raise ValueError("ids must be unique")
    return ids


# ---- building -----------------------------------------------------------------------------
def _new_index(spec: IndexSpec, dim: int) -> Any:
    """An empty faiss index for ``spec`` (IVF: untrained)."""
    p, ip = spec.params, faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat":
        return faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    quantizer = faiss.IndexFlatIP(dim)
    if spec.kind == "ivf-flat":
        index = faiss.IndexIVFFlat(quantizer, dim, p["nlist"], ip)
    else:
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, p["nlist"], faiss.ScalarQuantizer.QT_8bit, ip)
    index.nprobe = p["nprobe"]
    return index


def _train_ivf(index: Any, x: np.ndarray, spec: IndexSpec, gpu: bool) -> None:
    """Spherical k-means on a fixed random sample -> the coarse centroids, then the SQ ranges."""
    nlist = spec.params["nlist"]
    if len(x) < nlist:
        raise ValueError(
            f"{spec.kind} with nlist={nlist} needs at least {nlist} vectors to train, got {len(x)}"
        )
    m = min(len(x), spec.params["train_size"])
    sample = x if m == len(x) else x[np.sort(np.random.default_rng(0).choice(len(x), m, replace=False))]
    kw = dict(niter=spec.params["niter"], spherical=True, seed=1, min_points_per_centroid=1,
              max_points_per_centroid=max(1, len(sample) // nlist + 1), verbose=False)  # fmt: skip
    kmeans = faiss.Kmeans(x.shape[1], nlist, gpu=gpu, **kw)
    try:
        kmeans.train(sample)
    except Exception as err:  # no usable GPU after all
        if not gpu:
            raise
        log.debug("GPU k-means failed (%s); training on the CPU", err)
        kmeans = faiss.Kmeans(x.shape[1], nlist, **kw)
        kmeans.train(sample)
    index.quantizer.add(kmeans.centroids)
    index.train(sample)  # coarse quantiser already trained: only the scalar quantiser's ranges


def build_index(vectors: Any, ids: Any = None, spec: IndexSpec | None = None, *, use_gpu: bool | None = None) -> VectorIndex:  # fmt: skip
    """An index over ``vectors`` (float32 ``[N, D]``, L2-normalised) with ``ids`` (int64 ``[N]``,
    unique, >= 0; None: ``0..N-1``). ``spec`` None: :func:`choose_index_spec` by size.
    ``use_gpu`` None: when faiss sees a GPU."""
    x = _check_vectors(vectors, None, "vectors")
    ids = _check_ids(ids, len(x))
    spec = spec or choose_index_spec(len(x), x.shape[1])
    gpu = _gpu_available() if use_gpu is None else bool(use_gpu and _gpu_available())
    index = VectorIndex(_new_index(spec, x.shape[1]), spec, use_gpu=gpu)
    if spec.kind.startswith("ivf"):
        _train_ivf(index.index, x, spec, gpu)
    add_vectors(index, x, ids)
    if spec.kind.startswith("ivf") and spec.params.get("calibrate", 0) > 0:
        index.spec = _calibrate_nprobe(index, x, ids)
    return index


def _calibrate_nprobe(index: VectorIndex, x: np.ndarray, ids: np.ndarray) -> IndexSpec:
    """Raise nprobe (x2, x4, x8, at most nlist) until recall@10 reaches :data:`TARGET_RECALL` on
    ``calibrate`` indexed vectors used as queries (themselves excluded) against exact search.

    Only ever raises: indexed vectors are easier queries than text (they lie in their own list),
    so a lower nprobe that passes here could fail real queries; a harder collection than the
    benchmark's, where the default falls short, gets more probes."""
    spec, nlist = index.spec, index.spec.params["nlist"]
    m = min(spec.params["calibrate"], len(x) - 11)
    if m < 1:
        return spec
    rows = np.sort(np.random.default_rng(1).choice(len(x), m, replace=False))
    q, self_ids = x[rows], ids[rows]
    _, exact = faiss.knn(q, x, 11, metric=faiss.METRIC_INNER_PRODUCT)  # [m, 11] rows, self first

    def others(found: np.ndarray) -> list[set]:  # top 10 without the query itself
        return [set([i for i in r if i != s][:10]) for r, s in zip(found.tolist(), self_ids.tolist(), strict=True)]  # fmt: skip

    truth = others(ids[exact])
    for nprobe in sorted({min(nlist, spec.params["nprobe"] * f) for f in (1, 2, 4, 8)}):
        index.index.nprobe = nprobe
        found = others(index.index.search(q, 11)[1])
        recall = float(np.mean([len(f & t) / max(1, len(t)) for f, t in zip(found, truth, strict=True)]))
        if recall >= TARGET_RECALL:
            break
    reason = f"{spec.reason}; nprobe {nprobe}: recall@10 {recall:.3f} on {m} indexed vectors as queries"
    if recall < TARGET_RECALL:  # e.g. vectors without cluster structure: consider nprobe or flat
        log.warning("vector index: %s, below the target %.2f", reason, TARGET_RECALL)
    return IndexSpec(spec.kind, {**spec.params, "nprobe": nprobe}, reason)


def add_vectors(index: VectorIndex, vectors: Any, ids: Any) -> None:
    """Add a batch (``[B, D]`` float32, ``[B]`` int64 ids not yet in the index) to ``index``."""
    if index.mmap:
        raise ValueError(
            f"{index.path}: a memory-mapped index is read-only; load_index(path, mmap=False) to add"
        )
    x = _check_vectors(vectors, index.dim, "vectors")
    ids = _check_ids(ids, len(x))
    for start in range(0, len(x), _BATCH):
        index.index.add_with_ids(x[start : start + _BATCH], ids[start : start + _BATCH])
    index._gpu = None  # stale


# ---- saving and loading -------------------------------------------------------------------
def save_index(index: VectorIndex, path: str | Path) -> Path:
    """Write ``index`` to ``path`` atomically (temporary file + rename: readers, including ones
    that memory-mapped the old file, never see half a file)."""
    atomic_write(path, lambda tmp: faiss.write_index(index.index, str(tmp)))
    return Path(path)


def load_index(path: str | Path, mmap: bool = True, *, use_gpu: bool | None = None) -> VectorIndex:
    """Read an index written by :func:`save_index`; ``mmap``: memory-map its vectors or codes
    (read-only; see the module docstring for what stays in memory)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such vector index file")
    mmap_flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None)  # faiss >= 1.11: flat and IVF
    flags = (mmap_flag | faiss.IO_FLAG_READ_ONLY) if mmap and mmap_flag is not None else 0
    try:
        raw = faiss.read_index(str(path), flags)
    except RuntimeError as err:
        raise ValueError(
            f"{path}: not a readable faiss index ({str(err).strip().splitlines()[-1]})"
        ) from None
    gpu = _gpu_available() if use_gpu is None else bool(use_gpu and _gpu_available())
    return VectorIndex(raw, _spec_of(raw), mmap=bool(flags), path=str(path), use_gpu=gpu)


# ---- introspection ------------------------------------------------------------------------
def _parts(raw: Any) -> tuple[str, Any]:
    """(kind, the index under any IDMap) of a faiss index written by this module."""
    inner = faiss.downcast_index(raw.index) if isinstance(raw, faiss.IndexIDMap) else raw
    if isinstance(inner, faiss.IndexFlat):
        return "flat", inner
    if isinstance(inner, faiss.IndexIVFScalarQuantizer) and inner.sq.qtype == faiss.ScalarQuantizer.QT_8bit:
        return "ivf-sq8", inner
    if isinstance(inner, faiss.IndexIVFFlat):
        return "ivf-flat", inner
    raise ValueError(f"unsupported faiss index {type(inner).__name__} (not written by tempstop.vector_index)")


def _spec_of(raw: Any) -> IndexSpec:
    """The spec a loaded index was built with (training-only parameters are not stored)."""
    kind, inner = _parts(raw)
    params = {"nlist": int(inner.nlist), "nprobe": int(inner.nprobe)} if kind.startswith("ivf") else {}
    return IndexSpec(kind, params, "loaded")


def _nbytes(raw: Any) -> int:
    """Bytes of the index's data (vectors or codes, ids, centroids, graph)."""
    kind, inner = _parts(raw)
    n, d = int(raw.ntotal), int(raw.d)
    if kind == "flat":
        return n * d * 4 + n * 8
    return n * int(inner.code_size) + n * 8 + int(inner.nlist) * d * 4


def describe(index: VectorIndex) -> dict[str, Any]:
    """``{type, faiss, params, n, dim, metric, bytes, mmap, gpu, path}`` for /metrics and reports;
    ``bytes`` counts the index's data whether it lies in memory or in a memory-mapped file."""
    kind, inner = _parts(index.index)
    outer = type(index.index).__name__
    return {"type": kind, "faiss": outer if outer == type(inner).__name__ else f"{outer}({type(inner).__name__})",
            "params": {**index.spec.params, **_spec_of(index.index).params},
            "n": len(index), "dim": index.dim, "metric": "inner_product", "bytes": _nbytes(index.index),
            "mmap": index.mmap, "gpu": index._gpu is not None and index._gpu is not False, "path": index.path}  # fmt: skip


# ---- searching ----------------------------------------------------------------------------
def _gpu_available() -> bool:
    try:
        return hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0
    except Exception:  # a broken CUDA set-up: CPU
        return False


def _gpu_copy(index: VectorIndex) -> Any:
    """The GPU copy for unfiltered searches (made on first use), or None: CPU."""
    if not index.use_gpu or index._gpu is False:
        return None
    if index._gpu is None:
        try:
            index._gpu = faiss.index_cpu_to_all_gpus(index.index)
        except Exception as err:
            log.debug("no GPU copy of the vector index (%s); searching on the CPU", err)
            index._gpu = False
            return None
    return index._gpu


def _selector(allowed: Any) -> tuple[Any, int, np.ndarray]:
    """(faiss IDSelector, number of allowed ids, the array it reads: keep it alive)."""
    allowed = np.asarray(list(allowed) if isinstance(allowed, set | frozenset) else allowed)
    if allowed.dtype == np.bool_:
        if allowed.ndim != 1:
            raise ValueError(f"an allowed-id mask must be 1-D (mask[id]), got shape {allowed.shape}")
        mask = allowed
    else:
        if allowed.size and not np.issubdtype(allowed.dtype, np.integer):
            raise ValueError(f"allowed ids must be integers or a boolean mask, got dtype {allowed.dtype}")
        ids = np.unique(allowed.astype(np.int64).ravel())
        if ids.size and ids[0] < 0:
            raise ValueError(f"allowed ids must be >= 0, got {int(ids[0])}")
        if ids.size and ids[-1] >= 1 << 30:  # too sparse for a bitmap
            return faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids)), len(ids), ids
        mask = np.zeros(int(ids[-1]) + 1 if ids.size else 0, dtype=bool)
        mask[ids] = True
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), int(mask.sum()), bits


def _filtered_params(index: VectorIndex, sel: Any, n_allowed: int, exhaustive: bool = False) -> Any:
    """Search parameters with ``sel`` (or None); IVF probes 1/fraction-allowed times more lists,
    so a selective filter still finds its best ids (``exhaustive``: every IVF list)."""
    kind, inner = _parts(index.index)
    boost = len(index) / max(1, min(n_allowed, len(index)))
    if kind.startswith("ivf"):
        nprobe = inner.nlist if exhaustive else min(inner.nlist, math.ceil(inner.nprobe * boost))
        return faiss.SearchParametersIVF(sel=sel, nprobe=int(nprobe))
    return faiss.SearchParameters(sel=sel)


def search(index: VectorIndex, queries: Any, k: int, allowed_ids: Any = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Top-``k`` by inner product: ``queries`` float32 ``[Q, D]`` -> (scores float32 ``[Q, k]``
    descending, ids int64 ``[Q, k]``). Fewer than ``k`` hits: id -1, score -inf.
    ``allowed_ids``: None, a boolean mask ``[>= max id + 1]`` (``mask[id]``), or integer ids (array,
    list or set); only those ids are returned, and IVF probes more lists for a selective filter.
    IVF queries still short of ``k`` hits (when there are ``k``) are searched again in every list."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
    if len(index) == 0:
        raise ValueError("the vector index is empty")
    q = _check_vectors(queries, index.dim, "queries")
    k, sel, n_allowed, _keep = int(k), None, len(index), None
    if allowed_ids is None:
        gpu = _gpu_copy(index)
        scores, ids = (index.index if gpu is None else gpu).search(q, k)
    else:
        sel, n_allowed, _keep = _selector(allowed_ids)
        if n_allowed == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        scores, ids = index.index.search(q, k, params=_filtered_params(index, sel, n_allowed))
    short = np.flatnonzero((ids < 0).any(axis=1))  # IVF: the probed lists held fewer than k
    if len(short) and index.spec.kind.startswith("ivf") and min(n_allowed, len(index)) >= k:
        params = _filtered_params(index, sel, n_allowed, exhaustive=True)
        scores[short], ids[short] = index.index.search(q[short], k, params=params)
    scores[ids < 0] = -np.inf
    return scores, ids
