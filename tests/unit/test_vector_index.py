"""tempstop.vector_index: exact = brute force, IVF recall, mmap round trip, filters, choice, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from tempstop import vector_index as vi  # noqa: E402


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around ``clusters`` random unit centres (cos to the centre ~0.7); the
    centres depend on ``dim`` and ``clusters`` only, so another seed draws more of the same set."""
    centres = _unit(np.random.default_rng(dim * 1000 + clusters).standard_normal((clusters, dim)))
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return _unit(centres[rng.integers(0, clusters, n)] + noise)


def _brute(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), ids[order]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def small():
    """2000 x 64 unit vectors with sparse, shuffled ids, and 50 queries."""
    rng = np.random.default_rng(0)
    x = _clustered(2000, 64, 20, 1)
    ids = rng.permutation(10_000)[:2000].astype(np.int64) * 3
    return x, ids, _clustered(50, 64, 20, 2)


@pytest.fixture(scope="module")
def ivf_case():
    """20_000 x 64 clustered, an ivf-sq8 index forced by override, 200 held-out queries."""
    x = _clustered(20_000, 64, 200, 3)
    q = _clustered(200, 64, 200, 3 + 1)
    spec = vi.choose_index_spec(len(x), 64, "ivf-sq8")
    return x, q, vi.build_index(x, None, spec)


def test_exact_index_equals_brute_force(small):
    x, ids, q = small
    index = vi.build_index(x, ids)
    assert index.spec.kind == "flat"
    scores, found = vi.search(index, q, 10)
    want_scores, want_ids = _brute(x, ids, q, 10)
    assert scores.shape == found.shape == (50, 10) and found.dtype == np.int64
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    row = {int(i): r for r, i in enumerate(ids)}  # each returned id really has its score
    actual = np.einsum("qd,qkd->qk", q, x[np.vectorize(row.get)(found)])
    np.testing.assert_allclose(actual, scores, atol=1e-5)
    tied = np.zeros_like(found, dtype=bool)  # ids must agree except within near-ties
    close = np.abs(np.diff(want_scores, axis=1)) < 1e-5
    tied[:, 1:] |= close
    tied[:, :-1] |= close
    assert ((found == want_ids) | tied).all() and (found == want_ids).mean() > 0.99


def test_ivf_recall_on_clustered_set(ivf_case):
    x, q, index = ivf_case
    assert index.spec.kind == "ivf-sq8" and index.spec.params["nlist"] == 512
    _, found = vi.search(index, q, 10)
    _, truth = _brute(x, np.arange(len(x)), q, 10)
    assert _recall(found, truth) >= 0.9
    d = vi.describe(index)
    assert d["type"] == "ivf-sq8" and d["n"] == 20_000 and d["dim"] == 64
    assert d["bytes"] == 20_000 * (64 + 8) + 512 * 64 * 4  # SQ8 codes + ids + centroids


@pytest.mark.parametrize("kind", ["flat", "ivf-sq8", "ivf-flat"])
def test_save_load_mmap_round_trip(tmp_path, kind):
    x = _clustered(3000, 32, 30, 5)
    q = _clustered(20, 32, 30, 6)
    ids = np.arange(3000, dtype=np.int64) + 7
    index = vi.build_index(x, ids, vi.choose_index_spec(len(x), 32, kind))
    want = vi.search(index, q, 5)
    path = vi.save_index(index, tmp_path / "v.faiss")
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away
    for mmap in (True, False):
        loaded = vi.load_index(path, mmap=mmap)
        assert loaded.mmap is mmap and len(loaded) == 3000 and loaded.spec.kind == kind
        got = vi.search(loaded, q, 5)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)
        assert loaded.spec.params.items() <= index.spec.params.items()  # what the file stores
        assert vi.describe(loaded)["bytes"] == vi.describe(index)["bytes"]
    with pytest.raises(ValueError, match="read-only"):
        vi.add_vectors(vi.load_index(path), x[:2], np.array([1, 2]))


def test_add_in_batches_equals_one_build(small):
    x, ids, q = small
    whole = vi.build_index(x, ids)
    parts = vi.build_index(x[:500], ids[:500])
    vi.add_vectors(parts, x[500:1200], ids[500:1200])
    vi.add_vectors(parts, x[1200:], ids[1200:])
    assert len(parts) == 2000
    np.testing.assert_array_equal(vi.search(parts, q, 10)[1], vi.search(whole, q, 10)[1])


def test_calibration_raises_nprobe_on_unstructured_vectors():
    x = _unit(np.random.default_rng(11).standard_normal((20_000, 64)))  # no clusters: hard for IVF
    index = vi.build_index(x, None, vi.choose_index_spec(len(x), 64, "ivf-sq8"))
    assert index.spec.params["nprobe"] > 32 and "recall@10" in index.spec.reason
    assert index.index.nprobe == index.spec.params["nprobe"]
    fixed = vi.choose_index_spec(len(x), 64, "ivf-sq8:nprobe=8")  # a given nprobe is kept
    assert fixed.params["calibrate"] == 0 and fixed.params["nprobe"] == 8


def test_ivf_query_short_of_k_searches_every_list():
    x = _clustered(3000, 32, 30, 9)
    q = _clustered(5, 32, 30, 10)
    index = vi.build_index(x, None, vi.choose_index_spec(len(x), 32, "ivf-flat:nlist=64,nprobe=1"))
    assert index.index.nprobe == 1  # one list holds ~47 vectors: fewer than k
    scores, found = vi.search(index, q, 200)
    assert (found >= 0).all()
    np.testing.assert_allclose(scores, _brute(x, np.arange(len(x)), q, 200)[0], atol=1e-5)


