"""FAISS dense index: exactness against numpy, approximate recall, persistence and input checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from keytok.engines.dense import DenseIndex
from keytok.errors import KeytokError

N, D, NQ, K = 3000, 48, 60, 10


@pytest.fixture(scope="module")
def data() -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    # Unnormalised vectors with varied norms, so that cosine and raw inner product rank differently.
    docs = rng.normal(size=(N, D)).astype(np.float32) * rng.uniform(0.2, 5.0, size=(N, 1)).astype(np.float32)
    queries = rng.normal(size=(NQ, D)).astype(np.float32) * 3
    return [f"d{i}" for i in range(N)], docs, queries


def _cosine_topk(docs: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    dn = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = qn @ dn.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(sims, top, axis=1)


def test_flat_cosine_equals_brute_force(data) -> None:
    ids, docs, queries = data
    index = DenseIndex.build(None, ids, docs)
    top, sims = _cosine_topk(docs, queries, K)
    got_ids, got_scores = index.search_batch(queries, K)
    assert got_scores.shape == (NQ, K) and got_scores.dtype == np.float32
    assert got_ids == [[ids[j] for j in row] for row in top.tolist()]
    np.testing.assert_allclose(got_scores, sims, rtol=1e-5, atol=1e-5)
    one = index.search(queries[3], K)
    assert [d for d, _ in one] == got_ids[3]
    np.testing.assert_allclose([s for _, s in one], got_scores[3], rtol=1e-6)


def test_unnormalised_ip_and_l2(data) -> None:
    ids, docs, queries = data
    ip = DenseIndex.build(None, ids, docs, normalize=False)
    raw = queries @ docs.T
    top = np.argsort(-raw, axis=1)[:, :K]
    got_ids, got_scores = ip.search_batch(queries, K)
    assert got_ids == [[ids[j] for j in row] for row in top.tolist()]
    np.testing.assert_allclose(got_scores, np.take_along_axis(raw, top, axis=1), rtol=1e-4)

    l2 = DenseIndex.build(None, ids, docs, metric="l2", normalize=False)
    dist = ((queries[:, None, :] - docs[None, :, :]) ** 2).sum(-1)
    top = np.argsort(dist, axis=1)[:, :K]
    got_ids, got_scores = l2.search_batch(queries, K)
    assert got_ids == [[ids[j] for j in row] for row in top.tolist()]
    # higher is better everywhere: l2 scores are negated squared distances
    np.testing.assert_allclose(got_scores, -np.take_along_axis(dist, top, axis=1), rtol=1e-4)


def test_hnsw_recall_is_high(data) -> None:
    ids, docs, queries = data
    index = DenseIndex.build(None, ids, docs, factory="HNSW32")
    index.set_search_params(efSearch=128)
    top, _ = _cosine_topk(docs, queries, K)
    got_ids, _ = index.search_batch(queries, K)
    pos = {d: i for i, d in enumerate(ids)}
    recall = np.mean(
        [
            len({pos[d] for d in got} & set(exact)) / K
            for got, exact in zip(got_ids, top.tolist(), strict=False)
        ]
    )
    assert recall >= 0.95, recall
    with pytest.raises(KeytokError, match="does not apply"):
        index.set_search_params(nprobe=4)


def test_ivf_trains_and_is_exact_when_probing_all_lists(data) -> None:
    ids, docs, queries = data
    index = DenseIndex.build(None, ids, docs, factory="IVF16,Flat")
    index.set_search_params(nprobe=16)
    top, _ = _cosine_topk(docs, queries, K)
    got_ids, _ = index.search_batch(queries, K)
    assert got_ids == [[ids[j] for j in row] for row in top.tolist()]


def test_save_open_add_round_trip(tmp_path: Path, data) -> None:
    ids, docs, queries = data
    path = tmp_path / "dense"
    built = DenseIndex.build(path, ids[:2000], docs[:2000], meta={"model": "m", "pooling": "last"})
    assert sorted(p.name for p in path.iterdir()) == ["doc_ids.json", "index.faiss", "manifest.json"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["kind"] == "dense" and manifest["counts"] == {"docs": 2000}
    assert manifest["params"]["dim"] == D and manifest["params"]["factory"] == "Flat"
    assert manifest["meta"] == {"model": "m", "pooling": "last"}
    assert sorted(manifest["files"]) == ["doc_ids.json", "index.faiss"]
    with pytest.raises(KeytokError, match="already exists"):
        DenseIndex.build(path, ids[:10], docs[:10])

    opened = DenseIndex.open(path, verify=True, expected_meta={"model": "m"})
    assert len(opened) == 2000 and opened.meta == built.meta and opened.normalize
    a_ids, a_scores = built.search_batch(queries, K)
    b_ids, b_scores = opened.search_batch(queries, K)
    assert a_ids == b_ids
    np.testing.assert_array_equal(a_scores, b_scores)

    opened.add(ids[2000:], docs[2000:])
    assert len(opened) == N
    exact_ids, _ = DenseIndex.build(None, ids, docs).search_batch(queries, K)
    assert opened.search_batch(queries, K)[0] == exact_ids
    # a new document is its own nearest neighbour
    assert opened.search(docs[2500] * 7.0, 1)[0][0] == "d2500"
    assert len(DenseIndex.open(path)) == 2000  # add() alone does not persist
    opened.save()
    again = DenseIndex.open(path)
    assert len(again) == N and again.search_batch(queries, K)[0] == exact_ids
    assert json.loads((path / "manifest.json").read_text())["counts"] == {"docs": N}
    with pytest.raises(KeytokError, match="built with model m"):
        DenseIndex.open(path, expected_meta={"model": "other"})
    rebuilt = DenseIndex.build(path, ids[:10], docs[:10], overwrite=True)
    assert len(DenseIndex.open(path)) == 10 and rebuilt.path == path
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_short_results_are_padded_and_zero_vectors_are_safe() -> None:
    vecs = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    index = DenseIndex.build(None, ["a", "b", "zero"], vecs)
    ids, scores = index.search_batch(np.array([[2.0, 1.0], [0.0, 0.0]]), 5)
    assert ids[0] == ["a", "b", "zero"] and np.isneginf(scores[0, 3:]).all()
    assert np.isfinite(scores[:, :3]).all()
    assert scores[0, 2] == 0.0
    assert index.search([3.0, 0.0], 1) == [("a", pytest.approx(1.0))]


def test_bad_inputs(tmp_path: Path, data) -> None:
    ids, docs, _ = data
    small = docs[:20]
    nan = small.copy()
    nan[4, 2] = np.nan
    build_cases = [
        (ids[:20], nan, {}, "row 4 contains NaN"),
        (ids[:20], small[:, :, None], {}, "2-D array"),
        ([], np.zeros((0, D), np.float32), {}, "empty"),
        (ids[:19], small, {}, "20 rows but 19 doc ids"),
        ([*ids[:19], "d0"], small, {}, "duplicate doc id 'd0'"),
        ([*ids[:19], ""], small, {}, "non-empty strings"),
        (ids[:20], small, {"factory": "NoSuchIndex"}, "factory 'NoSuchIndex'"),
        (ids[:20], small, {"factory": "IVF4096,Flat"}, "could not train"),
        (ids[:20], small, {"metric": "cosine"}, "metric must be"),
        (ids[:20], np.array([["a"] * D] * 20), {}, "dtype"),
        (ids[:20], small, {"meta": {"x": object()}}, "JSON"),
    ]
    for doc_ids, emb, kwargs, message in build_cases:
        with pytest.raises(KeytokError, match=message) as err:
            DenseIndex.build(tmp_path / "bad", doc_ids, emb, **kwargs)
        assert "\n" not in str(err.value)
    assert not (tmp_path / "bad").exists()

    index = DenseIndex.build(None, ids[:20], small)
    for query, message in [
        (np.ones((2, D + 1), np.float32), f"dimension {D + 1} but the index has dimension {D}"),
        (np.full((1, D), np.nan, np.float32), "NaN"),
        (np.ones((0, D), np.float32), "empty"),
    ]:
        with pytest.raises(KeytokError, match=message):
            index.search_batch(query, K)
    with pytest.raises(KeytokError, match="one vector"):
        index.search(np.ones((2, D)), K)
    with pytest.raises(KeytokError, match="k must be"):
        index.search_batch(small, 0)
    with pytest.raises(KeytokError, match="duplicate doc id 'd3'"):
        index.add(["new", "d3"], small[:2])
    with pytest.raises(KeytokError, match="dimension"):
        index.add(["new"], np.ones((1, D - 1), np.float32))
    assert len(index) == 20  # failed adds changed nothing
    with pytest.raises(KeytokError, match="give save"):
        index.save()
    with pytest.raises(KeytokError, match="does not exist"):
        DenseIndex.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeytokError, match="not a keytok index"):
        DenseIndex.open(tmp_path / "empty")
    saved = tmp_path / "saved"
    index.save(saved)
    with pytest.raises(KeytokError, match="already exists"):
        index.save(tmp_path / "empty")
    size = (saved / "index.faiss").stat().st_size
    (saved / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(KeytokError, match="truncated"):
        DenseIndex.open(saved)
    (saved / "index.faiss").write_bytes(b"g" * size)
    with pytest.raises(KeytokError, match="corrupted"):
        DenseIndex.open(saved)
    with pytest.raises(KeytokError, match="not a readable faiss index"):
        DenseIndex.open(saved, verify=False)
