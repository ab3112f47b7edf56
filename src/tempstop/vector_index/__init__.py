"""Vector index over L2-normalised embeddings (faiss): exact for small collections, IVF-SQ8 above.

Scores are inner products (= cosine for unit vectors). ids are int64 >= 0 (a collection uses the
row numbers of its manifest); -1 in a result means "no hit" (its score is -inf).

    from tempstop import vector_index as vi
    index = vi.build_index(vectors, ids, vi.choose_index_spec(len(vectors), dim, "auto"))
    scores, ids = vi.search(index, queries, k=10)

Two modules: :mod:`~tempstop.vector_index.spec` chooses what to build (kinds, parameters, the
override syntax, the measurements behind the defaults) without faiss;
:mod:`~tempstop.vector_index.faiss_index` builds, saves, loads, describes and searches.
"""

from __future__ import annotations

from typing import Any

from tempstop.vector_index.spec import (
    EXACT_MAX_N,
    KINDS,
    MAX_K,
    TARGET_RECALL,
    IndexSpec,
    choose_index_spec,
    parse_index_spec,
)

_FAISS_NAMES = ("VectorIndex", "add_vectors", "build_index", "describe", "load_index", "save_index", "search")

__all__ = [
    "EXACT_MAX_N",
    "KINDS",
    "MAX_K",
    "TARGET_RECALL",
    "IndexSpec",
    "choose_index_spec",
    "parse_index_spec",
    *_FAISS_NAMES,
]


def __getattr__(name: str) -> Any:
    # The faiss half loads on first use: importing the package (or its spec module, which
    # runs this file) must not load faiss's native library just to check an index spec.
    if name in _FAISS_NAMES:
        from tempstop.vector_index import faiss_index

        return getattr(faiss_index, name)
    raise AttributeError(f"module 'tempstop.vector_index' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_FAISS_NAMES])