@pytest.mark.parametrize("form", ["mask", "array", "set"])
def test_filter_returns_best_allowed_ids(small, form):
    x, ids, q = small
    index = vi.build_index(x, ids)
    keep = np.random.default_rng(7).random(len(ids)) < 0.05  # ~100 of 2000
    allowed = ids[keep]
    if form == "mask":
        arg = np.zeros(ids.max() + 1, dtype=bool)
        arg[allowed] = True
    else:
        arg = allowed if form == "array" else {int(i) for i in allowed}
    scores, found = vi.search(index, q, 10, arg)
    assert np.isin(found, allowed).all()
    want_scores, want_ids = _brute(x[keep], allowed, q, 10)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert (found[:, 0] == want_ids[:, 0]).all()


def test_filter_on_ivf_is_selective_and_complete(ivf_case):
    x, q, index = ivf_case
    allowed = np.random.default_rng(8).choice(len(x), 60, replace=False)  # 0.3 % of the index
    scores, found = vi.search(index, q[:50], 10, allowed)
    assert (found >= 0).all() and np.isin(found, allowed).all()  # k hits although lists are sparse
    _, truth = _brute(x[allowed], allowed, q[:50], 10)
    assert _recall(found, truth) >= 0.9


def test_filter_with_fewer_allowed_than_k(small):
    x, ids, q = small
    index = vi.build_index(x, ids)
    scores, found = vi.search(index, q[:3], 5, ids[:2])
    assert set(found[:, :2].ravel()) <= set(ids[:2]) and (found[:, 2:] == -1).all()
    assert np.isneginf(scores[:, 2:]).all()
    scores, found = vi.search(index, q[:3], 5, np.array([], dtype=np.int64))
    assert (found == -1).all() and np.isneginf(scores).all()


def test_automatic_choice_switches_at_threshold():
    below = vi.choose_index_spec(vi.EXACT_MAX_N - 1, 512)
    at = vi.choose_index_spec(vi.EXACT_MAX_N, 512)
    assert below.kind == "flat" and at.kind == "ivf-sq8"
    big = vi.choose_index_spec(1_000_000, 512)
    assert big.params["nlist"] == 4096 and big.params["nprobe"] == 64
    assert vi.choose_index_spec(10, 64, "auto").kind == "flat"
    forced = vi.choose_index_spec(10_000, 64, "ivf-flat:nlist=64,nprobe=8")
    assert forced.kind == "ivf-flat" and forced.params["nlist"] == 64 and forced.params["nprobe"] == 8
    assert vi.choose_index_spec(0, 64, "ivf-sq8").kind == "flat"  # nothing to train on
    assert vi.choose_index_spec(10**6, 512, "flat").kind == "flat"


def test_spec_round_trips_through_json():
    spec = vi.choose_index_spec(200_000, 512)
    back = vi.IndexSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec
    assert vi.choose_index_spec(200_000, 512, spec.to_dict()).params == spec.params


def test_empty_build_describe_and_search_error():
    index = vi.build_index(np.zeros((0, 16), np.float32), np.zeros(0, np.int64))
    assert vi.describe(index)["n"] == 0 and vi.describe(index)["type"] == "flat"
    with pytest.raises(ValueError, match="empty"):
        vi.search(index, np.ones((1, 16), np.float32), 1)


def test_import_does_not_load_faiss():
    code = "import sys, tempstop.vector_index; assert 'faiss' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_inputs_raise_with_a_message(small, tmp_path):
    x, ids, q = small
    index = vi.build_index(x, ids)
    bad = x[:10].copy()
    bad[3, 5] = np.nan
    cases = [
        (lambda: vi.build_index(bad), "row 3 is not finite"),
        (lambda: vi.build_index(x[0]), "2-D"),
        (lambda: vi.build_index(x, ids[:5]), "ids must be 2000"),
        (lambda: vi.build_index(x[:2], np.array([4, 4])), "unique"),
        (lambda: vi.build_index(x[:2], np.array([-1, 4])), ">= 0"),
        (lambda: vi.search(index, q[:, :10], 5), "dimension 10, the index has 64"),
        (lambda: vi.search(index, q, 0), "k must be"),
        (lambda: vi.search(index, q, vi.MAX_K + 1), "k must be"),
        (lambda: vi.search(index, q, 5, np.array([-2])), ">= 0"),
        (lambda: vi.search(index, q, 5, np.array([0.5])), "integers or a boolean mask"),
        (lambda: vi.choose_index_spec(10, 8, "annoy"), "unknown vector index kind"),
        (lambda: vi.choose_index_spec(10, 8, "hnsw"), "unknown vector index kind"),
        (lambda: vi.choose_index_spec(10, 8, "flat:nlist=4"), "unknown parameter 'nlist'"),
        (lambda: vi.choose_index_spec(10, 8, "ivf-sq8:m=4"), "unknown parameter 'm'"),
        (lambda: vi.choose_index_spec(10, 8, "ivf-sq8:nprobe=x"), "key=integer"),
        (lambda: vi.build_index(x[:100], None, vi.IndexSpec("ivf-sq8", {"nlist": 256, "nprobe": 8, "train_size": 100, "niter": 2})), "at least 256 vectors"),
        (lambda: vi.load_index(tmp_path / "none.faiss"), "no such vector index"),
    ]  # fmt: skip
    for call, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            call()
    (tmp_path / "junk.faiss").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="not a readable faiss index"):
        vi.load_index(tmp_path / "junk.faiss")
